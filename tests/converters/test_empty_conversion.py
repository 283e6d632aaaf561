"""A conversion that kept no record exits 1, says why and writes no manifest; verify reports a
directory whose manifest lists no rows as empty instead of ok (issue 20). Real CLI, real HDF5 file
written with h5py."""

from __future__ import annotations

import h5py
import numpy as np

import json
import subprocess
import sys

from tests.support.cli_outcome import check_message, env, run_cli


def _out_of_range_d4rl(path, episodes=3, steps=10):
    n = episodes * steps
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((n, 2), np.float32)
        f["actions"] = np.full((n, 1), 5.0, np.float32)  # outside [-1, 1], no bounds declared
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.tile(np.r_[np.zeros(steps - 1, bool), True], episodes)
    return path


def test_skipping_every_episode_exits_1_and_verify_calls_it_empty(tmp_path):
    src = _out_of_range_d4rl(tmp_path / "bad.hdf5")
    out = tmp_path / "out"
    o = run_cli(["rl", str(src), "--strict-ranges", "--on-error", "skip", "--out", str(out), "--no-progress"])
    check_message(o)
    assert o.code == 1 and "kept no record" in o.err and "all 3 records were skipped" in o.err, str(o)
    assert not (out / "manifest.json").exists()
    # a directory from elsewhere whose manifest lists nothing (as the old writer left): verify says empty
    good = tmp_path / "good"
    assert run_cli(["rl", str(_out_of_range_d4rl(tmp_path / "ok.hdf5")), "--out", str(good), "--no-progress"]).code == 0
    m = json.loads((good / "manifest.json").read_text())
    for s in m["shards"]:
        (good / s["name"]).unlink()
    m["shards"], m["skipped"] = [], [{"source": "x#0", "reason": "out of range"}]
    (good / "manifest.json").write_text(json.dumps(m))
    v = subprocess.run([sys.executable, "-m", "converters.cli", "verify", str(good)], capture_output=True, text=True,
                       env=env(), timeout=120)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stderr
    assert "empty: the manifest lists 0 shards and 0 rows (1 records skipped" in v.stdout + v.stderr


def test_a_conversion_that_keeps_records_still_exits_0(tmp_path):
    src = _out_of_range_d4rl(tmp_path / "ok.hdf5")
    o = run_cli(["rl", str(src), "--on-error", "skip", "--out", str(tmp_path / "out"), "--no-progress"])
    assert o.code == 0, str(o)
    assert run_cli(["verify", str(tmp_path / "out")]).code == 0
