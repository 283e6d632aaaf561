"""Scaling of `gato-tokenize`: 2 workers against 1, and peak memory at 1x and 10x the input.

Inputs (made here, deterministic): text -- the pseudo-English documents of bench_text.py as one
blank-line-separated .txt file; RL -- a Parquet episode table of HalfCheetah-sized random-walk
episodes (17 continuous observations, 6 continuous actions, 1000 steps each). Both go through the
real command (`converters.cli.main`), so the figures include reading, tokenising, per-unit files,
packing, sha256 and the manifest.

* workers: wall time of `--workers 1` (in-process, after a warm-up run) over `--workers 2` (spawned
  processes, start-up included) on the same input cut into many work units. Target 1.7x. On a
  shared 2-core machine this is bounded by whatever else runs; read it with that in mind.
* CPU cost: CPU seconds of the 1-worker run over those of the 2-worker run (all processes). On a
  loaded machine wall time says little; this says what parallelism costs: at 0.85 or better, two
  free cores give about 1.7x.
* memory: peak RSS (VmHWM; ru_maxrss on Linux keeps the forking parent's peak) of a fresh child
  process converting the 1x input, over the same for 10x; ratio = peak(1x) / peak(10x), target 0.8
  (10x the input may cost at most 1.25x the memory).

    .venv/bin/python benchmarks/bench_workers.py [--quick] [--kinds text rl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_text import make_documents, train_model, write_corpus  # noqa: E402

SCALING_TARGET = 1.7
MEMORY_TARGET = 0.8
OVERHEAD_TARGET = 0.85  # what 2 workers may cost in extra CPU (start-up, IPC) for 1.7x on 2 free cores


# --- inputs --------------------------------------------------------------------------------------

def text_input(directory: Path, megabytes: float, model: Path | None = None) -> tuple[list[str], list[str]]:
    """(inputs, options) for `gato-tokenize text`."""
    docs = make_documents(megabytes, seed=1)
    corpus = write_corpus(docs, directory / f"text-{megabytes:g}MB.txt")
    model = model or train_model(docs, directory)
    return [str(corpus)], ["--text-tokenizer", str(model), "--split", "blank-line", "--unit-size", "1MiB"]


def rl_input(directory: Path, episodes: int, steps: int = 1000, seed: int = 0) -> tuple[list[str], list[str]]:
    """(inputs, options) for `gato-tokenize rl`: a Parquet episode table written in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = directory / f"rl-{episodes}.parquet"
    rng = np.random.default_rng(seed)
    schema = pa.schema([("episode_id", pa.int64()),
                        ("continuous_observations", pa.list_(pa.list_(pa.float32(), 17))),
                        ("continuous_actions", pa.list_(pa.list_(pa.float32(), 6))),
                        ("rewards", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema) as w:
        for first in range(0, episodes, 16):
            n = min(16, episodes - first)
            obs = np.cumsum(rng.normal(0, 0.1, (n, steps, 17)), axis=1).astype(np.float32)
            act = np.tanh(rng.normal(0, 1, (n, steps, 6))).astype(np.float32)
            rew = rng.normal(0, 1, (n, steps)).astype(np.float32)

            def nested(a: np.ndarray, width: int | None, n: int = n) -> pa.Array:
                flat = pa.array(a.reshape(-1))
                if width:
                    flat = pa.FixedSizeListArray.from_arrays(flat, width)
                return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * steps), flat)

            w.write_table(pa.table([pa.array(np.arange(first, first + n)), nested(obs, 17), nested(act, 6),
                                    nested(rew, None)], schema=schema), row_group_size=16)
    return [str(path)], ["--episodes-per-unit", "16"]


def rl_available() -> bool:
    try:
        import converters.rl  # noqa: F401
        return True
    except ImportError:
        return False


# --- measurements --------------------------------------------------------------------------------

def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the spawned workers)."""
    import resource
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def run_cli(kind: str, inputs: list[str], options: list[str], out: Path, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all processes) of one conversion through the command."""
    from converters.cli import main
    t0, c0 = time.perf_counter(), _cpu()
    rc = main([kind, *inputs, "--out", str(out), "--workers", str(workers), "--no-progress", *options])
    if rc != 0:
        raise SystemExit(f"{kind} conversion failed with exit {rc}")
    return time.perf_counter() - t0, _cpu() - c0


def peak_rss_mb(kind: str, inputs: list[str], options: list[str], out: Path) -> float:
    """Peak resident memory of a fresh process running one conversion (one worker)."""
    code = ("import json, resource, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from converters.cli import main\n"
            f"rc = main({[kind, *inputs, '--out', str(out), '--no-progress', *options]!r})\n"
            "try:\n"  # VmHWM: peak RSS of this process image; ru_maxrss would also count the parent's
            "    kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "except OSError:\n"  # not Linux
            "    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print('@@' + json.dumps([rc, kb]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@")), None)
    if line is None:
        raise SystemExit(f"memory run failed: {proc.stderr.strip().splitlines()[-1:]}")
    rc, kb = json.loads(line[2:])
    if rc != 0:
        raise SystemExit(f"memory run exited {rc}: {proc.stderr.strip()}")
    return kb / 1024


def tokens_of(out: Path) -> int:
    from schemas.manifest import Manifest
    return Manifest.read(out).total_tokens


def bench_kind(kind: str, tmp: Path, quick: bool) -> list[dict]:
    d = tmp / kind
    d.mkdir()
    if kind == "text":
        inputs, opts = text_input(d, 6 if quick else 30)
        model = Path(opts[1])
        small, small_opts = text_input(d, 1 if quick else 3, model)
        big, big_opts = text_input(d, 10 if quick else 30, model)
        warm, warm_opts = text_input(d, 0.05, model)
    else:
        inputs, opts = rl_input(d, 96 if quick else 640)
        small, small_opts = rl_input(d, 8 if quick else 32, seed=1)
        big, big_opts = rl_input(d, 80 if quick else 320, seed=2)
        warm, warm_opts = rl_input(d, 2, steps=20, seed=3)
    run_cli(kind, warm, warm_opts, d / "warm", 1)  # imports and first-call costs out of the timing
    t1, cpu1 = run_cli(kind, inputs, opts, d / "w1", 1)
    t2, cpu2 = run_cli(kind, inputs, opts, d / "w2", 2)
    same = all((d / "w1" / p.name).read_bytes() == p.read_bytes() for p in sorted((d / "w2").glob("shard-*")))
    tokens = tokens_of(d / "w1")
    m1 = peak_rss_mb(kind, small, small_opts, d / "m1")
    m10 = peak_rss_mb(kind, big, big_opts, d / "m10")
    scale = tokens_of(d / "m10") / max(tokens_of(d / "m1"), 1)
    rows = [
        {"name": f"{kind}: 2 workers vs 1 (same bytes: {same})", "figure": tokens / t2 / 1e6, "unit": "Mtok/s",
         "baseline": tokens / t1 / 1e6, "baseline_name": "1 worker", "ratio": t1 / t2, "target": SCALING_TARGET},
        {"name": f"{kind}: CPU of 1 worker / CPU of 2 (1.0 = parallel work costs nothing extra)",
         "figure": cpu2, "unit": "CPU s", "baseline": cpu1, "baseline_name": "1 worker", "ratio": cpu1 / cpu2,
         "target": OVERHEAD_TARGET},
        {"name": f"{kind}: peak RSS at {scale:.0f}x input vs 1x", "figure": m10, "unit": "MB",
         "baseline": m1, "baseline_name": "1x input", "ratio": m1 / m10, "target": MEMORY_TARGET},
    ]
    if not same:
        rows[0]["error"] = "shards of 1 and 2 workers differ"
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    ap.add_argument("--kinds", nargs="*", default=["text", "rl"])
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        for kind in args.kinds:
            if kind == "rl" and not rl_available():
                print("rl: converter not available, skipped")
                continue
            rows += bench_kind(kind, Path(tmp), args.quick)
    for r in rows:
        print(f"{r['name']}: {r['figure']:.3g} {r['unit']} vs {r['baseline']:.3g} -> ratio {r['ratio']:.2f} "
              f"(target {r['target']})")
    return rows


if __name__ == "__main__":
    main()
