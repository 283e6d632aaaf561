"""Acting env-steps/s with the key/value cache against without it: the `tiny` model at seq-len 1024
on HalfCheetah-v5 (17 observation + 1 separator + 6 action tokens a step), measured in one run.

    .venv/bin/python -m benchmarks.bench_rollout [--quick]

Without the cache each of the 6 action tokens re-runs the whole ~1,000-token context; with it a
step is one forward over the new observation and one per action token, plus a rebuild of the cache
each time the context is trimmed (every quarter of seq-len). Each episode's history starts full
(steps of random play), so the timed steps are the steady state of a long episode. One torch
thread; steps timed in this process's CPU time, which other processes' load does not inflate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque

import numpy as np
import torch

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
from trainer.model import GatoConfig, GatoModel
from trainer.acting.envs import make_env_fn
from trainer.acting.rollout import Agent, EpisodeContext, action_slots, concat_rows

ENV = "HalfCheetah-v5"
SPEC = EpisodeSpec((FieldSpec("obs", "continuous", (17,)),), (FieldSpec("action", "continuous", (6,)),))


def steps_per_s(model, layout: VocabLayout, seq_len: int, envs: int, steps: int, cache: bool) -> float:
    """Env-steps per CPU-second of `steps` steps in `envs` environments side by side."""
    make = make_env_fn(ENV, rescale_actions=True)
    agent = Agent(model, layout, SPEC, seq_len, cache=cache)
    rng = np.random.default_rng(0)
    environments = [make() for _ in range(envs)]
    obs, eps = [], []
    for i, env in enumerate(environments):
        o, _ = env.reset(seed=i)
        rows = []
        for _ in range(seq_len // 24):  # a full history of random play: the steady state
            a = rng.uniform(-1, 1, 6).astype(np.float32)
            rows.append(agent.step_row(o, {"action": a}))
            o, *_ = env.step(a)
        obs.append(o)
        eps.append(EpisodeContext(concat_rows(rows[:seq_len // 4 // 24]), deque(rows[seq_len // 4 // 24:])))
    slots = [action_slots(SPEC, layout, e.action_space) for e in environments]
    t = time.process_time()
    for _ in range(steps):
        acts = agent.act(obs, eps, slots)
        obs = [e.step(a["action"])[0] for e, a in zip(environments, acts)]
    dt = time.process_time() - t
    for e in environments:
        e.close()
    return steps * envs / dt


def tiny_model_and_args(argv: list[str] | None, description: str):
    """(options, layout, model) both rollout benchmarks act with: --quick, --seq-len, --envs, and a
    `tiny` model on 1 thread from seed 0."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--envs", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    layout = VocabLayout(text_vocab_size=8000, eos_id=2)
    torch.manual_seed(0)
    return args, layout, GatoModel(GatoConfig.from_preset("tiny", layout, seq_len=args.seq_len)).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    args, layout, model = tiny_model_and_args(argv, __doc__.splitlines()[0])
    steps = 6 if args.quick else 12
    full = steps_per_s(model, layout, args.seq_len, args.envs, steps, cache=False)
    cached = steps_per_s(model, layout, args.seq_len, args.envs, 4 * steps, cache=True)
    return [{"name": f"rollout tiny seq-len {args.seq_len} {ENV} ({args.envs} envs)", "figure": cached,
             "unit": "env-steps/s (cached)", "baseline": full, "ratio": cached / full, "target": 5.0}]


if __name__ == "__main__":
    for row in main(sys.argv[1:]):
        print(f"{row['name']}: cached {row['figure']:.1f} env-steps/s, uncached {row['baseline']:.1f}, "
              f"ratio {row['ratio']:.1f}x (target {row['target']}x)")
