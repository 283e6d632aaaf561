"""Scaling of `gato-tokenize`: 2 workers against 1, the Ray engine against 2 local workers, and
peak memory at 1x and 10x the input.

Inputs (made here, deterministic): text -- the pseudo-English documents of bench_text.py as one
blank-line-separated .txt file; RL -- a directory of Parquet episode tables (the usual layout of
a big dataset: many files), HalfCheetah-sized random-walk episodes (17 continuous observations,
6 continuous actions, 1000 steps each). Both go through the real command
(`converters.cli.main`), so the figures include reading, tokenising, validating, writing each
unit's own shards (hashed as they are written, by the process that converted the unit) and the
manifest.

* workers: wall time of `--workers 1` (in-process, after a warm-up run) over `--workers 2` (a
  second process, start-up included) on the same input cut into many work units. Target 1.7x.
  The input is big enough that the conversion dominates: ~5 s of one worker's CPU for text and
  ~10 s for RL in full mode (RL: 48 hard links to one 200-episode file, 230M tokens, ~1.9 GB of
  shards): on this shared machine a 5-second job's ratio swings by 0.2 from run to run. On Linux
  the worker is forked (ready at once); where it is spawned it first spends ~0.6 s of CPU on
  imports (numpy, pyarrow and the pandas it pulls in). With --quick the job is ~1 s: read the
  quick figure as a smoke test, not as scaling. What else 2 workers cost: the two cores share one
  memory bus (a memory-bound loop on the other core slows a 1-worker RL conversion by ~15% here),
  and the last units run alone while the other worker idles.
  On a shared 2-core machine the wall ratio is bounded by whatever else runs: the load average
  at the start is printed with it.
* ray: wall time of `--engine ray` on a local Ray of 2 CPUs (started before the timing, as a
  cluster is running before a job joins it with --ray-address; the same job once first, so both
  Ray workers have imported the converter) over
  `--workers 2`. Target 0.8x.
* CPU cost: CPU seconds of the 1-worker run over those of the 2-worker run (all processes). On a
  loaded machine wall time says little; this says what parallelism costs: at 0.85 or better, two
  free cores give about 1.7x.
* memory: peak RSS (VmHWM; ru_maxrss on Linux keeps the forking parent's peak) of a fresh child
  process converting the 1x input, over the same for 10x; ratio = peak(1x) / peak(10x), target 0.8
  (10x the input may cost at most 1.25x the memory).

    .venv/bin/python -m benchmarks.bench_workers [--quick] [--kinds text rl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_text import make_documents, train_model, write_corpus

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SCALING_TARGET = 1.7
MEMORY_TARGET = 0.8
RAY_TARGET = 0.8
OVERHEAD_TARGET = 0.85  # what 2 workers may cost in extra CPU (start-up, IPC) for 1.7x on 2 free cores


# --- inputs --------------------------------------------------------------------------------------

def text_inputs(directory: Path, megabytes: list[float]) -> list[tuple[list[str], list[str]]]:
    """(inputs, options) for `gato-tokenize text`, one per size: the documents are made once
    (the largest size; smaller corpora are its first documents) and the model trained once."""
    docs = make_documents(max(megabytes), seed=1)
    model = train_model(docs, directory)
    sizes = np.cumsum([len(doc) + 2 for doc in docs])
    out = []
    for mb in megabytes:
        n = int(np.searchsorted(sizes, mb * 1e6)) + 1
        corpus = write_corpus(docs[:n], directory / f"text-{mb:g}MB.txt")
        out.append(([str(corpus)], ["--text-tokenizer", str(model), "--split", "blank-line", "--unit-size", "1MiB"]))
    return out


def rl_input(directory: Path, episodes: int, steps: int = 1000, seed: int = 0,
             copies: int = 1) -> tuple[list[str], list[str]]:
    """(inputs, options) for `gato-tokenize rl`: a Parquet episode table written in row groups of
    16 episodes, or, with `copies` > 1, a directory of that many hard links to it (a many-file
    dataset at no cost to make: the work and the output grow with `copies`, the input's
    generation does not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = directory / f"rl-{episodes}-{steps}-{seed}.parquet"
    if not path.exists():
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
    if copies == 1:
        return [str(path)], ["--episodes-per-unit", "16"]
    many = directory / f"{path.stem}-x{copies}"
    many.mkdir(exist_ok=True)
    for i in range(copies):
        link = many / f"part-{i:05d}.parquet"
        if not link.exists():
            os.link(path, link)
    return [str(many)], ["--episodes-per-unit", "50"]


# --- measurements --------------------------------------------------------------------------------

def _cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its finished children (the worker processes)."""
    import resource
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), c.ru_utime + c.ru_stime


def run_cli(kind: str, inputs: list[str], options: list[str], out: Path, workers: int,
            engine: str = "local") -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, CPU seconds of the worker processes) of one
    conversion through the command."""
    from converters.cli import main
    t0, (m0, c0) = time.perf_counter(), _cpu()
    rc = main([kind, *inputs, "--out", str(out), "--workers", str(workers), "--no-progress", "--engine", engine,
               *options])
    if rc != 0:
        raise SystemExit(f"{kind} conversion failed with exit {rc}")
    m1, c1 = _cpu()
    return time.perf_counter() - t0, m1 - m0, c1 - c0


def peak_rss_mb(runs: list[tuple[str, list[str], list[str], Path]]) -> list[float]:
    """Peak resident memory of fresh processes, each running one conversion (one worker).

    The processes run side by side: a peak is a peak however busy the machine, and the
    benchmark's time is not spent waiting for them one after the other."""
    procs = []
    for kind, inputs, options, out in runs:
        code = ("import json, resource, sys\n"
                "from converters.cli import main\n"
                f"rc = main({[kind, *inputs, '--out', str(out), '--no-progress', *options]!r})\n"
                "try:\n"  # VmHWM: peak RSS of this process image; ru_maxrss would also count the parent's
                "    kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
                "except OSError:\n"  # not Linux
                "    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
                "print('@@' + json.dumps([rc, kb]))\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT))
    peaks = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        line = next((x for x in stdout.splitlines() if x.startswith("@@")), None)
        if line is None:
            raise SystemExit(f"memory run failed: {stderr.strip().splitlines()[-1:]}")
        rc, kb = json.loads(line[2:])
        if rc != 0:
            raise SystemExit(f"memory run exited {rc}: {stderr.strip()}")
        peaks.append(kb / 1024)
    return peaks


def tokens_of(out: Path) -> int:
    from schemas.manifest import Manifest
    return Manifest.read(out).total_tokens


def shard_hashes(out: Path) -> list[str]:
    from schemas.manifest import Manifest
    return [s.sha256 for s in Manifest.read(out).shards]


def bench_kind(kind: str, tmp: Path, quick: bool) -> list[dict]:
    d = tmp / kind
    d.mkdir()
    if kind == "text":
        sizes = [4, 0.5, 5, 0.05] if quick else [30, 3, 30, 0.05]  # timed, memory 1x and 10x, warm-up
        (inputs, opts), (small, small_opts), (big, big_opts), (warm, warm_opts) = text_inputs(d, sizes)
    else:  # ~1 s (quick) or ~10 s (full) of one worker's CPU: start-up must not be what is measured
        inputs, opts = rl_input(d, 200, copies=4 if quick else 48)
        small, small_opts = rl_input(d, 8 if quick else 32, seed=1)
        big, big_opts = rl_input(d, 80 if quick else 320, seed=2)
        warm, warm_opts = rl_input(d, 2, steps=20, seed=3)
    run_cli(kind, warm, warm_opts, d / "warm", 1)  # imports and first-call costs out of the timing
    load = os.getloadavg()[0]
    t1, main1, child1 = run_cli(kind, inputs, opts, d / "w1", 1)
    cpu1 = main1 + child1
    tokens, hashes1 = tokens_of(d / "w1"), shard_hashes(d / "w1")
    shutil.rmtree(d / "w1")  # ~2 GB for RL: one output on disk at a time
    t2, main2, child2 = run_cli(kind, inputs, opts, d / "w2", 2)
    cpu2 = main2 + child2
    same = hashes1 == shard_hashes(d / "w2")  # the manifests' sha256 of every shard
    shutil.rmtree(d / "w2")
    ray_row = bench_ray(kind, d, inputs, opts, t2, hashes1)
    m1, m10 = peak_rss_mb([(kind, small, small_opts, d / "m1"), (kind, big, big_opts, d / "m10")])
    scale = tokens_of(d / "m10") / max(tokens_of(d / "m1"), 1)
    rows = [  # names stay the same from run to run (run_all merges repeats by name); numbers go in notes
        {"name": f"{kind}: 2 workers vs 1, wall clock (same bytes: {same})", "figure": tokens / t2 / 1e6,
         "unit": "Mtok/s", "baseline": tokens / t1 / 1e6, "baseline_name": "1 worker", "ratio": t1 / t2,
         "target": SCALING_TARGET,
         "note": f"{cpu1:.1f} CPU s of work; load average {load:.1f} on {os.cpu_count()} cores at the start"},
        {"name": f"{kind}: CPU of 1 worker / CPU of 2 (1.0 = parallel work costs nothing extra)",
         "figure": cpu2, "unit": "CPU s", "baseline": cpu1, "baseline_name": "1 worker", "ratio": cpu1 / cpu2,
         "target": OVERHEAD_TARGET},
        {"name": f"{kind}: peak RSS at {scale:.0f}x input vs 1x", "figure": m10, "unit": "MB",
         "baseline": m1, "baseline_name": "1x input", "ratio": m1 / m10, "target": MEMORY_TARGET},
    ]
    if not same:
        rows[0]["error"] = "shards of 1 and 2 workers differ"
    return rows + ([ray_row] if ray_row else [])


def bench_ray(kind: str, d: Path, inputs, opts, t_local2: float, hashes: list[str]) -> dict | None:
    """`--engine ray` on a local Ray of 2 CPUs against `--workers 2` (None where Ray is not installed)."""
    try:
        import ray
    except ImportError:
        print("ray not installed: engine comparison skipped")
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        run_cli(kind, inputs, opts, d / "ray-warm", 2, "ray")  # both workers started, imports done
        shutil.rmtree(d / "ray-warm")
        t, _, _ = run_cli(kind, inputs, opts, d / "ray", 2, "ray")
        same = shard_hashes(d / "ray") == hashes
        tokens = tokens_of(d / "ray")
        shutil.rmtree(d / "ray")
    finally:
        ray.shutdown()
    row = {"name": f"{kind}: Ray engine (2 CPUs) vs 2 local workers, wall clock (same bytes: {same})",
           "figure": tokens / t / 1e6, "unit": "Mtok/s", "baseline": tokens / t_local2 / 1e6,
           "baseline_name": "--workers 2", "ratio": t_local2 / t, "target": RAY_TARGET}
    if not same:
        row["error"] = "shards of Ray and local workers differ"
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    ap.add_argument("--kinds", nargs="*", default=["text", "rl"])
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        for kind in args.kinds:
            rows += bench_kind(kind, Path(tmp), args.quick)
    for r in rows:
        print(f"{r['name']}: {r['figure']:.3g} {r['unit']} vs {r['baseline']:.3g} -> ratio {r['ratio']:.2f} "
              f"(target {r['target']})" + (f"  [{r['note']}]" if r.get("note") else ""))
    return rows


if __name__ == "__main__":
    main()
