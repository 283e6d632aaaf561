"""Acting: legal action ids only, and observation tokens identical to the converter's."""

from __future__ import annotations

import warnings
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch

from tokenizer_kit.layout import CONTINUOUS, DISCRETE, SEPARATOR, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from trainer.acting.rollout import (Agent, EpisodeContext, action_slots, concat_rows, decode_actions, prompt_window,
                             run_episodes, sample_in_ranges, slice_steps)

LAYOUT = VocabLayout(text_vocab_size=1000, eos_id=2)
CARTPOLE = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))
PENDULUM = EpisodeSpec((FieldSpec("obs", "continuous", (3,)),), (FieldSpec("action", "continuous", (1,)),))


class AdversarialModel(torch.nn.Module):
    """Puts nearly all probability on ids an action must never take (text, separator, discrete >= n,
    the wrong value range); a legal id gets only a slight edge over the other legal ids."""

    def __init__(self, layout: VocabLayout, favourite: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # so next(model.parameters()) finds a device
        self.logits = torch.zeros(layout.vocab_size)
        self.logits[:] = 50.0  # every id very likely...
        for m in (DISCRETE, CONTINUOUS):
            lo, hi = layout.id_range(m)
            self.logits[lo:hi] = 0.0  # ...except the value ranges an action may use
        self.logits[layout.separator_id] = 100.0
        self.logits[layout.id_range(DISCRETE)[0] + 7] = 80.0  # discrete 7: illegal for Discrete(2)
        self.logits[favourite] = 1.0

    def forward(self, batch):
        B, L = batch.tokens.shape
        return self.logits.expand(B, L, -1).clone()


def _run(spec, env_id, model, steps=5, temperature=0.0, rescale=False):
    from trainer.acting.envs import make_env_fn
    agent = Agent(model, LAYOUT, spec, seq_len=64, temperature=temperature)
    return agent, run_episodes(agent, make_env_fn(env_id, rescale), 2, [], 0, "none", max_steps=steps)


def test_sampling_stays_in_each_rows_range_greedy_and_sampled():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, LAYOUT.vocab_size, generator=g) * 5
    ranges = [(LAYOUT.id_range(DISCRETE)[0], LAYOUT.id_range(DISCRETE)[0] + 2)] * 32 + \
             [LAYOUT.id_range(CONTINUOUS)] * 32
    logits[:, LAYOUT.separator_id] = 1e4  # the unrestricted argmax
    for temperature in (0.0, 1.0, 5.0):
        ids = sample_in_ranges(logits, ranges, temperature, g)
        lo = np.array([r[0] for r in ranges])
        hi = np.array([r[1] for r in ranges])
        assert ((ids >= lo) & (ids < hi)).all(), temperature
    # greedy picks the best legal id, not just any legal id
    greedy = sample_in_ranges(logits, ranges, 0.0)
    for b, (lo, hi) in enumerate(ranges):
        assert greedy[b] == lo + int(logits[b, lo:hi].argmax())


def test_discrete_actions_are_restricted_to_the_action_space():
    lo = LAYOUT.id_range(DISCRETE)[0]
    slots = action_slots(CARTPOLE, LAYOUT, gym.spaces.Discrete(2))
    assert [(s.lo, s.hi) for s in slots] == [(lo, lo + 2)]
    model = AdversarialModel(LAYOUT, favourite=lo + 1)
    for temperature in (0.0, 3.0):
        agent, results = _run(CARTPOLE, "CartPole-v1", model, temperature=temperature)
        assert all(r.steps >= 1 for r in results)
    # greedy: the favoured legal value 1, despite the separator and discrete 7 scoring far higher
    agent = Agent(model, LAYOUT, CARTPOLE, seq_len=64)
    obs = [np.zeros(4, np.float32)] * 3
    acts = agent.act(obs, [EpisodeContext(concat_rows([])) for _ in obs], [slots] * 3)
    assert [int(a["action"]) for a in acts] == [1, 1, 1]


def test_continuous_actions_are_bins_decoded_without_mu_law():
    lo, hi = LAYOUT.id_range(CONTINUOUS)
    model = AdversarialModel(LAYOUT, favourite=lo + 640)  # SPEC 2: action 0.25 -> T+640
    agent = Agent(model, LAYOUT, PENDULUM, seq_len=64)
    slots = action_slots(PENDULUM, LAYOUT, gym.spaces.Box(-1, 1, (1,)))
    assert [(s.lo, s.hi) for s in slots] == [(lo, hi)]
    acts = agent.act([np.array([1.0, 0.0, 0.0], np.float32)], [EpisodeContext(concat_rows([]))], [slots])
    assert acts[0]["action"].shape == (1,)
    assert abs(float(acts[0]["action"][0]) - 0.25) <= 1.0 / 1024  # bin centre of 0.25, no companding
    assert decode_actions(np.array([lo]), PENDULUM, LAYOUT)["action"][0] == pytest.approx(-1 + 1 / 1024)
    # the continuous sample is stepped through the rescaling wrapper: torque 0.25 * 2 = 0.5
    _, results = _run(PENDULUM, "Pendulum-v1", model, steps=3, rescale=True)
    assert [r.steps for r in results] == [3, 3]


def test_acting_observation_tokens_equal_the_episode_row():
    """The agent's per-step rows, joined, are the row build_episode makes of the whole episode."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    observations, actions = [obs], []
    for t in range(12):
        a = t % 2
        obs, *_ = env.step(a)
        observations.append(obs)
        actions.append(a)
    agent = Agent(None, LAYOUT, CARTPOLE, seq_len=512)
    full = build_episode({"obs": np.stack(observations[:-1])}, {"action": np.array(actions)}, CARTPOLE, LAYOUT)
    steps = [agent.step_row(o, {"action": np.asarray(a)}) for o, a in zip(observations[:-1], actions)]
    joined = concat_rows(steps)
    for col in ("tokens", "loss_mask", "local_pos", "modality"):
        np.testing.assert_array_equal(getattr(joined, col), getattr(full, col), err_msg=col)
    current = agent.observe(observations[0])  # observation + separator, no action
    assert current.modality[-1] == SEPARATOR
    np.testing.assert_array_equal(current.tokens, full.tokens[:len(current)])


def test_context_keeps_the_prompt_and_drops_the_oldest_steps():
    rows = [build_episode({"obs": np.full((1, 4), t, np.float32)}, {"action": np.array([t % 2])}, CARTPOLE, LAYOUT)
            for t in range(20)]
    prompt = concat_rows(rows[:2])
    agent = Agent(None, LAYOUT, CARTPOLE, seq_len=40)
    ep = EpisodeContext(prompt, deque(rows[2:19]), trimmed=False)
    agent.fit(ep, 6)
    ctx = agent.context(ep, rows[19])
    assert len(ctx) <= 40 and ep.trimmed
    np.testing.assert_array_equal(ctx.tokens[:len(prompt)], prompt.tokens)  # prompt first, whole
    np.testing.assert_array_equal(ctx.tokens[-6:], rows[19].tokens)  # current step last
    # 40 - 12 prompt - 6 current leaves 22 tokens; trimmed a quarter of seq_len further (to 12): 2 steps
    assert len(ep.history) == 2
    np.testing.assert_array_equal(ctx.tokens[len(prompt):len(prompt) + 6], rows[17].tokens)
    before = list(ep.history)
    ep.trimmed = False
    agent.fit(ep, 6)  # fits: nothing dropped, the cache may carry on
    assert list(ep.history) == before and not ep.trimmed


def test_prompt_window_takes_whole_steps():
    episode = build_episode({"obs": np.random.default_rng(0).normal(size=(30, 4))}, {"action": np.arange(30) % 2},
                            CARTPOLE, LAYOUT)
    end = prompt_window(episode, 20, "end")
    assert len(end) == 18  # 3 whole steps of 6 tokens
    np.testing.assert_array_equal(end.tokens, episode.tokens[-18:])
    win = prompt_window(episode, 20, "window", np.random.default_rng(1))
    # as the loader's training prompts: 20 tokens from a timestep boundary
    assert len(win) == 20 and win.modality[0] == CONTINUOUS
    start = int(np.flatnonzero([(episode.tokens[s:s + 20] == win.tokens).all() for s in range(0, 160, 6)])[0]) * 6
    np.testing.assert_array_equal(win.tokens, episode.tokens[start:start + 20])
    np.testing.assert_array_equal(slice_steps(episode, 2, 4).tokens, episode.tokens[12:24])
    assert len(prompt_window(episode, 20, "none")) == 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_acting_tokens_equal_what_the_rl_converter_wrote(env_id, tmp_path, monkeypatch, sp_model_path):
    """Record a Minari dataset, convert it with `gato-tokenize rl`, and rebuild every step at acting time."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from converters.cli import main as tokenize_main
    from schemas.reader import ShardDir
    from schemas.shard import row_from_table
    from trainer.acting.envs import make_env_fn
    from trainer.acting.rollout import load_demonstrations

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = make_env_fn(env_id, rescale_actions=True)()
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    observations, actions = [obs], []
    for _ in range(15):
        a = env.action_space.sample()
        obs, r, term, trunc, _ = env.step(a)
        observations.append(obs)
        actions.append(a)
        if term:
            break
    n = len(actions)
    buf = EpisodeBuffer(id=0, seed=0, observations=np.asarray(observations), actions=np.asarray(actions),
                        rewards=[1.0] * n, terminations=[False] * (n - 1) + [True], truncations=[False] * n, infos={})
    with warnings.catch_warnings():  # minari's advice about authors and permalinks
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/acting-v0", [buf], env=env)
    shards = tmp_path / "shards"
    assert tokenize_main(["rl", str(tmp_path / "minari" / "test" / "acting-v0"), "--out", str(shards),
                          "--text-tokenizer", sp_model_path, "--no-progress"]) == 0
    demos = load_demonstrations(shards)
    row = row_from_table(ShardDir.open(shards).table(0), 0)
    agent = Agent(None, demos.layout, demos.spec, seq_len=1024)
    bounds = np.append(row.step_starts, len(row.tokens))
    for t in range(n):
        current = agent.observe(observations[t])  # what the agent builds before it acts
        a = int(bounds[t])
        for col in ("tokens", "loss_mask", "local_pos", "modality"):
            np.testing.assert_array_equal(getattr(current, col), getattr(row, col)[a:a + len(current)],
                                          err_msg=f"step {t} {col}")
        # the whole step, with the action decoded from its tokens as the agent would have sampled it
        slots = action_slots(demos.spec, demos.layout, env.action_space)
        ids = row.tokens[a + len(current):int(bounds[t + 1])]
        assert all(s.lo <= i < s.hi for s, i in zip(slots, ids))
        full = agent.step_row(observations[t], decode_actions(ids, demos.spec, demos.layout))
        np.testing.assert_array_equal(full.tokens, row.tokens[a:int(bounds[t + 1])])


def test_multi_token_actions_keep_every_context_within_seq_len():
    spec = EpisodeSpec((FieldSpec("obs", "continuous", (3,)),), (FieldSpec("action", "discrete", (2,)),))
    lo = LAYOUT.id_range(DISCRETE)[0]
    slots = action_slots(spec, LAYOUT, gym.spaces.MultiDiscrete([3, 5]))
    assert [(s.lo, s.hi) for s in slots] == [(lo, lo + 3), (lo, lo + 5)]

    class Recording(AdversarialModel):
        lengths: list = []

        def forward(self, batch):
            self.lengths.append(int(batch.attention_mask.sum(1).max()) + 1)  # + the dummy last token
            return super().forward(batch)

    model = Recording(LAYOUT, favourite=lo + 4)  # legal for the second slot only
    agent = Agent(model, LAYOUT, spec, seq_len=23)  # a step is 3 + 1 + 2 = 6 tokens
    rows = [agent.step_row(np.full(3, t, np.float32), {"action": np.array([t % 3, 4])}) for t in range(6)]
    ep = EpisodeContext(concat_rows(rows[:1]), deque(rows))
    acts = agent.act([np.zeros(3, np.float32)], [ep], [slots])
    assert acts[0]["action"].tolist() == [0, 4]  # slot 0 may not take 4: the best legal value there is 0
    assert max(model.lengths) - 1 <= 23 and len(model.lengths) == 2
    # 23 - 6 prompt - 5 (current + 1 pending action) leaves 12; trimmed to 12 - 23 // 4 = 7: one step,
    # then the played step is appended
    assert len(ep.history) == 2
    np.testing.assert_array_equal(ep.history[-1].tokens[-2:], [lo + 0, lo + 4])
