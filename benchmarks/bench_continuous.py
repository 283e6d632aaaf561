"""Continuous-value tokenisation speed (SPEC 2) on one core, against a plain numpy mu-law.

Input: 10M float32 observations drawn from a mix of scales (N(0, 0.1), N(0, 10), N(0, 1000)), so
that every branch of the companding and the clip is exercised. Measured in the same run on the
same array (median of several passes, after a warm-up pass):

* figure: `tokenizer_kit.values.continuous_to_tokens(x, layout)` -> int32 ids (checks NaN/inf,
  mu-law, clip, 1024 bins, offset); target >= 50M values/s;
* baseline: the usual numpy one-liner people write for Gato's mu-law + binning
  (`np.sign(x) * np.log1p(mu*np.abs(x)) / np.log(1+M*mu)`, clip, floor, +T), with temporaries.
  The two must give identical ids up to float32 bin-edge rounding (checked).

Both are forced onto one core (OMP/MKL/OpenBLAS threads = 1; numpy ufuncs are single-threaded).

    .venv/bin/python -m benchmarks.bench_continuous [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402 - after the thread settings

ROOT = Path(__file__).resolve().parents[1]

TARGET = 50.0  # M values/s, on the figure


def make_values(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([0.1, 10.0, 1000.0], np.float32)
    return (rng.standard_normal(n, dtype=np.float32) * scales[rng.integers(0, 3, n)]).astype(np.float32)


def plain_numpy(x: np.ndarray, text_vocab: int, mu: float = 100.0, m: float = 256.0) -> np.ndarray:
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log(1.0 + m * mu)
    y = np.clip(y, -1.0, 1.0)
    return (np.minimum(np.floor((y + 1.0) / 2.0 * 1024), 1023) + text_vocab).astype(np.int32)


def rate(fn, x: np.ndarray, repeats: int) -> float:
    """Median values/s over `repeats` timed calls, after one warm-up call."""
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return len(x) / float(np.median(times))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2M values and 3 passes instead of 10M and 7")
    ap.add_argument("--values", type=int, default=None, help="array size (default 10,000,000)")
    args = ap.parse_args(argv)
    n = args.values or (2_000_000 if args.quick else 10_000_000)
    repeats = 3 if args.quick else 7

    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.values import continuous_to_tokens

    layout = VocabLayout(32000)
    x = make_values(n)
    ours, ref = continuous_to_tokens(x, layout), plain_numpy(x, layout.text_vocab_size)
    differ = int(np.count_nonzero(ours != ref))
    if differ > n * 1e-4 or np.abs(ours.astype(np.int64) - ref).max() > 1:
        raise SystemExit(f"continuous_to_tokens and the plain numpy reference disagree on {differ} of {n} values")
    figure = rate(lambda a: continuous_to_tokens(a, layout), x, repeats) / 1e6
    baseline = rate(lambda a: plain_numpy(a, layout.text_vocab_size), x, repeats) / 1e6
    row = {"name": f"continuous tokenisation, {n / 1e6:g}M float32, 1 core", "figure": figure,
           "unit": "M values/s", "baseline": baseline, "baseline_name": "plain numpy mu-law + bins",
           "ratio": figure / baseline, "target": TARGET, "target_on": "figure"}
    print(f"{row['name']}: {figure:.1f} M values/s vs plain numpy {baseline:.1f} M values/s -> ratio "
          f"{row['ratio']:.2f}x (target >= {TARGET:g} M values/s: {'met' if figure >= TARGET else 'MISSED'}; "
          f"{differ} bin-edge differences)")
    return [row]


if __name__ == "__main__":
    main()
