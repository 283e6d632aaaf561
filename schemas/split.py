"""Which rows a reader (one rank's one DataLoader worker) reads in an epoch: pure functions.

Every reader of every rank computes the same epoch permutation of a directory's rows from
(seed, epoch) and takes every S-th entry from its own position, S = world_size * workers. So the
readers' sets are disjoint and together cover every row exactly once, whatever S is, and a checker
(`gato-tokenize verify --simulate-ranks`) can replay the split without reading any data.

A directory streamed from object storage is split by whole shards instead (assign_rows_by_shard):
each rank owns a fixed set of shards (its workers share them out), so a node downloads only the
shards it reads, whatever its number of workers; ranks beyond the shard count split a shard's rows.
Both rules live here, below converters and trainer, so verify and the loader replay the same one.
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


def shard_row_starts(rows_per_shard: Sequence[int] | np.ndarray) -> np.ndarray:
    """The first global row id of each shard, then the row count (int64): rows are numbered
    through the shards in the manifest's order. The one numbering the split, the reader, the
    loader and `verify` share."""
    starts = np.zeros(len(rows_per_shard) + 1, np.int64)
    np.cumsum(np.asarray(rows_per_shard, dtype=np.int64), out=starts[1:])
    return starts


def global_row(rows_per_shard: Sequence[int] | np.ndarray, shard: int, row: int) -> int:
    """Global id of row `row` of shard `shard` (the numbering assign_rows uses)."""
    return int(shard_row_starts(rows_per_shard)[shard]) + int(row)


def locate_rows(rows_per_shard: Sequence[int] | np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global row ids -> (shard index, row inside the shard), vectorised."""
    starts = shard_row_starts(rows_per_shard)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise IndexError(f"row id outside [0, {starts[-1]})")
    shard = np.searchsorted(starts, rows, side="right") - 1
    return shard, rows - starts[shard]


# --- whole shards per reader: what a node streaming from object storage reads ----------------------

SPLITS = ("rows", "shards")


def shard_order(rows_per_shard: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """The non-empty shards in a seeded order, fixed across epochs (so a node's cache keeps serving
    it), from which shards are dealt to ranks."""
    rows = np.asarray(rows_per_shard, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 0x5EED])
    return rng.permutation(np.flatnonzero(rows > 0))


def reader_shards(rows_per_shard: Sequence[int] | np.ndarray, rank: int, world_size: int, worker: int, num_workers: int,
                  seed: int) -> tuple[np.ndarray, int, int]:
    """(shards, member, members): the shards reader (rank, worker) reads, shared by `members`
    readers of which it is number `member` (each takes every members-th row of them).

    Shards are dealt to ranks first and then to a rank's workers, so what a rank reads does not
    depend on its --num-workers: evaluation (no workers) reads exactly the shards its training
    workers read. A rank with fewer shards than workers has its workers share them by rows; with
    fewer shards than ranks, rank r reads shard r mod S alone with the other ranks dealt the same
    one, splitting its rows (a node downloads one shard, not all of them)."""
    order = shard_order(rows_per_shard, seed)
    count, nw = len(order), max(1, num_workers)
    reader_index(rank, world_size, worker, num_workers)  # range checks
    if count == 0:
        return order, 0, 1
    if count >= world_size:
        mine = order[rank::world_size]
        return (mine[worker::nw], 0, 1) if len(mine) >= nw else (mine, worker, nw)
    group = rank % count
    ranks_on_it = len(range(group, world_size, count))
    return order[group:group + 1], (rank // count) * nw + worker, ranks_on_it * nw


def assign_rows_by_shard(rows_per_shard: Sequence[int], rank: int, world_size: int, worker: int, num_workers: int,
                         epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """Global row ids that reader (rank, worker) reads in `epoch` when readers own whole shards.

    The reader's shards (reader_shards) are taken in a fresh order each epoch, each one's rows
    shuffled inside it, so a reader moves through its shards one after another (what lets the next
    ones download while it reads) and touches no shard of another rank; readers sharing a set of
    shards take every m-th row of the same order. Disjoint and complete over all readers, as
    assign_rows."""
    rows = np.asarray(rows_per_shard, dtype=np.int64)
    starts = shard_row_starts(rows)
    mine, member, members = reader_shards(rows, rank, world_size, worker, num_workers, seed)
    if not len(mine):
        return np.zeros(0, np.int64)
    if not shuffle:
        order = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in np.sort(mine)])
    else:  # keyed by the set's first shard: every reader sharing the set makes the same order
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(mine[0])])
        order = np.concatenate([starts[s] + rng.permutation(rows[s]) for s in rng.permutation(mine)])
    return order.astype(np.int64, copy=False)[member::members]


def split_rows(split: str, rows_per_shard: Sequence[int], rank: int, world_size: int, worker: int,
               num_workers: int, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The rows of a reader under `split` ("rows": assign_rows, "shards": assign_rows_by_shard)."""
    if split == "rows":
        return assign_rows(rows_per_shard, rank, world_size, worker, num_workers, epoch, seed, shuffle)
    if split == "shards":
        return assign_rows_by_shard(rows_per_shard, rank, world_size, worker, num_workers, epoch, seed, shuffle)
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


# --- what one epoch of a directory is made of: the one rule for the loader and `inspect` ------------

def text_windows(tokens_per_shard: Sequence[int] | np.ndarray, seq_len: int) -> np.ndarray:
    """Windows per shard of a text directory: each shard's token stream cut into windows of
    seq_len + 1 tokens overlapping by one, window j holding tokens [j*L, j*L + L + 1), the last
    one shorter. Every token of a shard but its first is a training target once per epoch."""
    t = np.asarray(tokens_per_shard, dtype=np.int64)
    return np.where(t > 1, (t - 2 + seq_len) // seq_len, 0)


def row_windows(row_lengths: Sequence[float] | np.ndarray, seq_len: int) -> np.ndarray:
    """Windows per epoch of each RL row: ceil(n / (seq_len + 1)), at least one."""
    n = np.asarray(row_lengths, dtype=np.float64)
    return np.maximum(1, np.ceil(n / (seq_len + 1))).astype(np.int64)


def epoch_tokens(kind: str, tokens_per_shard: Sequence[int] | np.ndarray,
                 row_lengths: Sequence[float] | np.ndarray | None, seq_len: int) -> dict:
    """What one epoch of a directory delivers at `seq_len`: sequences, the tokens they hold
    (overlaps counted), the targets among them that are distinct tokens of the directory (text:
    exact; RL and captions: None, their windows are drawn) and the directory's tokens."""
    total = int(np.sum(np.asarray(tokens_per_shard, dtype=np.int64)))
    if kind == "text":
        w = text_windows(tokens_per_shard, seq_len)
        held = total + int(w.sum()) - int(np.count_nonzero(w))
        targets = int(np.sum(np.maximum(np.asarray(tokens_per_shard, dtype=np.int64) - 1, 0)))
        return {"sequences": int(w.sum()), "tokens": held, "distinct_targets": targets, "directory_tokens": total}
    lens = np.asarray(row_lengths if row_lengths is not None else [], dtype=np.float64)
    k = row_windows(lens, seq_len) if kind == "rl" else np.ones(len(lens), np.int64)
    held = int(np.minimum(lens, seq_len + 1) @ k) if kind == "rl" else int(lens.sum())
    return {"sequences": int(k.sum()), "tokens": held, "distinct_targets": None, "directory_tokens": total}


# --- elastic resume: finishing the epochs another number of readers left half-read -----------------

def unread_rows(split: str, rows_per_shard: Sequence[int], world_size: int, num_workers: int,
                positions: Sequence[tuple[int, int]], seed: int, shuffle: bool = True) -> dict[int, np.ndarray]:
    """{epoch: rows no reader of the old world has read yet} for the epochs its readers were in.

    `positions[i]` is (epoch, cursor) of old reader i (reader_index order): it has read the first
    `cursor` rows of its `epoch` and every row of its earlier epochs. Each epoch's unread rows are
    the old readers' unread tails, concatenated in reader order (so each stays in its shards)."""
    nw = max(1, num_workers)
    if len(positions) != num_readers(world_size, num_workers):
        raise ValueError(f"{len(positions)} reader positions for {world_size} ranks x {nw} workers")
    first, last = min(e for e, _ in positions), max(e for e, _ in positions)
    out = {}
    for epoch in range(first, last + 1):
        tails = []
        for i, (e, cursor) in enumerate(positions):
            if e > epoch:
                continue  # read all of this epoch already
            rows = split_rows(split, rows_per_shard, i // nw, world_size, i % nw, num_workers, epoch, seed, shuffle)
            tails.append(rows[cursor:] if e == epoch else rows)
        out[epoch] = np.concatenate(tails) if tails else np.zeros(0, np.int64)
    return out


def resume_rows(unread: dict[int, np.ndarray], rank: int, world_size: int, worker: int, num_workers: int
                ) -> tuple[np.ndarray, int]:
    """(rows, next_epoch) of reader (rank, worker) of a new world resuming from `unread`
    (unread_rows of the old world): a contiguous, nearly equal share of each half-read epoch's
    unread rows (contiguous, so a reader stays in few shards), then `split_rows` of `next_epoch`
    onwards in the new world. Together the new readers read each unread row once and nothing
    the old readers read: like Streaming's canonical nodes, the sample space is fixed by the run
    that started the epoch, not by whoever finishes it."""
    me, readers = reader_index(rank, world_size, worker, num_workers), num_readers(world_size, num_workers)
    parts = [np.array_split(rows, readers)[me] for _, rows in sorted(unread.items())]
    rows = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    return rows, (max(unread) + 1 if unread else 0)
