"""Small real shard directories for loader tests and benchmarks, made with tokenizer_kit builders.

Rows come from tokenizer_kit.sequence (build_episode, build_text_row, build_caption_row) and are
written with schemas.shard.rows_to_batch/write_shard and a schemas.manifest.Manifest, exactly as
a converter's output looks on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from schemas.manifest import Manifest, ShardInfo
from schemas.shard import SHARD_PATTERN, rows_to_batch, shard_schema, write_shard
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, Row, build_episode
from tokenizer_kit.text_rows import build_caption_row, build_text_row

STATE_SPEC = EpisodeSpec((FieldSpec("obs", "continuous", (8,)),), (FieldSpec("act", "discrete", (1,)),))
PIXEL_SPEC = EpisodeSpec((FieldSpec("pixels", "image", (32, 32)), FieldSpec("obs", "continuous", (3,))),
                         (FieldSpec("act", "continuous", (2,)),))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dir(out: str | Path, rows: Sequence[Row], layout: VocabLayout, converter: str,
              tasks: Sequence[str] | str = "task", rows_per_shard: int = 50, returns: Sequence[float] | None = None,
              batch_rows: int = 20, schema=None) -> Path:
    """Write rows as shard-NNNNN.arrow files (several record batches each) plus manifest.json;
    `schema` (schemas.shard.shard_schema) for another shard form than every column."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_list = [tasks] * len(rows) if isinstance(tasks, str) else list(tasks)
    rl = converter == "rl"
    infos = []
    for s, lo in enumerate(range(0, len(rows), rows_per_shard)):
        hi = min(lo + rows_per_shard, len(rows))
        batches = []
        for b in range(lo, hi, batch_rows):
            e = min(b + batch_rows, hi)
            rets = (list(returns[b:e]) if returns is not None else [0.0] * (e - b)) if rl else None
            batches.append(rows_to_batch(rows[b:e], [f"row{i}" for i in range(b, e)], task_list[b:e],
                                         episode_returns=rets, schema=schema))
        path = out / SHARD_PATTERN.format(s)
        nbytes = write_shard(path, batches, schema if schema is not None else shard_schema(rl))
        infos.append(ShardInfo(path.name, hi - lo, int(sum(len(r) for r in rows[lo:hi])), nbytes, _sha(path)))
    Manifest(layout=layout.to_dict(), converter=converter, shards=infos,
             tasks=sorted(set(task_list), key=task_list.index)).write(out)
    return out


def expected_targets(path: str | Path):
    """Every token of a text directory but the first of each shard (no window predicts it): what
    one epoch must hold as training targets, each exactly once (a Counter of ids)."""
    from collections import Counter

    from schemas.manifest import Manifest
    from schemas.shard import open_shard
    out = Counter()
    for info in Manifest.read(path).shards:
        toks = open_shard(f"{path}/{info.name}").column("tokens").combine_chunks().values.to_numpy()
        out.update(toks[1:].tolist())
    return out


def batch_targets(batches):
    """Counter of the training targets (loss mask on) of some batches."""
    from collections import Counter
    out = Counter()
    for b in batches:
        out.update(b.targets[b.loss_mask > 0].tolist())
    return out


def state_episode(rng: np.random.Generator, steps: int, layout: VocabLayout) -> Row:
    obs = {"obs": rng.normal(size=(steps, 8)).astype(np.float32)}
    act = {"act": rng.integers(0, 4, size=(steps, 1))}
    return build_episode(obs, act, STATE_SPEC, layout)


def pixel_episode(rng: np.random.Generator, steps: int, layout: VocabLayout) -> Row:
    obs = {"pixels": rng.integers(0, 256, size=(steps, 32, 32, 3), dtype=np.uint8),
           "obs": rng.normal(size=(steps, 3)).astype(np.float32)}
    act = {"act": rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32)}
    return build_episode(obs, act, PIXEL_SPEC, layout)


def make_rl_dir(out, layout: VocabLayout, episodes: int = 40, steps: tuple[int, int] = (5, 60), seed: int = 0,
                tasks: Sequence[str] = ("cartpole",), pixels: bool = False, rows_per_shard: int = 16) -> Path:
    """Episodes of random lengths; task i % len(tasks) for episode i."""
    rng = np.random.default_rng(seed)
    make = pixel_episode if pixels else state_episode
    rows = [make(rng, int(rng.integers(steps[0], steps[1] + 1)), layout) for _ in range(episodes)]
    task_list = [tasks[i % len(tasks)] for i in range(episodes)]
    return write_dir(out, rows, layout, "rl", task_list, rows_per_shard, returns=rng.normal(size=episodes).tolist(),
                     batch_rows=max(1, rows_per_shard // 2))


def make_text_dir(out, layout: VocabLayout, docs: int = 60, length: tuple[int, int] = (5, 300), seed: int = 1,
                  task: str = "text", rows_per_shard: int = 25) -> Path:
    rng = np.random.default_rng(seed)
    hi = min(layout.text_vocab_size, 30000)
    rows = []
    for _ in range(docs):
        ids = rng.integers(3, hi, size=int(rng.integers(length[0], length[1] + 1)))
        rows.append(build_text_row(ids, layout))
    return write_dir(out, rows, layout, "text", task, rows_per_shard, batch_rows=10)


def make_caption_dir(out, layout: VocabLayout, pairs: int = 40, size: int = 48, seed: int = 2,
                     task: str = "captions", rows_per_shard: int = 15) -> Path:
    rng = np.random.default_rng(seed)
    hi = min(layout.text_vocab_size, 30000)
    rows = [build_caption_row(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8),
                              rng.integers(3, hi, size=int(rng.integers(3, 20))), layout) for _ in range(pairs)]
    return write_dir(out, rows, layout, "captions", task, rows_per_shard, batch_rows=7)
