"""Episode tables read in pieces: ranges that start or end inside a row group (the reader goes on
from where the previous range stopped), fixed-size list columns, nulls next to good rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from converters.rl.sources.table import TableSource


def _table(lengths: list[int], seed: int = 0) -> tuple[pa.Table, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    obs = [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate(obs)
    table = pa.table({
        "episode_id": pa.array(np.arange(100, 100 + len(lengths))),
        "observations": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 3)),
        "actions": pa.ListArray.from_arrays(offsets, pa.array(np.arange(len(flat)) % 4)),
        "rewards": pa.ListArray.from_arrays(offsets, pa.array(flat[:, 0].astype(np.float64))),
    })
    return table, obs


def test_ranges_inside_row_groups_read_the_right_rows(tmp_path):
    lengths = [5, 1, 7, 3, 2, 6, 4, 1, 8, 2, 3]
    table, obs = _table(lengths)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    src = TableSource(str(tmp_path / "t.parquet"))
    # consecutive ranges (the reader resumes), then jumps back and forward (it starts afresh)
    for start, stop in [(0, 3), (3, 6), (6, 7), (7, 11), (1, 2), (5, 10), (10, 11), (2, 9), (0, 11)]:
        eps = list(src.episodes(start, stop))
        assert [e.episode_id for e in eps] == list(range(100 + start, 100 + stop))
        for i, e in zip(range(start, stop), eps):
            assert e.error is None
            np.testing.assert_array_equal(e.observations["observations"], obs[i])
            np.testing.assert_array_equal(e.rewards, obs[i][:, 0].astype(np.float64))
            assert e.actions["actions"].shape == (lengths[i],)


def test_abandoned_read_does_not_skip_rows(tmp_path):
    table, obs = _table([2] * 10)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=8)
    src = TableSource(str(tmp_path / "t.parquet"))
    it = src.episodes(0, 6)
    next(it), next(it)
    it.close()  # stopped after 2 of 6 episodes: the next read must not continue from row 6
    assert [e.episode_id for e in src.episodes(2, 5)] == [102, 103, 104]


def test_fixed_size_episode_columns_and_a_null_row(tmp_path):
    obs = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(np.arange(24, dtype=np.float32)), 4), 3)  # 2 rows x 3 steps x 4
    act = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.int64)), 3)
    rew = pa.array([[1.0, 2.0, 3.0], None], pa.list_(pa.float64()))
    pq.write_table(pa.table({"observations": obs, "actions": act, "rewards": rew}), tmp_path / "f.parquet")
    src = TableSource(str(tmp_path / "f.parquet"))
    obs_fields, act_fields = src.fields()
    assert (obs_fields["observations"].kind, obs_fields["observations"].shape) == ("continuous", (4,))
    assert act_fields["actions"].kind == "discrete"
    good, bad = src.episodes(0, 2)
    assert good.observations["observations"].shape == (3, 4) and good.rewards.tolist() == [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(good.actions["actions"], [0, 1, 2])
    assert bad.error == "column 'rewards': missing (null)"


def test_sources_keep_no_file_open(tmp_path):
    """A dataset of thousands of Parquet files must not run out of file descriptors."""
    import os
    import pytest
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    table, _ = _table([3] * 6)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    before = len(os.listdir("/proc/self/fd"))
    sources = [TableSource(str(tmp_path / "t.parquet")) for _ in range(200)]
    for src in sources:
        assert [e.episode_id for e in src.episodes(1, 3)] == [101, 102]  # ends inside a row group
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # at most the one reader left to resume
