"""Shard compression (`--compression none|lz4|zstd`): bytes on disk, conversion speed and read speed.

Two kinds of rows, made here: pixel RL -- real Atari frames (ALE Pong through gymnasium and
ale-py, random actions; 210x160 frames halved and cropped to 96x80, so 30 patches a step) -- and
state RL -- HalfCheetah-sized random walks (17 continuous observations, 6 continuous actions).
Each goes through the real writer (`converters.writer.convert`, one worker) once per codec.
Figures: shard bytes per codec against uncompressed (ratio = bytes(none) / bytes(codec): how
many times smaller), conversion time against uncompressed (ratio = t(none) / t(codec)), and the
time to read every shard back and touch every column (what the loader pays: compressed buffers
are decoded, uncompressed ones are memory-mapped with no copy).

    .venv/bin/python -m benchmarks.bench_compression [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from converters.base import Record, WorkUnit
from converters.writer import COMPRESSIONS, convert
from schemas.manifest import Manifest
from schemas.shard import open_shard
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode

ROOT = Path(__file__).resolve().parent.parent


def atari_frames(steps: int, seed: int = 0) -> np.ndarray:
    """Pong frames under random actions, 96x80x3 uint8."""
    try:
        import ale_py
        import gymnasium as gym
        gym.register_envs(ale_py)
        env = gym.make("ALE/Pong-v5", frameskip=4, repeat_action_probability=0.0)
    except Exception as e:  # noqa: BLE001 - no ROM or no ale-py: synthetic frames, said in the name
        print(f"ALE not available ({e}); Atari-like synthetic frames")
        from tests.support.shards import pong_frames  # noqa: PLC0415
        return np.repeat(np.repeat(pong_frames(steps, np.random.default_rng(seed), 48), 2, 1), 2, 2)[:, :96, :80]
    obs, _ = env.reset(seed=seed)
    frames = []
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        frames.append(obs[::2, ::2][5:101])
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames)


class Episodes:
    """A converter over episodes made in memory: unit k holds `per_unit` episodes."""

    name, rl = "rl", True

    def __init__(self, spec: EpisodeSpec, layout: VocabLayout, make, units: int, per_unit: int):
        self.spec, self.layout, self.make, self.units, self.per_unit = spec, layout, make, units, per_unit

    def work_units(self):
        return [WorkUnit(f"u{k}", f"u{k}") for k in range(self.units)]

    def options(self):
        return {"episode_spec": self.spec.to_dict()}

    def convert_unit(self, unit):
        k = int(unit.key[1:])
        for e in range(self.per_unit):
            obs, act = self.make(k * self.per_unit + e)
            yield Record(f"{unit.key}/{e}", build_episode(obs, act, self.spec, self.layout), task="bench",
                         num_steps=len(act["action"]), episode_return=0.0)


def cases(quick: bool):
    layout = VocabLayout(text_vocab_size=32000)
    steps = 100
    frames = atari_frames(steps * (4 if quick else 16))
    pixel = EpisodeSpec((FieldSpec("frame", "image", (96, 80)),), (FieldSpec("action", "discrete", (1,)),))

    def pixel_episode(i: int):
        rng = np.random.default_rng(i)
        start = (i * steps) % (len(frames) - steps + 1)
        return {"frame": frames[start:start + steps]}, {"action": rng.integers(0, 6, (steps, 1))}

    state = EpisodeSpec((FieldSpec("obs", "continuous", (17,)),), (FieldSpec("action", "continuous", (6,)),))

    def state_episode(i: int, n: int = 1000):
        rng = np.random.default_rng(i)
        return ({"obs": np.cumsum(rng.normal(0, 0.1, (n, 17)), 0).astype(np.float32)},
                {"action": np.tanh(rng.normal(0, 1, (n, 6))).astype(np.float32)})

    yield "pixel RL (Atari Pong frames)", Episodes(pixel, layout, pixel_episode, 4, 4 if quick else 8), layout
    yield "state RL (17+6 continuous)", Episodes(state, layout, state_episode, 4, 4 if quick else 12), layout


def read_all(out: Path) -> float:
    t0 = time.perf_counter()
    for s in Manifest.read(out).shards:
        table = open_shard(out / s.name)
        for col in table.columns:
            for chunk in col.chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        np.frombuffer(buf, np.uint8)[::4096].sum()  # touch every page
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_compression_") as tmp:
        for label, conv, layout in cases(args.quick):
            got = {}
            convert(conv, Path(tmp) / f"{label[:5]}-warm", layout=layout, progress=False)  # first-call costs
            for codec in COMPRESSIONS:
                out = Path(tmp) / f"{label[:5]}-{codec}"
                t0 = time.perf_counter()
                m = convert(conv, out, layout=layout, compression=codec, progress=False, shard_size=64 * 10**6).manifest
                got[codec] = (time.perf_counter() - t0, sum(s.bytes for s in m.shards), read_all(out), m.total_tokens)
            t_none, b_none, r_none, tokens = got["none"]
            for codec in ("lz4", "zstd"):
                t, b, r, _ = got[codec]
                rows += [
                    {"name": f"{label}: {codec} shard size (x smaller than none)", "figure": b / 1e6, "unit": "MB",
                     "baseline": b_none / 1e6, "baseline_name": "none", "ratio": b_none / b, "target": ""},
                    {"name": f"{label}: {codec} conversion speed", "figure": tokens / t / 1e6, "unit": "Mtok/s",
                     "baseline": tokens / t_none / 1e6, "baseline_name": "none", "ratio": t_none / t, "target": ""},
                    {"name": f"{label}: {codec} read-back speed", "figure": tokens / r / 1e6, "unit": "Mtok/s",
                     "baseline": tokens / r_none / 1e6, "baseline_name": "none", "ratio": r_none / r, "target": ""},
                ]
    for r in rows:
        print(f"{r['name']}: {r['figure']:.3g} {r['unit']} vs {r['baseline']:.3g} -> ratio {r['ratio']:.2f}")
    return rows


if __name__ == "__main__":
    main()
