"""The field's real data layouts, made with the real libraries: ale-py frame stacks (gymnasium's
FrameStackObservation), a Minari dataset whose Box action bounds are not [-1, 1], and Parquet
written with `datasets` features identical to the jat-dataset's atari-*, mujoco-*, metaworld-*
and babyai-* configs. Every frame decodes back exactly, rescaled actions within one bin."""

from __future__ import annotations

import io
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from converters.cli import main as tokenize_main
from tests.support.rl_data import make_minari, rollouts
from schemas.manifest import FrameStackCount, Manifest
from schemas.shard import row_from_table
from schemas.reader import ShardDir
from tokenizer_kit.episode_decode import acting_observation, decode_actions, decode_episode
from tokenizer_kit.frames import FrameStack, detect, episode_frames, holds_last, observation_frames
from tokenizer_kit.sequence import EpisodeSpec, build_episode

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS = 24  # agent steps per episode (each 4 emulator frames): enough to see shifts, fast


def pong_stacked():
    """Frames as Atari agents record them: gymnasium's AtariPreprocessing (grey, 84x84, 4 emulator
    frames a step) then FrameStackObservation, the (4, 84, 84) stacks of a DQN-style dataset."""
    import ale_py
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=0)
    return gym.wrappers.FrameStackObservation(env, 4)


@pytest.fixture(scope="module")
def pong_episodes():
    return rollouts(pong_stacked(), 2, STEPS, seed=3)


def tokenize(argv, capsys=None) -> int:
    return tokenize_main([str(a) for a in argv])


def rows(out: Path):
    sd = ShardDir.open(out)
    return [row_from_table(sd.table(i), k) for i in range(len(sd.shards)) for k in range(sd.table(i).num_rows)]


# --- the rule ---------------------------------------------------------------------------------------

def test_frame_stack_layouts_are_detected_and_rgb_is_not():
    assert detect((4, 84, 84), np.uint8) == FrameStack(4, "first", 84, 84)
    assert detect((84, 84, 4), np.uint8) == FrameStack(4, "last", 84, 84)
    assert detect((84, 84, 3), np.uint8) is None and detect((84, 84), np.uint8) is None
    assert detect((7, 7, 3), np.uint8) is None and detect((4, 84, 84), np.float32) is None


def test_last_holds_only_for_shifted_stacks_with_padding(pong_episodes):
    stacks = pong_episodes[0]["observations"][:-1]  # (T, 4, 84, 84), padded by copies of the reset frame
    assert holds_last(stacks)
    zero_padded = stacks.copy()  # as SB3's VecFrameStack (the jat-dataset's) pads: zeros shifting out
    for t in range(3):
        zero_padded[t, :3 - t] = 0
    assert holds_last(zero_padded)
    broken = stacks.copy()
    broken[5, 0] = stacks[5, 0] ^ 1  # one older frame that is not the previous stack's
    assert not holds_last(broken)
    assert not holds_last(stacks[3:])  # an episode's middle: its first stack's old frames are real
    frames, taken = episode_frames(broken, FrameStack(4, "first", 84, 84), "auto")
    assert taken == "split" and frames.shape == (STEPS, 4, 84, 84)
    frames, taken = episode_frames(stacks, FrameStack(4, "first", 84, 84), "auto")
    assert taken == "last" and np.array_equal(frames[:, 0], stacks[:, -1])


def test_acting_builds_the_tokens_of_the_converted_step(pong_episodes):
    """observation_frames on one env observation gives the step that conversion gave the row."""
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.sequence import FieldSpec
    stack = FrameStack(4, "first", 84, 84)
    spec = EpisodeSpec((FieldSpec("obs", "image", (80, 80), frame_stack=stack),),
                       (FieldSpec("action", "discrete", ()),))
    layout = VocabLayout(1000)
    stacks = pong_episodes[0]["observations"][:-1]
    for mode in ("last", "split"):
        frames, _ = episode_frames(stacks, stack, mode)
        row = build_episode({"obs": frames}, {"action": pong_episodes[0]["actions"]}, spec, layout)
        t = 7
        one = build_episode({"obs": observation_frames(stacks[t], stack, mode)[None]}, None, spec, layout)
        start = int(row.step_starts[t])
        assert np.array_equal(row.tokens[start:start + len(one.tokens)], one.tokens)
        n = len(one.patches)
        assert np.array_equal(row.patches[t * n:(t + 1) * n], one.patches)


# --- ale-py frames through Minari ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "split"])
def test_ale_frame_stacks_decode_back_exactly(minari_root, pong_episodes, tmp_path, mode):
    env = pong_stacked()
    path = make_minari(f"pong/stacked-{mode}-v0", env, pong_episodes)
    out = tmp_path / "out"
    # pad keeps every pixel (84 -> 96): the frames must come back bit for bit
    assert tokenize(["rl", path, "--out", out, "--image-fit", "pad", "--frame-stack", mode, "--no-progress"]) == 0
    m = Manifest.read(out)
    spec = EpisodeSpec.from_dict(m.episode_spec)
    assert spec.observations[0].frame_stack == FrameStack(4, "first", 84, 84)
    taken = "last" if mode == "auto" else "split"
    assert m.typed_stats.frame_stacks == {"obs": FrameStackCount(**{taken: 2})} and "counts" not in m.stats
    assert m.options["frame_stack"] == mode
    for row, ep in zip(rows(out), pong_episodes, strict=True):
        stacks = ep["observations"][:-1]
        steps = decode_episode(row, spec, m.vocab_layout)
        assert len(steps) == len(stacks)
        for t, (obs, act) in enumerate(steps):
            got = obs["obs"][:, :84, :84]
            want = stacks[t, -1:] if taken == "last" else stacks[t]
            assert np.array_equal(got, want), f"step {t}"
            assert int(act["action"]) == int(ep["actions"][t])
        patches_per_frame = 36
        assert len(row.patches) == len(stacks) * patches_per_frame * (1 if taken == "last" else 4)
        # an agent builds step t from the env's observation exactly as the row holds it
        assert m.frame_modes() == {"obs": taken}
        t = 5
        one = build_episode(acting_observation({"obs": stacks[t][None]}, spec, m.frame_modes()), None, spec,
                            m.vocab_layout)
        n = len(one.patches)
        assert np.array_equal(row.patches[t * n:(t + 1) * n], one.patches)


def test_inspect_png_shows_the_frames(minari_root, pong_episodes, tmp_path, capsys):
    path = make_minari("pong/inspect-v0", pong_stacked(), pong_episodes[:1])
    out = tmp_path / "out"
    assert tokenize(["rl", path, "--out", out, "--no-progress"]) == 0
    png = tmp_path / "row.png"
    assert tokenize(["inspect", out, "--row", "0", "--png", png]) == 0
    text = capsys.readouterr().out
    assert "obs=<frames last 1x80x80" in text
    assert png.is_file() and Image.open(png).size[0] > 100
    assert tokenize(["inspect", out]) == 0
    summary = capsys.readouterr().out
    assert "frame stacks" in summary and "obs: last 1" in summary
    assert (f"tokens/step   min 27  median 27  max 27 over {STEPS}; smallest --seq-len that fits: 27 "
            "(34 for prompted sequences too)") in summary  # 34 + 1 - 34 // 4 = 27; 33 + 1 - 8 = 26


def test_inspect_into_a_closed_pipe_still_writes_the_png(minari_root, pong_episodes, tmp_path):
    """`inspect ... --png F | head`: the reader is gone before the listing is printed."""
    import os
    import subprocess
    import sys
    path = make_minari("pong/pipe-v0", pong_stacked(), pong_episodes[:1])
    out, png = tmp_path / "out", tmp_path / "row.png"
    assert tokenize(["rl", path, "--out", out, "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "converters.cli", "inspect", str(out), "--row", "0", "--json",
                             "--png", str(png)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert png.is_file() and png.stat().st_size > 1000


# --- Minari Box action bounds -------------------------------------------------------------------------

class WideActions(gym.ActionWrapper):
    """Pendulum whose action space is declared as Box(-10, 30): actions far outside [-1, 1]."""

    def __init__(self, env):
        super().__init__(env)
        self.action_space = gym.spaces.Box(-10.0, 30.0, (1,), np.float32)

    def action(self, a):
        return np.clip((np.asarray(a) - 10.0) / 10.0, -2, 2).astype(np.float32)


def test_minari_box_bounds_rescale_actions_and_decode_back_within_a_bin(minari_root, tmp_path):
    env = WideActions(gym.make("Pendulum-v1"))
    eps = rollouts(env, 2, 30, seed=1)
    path = make_minari("pendulum/wide-v0", env, eps)
    out = tmp_path / "out"
    assert tokenize(["rl", path, "--out", out, "--no-progress"]) == 0
    m = Manifest.read(out)
    spec = EpisodeSpec.from_dict(m.episode_spec)
    assert spec.actions[0].bounds == ((-10.0,), (30.0,))
    assert m.typed_stats.outside_unit_range is None and "outside_unit_range" not in m.stats
    bin_width = 40.0 / m.vocab_layout.num_bins
    for row, ep in zip(rows(out), eps, strict=True):
        got = np.array([a["action"] for _, a in decode_episode(row, spec, m.vocab_layout)]).reshape(-1)
        assert np.abs(got - ep["actions"].reshape(-1)).max() <= bin_width
        # what rollout calls on sampled ids: the same values, in the env's units
        ids = row.tokens[row.loss_mask.astype(bool)]
        acted = np.array([decode_actions(ids[t:t + 1], spec, m.vocab_layout)["action"] for t in range(len(ids))])
        assert np.array_equal(acted.reshape(-1), got)
    assert m.stats["field_errors"]["action"]["max"] <= bin_width / 2 + 1e-6


def test_values_outside_the_range_are_counted_warned_and_refused_when_strict(minari_root, tmp_path, capsys):
    env = WideActions(gym.make("Pendulum-v1"))
    eps = rollouts(env, 2, 20, seed=2)
    path = make_minari("pendulum/narrow-v0", env, eps)
    out = tmp_path / "out"
    # declare a range narrower than the data: values outside are counted, never silently clipped
    assert tokenize(["rl", path, "--out", out, "--action-bounds", "action=-5:5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    m = Manifest.read(out)
    n = int(np.count_nonzero(np.abs(np.concatenate([e["actions"] for e in eps])) > 5))
    assert n > 0 and m.typed_stats.outside_unit_range == {"action": n} == m.stats["outside_unit_range"]
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        ln for ln in err.splitlines() if "outside [-1, 1]" in ln and f"action {n:,}" in ln]
    code = tokenize(["rl", path, "--out", tmp_path / "strict", "--action-bounds", "action=-5:5", "--strict-ranges",
                     "--no-progress"])
    assert code == 1
    assert "outside [-1, 1]" in capsys.readouterr().err


def test_minari_id_without_version_resolves_to_the_installed_one(minari_root, tmp_path):
    env = gym.make("CartPole-v1")
    make_minari("cart/only-v3", env, rollouts(env, 1, 5))
    out = tmp_path / "out"
    assert tokenize(["rl", "cart/only", "--out", out, "--no-progress"]) == 0
    assert Manifest.read(out).total_rows == 1


# --- the jat-dataset's features -------------------------------------------------------------------------

def _rgba_png(stack_last: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(stack_last, "RGBA").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _write(tmp_path: Path, name: str, features: dict, rows: dict) -> Path:
    import datasets
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    path = tmp_path / f"{name}.parquet"
    ds.to_parquet(str(path))
    return path


def test_jat_atari_rgba_frame_stacks(pong_episodes, tmp_path):
    import datasets
    features = {"image_observations": datasets.Sequence(datasets.Image()),
                "rewards": datasets.Sequence(datasets.Value("float32")),
                "discrete_actions": datasets.Sequence(datasets.Value("int64"))}
    stacks = [ep["observations"][:-1] for ep in pong_episodes]  # (T, 4, 84, 84)
    path = _write(tmp_path, "atari-pong", features, {
        "image_observations": [[_rgba_png(np.moveaxis(s, 0, -1)) for s in st] for st in stacks],
        "rewards": [ep["rewards"].astype(np.float32).tolist() for ep in pong_episodes],
        "discrete_actions": [ep["actions"].astype(np.int64).tolist() for ep in pong_episodes]})
    out = tmp_path / "out"
    assert tokenize(["rl", path, "--out", out, "--image-fit", "pad", "--no-progress"]) == 0
    m = Manifest.read(out)
    spec = EpisodeSpec.from_dict(m.episode_spec)
    assert spec.observations[0].frame_stack == FrameStack(4, "last", 84, 84)
    assert m.typed_stats.frame_stacks == {"image_observations": FrameStackCount(last=2)}
    assert m.options["final_observation"] == "none in the source"
    for row, st in zip(rows(out), stacks, strict=True):
        steps = decode_episode(row, spec, m.vocab_layout)
        got = np.stack([o["image_observations"][0, :84, :84] for o, _ in steps])
        assert np.array_equal(got, st[:, -1])  # the newest frame, never channels 0-2


def test_jat_mujoco_and_metaworld_continuous(tmp_path, capsys):
    import datasets
    rng = np.random.default_rng(0)
    for name, dims, scale in (("mujoco-halfcheetah", (17, 6), 0.9), ("metaworld-assembly", (39, 4), 12.0)):
        obs = [rng.normal(size=(30, dims[0])).astype(np.float32) for _ in range(2)]
        act = [(rng.uniform(-1, 1, size=(30, dims[1])) * scale).astype(np.float32) for _ in range(2)]
        features = {"continuous_observations": datasets.Sequence(datasets.Sequence(datasets.Value("float32"),
                                                                                   length=dims[0])),
                    "continuous_actions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"),
                                                                              length=dims[1])),
                    "rewards": datasets.Sequence(datasets.Value("float32"))}
        path = _write(tmp_path, name, features, {"continuous_observations": [o.tolist() for o in obs],
                                                 "continuous_actions": [a.tolist() for a in act],
                                                 "rewards": [np.ones(30, np.float32).tolist()] * 2})
        out = tmp_path / name
        argv = ["rl", path, "--out", out, "--no-progress"]
        if scale > 1:  # MetaWorld's table declares no range: name it, else values are counted
            assert tokenize(argv) == 0
            assert "outside [-1, 1]" in capsys.readouterr().err
            assert Manifest.read(out).typed_stats.outside_unit_range["continuous_actions"] > 0
            out = tmp_path / f"{name}-bounded"
            argv = ["rl", path, "--out", out, "--no-progress", "--action-bounds", f"continuous_actions=-{scale}:{scale}"]
        assert tokenize(argv) == 0
        m = Manifest.read(out)
        spec = EpisodeSpec.from_dict(m.episode_spec)
        assert "counts" not in m.stats and m.typed_stats.outside_unit_range is None
        width = (2 * scale if scale > 1 else 2.0) / m.vocab_layout.num_bins
        for row, a in zip(rows(out), act, strict=True):
            got = np.stack([x["continuous_actions"] for _, x in decode_episode(row, spec, m.vocab_layout)])
            assert np.abs(got - a).max() <= width


def test_jat_babyai_mission_out_of_the_loss(tmp_path, sp_model_path):
    import datasets
    features = {"text_observations": datasets.Sequence(datasets.Value("string")),
                "discrete_observations": datasets.Sequence(datasets.Sequence(datasets.Value("int64"), length=148)),
                "discrete_actions": datasets.Sequence(datasets.Value("int64")),
                "rewards": datasets.Sequence(datasets.Value("float32"))}
    rng = np.random.default_rng(0)
    path = _write(tmp_path, "babyai-goto", features, {
        "text_observations": [["go to the red ball"] * 12],
        "discrete_observations": [rng.integers(0, 11, size=(12, 148)).tolist()],
        "discrete_actions": [rng.integers(0, 7, size=12).tolist()],
        "rewards": [np.zeros(12, np.float32).tolist()]})
    on, off = tmp_path / "on", tmp_path / "off"
    base = ["rl", path, "--text-tokenizer", sp_model_path, "--no-progress"]
    assert tokenize(base + ["--out", on]) == 0
    assert tokenize(base + ["--out", off, "--field-loss", "text_observations=off"]) == 0
    r_on, r_off = rows(on)[0], rows(off)[0]
    assert np.array_equal(r_on.tokens, r_off.tokens)
    assert int(r_off.loss_mask.sum()) == 12  # the actions only
    assert int(r_on.loss_mask.sum()) > 12
    spec = EpisodeSpec.from_dict(Manifest.read(off).episode_spec)
    assert [f.loss for f in spec.observations if f.kind == "text"] == [False]
    with pytest.raises(SystemExit) as e:
        tokenize(base + ["--out", tmp_path / "x", "--field-loss", "discrete_actions=off"])
    assert e.value.code == 2


def test_step_too_long_for_seq_len_is_refused(pong_episodes, tmp_path, capsys, minari_root):
    from trainer.cli import main as train_main
    path = make_minari("pong/long-v0", pong_stacked(), pong_episodes[:1])
    out = tmp_path / "out"
    assert tokenize(["rl", path, "--out", out, "--frame-stack", "split", "--no-progress"]) == 0
    m = Manifest.read(out)
    assert m.stats["longest_unit"] == {"tokens": 4 * 25 + 2, "row": 0, "source_id": m.stats["longest_unit"]["source_id"]}
    capsys.readouterr()
    code = train_main(["--data", str(out), "--out", str(tmp_path / "run"), "--seq-len", "64", "--steps", "1",
                       "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if "error" in ln]
    assert code == 2 and len(errors) == 1 and errors == err[-1:]  # after argparse's usage lines
    assert str(out) in err[-1] and "row 0" in err[-1] and "102 tokens" in err[-1] and "--seq-len 64" in err[-1]
    # without the manifest's record the rows are scanned, with the same answer
    from trainer.source import ShardSource
    d = json.loads((out / "manifest.json").read_text())
    del d["stats"]["longest_unit"]
    (out / "manifest.json").write_text(json.dumps(d))
    assert ShardSource(str(out)).longest_unit()[:2] == (102, 0)


def test_flat_hdf5_channel_first_stacks_are_frames_not_discrete_values(pong_episodes, tmp_path):
    """(N, 4, 84, 84) uint8 observations in a D4RL-style file: once typed as 28,224 discrete values."""
    import h5py
    path = tmp_path / "pong.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([ep["observations"][:-1] for ep in pong_episodes])
        f["actions"] = np.concatenate([ep["actions"] for ep in pong_episodes])
        f["rewards"] = np.concatenate([ep["rewards"] for ep in pong_episodes]).astype(np.float32)
        f["terminals"] = np.concatenate([ep["terminations"] for ep in pong_episodes])
        f["timeouts"] = np.concatenate([ep["truncations"] for ep in pong_episodes])
    out = tmp_path / "out"
    assert tokenize(["rl", path, "--out", out, "--image-size", "96x96", "--image-fit", "pad", "--no-progress"]) == 0
    m = Manifest.read(out)
    spec = EpisodeSpec.from_dict(m.episode_spec)
    assert (spec.observations[0].kind, spec.observations[0].shape) == ("image", (96, 96))
    assert m.typed_stats.frame_stacks == {"obs": FrameStackCount(last=2)}
    for row, ep in zip(rows(out), pong_episodes, strict=True):
        got = np.stack([o["obs"][0, :84, :84] for o, _ in decode_episode(row, spec, m.vocab_layout)])
        assert np.array_equal(got, ep["observations"][:-1, -1])
