"""RL tables from a hub with values the converter cannot use (issue 20): a Parquet `rewards` column
with one number per episode, and observations near ±1e308 whose statistics overflow, are each one
line naming file, record and field, with no numpy warning lines."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.cli_outcome import check_message, run_cli


def test_one_reward_per_episode_is_one_line(tmp_path):
    src = tmp_path / "scalar.parquet"
    pq.write_table(pa.table({"observations": [[0.1, 0.2], [0.3]], "actions": [[1, 0], [1]], "rewards": [1.0, 2.0]}),
                   src)
    o = run_cli(["rl", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    check_message(o)
    assert o.code == 1 and "column 'rewards'" in o.err and "one value per episode" in o.err, str(o)


def test_values_near_the_float64_limit_are_one_line_without_warnings(tmp_path):
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"observations": [[1e308, -1e308], [0.3]], "actions": [[0.5, 0.1], [0.2]],
                             "rewards": [[1.0, 1.0], [2.0]]}), src)
    o = run_cli(["rl", str(src), "--out", str(tmp_path / "out"), "--no-progress"], PYTHONWARNINGS="default")
    check_message(o)
    assert o.code == 1 and "episode_0: field 'observations'" in o.err and "overflows" in o.err, str(o)
    assert "RuntimeWarning" not in o.err
    # with --on-error skip the other episode is kept
    ok = run_cli(["rl", str(src), "--out", str(tmp_path / "out2"), "--no-progress", "--on-error", "skip"],
                 PYTHONWARNINGS="default")
    assert ok.code == 0 and "RuntimeWarning" not in ok.err, str(ok)
