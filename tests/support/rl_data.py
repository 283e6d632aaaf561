"""Real RL inputs for the RL converter's tests: gymnasium rollouts written as Minari datasets,
D4RL-style HDF5 files, Parquet tables and HF datasets directories; and the row checker."""

from __future__ import annotations

import math
import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from tokenizer_kit.episode_decode import decode_episode

# --- environments --------------------------------------------------------------------------------


class DictObs(gym.ObservationWrapper):
    """CartPole with a Dict observation: the float state and a MultiDiscrete coarse grid cell."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            "cell": gym.spaces.MultiDiscrete([9, 9]),
        })

    def observation(self, obs):
        cell = np.clip(np.floor(obs[[0, 2]] * np.array([1.5, 15.0]) + 4.5), 0, 8).astype(np.int64)
        return {"state": obs.astype(np.float32), "cell": cell}


class PixelObs(gym.ObservationWrapper):
    """CartPole seen as a 32x32 RGB frame (a bar at the cart's position) plus its float state."""

    def __init__(self, env, size: int = 32):
        super().__init__(env)
        self.size = size
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        })

    def observation(self, obs):
        frame = np.zeros((self.size, self.size, 3), np.uint8)
        x = int(np.clip((obs[0] + 2.4) / 4.8 * self.size, 0, self.size - 1))
        frame[:, x] = (255, 128, 0)
        frame[int(np.clip((obs[2] + 0.21) / 0.42 * self.size, 0, self.size - 1)), :, 2] = 200
        return {"pixels": frame, "state": obs.astype(np.float32)}


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([it[k] for it in items]) for k in items[0]}
    return np.stack([np.asarray(x) for x in items])


def rollouts(env: gym.Env, episodes: int, max_steps: int, seed: int = 0) -> list[dict]:
    """Random-policy episodes: observations (T+1, ...), actions, rewards, terminations, truncations."""
    out = []
    env.action_space.seed(seed)
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        o, a, r, te, tr = [obs], [], [], [], []
        for t in range(max_steps):
            act = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(float(rew)), te.append(term)
            tr.append(trunc or t == max_steps - 1)
            if term or trunc:
                break
        out.append({"observations": _stack(o), "actions": _stack(a), "rewards": np.array(r),
                    "terminations": np.array(te), "truncations": np.array(tr)})
    return out


def make_minari(dataset_id: str, env: gym.Env, episodes: list[dict], data_format: str = "hdf5",
                jpeg_encoding: bool = False) -> Path:
    """A Minari dataset in $MINARI_DATASETS_PATH made by minari's own writer; returns its directory."""
    import minari
    from minari.data_collector import EpisodeBuffer
    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"])) for i, ep in enumerate(episodes)]
    minari.create_dataset_from_buffers(dataset_id, buffers, observation_space=env.observation_space,
                                       action_space=env.action_space, algorithm_name="random",
                                       data_format=data_format, jpeg_encoding=jpeg_encoding)
    return Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id


def write_d4rl(path, episodes: list[dict], timeouts_last: bool = True) -> Path:
    """Flat D4RL-style HDF5: step arrays concatenated over episodes, final observations dropped."""
    import h5py
    cat = lambda key: np.concatenate([ep[key] for ep in episodes])  # noqa: E731
    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([ep["observations"][:-1] for ep in episodes]).astype(np.float32)
        f["actions"] = cat("actions")
        f["rewards"] = cat("rewards").astype(np.float32)
        f["terminals"] = cat("terminations")
        f["timeouts"] = cat("truncations") if timeouts_last else np.zeros(len(cat("rewards")), bool)
        f["infos/qpos"] = np.zeros((len(cat("rewards")), 2), np.float32)
    return Path(path)


def episode_table(episodes: list[dict]):
    """One row per episode with Gato-style column names (lists of per-step values)."""
    import pyarrow as pa
    rows = {"episode_id": pa.array(np.arange(len(episodes), dtype=np.int64)),
            "continuous_observations": pa.array([ep["observations"][:-1].tolist() for ep in episodes]),
            "discrete_actions": pa.array([np.asarray(ep["actions"]).tolist() for ep in episodes]),
            "rewards": pa.array([ep["rewards"].tolist() for ep in episodes])}
    return pa.table(rows)


# --- checking rows against their inputs ------------------------------------------------------------


def mu_law(x, mu=100.0, m=256.0):
    return np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(m * mu)


def assert_step_close(name: str, kind: str, is_obs: bool, mu: bool, got, want, num_bins: int = 1024,
                      bounds=None):
    """Continuous: within half a bin (in companded units for mu-law fields, in [-1, 1] units for
    actions rescaled from `bounds`); image frames and others exact."""
    got, want = np.asarray(got), np.asarray(want)
    if kind == "continuous":
        if bounds is not None:
            lo, hi = (np.asarray(b, np.float64) for b in bounds)
            f = lambda v: np.clip((v - lo) * (2.0 / (hi - lo)) - 1.0, -1, 1)  # noqa: E731
        else:
            f = (lambda v: np.clip(mu_law(v), -1, 1)) if (is_obs and mu) else (lambda v: np.clip(v, -1, 1))
        diff = np.abs(f(got.astype(np.float64)) - f(want.reshape(got.shape).astype(np.float64)))
        assert diff.max() <= 1.0 / num_bins + 1e-9, f"{name}: off by {diff.max()} (> half a bin)"
    elif kind == "text":
        assert got.tolist() == want.tolist() if isinstance(want, np.ndarray) else got == want, name
    else:
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=name)


def check_record(record, obs: dict, act: dict, spec, layout, tok=None):
    """Decode a record's row and compare every step of every field with the inputs."""
    assert record.num_steps == len(next(iter(obs.values())))
    check_row(record.row, obs, act, spec, layout, tok)


def check_row(row, obs: dict, act: dict, spec, layout, tok=None):
    steps = decode_episode(row, spec, layout, tok)
    assert len(steps) == len(next(iter(obs.values())))
    for t, (o, a) in enumerate(steps):
        for f in spec.observations:
            assert_step_close(f.name, f.kind, True, f.mu_law, o[f.name], np.asarray(obs[f.name][t]) if f.kind != "text"
                              else obs[f.name][t])
        for f in spec.actions:
            assert_step_close(f.name, f.kind, False, f.mu_law, a[f.name], np.asarray(act[f.name][t]), bounds=f.bounds)


class MissionObs(gym.ObservationWrapper):
    """CartPole with a BabyAI-like Dict observation: a text mission and the float state."""

    MISSIONS = ("keep the pole up", "balance the pole", "move the cart left", "move the cart right")

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "mission": gym.spaces.Text(64, charset="abcdefghijklmnopqrstuvwxyz "),
            "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        })

    def observation(self, obs):
        return {"mission": self.MISSIONS[int(abs(obs[0]) * 100) % 4], "state": obs.astype(np.float32)}
