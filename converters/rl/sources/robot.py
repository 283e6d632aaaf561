"""What the two robot formats (LeRobot, RLDS) share: names from data made into safe paths, and
action bounds from a dataset's statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.base import SourceError


def inside(root: Path, relative: str, what: str) -> Path:
    """`relative` (a name or template result read from the dataset) as a path under `root`, or a
    SourceError: a dataset never makes the converter read outside its own folder."""
    path = (root / relative).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        raise SourceError(f"{root}: {what} {relative!r} points outside the dataset folder") from None
    return path


def stat_bounds(low, high) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A dataset's per-dimension min/max of an action as the bounds it is rescaled from; a
    dimension that never moved (min == max) gets [v - 1, v + 1], so it maps to the middle bin.
    None when the statistics are missing or not finite (then values are taken as they are)."""
    if low is None or high is None:
        return None
    try:
        lo, hi = np.asarray(low, np.float64).ravel(), np.asarray(high, np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if lo.shape != hi.shape or not lo.size or not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
        return None
    same = lo == hi
    lo, hi = np.where(same, lo - 1.0, lo), np.where(same, hi + 1.0, hi)
    return tuple(lo.tolist()), tuple(hi.tolist())
