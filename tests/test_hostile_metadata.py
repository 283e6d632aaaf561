"""Property test of issue 20: hostile variants of every metadata file the tools read (manifest,
unit markers, plan, state.json, HDF5 attributes, suite YAML, checkpoint config), each fed to the
real command that reads it in a child process under an address-space limit. Promises checked for
every variant: exit 0, 1 or 2 only, one line on failure and no traceback, memory under the bound
(RLIMIT_AS: an attempt past it is a MemoryError, which would show), no file touched outside the
working folders, nothing lost (the shards a finalize found stay unless a manifest lists them all).

Variants are structured, not byte noise (tests/converters/test_fuzz.py does bytes): one value of
the document replaced by a hostile one (`../` and absolute names, 64-char non-hex, huge and
negative numbers, wrong types, long strings), a key deleted, or a list item duplicated. Seeded and
bounded: GATO_HOSTILE_TRIALS variants per file (default 4); a failure prints seed and mutation."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.hostile_run import GiB, Run, run, snapshot


pytestmark = pytest.mark.slow
TRIALS = int(os.environ.get("GATO_HOSTILE_TRIALS", "4"))
SEED = int(os.environ.get("GATO_HOSTILE_SEED", "20"))

HOSTILE = ["../../../../../../escape", "/etc/hostname", "", "x" * 5000, "A" * 64, "shard-00000-000.arrow",
           "shard-00000.arrow", -1, 0, 10 ** 12, 2 ** 63, 1e308, -1e308, None, True, [], {}, [1, 2, 3],
           {"filename": "../x"}, "s3://KEY:SECRET@bucket/x"]


def _paths(doc, prefix=()):
    """Every place in a JSON-like document: (path, value)."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            yield from _paths(v, prefix + (i,))


def mutate(doc, rng: random.Random):
    """One hostile change to a copy of `doc`: (new document, description)."""
    doc = copy.deepcopy(doc)
    places = [p for p, _ in _paths(doc) if p]
    if not places:
        return rng.choice(HOSTILE), "whole document replaced"
    path = rng.choice(places)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    kind = rng.choice(["replace", "replace", "replace", "delete", "duplicate"])
    if kind == "delete":
        del parent[key]
        return doc, f"delete {path}"
    if kind == "duplicate" and isinstance(parent[key], list) and parent[key]:
        parent[key].append(copy.deepcopy(parent[key][0]))
        return doc, f"duplicate first item of {path}"
    value = rng.choice(HOSTILE)
    parent[key] = value
    return doc, f"set {path} = {str(value)[:40]!r}"


def check_promises(r: Run, root: Path, before: dict, what: str) -> None:
    assert r.code in (0, 1, 2), f"{what}\n{r}"
    assert "Traceback" not in r.err and "MemoryError" not in r.err, f"{what}\n{r}"
    if r.code == 1:
        assert len(r.lines) == 1, f"{what}\n{r}"
    if r.code == 2:
        assert sum(": error: " in ln for ln in r.lines) == 1, f"{what}\n{r}"
    outside = {k: v for k, v in snapshot(root).items() if not k.startswith("box")}
    assert outside == {k: v for k, v in before.items() if not k.startswith("box")}, f"{what}: touched outside"
    assert "SECRET" not in r.err, f"{what}\n{r}"


# --- the documents and their readers --------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, sp_model_path):
    """A finished text directory made by the real converter."""
    from tests.support.cli_outcome import run_cli
    root = tmp_path_factory.mktemp("hostile-meta")
    (root / "docs.txt").write_text("\n\n".join(f"document {i} about robots and doors" for i in range(40)) + "\n")
    o = run_cli(["text", str(root / "docs.txt"), "--text-tokenizer", sp_model_path, "--split", "blank-line",
                 "--shard-size", "2000", "--unit-size", "300", "--out", str(root / "shards"), "--no-progress"])
    assert o.code == 0, str(o)
    return root


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hostile_manifest_for_verify_and_training(trial, shard_dir, tmp_path):
    rng = random.Random(SEED * 1000 + trial)
    box = tmp_path / "box"
    shutil.copytree(shard_dir / "shards", box / "shards")
    doc, what = mutate(json.loads((box / "shards" / "manifest.json").read_text()), rng)
    (box / "shards" / "manifest.json").write_text(json.dumps(doc))
    what = f"[seed {SEED}, trial {trial}] manifest: {what}"
    before = snapshot(tmp_path)
    check_promises(run("converters.cli", ["verify", str(box / "shards")], box, mem=2 * GiB), tmp_path, before, what)
    r = run("trainer.cli", ["--data", str(box / "shards"), "--out", str(box / "run"), "--preset", "tiny", "--steps",
                            "1", "--batch-size", "2", "--seq-len", "64", "--no-progress"], box, mem=4 * GiB)
    check_promises(r, tmp_path, before, what)


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("which", ["marker", "plan"])
def test_hostile_marker_or_plan_for_finalize(which, trial, shard_dir, sp_model_path, tmp_path):
    from tests.support.cli_outcome import run_cli
    rng = random.Random(SEED * 2000 + trial + (7 if which == "plan" else 0))
    out = tmp_path / "box" / "out"
    for i in range(2):
        o = run_cli(["text", str(shard_dir / "docs.txt"), "--text-tokenizer", sp_model_path, "--split", "blank-line",
                     "--shard-size", "2000", "--unit-size", "300", "--out", str(out), "--no-progress",
                     "--num-partitions", "2", "--partition", str(i)])
        assert o.code == 0, str(o)
    files = sorted((out / ".work").glob("unit-*.json")) if which == "marker" else [out / ".work" / "plan.json"]
    target = rng.choice(files)
    doc, what = mutate(json.loads(target.read_text()), rng)
    target.write_text(json.dumps(doc))
    what = f"[seed {SEED}, trial {trial}] {target.name}: {what}"
    shards = {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")}
    before = snapshot(tmp_path)
    r = run("converters.cli", ["finalize", str(out)], tmp_path / "box", mem=2 * GiB)
    check_promises(r, tmp_path, before, what)
    if r.code == 0:  # the manifest lists distinct shards, each there with the bytes it was written with
        listed = [s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
        assert len(listed) == len(set(listed)) and all(shards.get(n) == (out / n).read_bytes() for n in listed), what
    else:  # nothing lost
        assert {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")} == shards, what


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hostile_state_json_for_the_text_converter(trial, sp_model_path, tmp_path):
    import datasets
    rng = random.Random(SEED * 3000 + trial)
    ds = tmp_path / "box" / "ds"
    datasets.Dataset.from_dict({"text": [f"doc {i} of the hub" for i in range(8)]}).save_to_disk(str(ds))
    (tmp_path / "secret_ds").mkdir()
    shutil.copy(next(ds.glob("*.arrow")), tmp_path / "secret_ds" / "data-00000-of-00001.arrow")
    doc, what = mutate(json.loads((ds / "state.json").read_text()), rng)
    (ds / "state.json").write_text(json.dumps(doc))
    what = f"[seed {SEED}, trial {trial}] state.json: {what}"
    before = snapshot(tmp_path)
    r = run("converters.cli", ["text", str(ds), "--text-tokenizer", sp_model_path, "--out",
                               str(tmp_path / "box" / "out"), "--no-progress"], tmp_path / "box", mem=2 * GiB)
    check_promises(r, tmp_path, before, what)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hostile_hdf5_attributes_for_the_rl_converter(trial, tmp_path, minari_root):
    import gymnasium as gym
    import h5py

    from tests.support.rl_data import make_minari, rollouts
    rng = random.Random(SEED * 4000 + trial)
    env = gym.make("CartPole-v1")
    data = make_minari(f"hostile/attrs{trial}-v0", env, rollouts(env, 3, 15, seed=trial))
    box = tmp_path / "box"
    shutil.copytree(data, box / "ds")
    main = box / "ds" / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:
        groups = [f] + [f[k] for k in f if isinstance(f[k], h5py.Group)]
        g = rng.choice(groups)
        names = list(g.attrs) or ["total_steps"]
        name = rng.choice(names)
        value = rng.choice([-1, 0, 10 ** 12, 2 ** 62, "../../escape", "x" * 2000, 1e308, np.array([1, 2, 3])])
        g.attrs[name] = value
    what = f"[seed {SEED}, trial {trial}] main_data.hdf5 {g.name} attr {name} = {str(value)[:40]!r}"
    before = snapshot(tmp_path)
    r = run("converters.cli", ["rl", str(box / "ds"), "--out", str(box / "out"), "--no-progress"], box, mem=2 * GiB,
            MINARI_DATASETS_PATH=os.environ["MINARI_DATASETS_PATH"])
    check_promises(r, tmp_path, before, what)


SUITE = {"tasks": [{"env": "CartPole-v1", "data": "cartpole", "episodes": 2, "max_steps": 50, "success": 100.0,
                    "prompt": "end", "rescale_actions": False, "name": "cp"}]}


@pytest.mark.parametrize("trial", range(TRIALS * 4))
def test_hostile_suite_yaml_is_refused_in_one_line_or_read(trial, tmp_path):
    import yaml

    from trainer.acting.suite import SuiteError, read_suite
    rng = random.Random(SEED * 5000 + trial)
    doc, what = mutate(SUITE, rng)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    try:
        tasks = read_suite(tmp_path / "s.yaml")
    except SuiteError as e:
        assert "\n" not in str(e), what
        return
    for t in tasks:  # read: every field has its declared type
        assert isinstance(t.env, str) and isinstance(t.data, str) and isinstance(t.episodes, int), what
        assert t.episodes >= 1 and isinstance(t.rescale_actions, bool), what


LOAD = ("import sys\nfrom schemas.names import redact_std_streams\nredact_std_streams()  # as every CLI does\n"
        "from trainer.checkpoint import CheckpointError, load_model\n"
        "try:\n    load_model(sys.argv[1])\nexcept CheckpointError as e:\n"
        "    print(f'load: error: {e}', file=sys.stderr); sys.exit(1)\n")


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hostile_checkpoint_config_is_refused_before_allocating(trial, tmp_path):
    import torch

    from tokenizer_kit.layout import VocabLayout
    from trainer.checkpoint import CHECKPOINT_VERSION, save_checkpoint
    from trainer.model import GatoConfig, GatoModel
    rng = random.Random(SEED * 6000 + trial)
    config = GatoConfig.from_preset("tiny", VocabLayout(text_vocab_size=256, eos_id=2), seq_len=32)
    model = GatoModel(config)
    doc, what = mutate(config.to_dict(), rng)
    what = f"[seed {SEED}, trial {trial}] checkpoint config: {what}"
    box = tmp_path / "box"
    box.mkdir()
    save_checkpoint({"version": CHECKPOINT_VERSION, "step": 1, "model": model.state_dict(), "config": doc},
                    box / "checkpoint.pt")
    torch.set_num_threads(1)
    before = snapshot(tmp_path)
    r = run("-c", [LOAD, str(box / "checkpoint.pt")], box, mem=3 * GiB)
    check_promises(r, tmp_path, before, what)
