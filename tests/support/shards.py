"""Small real shard directories made on the spot with tokenizer_kit builders and schemas' writer
(docs/SPEC.md section 7), without the converters' writer, so readers' tests depend only on
tokenizer_kit and schemas; and the pseudo-English corpus and Atari-like frames they are made of."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np

from schemas.manifest import TOKENIZER_NAME, FieldError, Manifest, ReturnStats, ShardInfo, Stats
from schemas.shard import SCHEMA_VERSION, SHARD_PATTERN, rows_to_batch, shard_schema, write_shard
from tokenizer_kit.files import file_sha256
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from tokenizer_kit.text import TextTokenizer
from tokenizer_kit.text_rows import build_caption_row, build_text_row
from tokenizer_kit.values import quantization_error

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


def pong_frames(steps: int, rng, size: int = 32):
    """Atari-like uint8 frames: two paddles and a ball moving across a dark court."""
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
                    episode_spec=None, returns=None, tokenizer_path=None, options=None, field_errors=None,
                    lean: bool = False, version: int = SCHEMA_VERSION):
    """Write rows as shards + a manifest with the statistics the writer records (docs/SPEC.md section 7),
    without the converters' writer, so readers' tests depend only on tokenizer_kit and schemas.
    `lean`: the version-2 form the converter's writer picks (text, caption; uint16 ids when they
    fit); `version` 1: every column, int32 ids, version 1 in shards and manifest, as version 1 wrote."""



    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rl = returns is not None
    schema = shard_schema(rl, converter == "text", layout.vocab_size, converter == "captions") if lean else \
        shard_schema(rl)
    if version != SCHEMA_VERSION:
        schema = schema.with_metadata({b"gato_kit_schema_version": str(version).encode()})
    infos = []
    for k, start in enumerate(range(0, len(rows), rows_per_shard)):
        sl = slice(start, start + rows_per_shard)
        batch = rows_to_batch(rows[sl], source_ids[sl], task, episode_returns=returns[sl] if rl else None,
                              schema=schema)
        name = SHARD_PATTERN.format(k)
        size = write_shard(out / name, [batch], schema)
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
             tasks=[task], schema_version=version).write(out)
    return out


def cartpole_episodes(layout: VocabLayout, episodes: int, random_share: float = 0.0, seed: int = 0):
    """(rows, returns) of real CartPole-v1 episodes capped at 60 steps, played by a balancing rule
    that takes a uniformly random action with probability `random_share`; field names and kinds
    as the RL converter writes them (obs continuous (4,), action discrete)."""
    import gymnasium as gym


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


def make_rl_shard_dir(out, sp_model_path, episodes: int = 5, seed: int = 0, **form):
    """Atari-like episodes: a 32x32 frame (4 patches), continuous `ram` (4,), discrete `lives`;
    a discrete `action` in [0, 3). Rewards are random, so returns differ between episodes."""


    layout = TextTokenizer(sp_model_path).layout()
    spec = EpisodeSpec((FieldSpec("frame", "image", (32, 32)), FieldSpec("ram", "continuous", (4,)),
                        FieldSpec("lives", "discrete", (1,))), (FieldSpec("action", "discrete", (1,)),))
    rng = np.random.default_rng(seed)
    rows, ids, returns, errs = [], [], [], []
    for e in range(episodes):
        steps = int(rng.integers(4, 9))
        ram = rng.normal(0, 20, (steps, 4)).astype(np.float32)
        obs = {"frame": pong_frames(steps, rng), "ram": ram, "lives": np.full((steps, 1), 3 - e % 3)}
        rows.append(build_episode(obs, {"action": rng.integers(0, 3, (steps, 1))}, spec, layout))
        ids.append(f"pong-like/episode-{e}")
        returns.append(float(rng.integers(-3, 4, steps).sum()))
        errs.append(quantization_error(ram, layout, True))
    err = np.concatenate([x.reshape(-1) for x in errs])
    field_errors = {"observation/ram": {"max": float(err.max()), "mean": float(err.mean()), "count": int(err.size)}}
    return write_shard_dir(out, rows, ids, layout, "rl", "pong-like", episode_spec=spec, returns=returns,
                           tokenizer_path=sp_model_path, options={"env": "pong-like"}, field_errors=field_errors,
                           **form)


def make_caption_shard_dir(out, sp_model_path, pairs: int = 5, **form):
    """Digits from scikit-learn upscaled to 32x32, captioned `the image shows digit N`."""
    from sklearn.datasets import load_digits


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
                           options={"image_size": [32, 32], "fit": "resize"}, **form)


def make_text_shard_dir(out, sp_model_path, corpus_path, docs: int = 6, **form):
    """Each line of the corpus a document."""

    tok = TextTokenizer(sp_model_path)
    layout = tok.layout()
    lines = open(corpus_path, encoding="utf-8").read().splitlines()[:docs]
    rows = [build_text_row(ids, layout) for ids in tok.encode_batch(lines)]
    return write_shard_dir(out, rows, [f"corpus.txt:{i}" for i in range(docs)], layout, "text", "corpus",
                           tokenizer_path=sp_model_path, **form)
