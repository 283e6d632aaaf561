"""Real data for the demo, made on the spot: expert episodes as Minari datasets, handwritten digits
as a WebDataset tar, and an English text corpus. Nothing is downloaded.

- Control: scripted experts (controllers.py, next to this file) act in Gymnasium; the executed actions, with a
  little exploration noise so the data also covers states off the expert's narrow path, are written
  with `minari.create_dataset_from_buffers`.
- Images: scikit-learn's 1,797 8x8 handwritten digits, upscaled, captioned "a handwritten seven".
- Text: the docstrings of Python's standard library (real English that ships with every Python).
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
from pathlib import Path

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_MODULES = ("argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal",
                "email", "fractions", "functools", "heapq", "http.client", "inspect", "itertools", "json",
                "logging", "math", "pathlib", "pickle", "queue", "random", "re", "shutil", "socket", "sqlite3",
                "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing",
                "unittest", "urllib.parse", "uuid", "zipfile")


# --- control tasks ---------------------------------------------------------------------------------

def make_env(env_id: str):
    """The environment the data is recorded in and the agent acts in: Box actions rescaled to
    [-1, 1], the range continuous actions are binned over (docs/SPEC.md section 2), so the recorded
    Box bounds are [-1, 1] and the converter takes the actions as they are."""
    from trainer.acting.envs import make_env_fn
    return make_env_fn(env_id, rescale_actions=True)()


def record_expert(env_id: str, episodes: int, seed: int = 0, noise: float = 0.1, wide_starts: float = 0.0,
                  perturb: float = 0.0, perturb_steps: int = 20):
    """Episodes of the scripted expert with exploration noise: (EpisodeBuffers, returns).

    Discrete actions: with probability `noise` a uniformly random action. Continuous actions:
    Gaussian noise of std `noise` (in the [-1, 1] action units; 0 records the expert's own torque).
    What is recorded is what was executed (outside perturbation bursts, below), so the data set is
    a true trajectory of the environment.

    A smooth expert changes its action little from step to step, so a model that sees the history
    can learn to copy the last action instead of reading the state (the "copycat" failure of
    behaviour cloning); the demo trains with `gato-train --action-noise` against it, rather than
    making the labels noisy.

    `wide_starts`: the fraction of episodes started from a wider set of states (Pendulum: angular
    velocity up to 8 rad/s instead of 1, `reset(options={"y_init": 8})`, a superset of the standard
    starts), so the data also shows how the expert brakes a spinning pendulum, a state an imperfect
    agent gets into and the expert's own episodes from standard starts never visit.

    `perturb` (continuous actions, every other episode): DART-style noise injection (Laskey et al.
    2017). With this probability per step a burst of 5 to `perturb_steps` steps begins in which a constant random
    torque (-1 or +1) is EXECUTED while the expert's own action for each visited state is RECORDED.
    Single-step noise hardly moves a pendulum (dt = 0.05 s); bursts push it into the states a
    cloned policy drifts into (wrong energy, wrong phase, spinning) and the data then shows the
    expert's correct pump-or-brake answer there. The recorded actions are labels, not the executed
    ones, in those steps; the rewards are those of the executed trajectory.
    """
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    from controllers import make_expert

    env = make_env(env_id)
    expert = make_expert(env_id, env)
    rng = np.random.default_rng(seed)
    space = env.action_space
    buffers, returns = [], []
    for ep in range(episodes):
        options = {"y_init": 8.0} if ep < round(wide_starts * episodes) else None
        obs, _ = env.reset(seed=seed + ep, options=options)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done, burst, burst_action = False, 0, None
        while not done:
            if isinstance(space, gym.spaces.Discrete):
                a = expert(obs) if rng.random() >= noise else int(rng.integers(space.n))
            else:
                torque = expert(obs)  # in the unwrapped env's units
                low, high = env.unwrapped.action_space.low, env.unwrapped.action_space.high
                a = 2.0 * (torque - low) / (high - low) - 1.0
                a = np.clip(a + rng.normal(0.0, noise, a.shape), -1.0, 1.0)
                a = a.astype(np.float32)
            executed = a
            if perturb > 0 and ep % 2 == 1 and not isinstance(space, gym.spaces.Discrete):
                if burst == 0 and rng.random() < perturb:
                    burst = int(rng.integers(5, perturb_steps + 1))
                    burst_action = np.where(rng.random(a.shape) < 0.5, 1.0, -1.0).astype(np.float32)
                if burst > 0:
                    executed, burst = burst_action, burst - 1
            obs, r, term, trunc, _ = env.step(executed)
            observations.append(obs)
            actions.append(a)
            rewards.append(float(r))
            terms.append(bool(term))
            truncs.append(bool(trunc))
            done = term or trunc
        buffers.append(EpisodeBuffer(id=ep, seed=seed + ep, options=options, observations=np.asarray(observations),
                                     actions=np.asarray(actions), rewards=rewards, terminations=terms,
                                     truncations=truncs, infos={}))
        returns.append(sum(rewards))
    env.close()
    return buffers, np.asarray(returns)


def write_minari(dataset_id: str, env_id: str, buffers) -> Path:
    """A Minari dataset under $MINARI_DATASETS_PATH (set by the caller); returns its directory."""
    import minari

    env = make_env(env_id)
    ds = minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="scripted expert",
                                            description=f"{env_id} demonstrations of gato-kit's scripted expert")
    env.close()
    from minari.storage.datasets_root_dir import get_dataset_path
    del ds
    return Path(get_dataset_path(dataset_id))


# --- digits ----------------------------------------------------------------------------------------

def digit_images(size: int = 16):
    """All 1,797 digits as (N, size, size) uint8 images (ink white on black, as in the data) + labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in imgs])
    return out, d.target.astype(np.int64)


def caption(label: int) -> str:
    return f"a handwritten {DIGIT_WORDS[int(label)]}"


def caption_digit(text: str) -> int | None:
    """The digit a generated caption names (the first digit word in it), or None."""
    words = text.lower().replace(".", " ").split()
    for w in words:
        if w in DIGIT_WORDS:
            return DIGIT_WORDS.index(w)
    return None


def split_digits(n_total: int, held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices for training and for held-out evaluation (never written to the training tar)."""
    perm = np.random.default_rng(seed).permutation(n_total)
    return perm[held_out:], perm[:held_out]


def write_digits_tar(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> Path:
    """A WebDataset tar: one PNG and one .txt caption per sample."""
    import webdataset as wds
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for img, label, key in zip(images, labels, keys):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            sink.write({"__key__": f"digit{int(key):05d}", "png": buf.getvalue(), "txt": caption(label)})
    return path


# --- text --------------------------------------------------------------------------------------------

def write_text_corpus(path: str | os.PathLike, max_chars: int = 400_000) -> Path:
    """Docstrings of standard-library modules and their public members, one paragraph per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paragraphs, total = [], 0
    for name in TEXT_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod)]
        for attr in sorted(vars(mod)):
            if not attr.startswith("_"):
                obj = getattr(mod, attr)
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    docs.append(inspect.getdoc(obj))
        for doc in docs:
            for para in (doc or "").split("\n\n"):
                para = " ".join(para.split())
                if len(para) > 40 and para.isascii():
                    paragraphs.append(para)
                    total += len(para)
        if total >= max_chars:
            break
    path.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


# --- BabyAI ------------------------------------------------------------------------------------------

def record_babyai(episodes: int, seed: int = 0):
    """Episodes of minigrid's own BabyAI expert (BabyAIBot) in the demo's BabyAI task, as one dict
    of per-episode lists per column (the episode table `gato-tokenize rl` reads), and their returns."""
    import gymnasium as gym
    from minigrid.utils.baby_ai_bot import BabyAIBot

    import demo_envs

    env = gym.make(demo_envs.ENV_ID)
    cols: dict[str, list] = {"episode_id": [], "obs/direction": [], "obs/image": [], "obs/mission": [],
                             "action": [], "rewards": []}
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        bot = BabyAIBot(env.unwrapped)
        direction, images, missions, actions, rewards = [], [], [], [], []
        done = False
        while not done:
            a = int(bot.replan())
            direction.append(int(obs["direction"]))
            images.append(obs["image"])
            missions.append(obs["mission"])
            obs, r, term, trunc, _ = env.step(a)
            actions.append(a)
            rewards.append(float(r))
            done = term or trunc
        cols["episode_id"].append(seed + ep)
        cols["obs/direction"].append(direction)
        cols["obs/image"].append(np.stack(images))
        cols["obs/mission"].append(missions)
        cols["action"].append(actions)
        cols["rewards"].append(rewards)
        returns.append(sum(rewards))
    env.close()
    return cols, np.asarray(returns)


def write_episode_table(path: str | os.PathLike, cols: dict) -> Path:
    """One Parquet row per episode, one list entry per step (images as (16, 16, 3) uint8 lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.list_(pa.list_(pa.list_(pa.uint8(), 3), 16), 16)
    arrays = {k: pa.array(v) for k, v in cols.items() if k != "obs/image"}
    arrays["obs/image"] = pa.array([[im.tolist() for im in ep] for ep in cols["obs/image"]], pa.list_(image))
    pq.write_table(pa.table(arrays), path)
    return path
