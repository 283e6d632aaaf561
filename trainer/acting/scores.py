"""Scores as rliable reports them ("Deep RL at the Edge of the Statistical Precipice", Agarwal et
al. 2021): aggregates over a (runs x tasks) matrix of normalised scores, each with a stratified
bootstrap confidence interval.

One entry of the matrix is one run's (one trained checkpoint's) normalised score on one task,
the mean over its episodes, so every task weighs the same whatever its number of episodes. The
bootstrap resamples runs with replacement independently within each task (rliable's
`StratifiedBootstrap`, `task_bootstrap=False`) and takes the percentile interval. With one run
there is nothing to resample: the aggregate intervals have zero width, as rliable's do, and a
task's own interval then comes from its episodes (the only repetition there is).

Aggregates (rliable.metrics): mean over all entries; median of the per-task means over runs;
interquartile mean (the mean of the entries left after cutting int(n/4) from each end, as
scipy.stats.trim_mean(x, 0.25, axis=None)); optimality gap, 1 - mean(min(x, 1)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

AGGREGATES = ("mean", "median", "iqm", "optimality_gap")
CI_SIZE = 0.95


def aggregate_mean(x: np.ndarray) -> np.ndarray:
    """x: (..., runs, tasks) -> (...)."""
    return x.mean(axis=(-2, -1))


def aggregate_median(x: np.ndarray) -> np.ndarray:
    return np.median(x.mean(axis=-2), axis=-1)


def aggregate_iqm(x: np.ndarray) -> np.ndarray:
    flat = np.sort(x.reshape(*x.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(0.25 * n)
    return flat[..., cut:n - cut].mean(axis=-1)


def aggregate_optimality_gap(x: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    return gamma - np.minimum(x, gamma).mean(axis=(-2, -1))


FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": aggregate_mean, "median": aggregate_median, "iqm": aggregate_iqm,
    "optimality_gap": aggregate_optimality_gap}


def stratified_resamples(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, runs, tasks): each task's runs drawn with replacement, independently per task."""
    runs, tasks = scores.shape
    idx = rng.integers(0, runs, (reps, runs, tasks))
    return scores[idx, np.arange(tasks)]


def percentile_interval(samples: np.ndarray, size: float = CI_SIZE) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [50 * (1 - size), 50 * (1 + size)])
    return float(lo), float(hi)


@dataclass
class Aggregates:
    """Each aggregate of a (runs x tasks) score matrix with its 95% stratified bootstrap interval."""

    mean: float
    mean_ci: list[float]
    median: float
    median_ci: list[float]
    iqm: float
    iqm_ci: list[float]
    optimality_gap: float
    optimality_gap_ci: list[float]
    runs: int
    tasks: int
    reps: int

    def to_dict(self) -> dict:
        return asdict(self)


def aggregates(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> Aggregates:
    """Point estimates and percentile intervals of every aggregate of `scores` (runs x tasks)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty (runs x tasks) matrix, got shape {scores.shape}")
    samples = stratified_resamples(scores, reps, np.random.default_rng(seed))
    out: dict[str, Any] = {}  # name: point estimate, name_ci: [low, high]
    for name, fn in FUNCTIONS.items():
        out[name] = float(fn(scores))
        out[name + "_ci"] = list(percentile_interval(fn(samples)))
    return Aggregates(**out, runs=scores.shape[0], tasks=scores.shape[1], reps=reps)


def task_interval(per_run: np.ndarray, episodes: list[np.ndarray], reps: int = 2000,
                  seed: int = 0) -> tuple[list[float], str]:
    """One task's score interval: over runs when there are several (rliable's per-task
    interval), else over the one run's episodes; returns it and what was resampled."""
    rng = np.random.default_rng(seed)
    per_run = np.asarray(per_run, np.float64)
    if len(per_run) > 1:
        samples = stratified_resamples(per_run[:, None], reps, rng).mean(axis=(1, 2))
        return list(percentile_interval(samples)), "runs"
    e = np.asarray(episodes[0], np.float64)
    samples = e[rng.integers(0, len(e), (reps, len(e)))].mean(axis=1)
    return list(percentile_interval(samples)), "episodes"
