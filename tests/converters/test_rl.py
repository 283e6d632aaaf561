"""RL converter: real gymnasium rollouts in every supported format, checked row by row through the inverse."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.base import SourceError
from converters.rl.converter import RLConverter
from converters.rl.options import RLOptions
from converters.rl.plan import make_converter
from converters.rl.sources.hdf5 import FlatHDF5Source
from tests.support.rl_data import (DictObs, MissionObs, PixelObs, check_record, check_row, episode_table, make_minari, rollouts, write_d4rl)
from tokenizer_kit import options
from tokenizer_kit.options import UsageError
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.values import quantization_error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def parse(argv: list[str], **extra) -> RLOptions:
    """The options as the convert command parses them (its parser, built from RLOptions)."""
    return dataclasses.replace(options.parse(RLOptions, [*argv, "--out", "unused"]), **extra)


def convert(argv, layout: VocabLayout | None = None, **extra) -> tuple[RLConverter, list]:
    c = make_converter(parse(argv, **extra), layout)
    return c, [r for u in c.work_units() for r in c.convert_unit(u)]


def obs_of(ep, prefix="obs"):
    """The observations a row must hold: minari's T+1 minus the final one, flattened like the reader."""
    o = ep["observations"]
    return {f"{prefix}/{k}": v[:-1] for k, v in o.items()} if isinstance(o, dict) else {prefix: o[:-1]}


@pytest.fixture(scope="module")
def cartpole(minari_root):
    env = gym.make("CartPole-v1")
    eps = rollouts(env, 5, 30)
    return make_minari("cartpole/random-v0", env, eps), eps


# --- Minari --------------------------------------------------------------------------------------

def test_minari_discrete_actions_rows_decode_to_inputs(cartpole):
    path, eps = cartpole
    c, recs = convert([path, "--episodes-per-unit", "2"])
    assert [u.start for u in c.work_units()] == [0, 2, 4]
    assert c.work_units()[0].path.endswith("main_data.hdf5")  # what the writer stamps for resume
    assert [f.to_dict()["kind"] for f in c.spec.observations + c.spec.actions] == ["continuous", "discrete"]
    assert [r.source_id for r in recs] == [f"cartpole/random-v0/episode_{i}" for i in range(5)]
    for r, ep in zip(recs, eps):
        assert r.skip_reason is None and r.task == "cartpole/random-v0"
        assert r.num_steps == len(ep["actions"]) and r.episode_return == pytest.approx(ep["rewards"].sum())
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)
        q = quantization_error(ep["observations"][:-1], c.layout, True)
        assert r.field_errors["obs"] == pytest.approx((q.max(), q.sum(), q.size))
    assert "episode_spec" in c.options() and c.options()["final_observation"] == "dropped"


def test_minari_arrow_continuous_actions_are_rescaled_from_their_box_not_companded(minari_root):
    env = gym.make("Pendulum-v1")  # torque in Box(-2, 2)
    eps = rollouts(env, 3, 40, seed=7)
    path = make_minari("pendulum/random-v0", env, eps, data_format="arrow")
    c, recs = convert([path])
    assert [f.mu_law for f in c.spec.actions] == [False]
    assert [f.bounds for f in c.spec.actions] == [((-2.0,), (2.0,))]
    assert len(recs) == 3
    for r, ep in zip(recs, eps):
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)
        # the error in torque units: half a bin of the [-2, 2] range at most, nothing clipped
        q = 2.0 * quantization_error(np.asarray(ep["actions"], np.float64) / 2.0, c.layout, False)
        assert r.field_errors["action"] == pytest.approx((q.max(), q.sum(), q.size), rel=1e-5)
        assert r.field_errors["action"][0] <= 2.0 / 1024 + 1e-6
        assert not r.counts.get("outside_unit_range")
        assert r.episode_return == pytest.approx(ep["rewards"].sum()) and r.episode_return < 0


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_minari_dict_observations_are_flattened(minari_root, fmt):
    env = DictObs(gym.make("CartPole-v1"))
    eps = rollouts(env, 3, 20, seed=3)
    c, recs = convert([make_minari(f"cartdict/{fmt}-v0", env, eps, data_format=fmt)])
    assert [(f.name, f.kind, f.shape) for f in c.spec.observations] == [
        ("obs/cell", "discrete", (2,)), ("obs/state", "continuous", (4,))]
    for r, ep in zip(recs, eps):
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_minari_text_observations(minari_root, fmt, sp_model_path, text_tokenizer):
    env = MissionObs(gym.make("CartPole-v1"))
    eps = rollouts(env, 2, 15, seed=9)
    for ep in eps:  # the rollout stacked the strings into a numpy array; minari wants a list
        ep["observations"]["mission"] = list(ep["observations"]["mission"])
    c, recs = convert([make_minari(f"cartmission/{fmt}-v0", env, eps, data_format=fmt)], text_tokenizer=sp_model_path)
    assert [(f.name, f.kind) for f in c.spec.observations] == [("obs/mission", "text"), ("obs/state", "continuous")]
    for r, ep in zip(recs, eps):
        assert r.skip_reason is None
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout, text_tokenizer)


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_minari_image_observations_are_exact(minari_root, fmt):
    env = PixelObs(gym.make("CartPole-v1"))
    eps = rollouts(env, 2, 12, seed=1)
    make_minari(f"cartpix/{fmt}-v0", env, eps, data_format=fmt)
    c, recs = convert([f"cartpix/{fmt}-v0"])  # a dataset id in the local Minari root
    assert [(f.name, f.kind, f.shape) for f in c.spec.observations] == [
        ("obs/pixels", "image", (32, 32)), ("obs/state", "continuous", (4,))]
    for r, ep in zip(recs, eps):
        assert len(r.row.patches) == 4 * r.num_steps
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)


def test_minari_jpeg_images_come_back_as_minari_decodes_them(minari_root):
    import minari
    env = PixelObs(gym.make("CartPole-v1"))
    path = make_minari("cartpix/jpeg-v0", env, rollouts(env, 2, 10, seed=2), data_format="arrow", jpeg_encoding=True)
    c, recs = convert([path])
    for r, ep in zip(recs, minari.MinariDataset(path / "data").iterate_episodes()):
        check_record(r, {"obs/pixels": ep.observations["pixels"][:-1], "obs/state": ep.observations["state"][:-1]},
                     {"action": ep.actions}, c.spec, c.layout)


def test_minari_input_as_dataset_id_data_dir_or_dataset_dir(cartpole):
    path, eps = cartpole
    rows = [[r.row.tokens for r in convert([p])[1]] for p in ("cartpole/random-v0", path, path / "data")]
    assert all(len(x) == 5 and all(np.array_equal(a, b) for a, b in zip(x, rows[0])) for x in rows)
    with pytest.raises(SourceError, match="no such file, directory or local Minari dataset"):
        make_converter(parse(["cartpole/missing-v0"]))


# --- D4RL-style HDF5 -----------------------------------------------------------------------------

def test_d4rl_hdf5_episodes_split_on_terminals_and_timeouts(tmp_path):
    eps = rollouts(gym.make("CartPole-v1"), 7, 25, seed=11)
    path = write_d4rl(tmp_path / "cartpole-medium.hdf5", eps)
    c, recs = convert([path, "--episodes-per-unit", "3"])
    assert [(u.start, u.stop) for u in c.work_units()] == [(0, 3), (3, 6), (6, 7)]
    assert [r.source_id for r in recs] == [f"cartpole-medium/episode_{i}" for i in range(7)]
    for r, ep in zip(recs, eps):
        assert r.task == "cartpole-medium" and r.num_steps == len(ep["actions"])
        assert r.episode_return == pytest.approx(ep["rewards"].sum())
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)
    # tiny read chunks: episodes straddle chunk boundaries and still come out whole
    src = FlatHDF5Source(str(path), chunk_steps=7)
    got = list(src.episodes(1, 6))
    assert [e.episode_id for e in got] == [1, 2, 3, 4, 5]
    for e, ep in zip(got, eps[1:6]):
        np.testing.assert_array_equal(e.observations["obs"], ep["observations"][:-1].astype(np.float32))
        np.testing.assert_array_equal(e.actions["action"], ep["actions"])
    np.testing.assert_allclose(src.returns(), [ep["rewards"].sum() for ep in eps])


def test_d4rl_observation_group_is_a_dict_of_fields(tmp_path):
    eps = rollouts(gym.make("CartPole-v1"), 3, 25, seed=13)
    path = write_d4rl(tmp_path / "grouped.hdf5", eps)
    with h5py.File(path, "a") as f:
        obs = f["observations"][()]
        del f["observations"]
        f["observations/position"] = obs[:, [0, 2]]
        f["observations/sign"] = (obs[:, [1, 3]] > 0).astype(np.int8)
    c, recs = convert([path])
    assert [(f.name, f.kind, f.shape) for f in c.spec.observations] == [
        ("obs/position", "continuous", (2,)), ("obs/sign", "discrete", (2,))]
    for r, ep in zip(recs, eps):
        o = ep["observations"][:-1].astype(np.float32)
        check_record(r, {"obs/position": o[:, [0, 2]], "obs/sign": (o[:, [1, 3]] > 0).astype(np.int8)},
                     {"action": ep["actions"]}, c.spec, c.layout)


def test_d4rl_last_episode_without_flags_is_kept_and_said(tmp_path, capsys):
    eps = rollouts(gym.make("CartPole-v1"), 3, 200, seed=5)  # random CartPole falls long before 200
    path = write_d4rl(tmp_path / "cut.hdf5", eps, timeouts_last=False)
    c, recs = convert([path])
    assert "warning" not in capsys.readouterr().err and "last_episode_cut" not in c.options()
    with h5py.File(path, "a") as f:
        f["terminals"][-1] = False  # the last episode has no flag at all
    c, recs = convert([path])
    assert [r.num_steps for r in recs] == [len(ep["actions"]) for ep in eps]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gato-tokenize rl: warning: {path}: the last episode ({len(eps[-1]['actions'])} steps) has no "
                   "terminal or timeout flag; taken whole, as a cut-off episode"]
    assert c.options()["last_episode_cut"] == [str(path)]
    assert c.options()["final_observation"] == "none in the source"


# --- episode tables --------------------------------------------------------------------------------

def test_parquet_table_read_in_row_groups(tmp_path):
    eps = rollouts(gym.make("CartPole-v1"), 7, 25, seed=21)
    table = episode_table(eps)
    grey = [np.stack([np.full((16, 16), 9 * t + i, np.int64) for t in range(len(ep["actions"]))]) for i, ep in enumerate(eps)]
    table = table.append_column("image_observations", pa.array([g.tolist() for g in grey]))  # int64 pixels
    pq.write_table(table, tmp_path / "cp.parquet", row_group_size=3)
    c, recs = convert([tmp_path / "cp.parquet", "--episodes-per-unit", "2", "--task", "cartpole"])
    assert len(c.work_units()) == 4 and [r.source_id for r in recs] == [f"cp/episode_{i}" for i in range(7)]
    for r, ep, g in zip(recs, eps, grey):
        assert r.task == "cartpole" and r.episode_return == pytest.approx(ep["rewards"].sum())
        rgb = np.repeat(g[..., None], 3, axis=3).astype(np.uint8)
        check_record(r, {"continuous_observations": ep["observations"][:-1], "image_observations": rgb},
                     {"discrete_actions": ep["actions"]}, c.spec, c.layout)


def test_hf_datasets_directory_with_image_text_and_continuous_columns(tmp_path, sp_model_path, text_tokenizer):
    import datasets
    rng = np.random.default_rng(0)
    words = ["go left", "go right", "pick the red ball", "open the door"]
    eps = []
    for n in (3, 5, 4):
        eps.append({"image_observations": rng.integers(0, 256, (n, 16, 32, 3), dtype=np.uint8),
                    "text_observations": [words[i % 4] for i in range(n)],
                    "continuous_observations": rng.normal(0, 3, (n, 5)).astype(np.float32),
                    "continuous_actions": rng.uniform(-1.2, 1.2, (n, 2)).astype(np.float32),
                    "rewards": rng.normal(size=n)})
    features = datasets.Features({
        "image_observations": datasets.Sequence(datasets.Image()),  # PNG-encoded frames
        "text_observations": datasets.Sequence(datasets.Value("string")),
        "continuous_observations": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=5)),
        "continuous_actions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "rewards": datasets.Sequence(datasets.Value("float64"))})
    columns = {k: [list(ep[k]) for ep in eps] for k in eps[0]}
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp_path / "toy_hf"))
    c, recs = convert([tmp_path / "toy_hf"], text_tokenizer=sp_model_path)
    assert [(f.name, f.kind) for f in c.spec.observations] == [
        ("text_observations", "text"), ("image_observations", "image"), ("continuous_observations", "continuous")]
    assert len(recs) == 3
    for r, ep in zip(recs, eps):
        obs = {k: ep[k] for k in ("image_observations", "text_observations", "continuous_observations")}
        check_record(r, obs, {"continuous_actions": ep["continuous_actions"]}, c.spec, c.layout, text_tokenizer)


# --- options ---------------------------------------------------------------------------------------

def test_field_kind_and_mu_law_overrides(cartpole):
    path, eps = cartpole
    c, recs = convert([path, "--field", "action=continuous", "--mu-law", "obs=off"])
    assert [(f.kind, f.mu_law) for f in c.spec.observations + c.spec.actions] == [("continuous", False),
                                                                                   ("continuous", False)]
    for r, ep in zip(recs, eps):
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, c.layout)
        q = quantization_error(ep["observations"][:-1], c.layout, False)
        assert r.field_errors["obs"][0] == pytest.approx(q.max())
    for bad in (["--field", "nope=discrete"], ["--field", "obs=pixels"], ["--mu-law", "action=on"],
                ["--mu-law", "obs=maybe"]):
        with pytest.raises(UsageError):  # the convert command makes it exit 2
            make_converter(parse([path] + bad))


def test_ignored_fields_and_text_needs_a_tokenizer(tmp_path):
    t = pa.table({"text_observations": [["hi", "there"]], "continuous_observations": [[[0.5], [0.25]]],
                  "discrete_actions": [[1, 2]], "rewards": [[1.0, 2.0]]})
    pq.write_table(t, tmp_path / "t.parquet")
    with pytest.raises(UsageError, match="pass --text-tokenizer"):
        make_converter(parse([tmp_path / "t.parquet"]))
    c, recs = convert([tmp_path / "t.parquet", "--field", "text_observations=ignore"])
    assert [f.name for f in c.spec.observations] == ["continuous_observations"] and recs[0].episode_return == 3.0


def test_return_filters(tmp_path):
    eps = rollouts(gym.make("CartPole-v1"), 8, 40, seed=31)
    returns = [ep["rewards"].sum() for ep in eps]
    path = write_d4rl(tmp_path / "cp.hdf5", eps)
    c, recs = convert([path, "--min-return", "20"])
    assert [r.source_id for r in recs if r.filtered] == [f"cp/episode_{i}" for i, x in enumerate(returns) if x < 20]
    assert all(r.row is None and not r.skip_reason for r in recs if r.filtered)
    recs = [r for r in recs if not r.filtered]
    assert [r.source_id for r in recs] == [f"cp/episode_{i}" for i, x in enumerate(returns) if x >= 20]
    from converters.writer import convert as write
    m = write(c, tmp_path / "out", layout=c.layout, progress=False).manifest  # counted, not skipped
    assert m.stats["filtered"] == sum(x < 20 for x in returns) > 0 and m.skipped == [] and m.total_rows == len(recs)
    _, recs = convert([path, "--min-return-fraction", "0.8"])
    recs = [r for r in recs if not r.filtered]
    kept = [i for i, x in enumerate(returns) if x >= 0.8 * max(returns)]
    assert [r.source_id for r in recs] == [f"cp/episode_{i}" for i in kept] and 0 < len(kept) < 8
    _, recs = convert([path, "--min-return-fraction", "0.8", "--min-return", "25"])  # both apply
    recs = [r for r in recs if not r.filtered]
    assert [r.source_id for r in recs] == [f"cp/episode_{i}" for i, x in enumerate(returns)
                                           if x >= max(25, 0.8 * max(returns))]
    for ep in eps:
        ep["rewards"] = -ep["rewards"]
    with pytest.raises(UsageError):  # a fraction of a negative best return means nothing
        make_converter(parse([write_d4rl(tmp_path / "neg.hdf5", eps), "--min-return-fraction", "0.8"]))


@pytest.mark.parametrize("fmt", ["d4rl", "parquet", "minari"])
def test_work_units_are_runs_of_whole_episodes_of_about_n_steps(tmp_path, minari_root, fmt):
    env = gym.make("CartPole-v1")
    eps = rollouts(env, 9, 30, seed=81)
    lengths = [len(ep["actions"]) for ep in eps]
    if fmt == "d4rl":
        path = write_d4rl(tmp_path / "u.hdf5", eps)
    elif fmt == "parquet":
        pq.write_table(episode_table(eps), path := tmp_path / "u.parquet", row_group_size=4)
    else:
        path = make_minari("cartpole/units-v0", env, eps)
    c, recs = convert([path, "--steps-per-unit", "40"])
    units = c.work_units()
    assert units[0].start == 0 and units[-1].stop == 9
    assert all(a.stop == b.start for a, b in zip(units, units[1:]))
    for u in units[:-1]:  # each unit reaches 40 steps with its last episode, not before
        assert sum(lengths[u.start:u.stop]) >= 40 > sum(lengths[u.start:u.stop - 1])
    assert [r.num_steps for r in recs] == lengths


def test_converter_pickles_for_worker_processes(cartpole):
    path, _ = cartpole
    c = make_converter(parse([path, "--episodes-per-unit", "2"]))
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.work_units() == c.work_units()
    a = [r.row.tokens for u in c.work_units() for r in c.convert_unit(u)]
    b = [r.row.tokens for u in c2.work_units() for r in c2.convert_unit(u)]
    assert len(a) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_disjoint_layout_and_small_text_vocab(cartpole):
    path, eps = cartpole
    layout = VocabLayout(text_vocab_size=512, profile="disjoint")
    c, recs = convert([path], layout=layout)
    assert c.layout is layout
    for r, ep in zip(recs, eps):
        check_record(r, obs_of(ep), {"action": ep["actions"]}, c.spec, layout)


# --- bad input -----------------------------------------------------------------------------------

def bad_d4rl(tmp_path, edit) -> tuple[Path, list]:
    eps = rollouts(gym.make("CartPole-v1"), 4, 20, seed=41)
    path = write_d4rl(tmp_path / "bad.hdf5", eps)
    with h5py.File(path, "a") as f:
        edit(f, eps)
    return path, eps


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_nan_or_inf_observation_names_file_episode_step_and_field(tmp_path, value, word):
    def edit(f, eps):
        obs = f["observations"][()]
        obs[len(eps[0]["actions"]) + 3, 2] = value  # episode 1, step 3, index 2
        f["observations"][...] = obs
    path, eps = bad_d4rl(tmp_path, edit)
    c, recs = convert([path])
    bad = [r for r in recs if r.skip_reason]
    assert [r.source_id for r in bad] == ["bad/episode_1"] and bad[0].row is None
    msg = bad[0].skip_reason
    assert msg.startswith(f"{path}: bad/episode_1: field 'obs': {word} value at step 3 index 2") and "\n" not in msg
    assert [r.source_id for r in recs if r.row is not None] == ["bad/episode_0", "bad/episode_2", "bad/episode_3"]


def test_discrete_values_outside_the_range_are_refused(tmp_path):
    t = pa.table({"continuous_observations": [[[0.1], [0.2]], [[0.1], [0.2], [0.3]], [[0.5]]],
                  "discrete_actions": [[1, 1024], [0, -1, 3], [7]], "rewards": [[0.0, 1.0], [1.0, 1.0, 1.0], [2.0]]})
    pq.write_table(t, tmp_path / "d.parquet")
    _, recs = convert([tmp_path / "d.parquet"])
    assert [r.skip_reason is None for r in recs] == [False, False, True]
    assert "d/episode_0: field 'discrete_actions': discrete value outside [0, 1024) at step 1" in recs[0].skip_reason
    assert "d/episode_1: field 'discrete_actions': discrete value outside [0, 1024) at step 1" in recs[1].skip_reason


def test_episodes_whose_arrays_disagree_in_length_or_are_empty(tmp_path):
    t = pa.table({"continuous_observations": [[[0.1], [0.2]], [[0.1], [0.2]], [], [[0.3]]],
                  "discrete_actions": [[1], [0, 1], [], [2]], "rewards": [[0.0, 1.0], [1.0], [], [1.0]]})
    pq.write_table(t, tmp_path / "l.parquet")
    _, recs = convert([tmp_path / "l.parquet"])
    reasons = [r.skip_reason for r in recs]
    assert "episode arrays disagree in length" in reasons[0] and "'discrete_actions'" in reasons[0]
    assert "episode arrays disagree in length: 'rewards' has 1 steps" in reasons[1]
    assert reasons[2].endswith("l/episode_2: empty episode (0 steps)")
    assert reasons[3] is None and recs[3].row is not None


def test_minari_episode_with_too_few_observations(minari_root):
    env = gym.make("CartPole-v1")
    eps = rollouts(env, 2, 10, seed=51)
    eps[1]["observations"] = eps[1]["observations"][:-1]  # no final observation
    _, recs = convert([make_minari("cartpole/short-v0", env, eps)])
    assert recs[0].skip_reason is None
    assert "cartpole/short-v0/episode_1: episode arrays disagree in length: observation 'obs'" in recs[1].skip_reason


def test_d4rl_arrays_of_different_lengths_are_refused(tmp_path):
    def edit(f, eps):
        a = f["actions"][()]
        del f["actions"]
        f["actions"] = a[:-1]
    path, _ = bad_d4rl(tmp_path, edit)
    with pytest.raises(SourceError, match=r"bad.hdf5: step arrays disagree in length: 'actions'"):
        make_converter(parse([path]))


def test_truncated_hdf5_files_are_one_line_errors_naming_the_file(tmp_path, cartpole):
    eps = rollouts(gym.make("CartPole-v1"), 4, 20)
    data = write_d4rl(tmp_path / "full.hdf5", eps).read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError) as e:
        make_converter(parse([tmp_path / "cut.hdf5"]))
    assert str(e.value).startswith(f"{tmp_path / 'cut.hdf5'}: ") and "\n" not in str(e.value)
    # a Minari dataset whose main file is cut
    import shutil
    src, _ = cartpole
    shutil.copytree(src, tmp_path / "mcut")
    main = tmp_path / "mcut" / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[:2000])
    with pytest.raises(SourceError) as e:
        make_converter(parse([tmp_path / "mcut"]))
    assert str(e.value).startswith(f"{main}: not a readable HDF5 file")


def test_unknown_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    for p, msg in ((tmp_path / "x.csv", "unknown RL file type"), (tmp_path / "empty", "not a Minari dataset"),
                   (tmp_path / "nope.hdf5", "no such file")):
        with pytest.raises(SourceError, match=msg):
            make_converter(parse([p]))


# --- end to end: gato-tokenize rl ... --out DIR ----------------------------------------------------

def tokenize(argv, capsys) -> tuple[int, str]:
    from converters.cli import main
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


def shard_table(out: Path) -> pa.Table:
    from schemas.shard import open_shard
    return pa.concat_tables([open_shard(s) for s in sorted(out.glob("shard-*.arrow"))])


def test_cli_converts_minari_and_d4rl_into_verified_shards(tmp_path, cartpole, capsys):
    from schemas.shard import row_from_table
    from tokenizer_kit.sequence import EpisodeSpec
    mpath, meps = cartpole
    deps = rollouts(gym.make("CartPole-v1"), 3, 30, seed=61)
    dpath = write_d4rl(tmp_path / "cartpole-d4rl.hdf5", deps)
    out = tmp_path / "out"
    code, err = tokenize(["rl", "cartpole/random-v0", dpath, "--out", out, "--no-progress",
                          "--episodes-per-unit", "2", "--text-vocab-size", "1000"], capsys)
    assert code == 0, err
    assert tokenize(["verify", out], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    spec, layout = EpisodeSpec.from_dict(manifest["episode_spec"]), VocabLayout.from_dict(manifest["layout"])
    assert manifest["converter"] == "rl" and layout.text_vocab_size == 1000
    assert manifest["stats"]["rows_per_task"] == {"cartpole-d4rl": 3, "cartpole/random-v0": 5}
    t = shard_table(out)
    assert t.column("source_id").to_pylist() == ([f"cartpole/random-v0/episode_{i}" for i in range(5)]
                                                 + [f"cartpole-d4rl/episode_{i}" for i in range(3)])
    for i, ep in enumerate(meps + deps):
        row = row_from_table(t, i)
        assert t.column("num_steps")[i].as_py() == len(ep["actions"])
        assert t.column("episode_return")[i].as_py() == pytest.approx(ep["rewards"].sum())
        check_row(row, obs_of(ep), {"action": ep["actions"]}, spec, layout)
    errors = manifest["stats"]["field_errors"]["obs"]
    assert errors["count"] == 4 * sum(len(ep["actions"]) for ep in meps + deps) and 0 < errors["max"] < 0.05


@pytest.mark.slow
def test_cli_output_is_identical_with_two_workers(tmp_path, cartpole, capsys):
    path, _ = cartpole
    for n in (1, 2):
        code, err = tokenize(["rl", path, "--out", tmp_path / f"w{n}", "--no-progress", "--episodes-per-unit", "1",
                              "--workers", n], capsys)
        assert code == 0, err
    shards = lambda d: {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.arrow"))}  # noqa: E731
    assert len(shards(tmp_path / "w1")) > 1 and shards(tmp_path / "w1") == shards(tmp_path / "w2")


def test_cli_bad_episode_fails_with_one_line_or_is_skipped_and_listed(tmp_path, capsys):
    def edit(f, eps):
        obs = f["observations"][()]
        obs[len(eps[0]["actions"]) + 3, 2] = np.nan
        f["observations"][...] = obs
    path, _ = bad_d4rl(tmp_path, edit)
    code, err = tokenize(["rl", path, "--out", tmp_path / "fail", "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].split(": error: ", 1)[1] == f"{path}: bad/episode_1: field 'obs': NaN value at step 3 index 2 (value nan)"
    assert not (tmp_path / "fail" / "manifest.json").exists() and not list((tmp_path / "fail").glob("shard-*"))
    code, err = tokenize(["rl", path, "--out", tmp_path / "skip", "--no-progress", "--on-error", "skip"], capsys)
    assert code == 0, err
    assert shard_table(tmp_path / "skip").column("source_id").to_pylist() == [
        "bad/episode_0", "bad/episode_2", "bad/episode_3"]
    skipped = json.loads((tmp_path / "skip" / "manifest.json").read_text())["skipped"]
    assert [s["source"] for s in skipped] == ["bad/episode_1"] and "step 3" in skipped[0]["reason"]


def test_cli_truncated_file_exits_1_and_usage_errors_exit_2(tmp_path, capsys):
    data = write_d4rl(tmp_path / "full.hdf5", rollouts(gym.make("CartPole-v1"), 2, 20)).read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[:3000])
    code, err = tokenize(["rl", tmp_path / "cut.hdf5", "--out", tmp_path / "o", "--no-progress"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.strip().split(": error: ", 1)[1].startswith(f"{tmp_path / 'cut.hdf5'}: not a readable HDF5 file")
    for bad in (["--field", "obs/nope=discrete"], ["--mu-law", "obs=sometimes"], ["--field", "obs"]):
        code, err = tokenize(["rl", tmp_path / "full.hdf5", "--out", tmp_path / "o2", "--no-progress"] + bad, capsys)
        assert code == 2 and bad[0] in err, err


def test_uniform_episode_assembly_matches_the_general_one(minari_root, monkeypatch):
    """build_episode's fast path for fixed-size steps (used by RL) gives the general path's rows."""
    from tokenizer_kit import sequence
    env = PixelObs(gym.make("CartPole-v1"))
    eps = rollouts(env, 2, 12, seed=71)
    path = make_minari("cartpix/uniform-v0", env, eps)
    layout = VocabLayout(text_vocab_size=2000)
    fast = [r.row for r in convert([path, "--action-local-pos", "--field", "action=continuous"], layout=layout)[1]]
    monkeypatch.setattr(sequence, "_assemble_uniform", lambda blocks, *a: sequence._assemble(blocks, *a))
    slow = [r.row for r in convert([path, "--action-local-pos", "--field", "action=continuous"], layout=layout)[1]]
    assert len(fast) == 2
    for a, b in zip(fast, slow):
        for col in ("tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos"):
            x, y = getattr(a, col), getattr(b, col)
            assert x.dtype == y.dtype and np.array_equal(x, y), col


def test_frames_that_are_not_multiples_of_16_are_fitted_to_one_size(tmp_path):
    from tokenizer_kit.images import fit_image
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (n, 20, 36), dtype=np.uint8) for n in (2, 3)]  # grey, 20x36
    t = pa.table({"image_observations": [f.tolist() for f in frames],
                  "discrete_actions": [[1, 2], [3, 4, 5]], "rewards": [[1.0, 1.0], [0.0, 0.0, 1.0]]})
    pq.write_table(t, tmp_path / "g.parquet")
    for argv, size in (([], (16, 32)), (["--image-fit", "pad"], (32, 48)), (["--image-size", "32x32"], (32, 32))):
        c, recs = convert([tmp_path / "g.parquet"] + argv)
        f = c.spec.observations[0]
        assert (f.kind, f.shape, f.fit) == ("image", size, argv[1] if argv[:1] == ["--image-fit"] else "resize")
        for r, fr, acts in zip(recs, frames, ([1, 2], [3, 4, 5])):
            rgb = np.repeat(fr[..., None], 3, axis=3)
            want = np.stack([fit_image(x, f.fit, size) for x in rgb])
            check_record(r, {"image_observations": want}, {"discrete_actions": np.array(acts)}, c.spec, c.layout)
    with pytest.raises(SystemExit):
        parse([tmp_path / "g.parquet", "--image-size", "20x32"])


def test_a_folder_of_hdf5_files_is_each_of_its_files_in_order(tmp_path):
    eps = rollouts(gym.make("CartPole-v1"), 4, 25, seed=17)
    folder = tmp_path / "d4rl"
    folder.mkdir()
    b = write_d4rl(folder / "b-part.hdf5", eps[2:])
    a = write_d4rl(folder / "a-part.h5", eps[:2])
    (folder / "notes.txt").write_text("not an input")
    c_dir, recs_dir = convert([str(folder)])
    c_files, recs_files = convert([str(a), str(b)])
    assert [u.key for u in c_dir.work_units()] == [u.key for u in c_files.work_units()]
    assert [r.source_id for r in recs_dir] == [r.source_id for r in recs_files] and len(recs_dir) == 4
    for r, s in zip(recs_dir, recs_files):
        np.testing.assert_array_equal(r.row.tokens, s.row.tokens)
