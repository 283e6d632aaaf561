"""`make bench`: run every benchmarks/bench_*.py, take medians of repeats, write BENCHMARKS.md.

Run from the repo root as `python -m benchmarks.run_all [--quick]`. Each benchmark module has
`main(argv) -> list[dict]` with keys name, figure, unit, baseline, ratio, target (target: a number the ratio or figure must reach, or a text). Each repeat runs in a
fresh child process so one benchmark's memory or threads never colour the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_one(path: Path, quick: bool) -> list[dict]:
    """Run one benchmark module's main() in a child process; return its result rows."""
    code = (  # run from the repo root, so `benchmarks.*`, `tests.support.*` and the packages import
        "import importlib, json\n"
        f"mod = importlib.import_module('benchmarks.{path.stem}')\n"
        f"rows = mod.main({['--quick'] if quick else []!r})\n"
        "print('@@RESULT@@' + json.dumps(rows, default=float))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return [{"name": path.stem, "figure": None, "unit": "", "baseline": None, "ratio": None,
             "target": None, "error": f"exit {proc.returncode}: {tail[0]}"}]


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Merge repeated runs by benchmark name, taking the median of every number."""
    merged: dict[str, dict] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for rows in runs:
        for r in rows:
            merged.setdefault(r["name"], dict(r))
            for key in ("figure", "baseline", "ratio"):
                if isinstance(r.get(key), (int, float)):
                    samples.setdefault(r["name"], {}).setdefault(key, []).append(float(r[key]))
    for name, keys in samples.items():
        for key, values in keys.items():
            merged[name][key] = statistics.median(values)
        merged[name]["repeats"] = max(len(v) for v in keys.values())
    return list(merged.values())


def verdict(row: dict) -> str:
    target = row.get("target")
    if row.get("error"):
        return "error"
    if isinstance(row.get("target_max"), (int, float)):  # an upper bound on the figure (bytes, seconds)
        value = row.get("figure")
        return "-" if not isinstance(value, (int, float)) else "met" if value <= row["target_max"] else "MISSED"
    if not isinstance(target, (int, float)):
        return "-" if target in (None, "") else str(target)
    value = row.get("ratio") if row.get("target_on", "ratio") == "ratio" else row.get("figure")
    if not isinstance(value, (int, float)):
        return "-"
    return "met" if value >= target else "MISSED"


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def machine_lines() -> list[str]:
    import numpy, pyarrow, sentencepiece, PIL, torch  # noqa: E401 - versions for BENCHMARKS.md
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}",
        f"- python {platform.python_version()}, numpy {numpy.__version__}, pyarrow {pyarrow.__version__}, "
        f"torch {torch.__version__}, sentencepiece {sentencepiece.__version__}, pillow {PIL.__version__}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, one repeat (under 2 minutes)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per benchmark (default 3, quick 1)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark file stems to run")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    paths = sorted(p for p in HERE.glob("bench_*.py") if args.only is None or p.stem in args.only)
    results: list[tuple[str, list[dict], float]] = []
    for path in paths:
        t0 = time.perf_counter()
        runs = [run_one(path, args.quick) for _ in range(repeats)]
        rows = median_rows(runs)
        elapsed = time.perf_counter() - t0
        results.append((path.stem, rows, elapsed))
        for r in rows:
            print(f"{path.stem:18s} {r['name']:40s} {fmt(r.get('figure')):>12s} {r.get('unit', ''):10s} "
                  f"ratio {fmt(r.get('ratio')):>8s}  target {fmt(r.get('target')):>6s}  {verdict(r)}"
                  + (f"  ({r['error']})" if r.get("error") else ""), flush=True)
    lines = ["# Benchmarks", "", f"Written by `make bench{' QUICK=1' if args.quick else ''}` "
             f"({'quick inputs, ' if args.quick else ''}median of {repeats} run(s) each; the machine is noisy, "
             "read figures as +/-20%). Each ratio divides our figure by a baseline measured in the same run.", ""]
    lines += machine_lines() + [""]
    lines += ["| benchmark | measure | figure | unit | baseline | ratio | target | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for stem, rows, _ in results:
        for r in rows:
            lines.append(f"| {stem} | {r['name']} | {fmt(r.get('figure'))} | {r.get('unit', '')} | "
                         f"{fmt(r.get('baseline'))} {r.get('baseline_name', '')} | {fmt(r.get('ratio'))} | "
                         f"{fmt(r.get('target')) or ('<= ' + fmt(r['target_max']) if 'target_max' in r else '')} | "
                         f"{verdict(r)}{' ' + r['error'] if r.get('error') else ''} |")
    lines += ["", "Time per benchmark: " + ", ".join(f"{s} {t:.0f} s" for s, _, t in results), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
