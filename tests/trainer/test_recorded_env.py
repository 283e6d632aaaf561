"""The environment travels with the data: Breakout recorded through AtariPreprocessing +
FrameStackObservation into Minari (and the same frames as a jat-layout table, channel-last) is
converted, a tiny model trained, and `gato-train rollout --env ALE/Breakout-v5` acts in the
environment the manifest records, whose observations give, step for step, the tokens of the shards."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from converters.cli import main as tokenize_main
from schemas.env_spec import EnvSpec, EnvSpecError
from schemas.manifest import Manifest
from schemas.reader import ShardDir
from schemas.shard import row_from_table
from trainer.cli import main as train_main
from trainer.acting.envs import EnvWrappers, make_env_fn
from trainer.acting.rollout import Agent, slice_steps

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]

STEPS, SEED = 12, 5
ATARI_WRAPPERS = [
    {"entry_point": "gymnasium.wrappers:AtariPreprocessing",
     "kwargs": {"frame_skip": 4, "screen_size": 84, "grayscale_obs": True, "noop_max": 0}},
    {"entry_point": "gymnasium.wrappers:FrameStackObservation", "kwargs": {"stack_size": 4}}]


def breakout():
    import ale_py
    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=0)
    return gym.wrappers.FrameStackObservation(env, 4)


def record(env, episodes: int) -> list[dict]:
    """Random play; episode e starts from reset(seed=SEED + e)."""
    out = []
    env.action_space.seed(SEED)
    for e in range(episodes):
        obs, _ = env.reset(seed=SEED + e)
        o, a, r = [obs], [], []
        for _ in range(STEPS):
            act = int(env.action_space.sample())
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(float(rew))
            if term or trunc:
                break
        out.append({"observations": np.stack(o), "actions": np.asarray(a, np.int64), "rewards": np.asarray(r)})
    return out


@pytest.fixture(scope="module")
def episodes():
    return record(breakout(), 2)


@pytest.fixture(scope="module")
def minari_dir(minari_root, episodes):
    import minari
    from minari.data_collector import EpisodeBuffer
    env = breakout()
    buffers = [EpisodeBuffer(id=i, seed=SEED + i, observations=ep["observations"], actions=ep["actions"],
                             rewards=list(ep["rewards"]), terminations=[False] * len(ep["actions"]),
                             truncations=[False] * (len(ep["actions"]) - 1) + [True])
               for i, ep in enumerate(episodes)]
    minari.create_dataset_from_buffers("breakout/recorded-v0", buffers, env=env, algorithm_name="random")
    return Path(os.environ["MINARI_DATASETS_PATH"]) / "breakout/recorded-v0"


def _rgba_png(stack_last: np.ndarray) -> dict:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(stack_last, "RGBA").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


@pytest.fixture(scope="module")
def jat_dir(tmp_path_factory, episodes):
    """The jat-dataset's Atari layout: 84x84x4 RGBA PNG stacks (channel-last), no final observation."""
    import datasets
    root = tmp_path_factory.mktemp("jat") / "atari-breakout"
    root.mkdir()
    features = datasets.Features({"image_observations": datasets.Sequence(datasets.Image()),
                                  "rewards": datasets.Sequence(datasets.Value("float32")),
                                  "discrete_actions": datasets.Sequence(datasets.Value("int64"))})
    ds = datasets.Dataset.from_dict({
        "image_observations": [[_rgba_png(np.moveaxis(s, 0, -1)) for s in ep["observations"][:-1]]
                               for ep in episodes],
        "rewards": [ep["rewards"].astype(np.float32).tolist() for ep in episodes],
        "discrete_actions": [ep["actions"].tolist() for ep in episodes]}, features=features)
    ds.to_parquet(str(root / "train-00000-of-00001.parquet"))
    return root


def convert(src, out: Path, *extra) -> Manifest:
    assert tokenize_main(["rl", str(src), "--out", str(out), "--image-size", "32x32", "--no-progress",
                          *map(str, extra)]) == 0
    return Manifest.read(out)


def train(data: Path, run: Path, seq_len: int = 64) -> Path:
    assert train_main(["--data", str(data), "--out", str(run), "--steps", "2", "--batch-size", "2",
                       "--seq-len", str(seq_len), "--log-every", "1", "--no-progress"]) == 0
    return run


def assert_acting_tokens_are_the_shards(shards: Path, episodes: list[dict], seed: int = SEED,
                                        seq_len: int = 64) -> None:
    """Replay each recorded episode (its actions, from reset seed `seed` + its index) in the
    environment the manifest rebuilds: every step's tokens and patches, built by the agent from the
    live observation, are the row's."""
    sd = ShardDir.open(shards)
    m, spec = sd.manifest, sd.manifest.spec
    rows = [row_from_table(sd.table(i), k) for i in range(len(sd.shards)) for k in range(sd.table(i).num_rows)]
    make = make_env_fn(m.env.id, wrappers=EnvWrappers.from_manifest(m))
    agent = Agent(None, sd.layout, spec, seq_len, text_tokenizer=sd.text_tokenizer(), frame_modes=m.frame_modes())
    for e, (row, ep) in enumerate(zip(rows, episodes, strict=True)):
        env = make()
        obs, _ = env.reset(seed=seed + e)
        for t, a in enumerate(ep["actions"]):
            live = agent.step_row(obs, {spec.actions[0].name: np.asarray(a)})
            want = slice_steps(row, t, t + 1)
            assert np.array_equal(live.tokens, want.tokens), f"episode {e} step {t}: tokens differ"
            assert np.array_equal(live.patches, want.patches), f"episode {e} step {t}: patches differ"
            obs, *_ = env.step(a)
        env.close()


def test_minari_env_spec_is_recorded_and_rebuilt_step_for_step(minari_dir, episodes, tmp_path):
    m = convert(minari_dir, tmp_path / "shards")
    env = m.env
    assert env.id == "ALE/Breakout-v5" and env.kwargs["frameskip"] == 1
    assert [w.name for w in env.wrappers] == ["AtariPreprocessing", "FrameStackObservation"]
    assert env.wrappers[0].kwargs["screen_size"] == 84
    assert_acting_tokens_are_the_shards(tmp_path / "shards", episodes)


def test_rollout_acts_in_the_plain_id_with_the_recorded_wrappers(minari_dir, tmp_path, capsys):
    shards = tmp_path / "shards"
    convert(minari_dir, shards)
    run = train(shards, tmp_path / "run")
    assert train_main(["rollout", "--checkpoint", str(run), "--data", str(shards), "--env", "ALE/Breakout-v5",
                       "--episodes", "2", "--max-steps", "6", "--out", str(tmp_path / "eval")]) == 0, \
        capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["tasks"][0]["agent_steps"] == [6, 6]


def test_jat_layout_acts_through_env_spec_channel_first(jat_dir, episodes, tmp_path, capsys):
    spec = json.dumps({"id": "ALE/Breakout-v5", "kwargs": {"frameskip": 1, "repeat_action_probability": 0.0},
                       "wrappers": ATARI_WRAPPERS})
    shards = tmp_path / "shards"
    m = convert(jat_dir, shards, "--env-spec", spec)
    assert m.spec.observations[0].frame_stack.axis == "last"  # (84, 84, 4), the env gives (4, 84, 84)
    assert m.env == EnvSpec.parse(spec)
    assert_acting_tokens_are_the_shards(shards, episodes)
    run = train(shards, tmp_path / "run")
    assert train_main(["rollout", "--checkpoint", str(run), "--data", str(shards), "--env", "ALE/Breakout-v5",
                       "--episodes", "1", "--max-steps", "4"]) == 0, capsys.readouterr().err


def test_env_spec_from_data_cannot_name_any_module(tmp_path, capsys):
    with pytest.raises(EnvSpecError, match="not a wrapper of"):
        EnvSpec.from_dict({"id": "CartPole-v1", "wrappers": [{"entry_point": "os:system", "kwargs": {}}]})
    with pytest.raises(EnvSpecError, match="no module prefix"):
        EnvSpec.from_dict({"id": "evil.module:Env"})
    with pytest.raises(SystemExit) as e:  # bad usage, before any input is read
        tokenize_main(["rl", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "o"),
                       "--env-spec", '{"id": "CartPole-v1", "wrappers": [{"entry_point": "os:system"}]}'])
    assert e.value.code == 2
    assert "--env-spec" in capsys.readouterr().err


def test_a_manifest_whose_env_spec_names_another_module_is_unreadable(tmp_path):
    from schemas.manifest import ManifestError
    from tokenizer_kit.layout import VocabLayout
    m = Manifest(layout=VocabLayout(1000).to_dict(), converter="rl",
                 env_spec={"id": "CartPole-v1", "wrappers": [{"name": "x", "entry_point": "os:system"}]})
    (tmp_path / "manifest.json").write_text(json.dumps(m.to_dict()))
    with pytest.raises(ManifestError, match="not a wrapper of"):
        Manifest.read(tmp_path)


# --- the jat-dataset's other families, from their published folder layout ---------------------------

def _random_play(env, episodes: int, steps: int, seed: int) -> list[dict]:
    """Random play; episode e starts from reset(seed=seed + e); observations without the final one."""
    out = []
    env.action_space.seed(seed)
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        o, a, r = [], [], []
        for _ in range(steps):
            act = env.action_space.sample()
            o.append(obs), a.append(act)
            obs, rew, term, trunc, _ = env.step(act)
            r.append(float(rew))
            if term or trunc:
                break
        out.append({"observations": o, "actions": a, "rewards": r})
    env.close()
    return out


def _jat_folder(root: Path, task: str, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / task).mkdir(parents=True)
    pq.write_table(pa.table(columns), root / task / "train-00000-of-00001.parquet")
    pq.write_table(pa.table(columns), root / task / "test-00000-of-00001.parquet")
    return root / task


def _act(shards: Path, run: Path, env_id: str, capsys) -> dict:
    out = run.parent / "eval"
    assert train_main(["rollout", "--checkpoint", str(run), "--data", str(shards), "--env", env_id,
                       "--episodes", "2", "--max-steps", "5", "--out", str(out)]) == 0, capsys.readouterr().err
    return json.loads((out / "eval.json").read_text())["tasks"][0]


def test_jat_mujoco_converts_and_acts_in_gymnasium_mujoco(tmp_path, capsys):
    played = _random_play(gym.make("Hopper-v5"), 2, 10, seed=40)
    folder = _jat_folder(tmp_path / "jat", "mujoco-hopper", {
        "continuous_observations": [np.asarray(ep["observations"], np.float32).tolist() for ep in played],
        "continuous_actions": [np.asarray(ep["actions"], np.float32).tolist() for ep in played],
        "rewards": [ep["rewards"] for ep in played]})
    shards = tmp_path / "shards"
    m = convert(folder, shards, "--env-spec", "Hopper-v5")
    assert m.tasks == ["mujoco-hopper"] and m.env.id == "Hopper-v5"
    assert_acting_tokens_are_the_shards(shards, played, seq_len=400, seed=40)
    result = _act(shards, train(shards, tmp_path / "run"), "Hopper-v5", capsys)
    assert result["seeds"] == [0, 1] and all(1 <= s <= 5 for s in result["agent_steps"])


def test_jat_babyai_converts_and_acts_in_minigrid(tmp_path, capsys, sp_model_path):
    import minigrid
    gym.register_envs(minigrid)
    from trainer.env_wrappers import JatBabyAI
    played = _random_play(JatBabyAI(gym.make("BabyAI-GoToLocal-v0")), 2, 8, seed=70)
    folder = _jat_folder(tmp_path / "jat", "babyai-go-to-local", {
        "text_observations": [[o["text_observations"] for o in ep["observations"]] for ep in played],
        "discrete_observations": [[o["discrete_observations"].tolist() for o in ep["observations"]] for ep in played],
        "discrete_actions": [[int(a) for a in ep["actions"]] for ep in played],
        "rewards": [ep["rewards"] for ep in played]})
    spec = json.dumps({"id": "BabyAI-GoToLocal-v0",
                       "wrappers": [{"entry_point": "trainer.env_wrappers:JatBabyAI"}]})
    shards = tmp_path / "shards"
    m = convert(folder, shards, "--env-spec", spec, "--text-tokenizer", sp_model_path)
    assert m.tasks == ["babyai-go-to-local"] and [w.name for w in m.env.wrappers] == ["JatBabyAI"]
    assert_acting_tokens_are_the_shards(shards, played, seq_len=400, seed=70)
    result = _act(shards, train(shards, tmp_path / "run", seq_len=400), "BabyAI-GoToLocal-v0", capsys)
    assert len(result["agent"]) == 2


# --- a pixel task: MiniGrid through its RGB view ------------------------------------------------------

def minigrid_rgb(tile_size: int = 4):
    import minigrid
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper
    gym.register_envs(minigrid)
    return ImgObsWrapper(RGBImgPartialObsWrapper(gym.make("MiniGrid-Empty-Random-6x6-v0"), tile_size=tile_size))


def test_minigrid_rgb_view_unrecorded_wrapper_args_are_not_guessed(minari_root, tmp_path, capsys):
    """minigrid's wrappers do not record their arguments (gymnasium writes kwargs None): rebuilt
    with the default tile size the agent would see 56x56 views instead of the recorded 28x28. The
    converter records no environment and says so; --env-spec gives it, and then acting replays
    the recorded episodes token for token."""
    import minari
    from minari.data_collector import EpisodeBuffer
    env = minigrid_rgb()
    played = _random_play(minigrid_rgb(), 2, 8, seed=90)
    buffers = []
    for i, ep in enumerate(played):
        last = env.reset(seed=90 + i)[0]  # only for the (dropped) final observation's shape
        buffers.append(EpisodeBuffer(id=i, observations=np.stack(ep["observations"] + [last]),
                                     actions=np.asarray(ep["actions"]), rewards=ep["rewards"],
                                     terminations=[False] * len(ep["actions"]),
                                     truncations=[False] * (len(ep["actions"]) - 1) + [True]))
    minari.create_dataset_from_buffers("minigrid/rgb-v0", buffers, env=env, algorithm_name="random")
    path = Path(os.environ["MINARI_DATASETS_PATH"]) / "minigrid/rgb-v0"
    m = convert(path, tmp_path / "plain")
    assert m.env is None and "RGBImgPartialObsWrapper did not record its arguments" in capsys.readouterr().err
    spec = json.dumps({"id": "MiniGrid-Empty-Random-6x6-v0", "wrappers": [
        {"entry_point": "minigrid.wrappers:RGBImgPartialObsWrapper", "kwargs": {"tile_size": 4}},
        {"entry_point": "minigrid.wrappers:ImgObsWrapper"}]})
    shards = tmp_path / "shards"
    m = convert(path, shards, "--env-spec", spec)
    assert m.spec.observations[0].kind == "image" and m.tasks == ["minigrid/rgb-v0"]
    assert_acting_tokens_are_the_shards(shards, played, seq_len=400, seed=90)
    result = _act(shards, train(shards, tmp_path / "run"), "MiniGrid-Empty-Random-6x6-v0", capsys)
    assert len(result["agent"]) == 2


def test_seeds_the_data_was_recorded_on_are_recorded_and_refused_for_evaluation(minari_dir, tmp_path, capsys):
    """Minari keeps each episode's reset seed: the manifest records them as ranges, and an
    evaluation that would start from one of them is refused before acting."""
    shards = tmp_path / "shards"
    m = convert(minari_dir, shards)
    assert m.options["recorded_seeds"] == [[SEED, SEED + 1]]
    run = train(shards, tmp_path / "run")
    argv = ["rollout", "--checkpoint", str(run), "--data", str(shards), "--env", "ALE/Breakout-v5",
            "--episodes", "2", "--max-steps", "2", "--out", str(tmp_path / "eval")]
    assert train_main(argv + ["--seed", str(SEED - 1)]) == 1
    assert f"recorded on (first {SEED})" in capsys.readouterr().err
    assert train_main(argv + ["--seed", str(SEED + 2)]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["tasks"][0]["seeds"] == [SEED + 2, SEED + 3]


def test_a_suite_gives_the_environment_when_the_data_does_not(jat_dir, tmp_path, capsys):
    shards = tmp_path / "shards"
    m = convert(jat_dir, shards)  # no --env-spec: nothing recorded
    assert m.env is None
    run = train(shards, tmp_path / "run")
    task = f"tasks:\n  - env: ALE/Breakout-v5\n    data: {shards}\n    episodes: 1\n    max_steps: 3\n"
    plain = tmp_path / "plain.yaml"
    plain.write_text(task)
    capsys.readouterr()
    assert train_main(["eval", "--checkpoint", str(run), "--suite", str(plain), "--out", str(tmp_path / "e1")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "frame stacks of shape" in err  # raw 210x160 RGB frames
    spec = {"id": "ALE/Breakout-v5", "kwargs": {"frameskip": 1}, "wrappers": ATARI_WRAPPERS}
    given = tmp_path / "given.yaml"
    given.write_text(task + f"    env_spec: {json.dumps(spec)}\n")
    assert train_main(["eval", "--checkpoint", str(run), "--suite", str(given), "--out", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["tasks"][0]["agent_steps"] == [3]
