"""A Dict action space through acting: an environment whose actions are {"move": Discrete(3),
"force": Box(2)} is recorded into Minari, converted by `gato-tokenize rl` (fields `action/move`,
`action/force`, tokenizer_kit.fields), and a Gato model acts in it: every action it plays is legal,
and the tokens acting builds for each recorded step are the converter's."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from converters.cli import main as tokenize_main
from schemas.reader import ShardDir
from schemas.shard import row_from_table
from trainer.acting.rollout import (Agent, action_member, action_slots, decode_actions, env_action,
                                    load_demonstrations, run_episodes)
from trainer.model import GatoConfig, GatoModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 8


class DictActionEnv(gym.Env):
    """A point pushed by a discrete move and a 2-d force; refuses (raises on) any illegal action."""

    observation_space = spaces.Box(-5.0, 5.0, (3,), np.float32)
    action_space = spaces.Dict({"move": spaces.Discrete(3), "force": spaces.Box(-1.0, 1.0, (2,), np.float32)})

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, self.np_random.uniform(-1, 1, 3).astype(np.float32)
        self.played: list = []
        return self.x.copy(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise AssertionError(f"illegal action {action!r}")
        self.played.append(action)
        self.t += 1
        self.x = np.clip(self.x + 0.1 * np.array([action["move"] - 1, *action["force"]], np.float32), -5, 5)
        return self.x.copy(), float(-np.abs(self.x).sum()), False, self.t >= STEPS, {}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, minari_root, sp_model_path):
    """Two random episodes, recorded and converted; (shard dir, observations, actions of episode 0)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    env = DictActionEnv()
    env.action_space.seed(0)
    buffers, first = [], None
    for e in range(2):
        obs, _ = env.reset(seed=e)
        o, a = [obs], []
        for _ in range(STEPS):
            act = env.action_space.sample()
            obs, *_ = env.step(act)
            o.append(obs), a.append(act)
        acts = {"move": np.asarray([x["move"] for x in a], np.int64),
                "force": np.stack([x["force"] for x in a]).astype(np.float32)}
        buffers.append(EpisodeBuffer(id=e, seed=e, observations=np.stack(o), actions=acts, rewards=[0.0] * STEPS,
                                     terminations=[False] * STEPS, truncations=[False] * (STEPS - 1) + [True]))
        first = first or (o, a)
    with warnings.catch_warnings():  # minari's advice about authors and permalinks
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/dict-actions-v0", buffers, observation_space=env.observation_space,
                                           action_space=env.action_space, algorithm_name="random")
    import os
    from pathlib import Path
    shards = tmp_path_factory.mktemp("dict-shards")
    src = Path(os.environ["MINARI_DATASETS_PATH"]) / "test" / "dict-actions-v0"
    assert tokenize_main(["rl", str(src), "--out", str(shards), "--text-tokenizer", sp_model_path,
                          "--no-progress"]) == 0
    return shards, *first


def test_the_data_names_dict_actions_action_slash_key_and_acting_finds_their_spaces(recorded):
    shards, _, _ = recorded
    demos = load_demonstrations(shards)
    assert [f.name for f in demos.spec.actions] == ["action/force", "action/move"]  # gymnasium sorts Dict keys
    space = DictActionEnv.action_space
    assert action_member(space, "action/move") is space["move"]
    assert action_member(space, "action/force") is space["force"]
    # Discrete(3): the move token may take 3 ids only; the force tokens any continuous bin
    slots = action_slots(demos.spec, demos.layout, space)
    assert [s.field for s in slots] == ["action/force", "action/force", "action/move"]
    assert slots[2].hi - slots[2].lo == 3
    with pytest.raises(ValueError, match="no member"):
        action_member(space, "action/jump")


def test_recorded_steps_rebuild_token_for_token_and_decode_to_the_played_actions(recorded):
    shards, observations, actions = recorded
    demos = load_demonstrations(shards)
    row = row_from_table(ShardDir.open(shards).table(0), 0)
    agent = Agent(None, demos.layout, demos.spec, seq_len=1024)
    space = DictActionEnv.action_space
    slots = action_slots(demos.spec, demos.layout, space)
    bounds = np.append(row.step_starts, len(row.tokens))
    for t in range(STEPS):
        a, b = int(bounds[t]), int(bounds[t + 1])
        current = agent.observe(observations[t])
        np.testing.assert_array_equal(current.tokens, row.tokens[a:a + len(current)], err_msg=f"step {t}")
        ids = row.tokens[a + len(current):b]
        assert all(s.lo <= i < s.hi for s, i in zip(slots, ids, strict=True))
        values = decode_actions(ids, demos.spec, demos.layout)
        played = env_action(values, demos.spec, space)
        assert space.contains(played)
        assert played["move"] == actions[t]["move"]
        np.testing.assert_allclose(played["force"], actions[t]["force"], atol=0.02)  # one mu-law bin
        np.testing.assert_array_equal(agent.step_row(observations[t], values).tokens, row.tokens[a:b])


def test_a_model_acts_in_the_dict_action_env_with_legal_actions_only(recorded):
    shards, _, _ = recorded
    demos = load_demonstrations(shards)
    torch.manual_seed(0)
    model = GatoModel(GatoConfig.from_preset("tiny", demos.layout, seq_len=256)).eval()
    envs: list[DictActionEnv] = []

    def make_env():
        envs.append(DictActionEnv())
        return envs[-1]

    agent = Agent(model, demos.layout, demos.spec, seq_len=256, temperature=1.0, seed=3)
    results = run_episodes(agent, make_env, 2, demos.rows, 64, "end", seed=100)
    assert [r.steps for r in results] == [STEPS, STEPS]  # every step played (an illegal action raises)
    moves = {int(a["move"]) for e in envs for a in e.played}
    assert moves <= {0, 1, 2} and all(e.played for e in envs)
