"""Stacked Atari frames to rows: grey frames per CPU-second against the per-frame floor.

Input: real ALE Pong screens (ale-py, grey, resized to 84x84 by Pillow as Atari preprocessing
does) stacked four deep by gymnasium's `FrameStackObservation`: (T, 4, 84, 84) uint8 episodes.
Measured in the same run on the same frames:

* baseline (the bound): per frame, Pillow's bilinear resize to 80x80 (the nearest multiple of
  the 16-pixel patch) plus a numpy reshape of the result into 25 RGB patches of 768 bytes: the
  work no converter can skip;
* figure: the rows themselves, through tokenizer_kit as the RL converter calls it
  (`frames.episode_frames`: the stack check and the frame choice, then `sequence.build_episode`:
  fit, patches, positions, tokens, the row), with `--frame-stack split` (every frame of every
  stack) and `auto` (which takes `last` here: one new frame a step). Frames = grey frames put in
  rows. Target: >= 0.8x the bound.

Rates are per CPU-second of this process (best of `--repeats`), as the machine is shared.

    .venv/bin/python -m benchmarks.bench_frames [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TARGET = 0.8


def pong_stacks(steps: int, episodes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stacked observations (T, 4, 84, 84), actions (T,)) of random-policy Pong episodes."""
    import ale_py
    import gymnasium as gym
    from PIL import Image

    gym.register_envs(ale_py)

    class Resize84(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)

        def observation(self, obs):
            return np.asarray(Image.fromarray(obs).resize((84, 84), Image.BILINEAR))

    env = gym.wrappers.FrameStackObservation(
        Resize84(gym.make("ALE/Pong-v5", obs_type="grayscale", repeat_action_probability=0.0)), 4)
    env.action_space.seed(0)
    out = []
    for e in range(episodes):
        obs, _ = env.reset(seed=e)
        o, a = [], []
        for _ in range(steps):
            act = env.action_space.sample()
            o.append(obs)
            a.append(act)
            obs, _, term, trunc, _ = env.step(act)
            if term or trunc:
                break
        out.append((np.stack(o), np.asarray(a, np.int64)))
    return out


def bound_rate(frames: np.ndarray, repeats: int) -> float:
    """Grey frames per CPU-second of Pillow's resize plus a numpy patch reshape, frame by frame."""
    from PIL import Image
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for f in frames:
            g = np.asarray(Image.fromarray(f).resize((80, 80), Image.BILINEAR))
            p = g.reshape(5, 16, 5, 16).transpose(0, 2, 1, 3).reshape(25, 256)
            np.repeat(p, 3, axis=1)
        best = min(best, time.process_time() - t0)
    return len(frames) / best


def rows_rate(episodes, mode: str, repeats: int) -> tuple[float, int]:
    """(grey frames per CPU-second, frames) of building the rows through tokenizer_kit."""
    from tokenizer_kit.frames import FrameStack, episode_frames
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
    stack = FrameStack(4, "first", 84, 84)
    spec = EpisodeSpec((FieldSpec("obs", "image", (80, 80), frame_stack=stack),),
                       (FieldSpec("action", "discrete", ()),))
    layout = VocabLayout(32000)
    best, frames = float("inf"), 0
    for _ in range(repeats):
        frames = 0
        t0 = time.process_time()
        for obs, act in episodes:
            grey, _ = episode_frames(obs, stack, mode, "obs")
            build_episode({"obs": grey}, {"action": act}, spec, layout)
            frames += grey.shape[0] * grey.shape[1]
        best = min(best, time.process_time() - t0)
    return frames / best, frames


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 episodes of 150 steps instead of 4 of 300")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    steps, n = (150, 2) if args.quick else (300, 4)
    episodes = pong_stacks(steps, n)
    all_frames = np.concatenate([obs.reshape(-1, 84, 84) for obs, _ in episodes])
    rows_rate(episodes[:1], "split", 1)  # imports and first calls
    bound = bound_rate(all_frames, args.repeats)
    rows = []
    for mode in ("split", "auto"):
        rate, frames = rows_rate(episodes, mode, args.repeats)
        rows.append({"name": f"stacked 84x84 Atari frames -> rows (--frame-stack {mode}) vs Pillow resize + "
                             f"patch reshape per frame", "figure": rate, "unit": "frames/s", "baseline": bound,
                     "baseline_name": "Pillow resize + numpy patch reshape", "ratio": rate / bound,
                     "target": TARGET})
        print(f"{rows[-1]['name']}: {rate:,.0f} frames/s vs {bound:,.0f} -> ratio {rate / bound:.2f} "
              f"(target {TARGET})  [{frames} frames]")
    return rows


if __name__ == "__main__":
    main()
