"""The task of a row comes from the dataset, not the file: the folder of a sharded table (the
jat-dataset's `<task>/train-0000k-of-0000N.parquet`, with `test-*` as another split), a saved HF
dataset's config name, a Minari id; `--task` still wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.cli import main as tokenize_main
from schemas.reader import ShardDir


def _episodes(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 6, n)
    return pa.table({"continuous_observations": [rng.normal(size=(t, 3)).astype(np.float32).tolist() for t in lengths],
                     "continuous_actions": [rng.uniform(-1, 1, (t, 2)).astype(np.float32).tolist() for t in lengths],
                     "rewards": [rng.normal(size=t).astype(np.float32).tolist() for t in lengths]})


def jat_task(root: Path, task: str, train_files: int, seed: int) -> Path:
    """A task folder as the jat-dataset publishes it: train shards and a test shard."""
    d = root / task
    d.mkdir(parents=True)
    for k in range(train_files):
        pq.write_table(_episodes(2, seed + k), d / f"train-{k:05d}-of-{train_files:05d}.parquet")
    pq.write_table(_episodes(3, seed + 99), d / "test-00000-of-00001.parquet")
    return d


def tasks_of(out: Path) -> dict[str, int]:
    sd = ShardDir.open(out)
    names = [t for i in range(len(sd.shards)) for t in sd.table(i).column("task").to_pylist()]
    return {t: names.count(t) for t in sorted(set(names))}


def convert(*argv) -> int:
    return tokenize_main(["rl", *map(str, argv), "--no-progress"])


def test_a_folder_of_train_shards_is_one_task_named_after_the_folder(tmp_path):
    a, b = jat_task(tmp_path, "mujoco-hopper", 3, 0), jat_task(tmp_path, "mujoco-walker", 1, 10)
    assert convert(a, b, "--out", tmp_path / "out") == 0
    # 3 files of one task are one task; two tasks whose files are both train-00000-of-0000N stay two
    assert tasks_of(tmp_path / "out") == {"mujoco-hopper": 6, "mujoco-walker": 2}


def test_the_test_split_is_read_with_split_test(tmp_path):
    a = jat_task(tmp_path, "mujoco-hopper", 2, 0)
    assert convert(a, "--out", tmp_path / "test", "--split", "test") == 0
    assert tasks_of(tmp_path / "test") == {"mujoco-hopper": 3}
    assert convert(a, "--out", tmp_path / "none", "--split", "validation") == 1


def test_task_option_still_wins(tmp_path):
    a = jat_task(tmp_path, "mujoco-hopper", 2, 0)
    assert convert(a, "--out", tmp_path / "out", "--task", "hopper") == 0
    assert tasks_of(tmp_path / "out") == {"hopper": 4}


def test_a_single_shard_file_names_its_folder_and_a_plain_file_itself(tmp_path):
    a = jat_task(tmp_path, "mujoco-hopper", 1, 0)
    assert convert(a / "train-00000-of-00001.parquet", "--out", tmp_path / "one") == 0
    assert tasks_of(tmp_path / "one") == {"mujoco-hopper": 2}
    pq.write_table(_episodes(2, 5), tmp_path / "hopper-expert.parquet")
    assert convert(tmp_path / "hopper-expert.parquet", "--out", tmp_path / "plain") == 0
    assert tasks_of(tmp_path / "plain") == {"hopper-expert": 2}


def test_a_saved_hf_split_is_named_by_its_config(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset(_episodes(2, 0), info=datasets.DatasetInfo(config_name="metaworld-reach"))
    ds.save_to_disk(str(tmp_path / "jat" / "train"))
    assert convert(tmp_path / "jat" / "train", "--out", tmp_path / "out") == 0
    assert tasks_of(tmp_path / "out") == {"metaworld-reach": 2}
    plain = datasets.Dataset(_episodes(2, 1))
    plain.save_to_disk(str(tmp_path / "babyai-goto" / "test"))
    assert convert(tmp_path / "babyai-goto" / "test", "--out", tmp_path / "out2") == 0
    assert tasks_of(tmp_path / "out2") == {"babyai-goto": 2}


def test_repeated_text_loss_flag_is_recorded_in_the_spec(tmp_path, sp_model_path):
    from schemas.manifest import Manifest
    table = pa.table({"text_observations": [["go to the ball"] * 4], "discrete_actions": [[0, 1, 2, 1]],
                      "rewards": [[0.0, 0.0, 0.0, 1.0]]})
    pq.write_table(table, tmp_path / "babyai.parquet")
    masks = {}
    for name, extra in (("default", []), ("kept", ["--repeated-text-loss"])):
        assert convert(tmp_path / "babyai.parquet", "--out", tmp_path / name, "--text-tokenizer", sp_model_path,
                       *extra) == 0
        spec = Manifest.read(tmp_path / name).spec
        assert spec.observations[0].repeat_loss is (name == "kept")
        sd = ShardDir.open(tmp_path / name)
        masks[name] = int(np.asarray(sd.table(0).column("loss_mask")[0].as_py()).sum())
    mission = masks["kept"] - 4  # the 4 action targets
    assert mission % 4 == 0 and masks["default"] == 4 + mission // 4  # one mission of four is a target
