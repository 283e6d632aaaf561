"""Which rows a reader (one rank's one DataLoader worker) reads in an epoch: a pure function.

Every reader of every rank computes the same epoch permutation of a directory's rows from
(seed, epoch) and takes every S-th entry from its own position, S = world_size * workers. So the
readers' sets are disjoint and together cover every row exactly once, whatever S is, and a checker
(`gato-tokenize verify --simulate-ranks`) can replay the split without reading any data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def num_readers(world_size: int, num_workers: int) -> int:
    """Readers that share an epoch: every DataLoader worker of every rank (0 workers = 1 reader)."""
    return world_size * max(1, num_workers)


def reader_index(rank: int, world_size: int, worker: int, num_workers: int) -> int:
    """Position of (rank, worker) among the readers: ranks outer, workers inner."""
    nw = max(1, num_workers)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if not 0 <= worker < nw:
        raise ValueError(f"worker {worker} is outside [0, {nw})")
    return rank * nw + worker


def epoch_order(total_rows: int, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """All global row ids of one epoch in reading order (a fresh permutation per epoch)."""
    if not shuffle:
        return np.arange(total_rows, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)])
    return rng.permutation(total_rows).astype(np.int64, copy=False)


def directory_seed(seed: int, data_index: int) -> int:
    """Seed of the row split of the `data_index`-th --data directory: one rule for the loader and
    for `gato-tokenize verify --simulate-ranks`."""
    return int(np.random.SeedSequence([seed, data_index]).generate_state(1, np.uint64)[0])


def assign_rows(rows_per_shard: Sequence[int], rank: int, world_size: int, worker: int, num_workers: int,
                epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """Global row ids (shard-major numbering) that reader (rank, worker) reads in `epoch`, in order.

    `num_workers=0` means the rank reads in its main process (one reader, worker 0). Readers get
    counts that differ by at most one; a reader may get none when there are fewer rows than readers.
    """
    total = int(np.sum(np.asarray(rows_per_shard, dtype=np.int64))) if len(rows_per_shard) else 0
    order = epoch_order(total, epoch, seed, shuffle)
    return order[reader_index(rank, world_size, worker, num_workers)::num_readers(world_size, num_workers)]


def global_row(rows_per_shard: Sequence[int], shard: int, row: int) -> int:
    """Global id of row `row` of shard `shard` (the numbering assign_rows uses)."""
    return int(np.sum(np.asarray(rows_per_shard[:shard], dtype=np.int64))) + int(row)


def locate_rows(rows_per_shard: Sequence[int], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global row ids -> (shard index, row inside the shard), vectorised."""
    starts = np.concatenate([[0], np.cumsum(np.asarray(rows_per_shard, dtype=np.int64))])
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise IndexError(f"row id outside [0, {starts[-1]})")
    shard = np.searchsorted(starts, rows, side="right") - 1
    return shard, rows - starts[shard]
