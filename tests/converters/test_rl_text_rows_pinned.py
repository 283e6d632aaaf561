"""RL and text rows of fixed inputs in every source format, pinned by sha256 of every column.

The converters, the writer and the tokenizer_kit rules were reorganised into smaller modules; these
hashes were taken with the code before that, so any change in the rows a converter builds (ids,
masks, positions, patches, step starts, per-row scalars) shows up here. RL actions stay inside
[-1, 1] and images are plain RGB, so rescaling from declared bounds and frame stacks, which came
later, do not apply.
"""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
from tests.support.row_hash import converter_rows_digest, shard_rows_digest, update_with_row
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.cli import build_parser, main
from converters.commands.convert import make_converter

from tests.support.rl_data import DictObs, MissionObs, PixelObs, episode_table, make_minari, rollouts, write_d4rl


def _converter(kind: str, argv: list[str]):
    """The converter exactly as `gato-tokenize KIND ...` builds it (options parsed by its CLI)."""
    args = build_parser().parse_args([kind, *argv, "--out", "unused", "--no-progress"])
    return make_converter(args.options)  # tokenizer and layout from the options, as the command loads them


def _rows_sha256(converter, root) -> str:
    """One digest over every row in unit order: its source id (paths relative to `root`), scalars
    and every column's dtype, shape and bytes. Unit keys are left out: they hash the input's path."""
    h = hashlib.sha256()
    for unit in converter.work_units():
        for r in converter.convert_unit(unit):
            assert r.skip_reason is None, r.skip_reason
            h.update(repr((r.source_id.replace(str(root), ""), r.task, r.num_steps, r.episode_return)).encode())
            update_with_row(h, r.row)
    return h.hexdigest()


# --- RL inputs: Minari HDF5 datasets, a D4RL-style flat HDF5 file, Parquet episode tables ---------


def _rl_minari_discrete(tmp_path, sp):
    env = DictObs(gym.make("CartPole-v1"))
    return [str(make_minari("pin/cartdict-v0", env, rollouts(env, 4, 30, seed=1)))], ["--steps-per-unit", "50"]


def _rl_minari_pixels(tmp_path, sp):
    env = PixelObs(gym.make("CartPole-v1"))
    return [str(make_minari("pin/cartpix-v0", env, rollouts(env, 3, 12, seed=2)))], []


def _rl_minari_continuous(tmp_path, sp):
    env = gym.make("MountainCarContinuous-v0")  # actions declared in [-1, 1]
    return [str(make_minari("pin/car-v0", env, rollouts(env, 3, 40, seed=3)))], ["--mu-law", "obs=off"]


def _rl_d4rl(tmp_path, sp):
    env = gym.make("MountainCarContinuous-v0")
    eps = rollouts(env, 4, 25, seed=4)
    for ep in eps:
        ep["actions"] = np.asarray(ep["actions"], np.float32)
    return [str(write_d4rl(tmp_path / "car.hdf5", eps))], ["--episodes-per-unit", "3"]


def _rl_parquet(tmp_path, sp):
    env = gym.make("CartPole-v1")
    pq.write_table(episode_table(rollouts(env, 5, 20, seed=5)), tmp_path / "cart.parquet")
    return [str(tmp_path / "cart.parquet")], ["--episodes-per-unit", "2"]


def _rl_parquet_text(tmp_path, sp):
    env = MissionObs(gym.make("CartPole-v1"))
    eps = rollouts(env, 3, 15, seed=6)
    rng = np.random.default_rng(6)
    table = pa.table({
        "text_observations": pa.array([list(ep["observations"]["mission"][:-1]) for ep in eps]),
        "continuous_observations": pa.array([ep["observations"]["state"][:-1].tolist() for ep in eps]),
        "continuous_actions": pa.array([rng.uniform(-1, 1, (len(ep["rewards"]), 2)).astype(np.float32).tolist()
                                        for ep in eps]),
        "rewards": pa.array([ep["rewards"].tolist() for ep in eps])})
    pq.write_table(table, tmp_path / "mission.parquet")
    # every repeated mission a target, as all rows were before that became a flag (the default now
    # trains on a repeated text's first occurrence only: tests/tokenizer_kit/test_repeated_text_loss.py)
    return [str(tmp_path / "mission.parquet")], ["--text-tokenizer", sp, "--repeated-text-loss"]


RL_CASES = {"minari-discrete": _rl_minari_discrete, "minari-pixels": _rl_minari_pixels,
            "minari-continuous": _rl_minari_continuous, "d4rl": _rl_d4rl, "parquet": _rl_parquet,
            "parquet-text": _rl_parquet_text}

RL_PINNED = {
    "minari-discrete": "1e890668be47766f590f4f5276d877d48983be5a30d7b06f8b04ddefc71ca3b8",
    "minari-pixels": "a16beeade51ef8f098a267410d0c284c07519283a1cb757a8614ae535bdf8cc0",
    "minari-continuous": "28d811ca91dbfcb93fb3afae2f2d3e5e9eadc6019c46176d2e51eb5acdd9a42f",
    "d4rl": "3d98c112844eda9a137fc96c076951bc2cd48d6a37b523bb9203c1a34ca675a9",
    "parquet": "817cbadb1b44810eb28bf43444a7b110753592e116ce90e84226bfabbf81dc74",
    "parquet-text": "fe89635635e11fe1bff26f6f09c9f035f07e83b354a754eccf8f09bec74dfe44",
}


@pytest.mark.parametrize("name", sorted(RL_CASES))
def test_rl_rows_are_unchanged(tmp_path, monkeypatch, sp_model_path, name):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    inputs, options = RL_CASES[name](tmp_path, sp_model_path)
    assert _rows_sha256(_converter("rl", [*inputs, *options]), tmp_path) == RL_PINNED[name]


@pytest.mark.parametrize("name", ["minari-discrete", "minari-pixels", "parquet-text"])
def test_rl_rows_read_back_from_shards_unchanged(tmp_path, monkeypatch, sp_model_path, name):
    """Through the writer (version 2: uint16 ids with the patch-slot sentinel) and back through
    the readers, every row is the converter's, byte for byte, in every column and dtype."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    inputs, options = RL_CASES[name](tmp_path, sp_model_path)
    expected = converter_rows_digest(_converter("rl", [*inputs, *options]))
    assert main(["rl", *inputs, *options, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    shard = next((tmp_path / "out").glob("shard-*.arrow"))
    assert pa.ipc.open_stream(pa.memory_map(str(shard))).schema.field("tokens").type == pa.list_(pa.uint16())
    assert shard_rows_digest(tmp_path / "out") == expected


# --- text inputs: .txt per file and per blank-line block, .jsonl, Parquet -------------------------


def _documents(n: int, seed: int) -> list[str]:
    words = "the agent moves left right and picks a red ball box key door opens robot arm grasps cube".split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, rng.integers(3, 40))).capitalize() + "." for _ in range(n)]


def _text_files(tmp_path, sp):
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text("\n".join(_documents(2, i)) + "\n")
    return [str(tmp_path / f"doc{i}.txt") for i in range(3)], ["--split", "file"]


def _text_blocks(tmp_path, sp):
    (tmp_path / "blocks.txt").write_text("\n\n".join(_documents(40, 7)) + "\n\n\n" + "tail é ü.\n")
    return [str(tmp_path / "blocks.txt")], ["--split", "blank-line", "--unit-size", "1024"]


def _text_jsonl(tmp_path, sp):
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i, d in enumerate(_documents(30, 8)):
            f.write(json.dumps({"body": d, "id": i}) + "\n")
    return [str(tmp_path / "docs.jsonl")], ["--text-field", "body", "--unit-size", "700"]


def _text_parquet(tmp_path, sp):
    pq.write_table(pa.table({"text": _documents(25, 9)}), tmp_path / "docs.parquet", row_group_size=10)
    return [str(tmp_path / "docs.parquet")], []


TEXT_CASES = {"txt-file": _text_files, "txt-blank-line": _text_blocks, "jsonl": _text_jsonl,
              "parquet": _text_parquet}

TEXT_PINNED = {
    "txt-file": "28caae2fb5965cfea82042b1fbc794533fb8d51d55696efae926b34381ddbdde",
    "txt-blank-line": "f57dbeb3311bfa85a0c7e22c9117143c9c5c813c061630ad7a3d6602e79b1e9d",
    "jsonl": "6b30fa22686bab35981264fde0f472bf019f830dcbd84557a9946a44817bdb61",
    "parquet": "f52258ebc06c76f2c8ae3386ffb0bf528fa97801f24107314102419f71539409",
}


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_text_rows_are_unchanged(tmp_path, sp_model_path, name):
    inputs, options = TEXT_CASES[name](tmp_path, sp_model_path)
    digest = _rows_sha256(_converter("text", [*inputs, *options, "--text-tokenizer", sp_model_path]), tmp_path)
    assert digest == TEXT_PINNED[name]
