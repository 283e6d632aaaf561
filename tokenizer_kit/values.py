"""Discrete and continuous values to ids and back (SPEC sections 1 and 2), vectorised.

Continuous values are mu-law companded (observations) or taken as they are (actions), clipped to
[-1, 1] and cut into `num_bins` uniform bins; decoding returns the bin centre, never its edge.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import TokenizeError, locate
from .layout import DISCRETE, VocabLayout


def _check_finite(x: np.ndarray, field: str) -> None:
    """NaN and infinity have no correct token: refuse them, naming where the first one is."""
    finite = np.isfinite(x)
    if not finite.all():
        first = x.reshape(-1)[int(np.flatnonzero(~finite.reshape(-1))[0])]
        kind = "NaN" if np.isnan(first) else "infinite"
        raise TokenizeError(f"field {field!r}: {kind} value at {locate(x, ~finite)}")


def _as_float(values, field: str) -> np.ndarray:
    """float64 stays float64; every other real dtype (float16/32, ints, bools) becomes float32."""
    try:
        x = np.asarray(values)
    except ValueError:  # ragged nested lists
        raise TokenizeError(f"field {field!r}: ragged values (steps or rows of different lengths)") from None
    if x.dtype.kind not in "biuf":
        raise TokenizeError(f"field {field!r}: expected real numbers, got dtype {x.dtype}")
    if x.dtype == np.float64:
        return x
    return x.astype(np.float32, copy=False)


def continuous_bins(values, layout: VocabLayout, mu_law: bool = True, field: str = "value") -> np.ndarray:
    """Bin index in [0, num_bins) of each value; same shape, int32.

    Computed in float32 (float64 for float64 input) with in-place ufuncs: no temporaries besides
    one work buffer, which is what makes it run at several times plain-numpy speed. Huge values
    overflow to inf inside the buffer, which the clip turns into the last bin, as it should.
    """
    x = _as_float(values, field)
    _check_finite(x, field)
    buf = np.empty(x.shape, dtype=x.dtype)
    with np.errstate(over="ignore"):
        if mu_law:
            np.abs(x, out=buf)
            np.multiply(buf, layout.mu, out=buf)
            np.log1p(buf, out=buf)
            np.multiply(buf, 1.0 / math.log1p(layout.m * layout.mu), out=buf)
            np.copysign(buf, x, out=buf)
        else:
            np.copyto(buf, x)
        np.clip(buf, -1.0, 1.0, out=buf)
        np.add(buf, 1.0, out=buf)
        np.multiply(buf, layout.num_bins / 2.0, out=buf)
    bins = buf.astype(np.int32)  # truncation == floor: buf >= 0 here
    np.minimum(bins, layout.num_bins - 1, out=bins)  # +1.0 lands on num_bins: it belongs to the last bin
    return bins


def continuous_to_tokens(values, layout: VocabLayout, mu_law: bool = True, field: str = "value") -> np.ndarray:
    """Ids of continuous values: continuous_offset + bin (int32)."""
    bins = continuous_bins(values, layout, mu_law, field)
    bins += layout.continuous_offset
    return bins


def bins_to_continuous(bins, layout: VocabLayout, mu_law: bool = True) -> np.ndarray:
    """Bin centres decoded back to values (float64): the exact inverse up to half a bin."""
    b = np.asarray(bins, dtype=np.float64)
    c = (2.0 * b + 1.0) / layout.num_bins - 1.0
    if not mu_law:
        return c
    return np.sign(c) * (np.power(1.0 + layout.m * layout.mu, np.abs(c)) - 1.0) / layout.mu


def tokens_to_continuous(tokens, layout: VocabLayout, mu_law: bool = True) -> np.ndarray:
    """Ids of the continuous range back to values (bin centres); other ids are refused."""
    t = np.asarray(tokens, dtype=np.int64)
    lo, hi = layout.continuous_offset, layout.continuous_offset + layout.num_bins
    if t.size and (t.min() < lo or t.max() >= hi):
        raise TokenizeError(f"ids outside the continuous range [{lo}, {hi})")
    return bins_to_continuous(t - lo, layout, mu_law)


def quantization_error(values, layout: VocabLayout, mu_law: bool = True, field: str = "value") -> np.ndarray:
    """|x - decode(encode(x))| per value: what the bins cost this data."""
    x = np.asarray(values, dtype=np.float64)
    return np.abs(x - bins_to_continuous(continuous_bins(values, layout, mu_law, field), layout, mu_law))


def to_unit_range(values, low, high, field: str = "value") -> np.ndarray:
    """Values declared to lie in [low, high] (per element, broadcast) mapped linearly onto [-1, 1]
    (float64), so that actions of any declared range use all the bins. Bounds must be finite, low < high."""
    lo, hi = _bounds(low, high, field)
    x = _as_float(values, field).astype(np.float64)
    return (x - lo) * (2.0 / (hi - lo)) - 1.0


def from_unit_range(values, low, high) -> np.ndarray:
    """Inverse of `to_unit_range`: [-1, 1] back to [low, high] (float64), e.g. decoded actions to
    what an environment takes."""
    lo, hi = _bounds(low, high, "value")
    return (np.asarray(values, dtype=np.float64) + 1.0) * ((hi - lo) / 2.0) + lo


def _bounds(low, high, field: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
        raise TokenizeError(f"field {field!r}: bounds must be finite with low < high, got [{low}, {high}]")
    return lo, hi


def outside_unit_range(values) -> np.ndarray:
    """Mask of values the bins cannot hold (outside [-1, 1]): they would be clipped to the end bins."""
    x = np.asarray(values)
    return (x < -1.0) | (x > 1.0)


def discrete_to_tokens(values, layout: VocabLayout, field: str = "value") -> np.ndarray:
    """Ids of integer values in [0, num_discrete); anything else is refused, never wrapped."""
    try:
        x = np.asarray(values)
    except ValueError:
        raise TokenizeError(f"field {field!r}: ragged values (steps or rows of different lengths)") from None
    if x.dtype == np.bool_:
        x = x.astype(np.int32)
    elif x.dtype.kind == "f":
        _check_finite(x, field)
        whole = x == np.floor(x)
        if not whole.all():
            raise TokenizeError(f"field {field!r}: discrete value is not an integer at {locate(x, ~whole)}")
    elif x.dtype.kind not in "iu":
        raise TokenizeError(f"field {field!r}: expected integers, got dtype {x.dtype}")
    bad = (x < 0) | (x >= layout.num_discrete)
    if bad.any():
        raise TokenizeError(
            f"field {field!r}: discrete value outside [0, {layout.num_discrete}) at {locate(x, bad)}")
    return x.astype(np.int32) + np.int32(layout.discrete_offset)


def tokens_to_discrete(tokens, layout: VocabLayout) -> np.ndarray:
    """Ids of the discrete range back to the integers they stand for (int64)."""
    t = np.asarray(tokens, dtype=np.int64)
    lo, hi = layout.id_range(DISCRETE)
    if t.size and (t.min() < lo or t.max() >= hi):
        raise TokenizeError(f"ids outside the discrete range [{lo}, {hi})")
    return t - lo
