"""`gato-tokenize verify` throughput against a plain read + sha256 of the same files, same run.

Three directories: Atari-like RL episodes (mostly uint8 patch bytes, which only need hashing),
MuJoCo-like RL episodes and text (all ids, which every check touches). verify hashes in a thread while it validates
from the same memory map, so the target is to cost no more than one hashed read: ratio >= 0.8.

    .venv/bin/python benchmarks/bench_verify.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converters.commands.verify import check_shard, verify_dir  # noqa: E402
from schemas.manifest import Manifest, ShardInfo  # noqa: E402
from schemas.shard import SHARD_PATTERN, rows_to_batch, shard_schema, write_shard  # noqa: E402
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout  # noqa: E402
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode, build_text_row  # noqa: E402
from tokenizer_kit.text import file_sha256  # noqa: E402

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)


def rl_batch(rng: np.random.Generator, episodes: int = 16, steps: int = 200):
    """Atari-like: 64x64 frames (16 patches), 8 continuous values, a discrete action per step."""
    spec = EpisodeSpec((FieldSpec("frame", "image", (64, 64)), FieldSpec("ram", "continuous", (8,))),
                       (FieldSpec("action", "discrete", (1,)),))
    rows = [build_episode({"frame": rng.integers(0, 255, (steps, 64, 64, 3), dtype=np.uint8),
                           "ram": rng.normal(0, 10, (steps, 8)).astype(np.float32)},
                          {"action": rng.integers(0, 18, (steps, 1))}, spec, LAYOUT) for _ in range(episodes)]
    return rows_to_batch(rows, [f"ep{i}" for i in range(episodes)], "atari-like",
                         episode_returns=rng.normal(size=episodes).tolist()), rows, spec


def state_batch(rng: np.random.Generator, episodes: int = 16, steps: int = 1000):
    """MuJoCo-like: 17 continuous observations and 6 continuous actions per step: all tokens."""
    spec = EpisodeSpec((FieldSpec("obs", "continuous", (17,)),), (FieldSpec("action", "continuous", (6,)),))
    rows = [build_episode({"obs": rng.normal(0, 3, (steps, 17)).astype(np.float32)},
                          {"action": rng.uniform(-1, 1, (steps, 6)).astype(np.float32)}, spec, LAYOUT)
            for _ in range(episodes)]
    return rows_to_batch(rows, [f"ep{i}" for i in range(episodes)], "mujoco-like",
                         episode_returns=rng.normal(size=episodes).tolist()), rows, spec


def text_batch(rng: np.random.Generator, docs: int = 1024, length: int = 2000):
    rows = [build_text_row(rng.integers(3, 32000, length, dtype=np.int32), LAYOUT) for _ in range(docs)]
    return rows_to_batch(rows, [f"doc{i}" for i in range(docs)], "text"), rows, None


def make_dir(out: Path, kind: str, total_bytes: int, shard_bytes: int) -> Path:
    """Shards of about `shard_bytes` made of one repeated record batch, plus a true manifest."""
    rng = np.random.default_rng(0)
    batch, rows, spec = {"atari": rl_batch, "mujoco": state_batch, "text": text_batch}[kind](rng)
    rl = spec is not None
    # record batches of about 1 MB, as converters/writer.py writes them
    per_batch = max(1, int(batch.num_rows * (1 << 20) / batch.nbytes))
    batches = pa.Table.from_batches([batch]).to_batches(max_chunksize=per_batch)
    per_shard = max(1, round(shard_bytes / batch.nbytes))
    n_shards = max(1, round(total_bytes / (per_shard * batch.nbytes)))
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    for k in range(n_shards):
        name = SHARD_PATTERN.format(k)
        size = write_shard(out / name, batches * per_shard, shard_schema(rl))
        infos.append(ShardInfo(name, batch.num_rows * per_shard, per_shard * int(sum(len(r) for r in rows)), size,
                               file_sha256(out / name)))
    mods = np.bincount(np.concatenate([r.modality for r in rows]), minlength=5) * per_shard * n_shards
    stats = {"rows": sum(i.rows for i in infos), "tokens": sum(i.tokens for i in infos),
             "tokens_per_modality": {MODALITY_NAMES[m]: int(c) for m, c in enumerate(mods)}}
    Manifest(layout=LAYOUT.to_dict(), converter=kind, shards=infos, stats=stats,
             episode_spec=spec.to_dict() if spec else None,
             tasks=sorted(set(batch.column("task").to_pylist()))).write(out)
    return out


def read_and_hash(d: Path) -> float:
    """Seconds to read every shard once and sha256 it: the floor any verifier has to pay."""
    t0 = time.perf_counter()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for p in sorted(d.glob("shard-*.arrow")):
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        h.hexdigest()
    return time.perf_counter() - t0


def validate_only(d: Path) -> float:
    """Seconds for verify's checks without the sha256 (what the hashing thread runs beside)."""
    layout = Manifest.read(d).vocab_layout
    t0 = time.perf_counter()
    for p in sorted(d.glob("shard-*.arrow")):
        assert not check_shard(p, layout, hash_bytes=False).problems
    return time.perf_counter() - t0


def measure(d: Path, repeats: int) -> tuple[float, float, float, int]:
    """(verify, read+sha256, validation alone) in GB/s, and bytes: medians, interleaved so that the
    machine's load hits all three alike."""
    nbytes = sum(p.stat().st_size for p in d.glob("shard-*.arrow"))
    read_and_hash(d)  # warm the page cache for both
    v, b, c = [], [], []
    for _ in range(repeats):
        b.append(read_and_hash(d))
        t0 = time.perf_counter()
        res = verify_dir(d)
        v.append(time.perf_counter() - t0)
        assert not res.problems, res.problems[:3]
        c.append(validate_only(d))
    gbs = [nbytes / statistics.median(x) / 1e9 for x in (v, b, c)]
    return gbs[0], gbs[1], gbs[2], nbytes


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 MB per directory, 3 repeats")
    ap.add_argument("--keep", default=None, help="build the directories here and keep them")
    args = ap.parse_args(argv)
    total = (128 if args.quick else 1024) * 10**6
    repeats = 3 if args.quick else 5
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_verify_"))
    results = []
    try:
        for kind in ("atari", "mujoco", "text"):
            d = make_dir(base / kind, kind, total, min(total // 2, 256 * 10**6))
            gbs, base_gbs, checks_gbs, nbytes = measure(d, repeats)
            results.append({"name": f"verify {kind} shards ({nbytes / 1e6:.0f} MB)", "figure": round(gbs, 3),
                            "unit": "GB/s", "baseline": round(base_gbs, 3), "baseline_name": "read+sha256 GB/s",
                            "ratio": round(gbs / base_gbs, 3), "target": 0.8,
                            "checks_without_sha256_gbs": round(checks_gbs, 3)})
            print(f"{kind:6s} {nbytes / 1e6:6.0f} MB  verify {gbs:5.2f} GB/s  read+sha256 {base_gbs:5.2f} GB/s  "
                  f"ratio {gbs / base_gbs:4.2f} (target >= 0.8)  [checks alone, no sha256: {checks_gbs:5.2f} GB/s]",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
