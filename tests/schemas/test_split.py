"""The row split: every row once per epoch across ranks and workers, whatever their numbers."""

import numpy as np
import pytest

from schemas.split import assign_rows, global_row, locate_rows, num_readers, reader_index, shard_row_starts

SHARDS = [7, 0, 13, 5, 1]  # an empty shard and a one-row shard on purpose


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("epoch", [0, 3])
def test_readers_partition_the_rows(world_size, num_workers, epoch):
    parts = [assign_rows(SHARDS, r, world_size, w, num_workers, epoch, seed=11)
             for r in range(world_size) for w in range(max(1, num_workers))]
    allrows = np.concatenate(parts)
    assert len(allrows) == sum(SHARDS)  # nothing dropped ...
    assert sorted(allrows.tolist()) == list(range(sum(SHARDS)))  # ... nothing twice
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_epochs_reshuffle_and_seed_is_deterministic():
    a0 = assign_rows(SHARDS, 0, 2, 1, 2, epoch=0, seed=5)
    a1 = assign_rows(SHARDS, 0, 2, 1, 2, epoch=1, seed=5)
    b0 = assign_rows(SHARDS, 0, 2, 1, 2, epoch=0, seed=6)
    assert np.array_equal(a0, assign_rows(SHARDS, 0, 2, 1, 2, epoch=0, seed=5))
    assert not np.array_equal(a0, a1) and not np.array_equal(a0, b0)
    ordered = assign_rows(SHARDS, 0, 1, 0, 0, epoch=4, seed=5, shuffle=False)
    assert ordered.tolist() == list(range(sum(SHARDS)))


def test_more_readers_than_rows_gives_some_readers_nothing():
    parts = [assign_rows([2], r, 3, w, 2, 0, 0) for r in range(3) for w in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == [0, 1]
    assert sum(len(p) == 0 for p in parts) == 4


def test_reader_numbering_and_row_location():
    assert num_readers(3, 0) == 3 and num_readers(3, 2) == 6
    assert [reader_index(r, 2, w, 2) for r in range(2) for w in range(2)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="rank 2"):
        reader_index(2, 2, 0, 1)
    with pytest.raises(ValueError, match="worker 1"):
        reader_index(0, 2, 1, 0)
    shard, row = locate_rows(SHARDS, np.array([0, 6, 7, 19, 20, 25]))
    assert shard.tolist() == [0, 0, 2, 2, 3, 4] and row.tolist() == [0, 6, 0, 12, 0, 0]
    assert global_row(SHARDS, 3, 2) == 22
    starts = shard_row_starts(SHARDS)  # the one numbering: global_row and locate_rows are its two directions
    assert starts.tolist() == [0, *np.cumsum(SHARDS).tolist()] and starts.dtype == np.int64
    every = np.arange(starts[-1])
    shard, row = locate_rows(SHARDS, every)
    assert [global_row(SHARDS, s, r) for s, r in zip(shard, row)] == every.tolist()
    assert shard_row_starts([]).tolist() == [0]
    with pytest.raises(IndexError):
        locate_rows(SHARDS, np.array([26]))


# --- whole shards per reader (directories streamed from object storage) -------------------------------

from schemas.split import assign_rows_by_shard, split_rows  # noqa: E402


@pytest.mark.parametrize("rows_per_shard", [[5, 0, 7, 3, 9, 4, 6, 2], [10, 10, 10], [4], [3, 8]])
@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 1), (4, 2)])
def test_shard_split_reads_every_row_once_and_ranks_share_no_shard(rows_per_shard, world, workers):
    starts = np.concatenate([[0], np.cumsum(rows_per_shard)])
    total = int(starts[-1])
    for epoch in (0, 1):
        seen, shards_of_rank = [], []
        for rank in range(world):
            mine = set()
            for worker in range(max(1, workers)):
                rows = assign_rows_by_shard(rows_per_shard, rank, world, worker, workers, epoch, seed=3)
                assert np.array_equal(rows, split_rows("shards", rows_per_shard, rank, world, worker, workers,
                                                       epoch, seed=3))
                seen += rows.tolist()
                mine |= set((np.searchsorted(starts, rows, side="right") - 1).tolist())
            shards_of_rank.append(mine)
        assert sorted(seen) == list(range(total))
        nonempty = sum(1 for r in rows_per_shard if r)
        if nonempty >= world:  # enough shards: no two ranks touch the same one
            assert all(not a & b for i, a in enumerate(shards_of_rank) for b in shards_of_rank[i + 1:])


def test_shard_split_keeps_owners_and_reshuffles_each_epoch():
    rps = [6] * 8
    starts = np.arange(0, 54, 6)
    e0 = assign_rows_by_shard(rps, 1, 2, 0, 0, epoch=0, seed=9)
    e1 = assign_rows_by_shard(rps, 1, 2, 0, 0, epoch=1, seed=9)
    own = lambda rows: set((np.searchsorted(starts, rows, side="right") - 1).tolist())  # noqa: E731
    assert own(e0) == own(e1) and not np.array_equal(e0, e1)
    # a reader moves through its shards one after another
    shard_seq = np.searchsorted(starts, e0, side="right") - 1
    assert (np.diff(shard_seq) != 0).sum() == len(own(e0)) - 1
    assert np.array_equal(assign_rows_by_shard(rps, 0, 1, 0, 0, 0, 9, shuffle=False), np.arange(48))


def _shards_of(rows_per_shard, rows) -> set[int]:
    starts = np.concatenate([[0], np.cumsum(rows_per_shard)])
    return set((np.searchsorted(starts, rows, side="right") - 1).tolist())


@pytest.mark.parametrize("rows_per_shard", [[6] * 8, [5, 0, 7, 3, 9, 4, 6, 2, 8, 1, 3], [9, 9, 9]])
@pytest.mark.parametrize("world,workers", [(2, 2), (3, 4), (2, 3)])
def test_evaluation_reads_exactly_the_shards_its_rank_trains_on(rows_per_shard, world, workers):
    """Evaluation reads with no DataLoader workers; training with some: same shards per rank."""
    for rank in range(world):
        train = set()
        for worker in range(workers):
            train |= _shards_of(rows_per_shard, assign_rows_by_shard(rows_per_shard, rank, world, worker, workers,
                                                                     0, seed=5))
        evaluation = assign_rows_by_shard(rows_per_shard, rank, world, 0, 0, 0, seed=5, shuffle=False)
        assert _shards_of(rows_per_shard, evaluation) == train


@pytest.mark.parametrize("world,workers", [(5, 0), (7, 2), (8, 1)])
def test_ranks_beyond_the_shard_count_each_download_one_shard_and_split_its_rows(world, workers):
    rps = [40, 0, 25, 33]  # three non-empty shards, more ranks than that
    seen = []
    for rank in range(world):
        touched = set()
        for worker in range(max(1, workers)):
            rows = assign_rows_by_shard(rps, rank, world, worker, workers, epoch=1, seed=2)
            touched |= _shards_of(rps, rows)
            seen += rows.tolist()
        assert len(touched) == 1  # never every shard
    assert sorted(seen) == list(range(sum(rps)))


from schemas.split import resume_rows, unread_rows  # noqa: E402


@pytest.mark.parametrize("split", ["rows", "shards"])
@pytest.mark.parametrize("old,new", [((3, 2), (2, 0)), ((2, 0), (5, 3)), ((4, 1), (4, 2)), ((1, 0), (3, 1))])
def test_a_run_resumed_on_another_number_of_ranks_reads_every_row_of_its_epochs_once(split, old, new):
    rps = [5, 0, 7, 3, 9, 4, 6, 2, 8, 1, 3, 11]
    total = sum(rps)
    (ow, onw), (nw_, nnw) = old, new
    rng = np.random.default_rng(sum(old) * 10 + sum(new))
    positions = []  # old readers: some a little into epoch 3, some still finishing epoch 2
    for i in range(num_readers(ow, onw)):
        mine = split_rows(split, rps, i // max(1, onw), ow, i % max(1, onw), onw, 2, seed=4)
        positions.append((3, int(rng.integers(0, 3))) if i == 0 or rng.random() < 0.4
                         else (2, int(rng.integers(0, len(mine) + 1))))
    read = {2: [], 3: []}
    for i, (e, c) in enumerate(positions):
        for epoch in (2, 3):
            rows = split_rows(split, rps, i // max(1, onw), ow, i % max(1, onw), onw, epoch, seed=4)
            read[epoch] += (rows.tolist() if e > epoch else rows[:c].tolist() if e == epoch else [])
    unread = unread_rows(split, rps, ow, onw, positions, seed=4)
    new_rows, next_epoch = [], None
    for rank in range(nw_):
        for worker in range(max(1, nnw)):
            rows, next_epoch = resume_rows(unread, rank, nw_, worker, nnw)
            new_rows += rows.tolist()
    assert next_epoch == 4
    left = {e: unread.get(e, np.zeros(0, np.int64)).tolist() for e in (2, 3)}
    for epoch in (2, 3):  # what the old readers read and what is left: every row once
        assert sorted(read[epoch] + left[epoch]) == list(range(total))
    assert sorted(new_rows) == sorted(left[2] + left[3])  # the new readers read each unread row once
    sizes = [len(resume_rows(unread, r, nw_, w, nnw)[0]) for r in range(nw_) for w in range(max(1, nnw))]
    assert max(sizes) - min(sizes) <= len(unread)  # balanced: within one row per half-read epoch
