"""--on-error skip drops the bad record alone and lists it by its own id; an unreadable input is a
skipped input. Hostile RL and text inputs are one-line errors naming file, record and field."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.rl_data import make_minari, rollouts
from test_captions import shard_rows, tokenize


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield tmp_path


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_a_minari_episode_missing_its_actions_is_skipped_alone(minari_root, capsys):
    env = gym.make("CartPole-v1")
    d = make_minari("cartpole/holey-v0", env, rollouts(env, 10, 20))
    with h5py.File(d / "data" / "main_data.hdf5", "a") as f:
        del f["episode_3/actions"]
    out = minari_root / "out"
    code, err = tokenize(["rl", str(d), "--out", str(out), "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(out)] == [f"cartpole/holey-v0/episode_{i}" for i in range(10) if i != 3]
    [skipped] = _manifest(out)["skipped"]
    assert skipped["source"] == "cartpole/holey-v0/episode_3"
    assert "episode_3" in skipped["reason"] and "actions" in skipped["reason"]
    code, err = tokenize(["rl", str(d), "--out", str(minari_root / "fail"), "--no-progress"], capsys)
    assert code == 1 and err.count("\n") == 1 and "episode_3" in err and "actions" in err


def _episodes(path, rewards):
    pq.write_table(pa.table({"continuous_observations": [[[0.1, 0.2], [0.3, 0.4]]] * len(rewards),
                             "discrete_actions": [[0, 1]] * len(rewards), "rewards": rewards}), path)
    return path


def test_string_rewards_are_one_line(tmp_path, capsys):
    p = _episodes(tmp_path / "s.parquet", [["a", "b"]])
    code, err = tokenize(["rl", str(p), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "s.parquet: column 'rewards' is list<element: string>, expected a list of numbers" in err


def test_an_unreadable_rl_input_is_a_skipped_input(tmp_path, capsys):
    good = _episodes(tmp_path / "good.parquet", [[1.0, 2.0]] * 3)
    (tmp_path / "broken.hdf5").write_bytes(b"not hdf5")
    argv = ["rl", str(good), str(tmp_path / "broken.hdf5"), "--no-progress"]
    code, err = tokenize(argv + ["--out", str(tmp_path / "fail")], capsys)
    assert code == 1 and "broken.hdf5: not a readable HDF5 file" in err
    code, err = tokenize(argv + ["--out", str(tmp_path / "skip"), "--on-error", "skip"], capsys)
    assert code == 0, err
    assert len(shard_rows(tmp_path / "skip")) == 3
    [skipped] = _manifest(tmp_path / "skip")["skipped"]
    assert skipped["source"] == "broken.hdf5-unreadable" and "not a readable HDF5 file" in skipped["reason"]


def test_text_garbage_parquet_and_deep_json_are_one_line_or_skipped(tmp_path, sp_model_path, capsys):
    (tmp_path / "g.parquet").write_bytes(b"PAR1 garbage")
    (tmp_path / "d.jsonl").write_text("[" * 100_000 + "]" * 100_000 + '\n{"text": "fine words"}\n')
    argv = ["text", str(tmp_path / "g.parquet"), str(tmp_path / "d.jsonl"), "--text-tokenizer", sp_model_path,
            "--no-progress"]
    code, err = tokenize(argv + ["--out", str(tmp_path / "fail")], capsys)
    assert code == 1 and err.count("\n") == 1 and "g.parquet: not a readable Parquet file" in err
    code, err = tokenize(argv + ["--out", str(tmp_path / "skip"), "--on-error", "skip"], capsys)
    assert code == 0, err
    skipped = _manifest(tmp_path / "skip")["skipped"]
    assert [s["source"] for s in skipped] == [str(tmp_path / "g.parquet"), f"{tmp_path / 'd.jsonl'}@0"]
    assert "line 1: JSON nested too deeply" in skipped[1]["reason"]
    assert len(shard_rows(tmp_path / "skip")) == 1


def test_an_unreadable_caption_input_is_a_skipped_input(tmp_path, sp_model_path, capsys):
    from test_captions import encode, photo, write_tar
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "k", "png": encode(photo(16, 16, 0), "PNG"), "txt": "hi"}])
    (tmp_path / "b.parquet").write_bytes(b"PAR1 garbage")
    argv = ["captions", str(tar), str(tmp_path / "b.parquet"), "--text-tokenizer", sp_model_path, "--no-progress",
            "--image-size", "16"]
    code, err = tokenize(argv + ["--out", str(tmp_path / "skip"), "--on-error", "skip"], capsys)
    assert code == 0, err
    [skipped] = _manifest(tmp_path / "skip")["skipped"]
    assert skipped["source"] == "b.parquet" and "not a readable Parquet file" in skipped["reason"]


def test_an_episode_with_an_unreadable_image_is_skipped_alone(tmp_path, capsys):
    from test_captions import encode
    import numpy as np
    frame = encode(np.full((16, 16), 7, np.uint8), "PNG")
    p = tmp_path / "img.parquet"
    pq.write_table(pa.table({"image_observations": [[frame, frame], [frame, b"garbage"], [frame, frame]],
                             "discrete_actions": [[0, 1]] * 3, "rewards": [[1.0, 2.0]] * 3}), p)
    out = tmp_path / "out"
    code, err = tokenize(["rl", str(p), "--out", str(out), "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(out)] == ["img/episode_0", "img/episode_2"]
    [skipped] = _manifest(out)["skipped"]
    assert skipped["source"] == "img/episode_1" and "image of step 1 is not readable" in skipped["reason"]


def test_a_string_column_with_bytes_that_are_not_utf8_skips_only_that_row(tmp_path, sp_model_path, capsys):
    arr = pa.array([b"good words", b"bad \xff\xfe bytes", b"more words"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": arr}), tmp_path / "u.parquet")
    out = tmp_path / "out"
    code, err = tokenize(["text", str(tmp_path / "u.parquet"), "--text-tokenizer", sp_model_path, "--out", str(out),
                          "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(out)] == [f"{tmp_path / 'u.parquet'}#0", f"{tmp_path / 'u.parquet'}#2"]
    [skipped] = _manifest(out)["skipped"]
    assert skipped["reason"] == f"{tmp_path / 'u.parquet'}: row 1: field 'text' is not UTF-8 text (invalid start byte)"


def test_an_episode_whose_text_is_not_utf8_is_skipped_alone(tmp_path, sp_model_path, capsys):
    words = pa.array([b"go", b"go", b"go", b"\xff", b"left", b"right"], pa.binary()).view(pa.string())
    text = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6], pa.int32()), words)
    pq.write_table(pa.table({"text_observations": text, "discrete_actions": [[0, 1]] * 3,
                             "rewards": [[1.0, 2.0]] * 3}), tmp_path / "t.parquet")
    out = tmp_path / "out"
    code, err = tokenize(["rl", str(tmp_path / "t.parquet"), "--text-tokenizer", sp_model_path, "--out", str(out),
                          "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(out)] == ["t/episode_0", "t/episode_2"]
    [skipped] = _manifest(out)["skipped"]
    assert skipped["source"] == "t/episode_1" and "text that is not UTF-8" in skipped["reason"]


def test_a_damaged_chunk_of_a_flat_hdf5_file_skips_only_its_episodes(tmp_path, capsys):
    import numpy as np
    steps, length = 40, 10  # 4 episodes of 10 steps, observations stored in gzip chunks of 10 steps
    path = tmp_path / "d4rl.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=np.random.default_rng(0).normal(size=(steps, 3)).astype(np.float32),
                         chunks=(length, 3), compression="gzip")
        f["actions"] = np.zeros(steps, np.int64)
        f["rewards"] = np.ones(steps, np.float32)
        f["terminals"] = np.arange(steps) % length == length - 1
        f["timeouts"] = np.zeros(steps, bool)
        info = f["observations"].id.get_chunk_info(2)  # steps 20-29: episode 2
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)
    out = tmp_path / "out"
    code, err = tokenize(["rl", str(path), "--out", str(out), "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(out)] == ["d4rl/episode_0", "d4rl/episode_1", "d4rl/episode_3"]
    [skipped] = _manifest(out)["skipped"]
    assert skipped["source"] == "d4rl/episode_2" and "unreadable HDF5 data at steps 20-30" in skipped["reason"]
