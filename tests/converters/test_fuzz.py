"""Randomly corrupted tars, Parquet files, JSON lines, HDF5 episodes and shards, fed to every
gato-tokenize command as a subprocess: exit 0, 1 or 2 only, one line on failure, no traceback, and
nothing left in OUT but a complete result or resume state. Seeded and bounded: GATO_FUZZ_TRIALS
corruptions per input (default 3); a failure prints the seed and mutation to replay it."""

from __future__ import annotations

import os
import random
import shutil
import warnings

import gymnasium as gym
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.cli_outcome import check_message, check_out, run_cli
from tests.support.rl_data import make_minari, rollouts, write_d4rl
from test_captions import encode, photo, write_tar

pytestmark = pytest.mark.slow
TRIALS = int(os.environ.get("GATO_FUZZ_TRIALS", "3"))
SEED = int(os.environ.get("GATO_FUZZ_SEED", "1234"))


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corruption: flipped bytes, a truncation, a zeroed or random range, or inserted bytes."""
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "zero", "garbage", "insert"])
    if kind == "flip":
        n = rng.randint(1, 20)
        for _ in range(n):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip {n} bits"
    at = rng.randrange(len(b))
    if kind == "truncate":
        return bytes(b[:at]), f"truncate at {at}"
    n = rng.randint(1, 256)
    if kind == "zero":
        b[at:at + n] = bytes(len(b[at:at + n]))
        return bytes(b), f"zero {n} bytes at {at}"
    junk = bytes(rng.randrange(256) for _ in range(n))
    if kind == "garbage":
        b[at:at + n] = junk[:len(b[at:at + n])]
        return bytes(b), f"random {n} bytes at {at}"
    return bytes(b[:at] + junk + b[at:]), f"insert {n} bytes at {at}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sp_model_path):
    d = tmp_path_factory.mktemp("fuzz-inputs")
    samples = [{"__key__": f"k{i}", ("png" if i % 2 else "jpg"): encode(photo(24, 32, i), "PNG" if i % 2 else "JPEG"),
                "txt": f"a picture number {i}"} for i in range(4)]
    write_tar(d / "caps.tar", samples)
    pq.write_table(pa.table({"jpg": [encode(photo(20, 20, i), "PNG") for i in range(4)],
                             "caption": [f"robot {i}" for i in range(4)]}), d / "caps.parquet", row_group_size=2)
    (d / "docs.jsonl").write_text("".join(f'{{"text": "document {i} says hello to the world"}}\n' for i in range(20)))
    pq.write_table(pa.table({"text": [f"parquet document {i} with words" for i in range(12)]}), d / "docs.parquet",
                   row_group_size=4)
    pq.write_table(pa.table({"continuous_observations": [[[0.1 * i, 0.2], [0.3, 0.4], [0.5, 0.6]] for i in range(5)],
                             "discrete_actions": [[0, 1, 0]] * 5, "rewards": [[1.0, 0.5, 2.0]] * 5}),
                   d / "episodes.parquet", row_group_size=2)
    import datasets
    datasets.Dataset.from_dict({"text": [f"dataset row {i} speaks" for i in range(10)]}).save_to_disk(str(d / "docs-hf"))
    env = gym.make("CartPole-v1")
    write_d4rl(d / "cartpole.hdf5", rollouts(env, 4, 15))
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setenv("MINARI_DATASETS_PATH", str(d / "minari"))
        make_minari("cartpole/fuzz-v0", env, rollouts(env, 6, 15))
    shards = d / "shards"
    o = run_cli(["text", str(d / "docs.jsonl"), "--text-tokenizer", sp_model_path, "--out", str(shards),
                 "--no-progress", "--shard-size", "2KB"])
    assert o.code == 0, str(o)
    return d


CONVERT = {
    "caps.tar": ["captions", "--image-size", "32"],
    "caps.parquet": ["captions", "--image-size", "32"],
    "docs.jsonl": ["text"],
    "cartpole.hdf5": ["rl"],
    "docs.parquet": ["text"],
    "episodes.parquet": ["rl"],
}


@pytest.mark.parametrize("name", sorted(CONVERT))
def test_corrupted_inputs_to_converters(tmp_path, inputs, sp_model_path, name):
    rng = random.Random(f"{SEED}-{name}")
    original = (inputs / name).read_bytes()
    for trial in range(TRIALS):
        data, how = mutate(original, rng)
        src = tmp_path / f"t{trial}" / name
        src.parent.mkdir()
        src.write_bytes(data)
        out = tmp_path / f"t{trial}" / "out"
        argv = [CONVERT[name][0], str(src), *CONVERT[name][1:], "--out", str(out), "--no-progress"]
        if CONVERT[name][0] != "rl":
            argv += ["--text-tokenizer", sp_model_path]
        if trial % 2:
            argv += ["--on-error", "skip"]
        o = run_cli(argv)
        o.argv.append(f"  [seed {SEED}, {name}: {how}]")
        check_message(o)
        check_out(o, out)


def test_corrupted_shards_to_verify_and_inspect(tmp_path, inputs):
    rng = random.Random(f"{SEED}-shards")
    for trial in range(TRIALS):
        d = tmp_path / f"t{trial}"
        shutil.copytree(inputs / "shards", d)
        victim = rng.choice(sorted(p.name for p in d.iterdir() if p.is_file()))
        data, how = mutate((d / victim).read_bytes(), rng)
        (d / victim).write_bytes(data)
        before = sorted(os.listdir(d))
        for argv in (["verify", str(d)], ["inspect", str(d)], ["inspect", str(d), "--row", "0"],
                     ["inspect", str(d), "--row", "5", "--json"]):
            o = run_cli(argv)
            o.argv.append(f"  [seed {SEED}, {victim}: {how}]")
            check_message(o)
            assert sorted(os.listdir(d)) == before, str(o)
        if victim.startswith("shard-"):
            o = run_cli(["verify", str(d)])
            assert o.code == 1 or data == (inputs / "shards" / victim).read_bytes(), str(o)


def test_corrupted_minari_episodes_to_rl(tmp_path, inputs):
    rng = random.Random(f"{SEED}-minari")
    dataset = inputs / "minari" / "cartpole" / "fuzz-v0"
    original = (dataset / "data" / "main_data.hdf5").read_bytes()
    for trial in range(TRIALS):
        d = tmp_path / f"t{trial}" / "fuzz-v0"
        shutil.copytree(dataset, d)
        data, how = mutate(original, rng)
        (d / "data" / "main_data.hdf5").write_bytes(data)
        out = tmp_path / f"t{trial}" / "out"
        o = run_cli(["rl", str(d), "--out", str(out), "--no-progress"] + (["--on-error", "skip"] if trial % 2 else []))
        o.argv.append(f"  [seed {SEED}, main_data.hdf5: {how}]")
        check_message(o)
        check_out(o, out)


def test_corrupted_datasets_directories_to_text(tmp_path, inputs, sp_model_path):
    rng = random.Random(f"{SEED}-hf")
    for trial in range(TRIALS):
        d = tmp_path / f"t{trial}" / "docs-hf"
        shutil.copytree(inputs / "docs-hf", d)
        victim = rng.choice(sorted(p.name for p in d.iterdir() if p.is_file()))
        data, how = mutate((d / victim).read_bytes(), rng)
        (d / victim).write_bytes(data)
        out = tmp_path / f"t{trial}" / "out"
        o = run_cli(["text", str(d), "--text-tokenizer", sp_model_path, "--out", str(out), "--no-progress"]
                    + (["--on-error", "skip"] if trial % 2 else []))
        o.argv.append(f"  [seed {SEED}, {victim}: {how}]")
        check_message(o)
        check_out(o, out)
