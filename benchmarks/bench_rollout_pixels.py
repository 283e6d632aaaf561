"""Acting with image observations: env-steps/s of the `tiny` model (cached decoding) in Breakout,
rebuilt as recorded (AtariPreprocessing + FrameStackObservation: 84x84 grey stacks, each step's
newest frame resized to 80x80 = 25 patches + separator + 1 action token), against the same run's
model forward passes alone (the env-steps/s the model's `extend` calls would allow if tokenising,
patching, sampling and the emulator cost nothing).

    .venv/bin/python -m benchmarks.bench_rollout_pixels [--quick]

The ratio is the share of acting time spent in the model: the overhead of everything else is
1 - ratio. Each episode's history starts full (random play), so the timed steps are the steady
state of a long episode, cache rebuilds on trimming included. One torch thread; CPU time of this
process, which other processes' load does not inflate.
"""

from __future__ import annotations

import sys
import time
from collections import deque

import numpy as np
import torch

from benchmarks.bench_rollout import tiny_model_and_args
from schemas.env_spec import EnvSpec
from tokenizer_kit.frames import FrameStack
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
from trainer.acting.envs import EnvWrappers, make_env_fn
from tokenizer_kit.rows import concat_rows
from trainer.acting.rollout import Agent, EpisodeContext, action_slots

ENV = EnvSpec.from_dict({"id": "ALE/Breakout-v5", "kwargs": {"frameskip": 1, "repeat_action_probability": 0.0},
                         "wrappers": [{"entry_point": "gymnasium.wrappers:AtariPreprocessing",
                                       "kwargs": {"frame_skip": 4, "screen_size": 84, "noop_max": 0}},
                                      {"entry_point": "gymnasium.wrappers:FrameStackObservation",
                                       "kwargs": {"stack_size": 4}}]})
SPEC = EpisodeSpec((FieldSpec("obs", "image", (80, 80), frame_stack=FrameStack(4, "first", 84, 84)),),
                   (FieldSpec("action", "discrete", ()),))


def acting(model, layout: VocabLayout, seq_len: int, envs: int, steps: int) -> tuple[float, float]:
    """(env-steps per CPU-second of acting, env-steps per CPU-second of the model's forwards alone)."""
    make = make_env_fn(ENV.id, wrappers=EnvWrappers(recorded=ENV))
    agent = Agent(model, layout, SPEC, seq_len, frame_modes={"obs": "last"})
    rng = np.random.default_rng(0)
    environments = [make() for _ in range(envs)]
    obs, eps = [], []
    per_step = 27
    for i, env in enumerate(environments):
        o, _ = env.reset(seed=i)
        rows = []
        for _ in range(seq_len // per_step):  # a full history of random play: the steady state
            a = int(rng.integers(env.action_space.n))
            rows.append(agent.step_row(o, {"action": np.asarray(a)}))
            o, *_ = env.step(a)
        obs.append(o)
        cut = seq_len // 4 // per_step
        eps.append(EpisodeContext(concat_rows(rows[:cut]), deque(rows[cut:])))
    slots = [action_slots(SPEC, layout, e.action_space) for e in environments]
    in_model = [0.0]
    extend = model.extend

    def timed(*a, **k):
        t0 = time.process_time()
        try:
            return extend(*a, **k)
        finally:
            in_model[0] += time.process_time() - t0

    model.extend = timed
    t = time.process_time()
    for _ in range(steps):
        acts = agent.act(obs, eps, slots)
        obs = []
        for i, (e, a) in enumerate(zip(environments, acts)):
            o, _, term, trunc, _ = e.step(int(a["action"]))
            obs.append(e.reset(seed=100 + i)[0] if term or trunc else o)
    dt = time.process_time() - t
    del model.extend
    for e in environments:
        e.close()
    return steps * envs / dt, steps * envs / max(in_model[0], 1e-9)


def main(argv: list[str] | None = None) -> list[dict]:
    args, layout, model = tiny_model_and_args(argv, __doc__.splitlines()[0])
    with torch.no_grad():
        rate, model_only = acting(model, layout, args.seq_len, args.envs, 10 if args.quick else 40)
    return [{"name": f"rollout tiny seq-len {args.seq_len} Breakout 80x80 frames ({args.envs} envs)", "figure": rate,
             "unit": "env-steps/s (cached)", "baseline": model_only, "ratio": rate / model_only, "target": 0.5}]


if __name__ == "__main__":
    for row in main(sys.argv[1:]):
        print(f"{row['name']}: {row['figure']:.1f} env-steps/s acting, {row['baseline']:.1f} if only the model's "
              f"forward passes cost time: {row['ratio']:.0%} of acting time in the model (target {row['target']:.0%})")
