"""LeRobot datasets (v3.0 and v2.1 folders, written to the published layout with pyarrow and
PyAV: tests/support/robot_data.py says why not with lerobot itself) -> rows: two cameras (AV1 and H.264),
a state vector, language tasks, several episodes per video file. Each frame in a row is the
frame the video decoder gives at that episode's timestamp; actions come back within one bin of
the bounds meta/stats.json declares; every bad input is one line naming file, episode and frame."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.cli import main as tokenize_main
from converters.rl.sources.lerobot import LeRobotSource
from converters.rl.sources.video import decode_all
from tests.support.robot_data import (ACTION, CAMERAS, FPS, TASKS, make_episodes, write_lerobot_v3, write_lerobot_v21)
from schemas.manifest import Manifest
from schemas.reader import ShardDir
from schemas.shard import row_from_table
from tokenizer_kit.episode_decode import decode_episode
from tokenizer_kit.sequence import build_episode
from tokenizer_kit.text import TextTokenizer

LENGTHS = [7, 5, 9, 6]


def error_lines(text: str) -> list[str]:
    """stderr without the progress bar: the error lines."""
    assert "Traceback" not in text
    return [line for line in text.splitlines() if "error" in line]


def tokenize(*argv) -> int:
    return tokenize_main([str(a) for a in argv])


def rows(out: Path):
    sd = ShardDir.open(out)
    return [row_from_table(sd.table(i), k) for i in range(len(sd.shards)) for k in range(sd.table(i).num_rows)]


@pytest.fixture(scope="module")
def episodes():
    return make_episodes(LENGTHS, seed=1)


@pytest.fixture(scope="module")
def v3(tmp_path_factory, episodes):
    return write_lerobot_v3(tmp_path_factory.mktemp("lerobot") / "so100_pick", episodes)


@pytest.fixture(scope="module")
def v21(tmp_path_factory, episodes):
    return write_lerobot_v21(tmp_path_factory.mktemp("lerobot21") / "so100_pick_v21", episodes[:3])


def decoder_frames(root: Path, v3: bool, ep: int, starts: np.ndarray) -> dict[str, np.ndarray]:
    """The frames PyAV gives at each of the episode's timestamps, found in the whole decoded file."""
    out = {}
    for cam in CAMERAS:
        path = root / "videos" / cam / "chunk-000" / "file-000.mp4" if v3 else \
            root / "videos" / "chunk-000" / cam / f"episode_{ep:06d}.mp4"
        times, frames = decode_all(str(path))
        offset = starts[ep] / FPS if v3 else 0.0
        want = offset + np.arange(LENGTHS[ep]) / FPS
        idx = [int(np.argmin(np.abs(times - t))) for t in want]
        assert np.abs(times[idx] - want).max() < 1e-4
        out[cam] = frames[idx]
    return out


@pytest.mark.parametrize("version", ["v3", "v21"])
def test_rows_hold_the_decoders_frames_and_actions_within_one_bin(version, v3, v21, episodes, tmp_path,
                                                                   sp_model_path):
    root = v3 if version == "v3" else v21
    out = tmp_path / "out"
    assert tokenize("rl", root, "--out", out, "--text-tokenizer", sp_model_path, "--episodes-per-unit", 2) == 0
    m = Manifest.read(out)
    spec, layout = m.spec, m.vocab_layout
    tok = TextTokenizer(sp_model_path)
    names = {f.name: f for f in spec.observations}
    assert set(names) == {"obs/images.top", "obs/images.wrist", "obs/state", "obs/task"}
    assert names["obs/task"].kind == "text" and names["obs/images.top"].kind == "image"
    # action bounds: the dataset's statistics (min/max of every dimension), in the manifest's spec
    act = spec.actions[0]
    n = len(LENGTHS) if version == "v3" else 3
    stats = np.concatenate([e.action for e in episodes[:n]])
    np.testing.assert_allclose(act.bounds[0], stats.min(0), rtol=1e-6)
    np.testing.assert_allclose(act.bounds[1], stats.max(0), rtol=1e-6)
    # no rewards in the dataset: no return recorded (not a return of 0)
    r = m.typed_stats.episode_return
    assert r is None or (r.count == 0 and r.max is None)
    sd = ShardDir.open(out)
    assert all(np.isnan(x) for i in range(len(sd.shards)) for x in sd.table(i).column("episode_return").to_pylist())
    got = rows(out)
    assert len(got) == n
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    for ep, row in enumerate(got):
        e = episodes[ep]
        frames = decoder_frames(root, version == "v3", ep, starts)
        expected = build_episode({"obs/images.top": frames["observation.images.top"],
                                  "obs/images.wrist": frames["observation.images.wrist"],
                                  "obs/state": e.state, "obs/task": [TASKS[e.task_index]] * e.length},
                                 {"action": e.action}, spec, layout, tok)
        np.testing.assert_array_equal(row.tokens, expected.tokens)
        np.testing.assert_array_equal(row.patches, expected.patches)
        decoded = decode_episode(row, spec, layout, tok)
        width = (np.asarray(act.bounds[1]) - np.asarray(act.bounds[0])) / layout.num_bins
        back = np.stack([a["action"] for _, a in decoded]).reshape(-1, ACTION)
        assert (np.abs(back - e.action) <= width + 1e-6).all()
        assert decoded[0][0]["obs/task"] == TASKS[e.task_index]


def test_source_reads_episodes_of_shared_files_by_timestamp(v3):
    src = LeRobotSource(str(v3))
    eps = list(src.episodes(1, 3))  # the middle of both the video file and the data files
    assert [e.episode_id for e in eps] == [1, 2] and all(e.error is None for e in eps)
    assert eps[1].observations["obs/images.top"].shape == (LENGTHS[2], 48, 64, 3)
    assert eps[0].rewards is None


def test_rewards_give_returns(tmp_path, sp_model_path):
    eps = make_episodes([4, 3], seed=2, rewards=True)
    root = write_lerobot_v3(tmp_path / "with_rewards", eps, data_files=1)
    out = tmp_path / "out"
    assert tokenize("rl", root, "--out", out, "--text-tokenizer", sp_model_path) == 0
    r = Manifest.read(out).typed_stats.episode_return
    assert r is not None and r.max == pytest.approx(max(float(e.reward.sum()) for e in eps), rel=1e-5)


def test_two_workers_give_the_same_rows(v3, tmp_path, sp_model_path):
    base = ("rl", v3, "--text-tokenizer", sp_model_path, "--episodes-per-unit", 1)
    assert tokenize(*base, "--out", tmp_path / "one") == 0
    assert tokenize(*base, "--out", tmp_path / "two", "--workers", 2) == 0
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(one) == len(LENGTHS) and all(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.patches, b.patches)
                                            for a, b in zip(one, two))


@pytest.mark.slow
def test_ray_engine_and_a_dataset_at_a_url(v3, tmp_path, sp_model_path, s3_server, monkeypatch):
    import s3fs
    from tests.support.s3 import make_bucket
    url = make_bucket("robot-data") + "/so100_pick"
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(v3), url.removeprefix("s3://"), recursive=True)
    monkeypatch.setenv("GATO_KIT_INPUT_CACHE", str(tmp_path / "cache"))
    assert tokenize("rl", v3, "--text-tokenizer", sp_model_path, "--out", tmp_path / "local") == 0
    assert tokenize("rl", url, "--text-tokenizer", sp_model_path, "--out", tmp_path / "remote",
                    "--engine", "ray", "--workers", 2, "--episodes-per-unit", 2) == 0
    a, b = rows(tmp_path / "local"), rows(tmp_path / "remote")
    assert len(a) == len(b) == len(LENGTHS)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b))


# --- bad input: one line naming file, episode and frame; exit 1, or that episode alone skipped ---

def _copy(v3: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(v3, tmp_path / "ds"))


def _missing_video(root):
    (root / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4").unlink()
    return "videos/observation.images.wrist/chunk-000/file-000.mp4: episode 0: video file missing", None


def _truncated_mp4(root):
    p = root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    return "videos/observation.images.top/chunk-000/file-000.mp4: episode 0", None


def _undeclared_feature(root):
    p = root / "data" / "chunk-000" / "file-001.parquet"
    t = pq.read_table(p)
    pq.write_table(t.append_column("observation.extra", pa.array(np.zeros(t.num_rows, np.float32))), p)
    return "data/chunk-000/file-001.parquet: column 'observation.extra' is not a feature meta/info.json declares " \
           "(episode 2)", {0, 1}


def _episode_without_frames(root):
    p = root / "data" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(p)
    keep = pa.compute.not_equal(t.column("episode_index"), 1)
    pq.write_table(t.filter(keep), p)
    return "data/chunk-000/file-000.parquet: episode 1: no frames", {0, 2, 3}


def _wrong_frame_size(root):
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.images.top"]["shape"] = [96, 64, 3]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return "videos/observation.images.top/chunk-000/file-000.mp4: episode 0: frames are 48x64, the dataset " \
           "declares 96x64", None


CASES = {"missing_video": _missing_video, "wrong_frame_size": _wrong_frame_size, "truncated_mp4": _truncated_mp4,
         "undeclared_feature": _undeclared_feature, "episode_without_frames": _episode_without_frames}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_or_skipped_alone(case, v3, tmp_path, sp_model_path, capsys):
    root = _copy(v3, tmp_path)
    needle, survivors = CASES[case](root)
    capsys.readouterr()
    code = tokenize("rl", root, "--out", tmp_path / "fail", "--text-tokenizer", sp_model_path)
    err = error_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "fail" / "manifest.json").exists()
    code = tokenize("rl", root, "--out", tmp_path / "skip", "--text-tokenizer", sp_model_path,
                    "--on-error", "skip", "--episodes-per-unit", 1)
    err = error_lines(capsys.readouterr().err)
    if survivors is None:  # every episode lies in the damaged file: all skipped, none kept: exit 1, says why
        assert code == 1 and "kept no record" in err[-1] and f"all {len(LENGTHS)} records were skipped" in err[-1], err
        assert not (tmp_path / "skip" / "manifest.json").exists()
        return
    m = Manifest.read(tmp_path / "skip")
    kept = {int(s.source_id.rsplit("_", 1)[1]) for s in _sources(tmp_path / "skip")}
    assert code == 0 and kept == survivors
    assert all(needle.split(":")[0] in s.reason for s in m.skipped_records)


def _sources(out: Path):
    sd = ShardDir.open(out)

    class S:
        def __init__(self, sid):
            self.source_id = sid
    return [S(sid) for i in range(len(sd.shards)) for sid in sd.table(i).column("source_id").to_pylist()]


def test_missing_frame_names_its_frame(episodes, tmp_path, sp_model_path, capsys):
    # global frame 7 + 3 = episode 1's frame 3 is not in the top camera's video
    root = write_lerobot_v3(tmp_path / "gap", episodes, drop={"observation.images.top": (LENGTHS[0] + 3,)})
    capsys.readouterr()
    assert tokenize("rl", root, "--out", tmp_path / "fail", "--text-tokenizer", sp_model_path) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "file-000.mp4: episode 1, frame 3: no frame within 0.0001 s of 1.0000 s" in err[0], err
    assert tokenize("rl", root, "--out", tmp_path / "skip", "--text-tokenizer", sp_model_path, "--on-error", "skip",
                    "--episodes-per-unit", 1) == 0
    assert sorted(int(s.source_id.rsplit("_", 1)[1]) for s in _sources(tmp_path / "skip")) == [0, 2, 3]


def test_paths_from_info_json_stay_inside_the_folder(v3, tmp_path, sp_model_path, capsys):
    root = _copy(v3, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["data_path"] = "../../{chunk_index}/{file_index}.parquet"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert tokenize("rl", root, "--out", tmp_path / "o", "--text-tokenizer", sp_model_path) == 1
    assert "points outside the dataset folder" in capsys.readouterr().err


def test_a_unit_opens_each_video_file_once(v3, monkeypatch):
    """Four episodes in one MP4 per camera: two opens for the whole unit, not one per episode or frame."""
    import converters.rl.sources.lerobot as lerobot_mod
    opened = []

    class Counted(lerobot_mod.VideoFile):  # the real decoder, counted
        def __init__(self, path, tolerance_s, size):
            opened.append(Path(path).parent.parent.name)
            super().__init__(path, tolerance_s, size)

    monkeypatch.setattr(lerobot_mod, "VideoFile", Counted)
    eps = list(LeRobotSource(str(v3)).episodes(0, len(LENGTHS)))
    assert all(e.error is None for e in eps)
    assert sorted(opened) == sorted(CAMERAS)


def test_a_failed_run_resumes_with_the_units_it_finished(v3, tmp_path, sp_model_path):
    """Episodes 2 and 3's data file goes missing mid-dataset: the run stops at unit 2 keeping units
    0 and 1; with the file back, the re-run converts only the rest and ends with the same rows."""
    root = _copy(v3, tmp_path)
    data = root / "data" / "chunk-000" / "file-001.parquet"
    saved = data.read_bytes()
    data.unlink()
    out = tmp_path / "out"
    args = ("rl", root, "--out", out, "--text-tokenizer", sp_model_path, "--episodes-per-unit", 1)
    assert tokenize(*args) == 1
    assert len(list((out / ".work").glob("unit-*.json"))) == 2
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.arrow")}
    assert sorted(kept) == ["shard-00000-000.arrow", "shard-00001-000.arrow"]
    data.write_bytes(saved)
    assert tokenize(*args) == 0
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # units 0 and 1 not converted again
    assert tokenize("rl", root, "--out", tmp_path / "ref", "--text-tokenizer", sp_model_path,
                    "--episodes-per-unit", 1) == 0
    a, b = rows(out), rows(tmp_path / "ref")
    assert len(a) == len(LENGTHS) and all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b))
