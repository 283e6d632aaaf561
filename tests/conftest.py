"""Shared fixtures: small real data made on the spot (no hub, no network)."""

from __future__ import annotations

import os
import random
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from converters.text import TextConverter
from tokenizer_kit.layout import VocabLayout

_WORDS = ("the agent moves left right up down and picks a red green blue ball box key door opens "
          "closes robot arm grasps cube pole cart balances pendulum swings image shows digit zero one "
          "two three four five six seven eight nine cat dog astronaut coffee rocket a an in on of to "
          "with is was very small large quickly slowly Gato generalist transformer token").split()


def make_corpus(path, lines: int = 3000, seed: int = 0) -> str:
    """Deterministic pseudo-English text, one sentence per line."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            n = rng.randint(4, 16)
            f.write(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, corpus_path) -> str:
    """A small SentencePiece BPE model (vocab 512) trained on the corpus."""
    from tokenizer_kit.text import train_tokenizer
    out = tmp_path_factory.mktemp("spm") / "tiny.model"
    return str(train_tokenizer([corpus_path], 512, out))


@pytest.fixture(scope="session")
def text_tokenizer(sp_model_path):
    from tokenizer_kit.text import TextTokenizer
    return TextTokenizer(sp_model_path)


@pytest.fixture
def layout() -> VocabLayout:
    return VocabLayout(text_vocab_size=32000, eos_id=2)


# --- small shard directories built with tokenizer_kit + schemas (SPEC 7), for readers' tests -----

def _pong_frames(steps: int, rng, size: int = 32):
    """Atari-like uint8 frames: two paddles and a ball moving across a dark court."""
    import numpy as np
    frames = np.full((steps, size, size, 3), 20, np.uint8)
    x, y, dx, dy = rng.integers(6, size - 6), rng.integers(4, size - 4), 2, 1
    for t in range(steps):
        frames[t, :, 0:2] = (90, 90, 90)
        frames[t, y - 4:y + 4, 2:4] = (220, 60, 60)
        frames[t, max(0, y - 6):y + 2, size - 4:size - 2] = (60, 200, 60)
        frames[t, y - 1:y + 1, x - 1:x + 1] = 255
        if not 3 < x + dx < size - 3:
            dx = -dx
        if not 3 < y + dy < size - 3:
            dy = -dy
        x, y = x + dx, y + dy
    return frames


def write_shard_dir(out, rows, source_ids, layout, converter: str, task: str, *, rows_per_shard: int = 2,
                    episode_spec=None, returns=None, tokenizer_path=None, options=None, field_errors=None):
    """Write rows as shards + a manifest with the statistics the writer records (docs/SPEC.md section 7),
    without the converters' writer, so readers' tests depend only on tokenizer_kit and schemas."""
    import shutil
    from pathlib import Path

    import numpy as np

    from schemas.manifest import TOKENIZER_NAME, FieldError, Manifest, ReturnStats, ShardInfo, Stats
    from schemas.shard import SHARD_PATTERN, rows_to_batch, shard_schema, write_shard
    from tokenizer_kit.files import file_sha256
    from tokenizer_kit.layout import MODALITY_NAMES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rl = returns is not None
    infos = []
    for k, start in enumerate(range(0, len(rows), rows_per_shard)):
        sl = slice(start, start + rows_per_shard)
        batch = rows_to_batch(rows[sl], source_ids[sl], task, episode_returns=returns[sl] if rl else None)
        name = SHARD_PATTERN.format(k)
        size = write_shard(out / name, [batch], shard_schema(rl))
        infos.append(ShardInfo(name, len(rows[sl]), int(sum(len(r) for r in rows[sl])), size,
                               file_sha256(out / name)))
    mods = np.bincount(np.concatenate([r.modality for r in rows]), minlength=5)
    r = np.asarray(returns if rl else [], np.float64)
    stats = Stats(rows=len(rows), tokens=int(mods.sum()),
                  tokens_by_modality={MODALITY_NAMES[m]: int(c) for m, c in enumerate(mods)},
                  rows_per_task={task: len(rows)},
                  field_errors={k: FieldError(**v) for k, v in (field_errors or {}).items()},
                  episode_return=ReturnStats(len(r), float(r.min()), float(r.max()), float(r.mean()), float(r.std()))
                  if rl else None).to_dict()
    sha = None
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, out / TOKENIZER_NAME)
        sha = file_sha256(out / TOKENIZER_NAME)
    Manifest(layout=layout.to_dict(), converter=converter, options=options or {}, shards=infos, stats=stats,
             tokenizer_sha256=sha, episode_spec=episode_spec.to_dict() if episode_spec else None,
             tasks=[task]).write(out)
    return out


def cartpole_episodes(layout: VocabLayout, episodes: int, random_share: float = 0.0, seed: int = 0):
    """(rows, returns) of real CartPole-v1 episodes capped at 60 steps, played by a balancing rule
    that takes a uniformly random action with probability `random_share`; field names and kinds
    as the RL converter writes them (obs continuous (4,), action discrete)."""
    import gymnasium as gym
    import numpy as np

    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode

    spec = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    rows, rets = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        o, a = [], []
        for _ in range(60):
            balance = random_share == 0 or rng.random() > random_share
            act = int(obs[2] + 0.5 * obs[3] > 0) if balance else int(rng.integers(2))
            o.append(obs)
            a.append(act)
            obs, _, term, trunc, _ = env.step(act)
            if term or trunc:
                break
        rows.append(build_episode({"obs": np.asarray(o, np.float32)}, {"action": np.asarray(a)}, spec, layout))
        rets.append(float(len(a)))
    return rows, rets


def make_rl_shard_dir(out, sp_model_path, episodes: int = 5, seed: int = 0):
    """Atari-like episodes: a 32x32 frame (4 patches), continuous `ram` (4,), discrete `lives`;
    a discrete `action` in [0, 3). Rewards are random, so returns differ between episodes."""
    import numpy as np

    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
    from tokenizer_kit.text import TextTokenizer
    from tokenizer_kit.values import quantization_error

    layout = TextTokenizer(sp_model_path).layout()
    spec = EpisodeSpec((FieldSpec("frame", "image", (32, 32)), FieldSpec("ram", "continuous", (4,)),
                        FieldSpec("lives", "discrete", (1,))), (FieldSpec("action", "discrete", (1,)),))
    rng = np.random.default_rng(seed)
    rows, ids, returns, errs = [], [], [], []
    for e in range(episodes):
        steps = int(rng.integers(4, 9))
        ram = rng.normal(0, 20, (steps, 4)).astype(np.float32)
        obs = {"frame": _pong_frames(steps, rng), "ram": ram, "lives": np.full((steps, 1), 3 - e % 3)}
        rows.append(build_episode(obs, {"action": rng.integers(0, 3, (steps, 1))}, spec, layout))
        ids.append(f"pong-like/episode-{e}")
        returns.append(float(rng.integers(-3, 4, steps).sum()))
        errs.append(quantization_error(ram, layout, True))
    err = np.concatenate([x.reshape(-1) for x in errs])
    field_errors = {"observation/ram": {"max": float(err.max()), "mean": float(err.mean()), "count": int(err.size)}}
    return write_shard_dir(out, rows, ids, layout, "rl", "pong-like", episode_spec=spec, returns=returns,
                           tokenizer_path=sp_model_path, options={"env": "pong-like"}, field_errors=field_errors)


def make_caption_shard_dir(out, sp_model_path, pairs: int = 5):
    """Digits from scikit-learn upscaled to 32x32, captioned `the image shows digit N`."""
    import numpy as np
    from sklearn.datasets import load_digits

    from tokenizer_kit.text import TextTokenizer
    from tokenizer_kit.text_rows import build_caption_row

    tok = TextTokenizer(sp_model_path)
    layout = tok.layout()
    digits = load_digits()
    names = "zero one two three four five six seven eight nine".split()
    rows, ids = [], []
    for i in range(pairs):
        img = (digits.images[i] * (255 / 16)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        caption = f"the image shows digit {names[digits.target[i]]}"
        rows.append(build_caption_row(img, tok.encode(caption), layout, size=(32, 32)))
        ids.append(f"digits/{i}")
    return write_shard_dir(out, rows, ids, layout, "captions", "digits", tokenizer_path=sp_model_path,
                           options={"image_size": [32, 32], "fit": "resize"})


def make_text_shard_dir(out, sp_model_path, corpus_path, docs: int = 6):
    """Each line of the corpus a document."""
    from tokenizer_kit.text import TextTokenizer
    from tokenizer_kit.text_rows import build_text_row

    tok = TextTokenizer(sp_model_path)
    layout = tok.layout()
    lines = open(corpus_path, encoding="utf-8").read().splitlines()[:docs]
    rows = [build_text_row(ids, layout) for ids in tok.encode_batch(lines)]
    return write_shard_dir(out, rows, [f"corpus.txt:{i}" for i in range(docs)], layout, "text", "corpus",
                           tokenizer_path=sp_model_path)


@pytest.fixture(scope="session")
def rl_shard_dir(tmp_path_factory, sp_model_path):
    return make_rl_shard_dir(tmp_path_factory.mktemp("rl_shards"), sp_model_path)


@pytest.fixture(scope="session")
def caption_shard_dir(tmp_path_factory, sp_model_path):
    return make_caption_shard_dir(tmp_path_factory.mktemp("caption_shards"), sp_model_path)


@pytest.fixture(scope="session")
def text_shard_dir(tmp_path_factory, sp_model_path, corpus_path):
    return make_text_shard_dir(tmp_path_factory.mktemp("text_shards"), sp_model_path, corpus_path)


def pong_like_env(size: int = 32):
    """An Atari-like gymnasium env: Dict(frame (size, size, 3) uint8, ram (4,) float32), Discrete(3)
    paddle moves (stay, up, down); +1 when the right paddle meets the ball, -1 when it misses."""
    import gymnasium as gym
    import numpy as np

    class PongLike(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = gym.spaces.Dict({
                "frame": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                "ram": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
            self.action_space = gym.spaces.Discrete(3)

        def _obs(self):
            f = np.full((size, size, 3), 20, np.uint8)
            f[:, :2] = 90
            f[max(0, self.left - 4):self.left + 4, 2:4] = (220, 60, 60)
            f[max(0, self.paddle - 4):self.paddle + 4, size - 4:size - 2] = (60, 200, 60)
            f[self.y - 1:self.y + 1, self.x - 1:self.x + 1] = 255
            return {"frame": f, "ram": np.array([self.x, self.y, self.dx, self.paddle], np.float32)}

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            r = self.np_random
            self.x, self.y = int(r.integers(6, size // 2)), int(r.integers(4, size - 4))
            self.dx, self.dy, self.paddle, self.left = 2, int(r.choice([-1, 1])), size // 2, size // 2
            return self._obs(), {}

        def step(self, action):
            self.paddle = int(np.clip(self.paddle + (0, -2, 2)[int(action)], 4, size - 4))
            self.left = int(np.clip(self.y, 4, size - 4))
            self.x, self.y = self.x + self.dx, self.y + self.dy
            if not 2 < self.y < size - 2:
                self.dy, self.y = -self.dy, int(np.clip(self.y, 2, size - 2))
            reward, done = 0.0, False
            if self.x >= size - 5:
                hit = abs(self.y - self.paddle) <= 4
                reward, done = (1.0, False) if hit else (-1.0, True)
                self.dx = -self.dx
            elif self.x <= 5:
                self.dx = -self.dx
            return self._obs(), reward, done, False, {}

    return PongLike()


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads oversubscribe and run 4x slower."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CrashingText(TextConverter):
    """The text converter, dying (like a killed process) when it reaches unit `crash_at`."""

    crash_at: str = ""

    def convert_unit(self, unit):
        if unit.key == self.crash_at:
            raise RuntimeError("simulated crash")
        yield from super().convert_unit(unit)


# --- object storage: a real S3 API server on 127.0.0.1 (moto's server mode), reached through s3fs ---

@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on a free port of 127.0.0.1 and point the standard AWS_* variables
    at it (in os.environ, so subprocesses such as the CLIs and torchrun inherit them); yields the
    endpoint URL. Buckets: `make_bucket(name)`."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines among the CLIs' stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(name: str) -> str:
    """Create a bucket on the running S3 server (the s3_server fixture); returns its s3:// URL."""
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


def upload_dir(local, url: str) -> str:
    """Copy a local shard directory's files to `url` (through s3fs); returns url."""
    import s3fs
    from pathlib import Path
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for p in sorted(Path(local).iterdir()):
        if p.is_file():
            fs.put_file(str(p), f"{url.removeprefix('s3://')}/{p.name}")
    return url


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A fresh Minari datasets folder per test module, and no hub: Minari's own writer makes the data."""
    import warnings
    from pathlib import Path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield Path(tmp_path_factory.getbasetemp())


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """sigterm_at_step(N): gato-train runs in this process get SIGTERM when they reach step N, as a
    preempted job would; sigterm_at_step(None) lets them run on."""
    import trainer.train as train_mod
    original = train_mod.Trainer.train_step

    def arm(step: int | None) -> None:
        def step_then_sigterm(self):
            if self.step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self)
        monkeypatch.setattr(train_mod.Trainer, "train_step", original if step is None else step_then_sigterm)
    return arm
