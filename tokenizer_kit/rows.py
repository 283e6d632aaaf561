"""Pieces of rows: the empty row, rows joined, and a token range of a row with its patches.

Acting, generation and captioning grow contexts out of such pieces; a piece carries exactly the
patches of its image slots (`sequence.patch_span`), so a context is a well-formed row."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .sequence import Row, patch_span


def empty_row() -> Row:
    return Row(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int16), np.zeros(0, np.uint8))


def concat_rows(rows: Sequence[Row]) -> Row:
    """Rows one after another (step_starts are not kept: a context is not an episode)."""
    rows = [r for r in rows if len(r)]
    if not rows:
        return empty_row()
    if len(rows) == 1:
        return rows[0]
    return Row(np.concatenate([r.tokens for r in rows]), np.concatenate([r.loss_mask for r in rows]),
               np.concatenate([r.local_pos for r in rows]), np.concatenate([r.modality for r in rows]),
               patches=np.concatenate([r.patches for r in rows]),
               patch_pos=np.concatenate([r.patch_pos for r in rows]))


def slice_tokens(row: Row, start: int, stop: int | None = None) -> Row:
    """Tokens [start, stop) of a row, with their patches (step_starts are not kept)."""
    stop = len(row.tokens) if stop is None else stop
    first, last = patch_span(row.tokens, start, stop, len(row.patches))
    return Row(row.tokens[start:stop], row.loss_mask[start:stop], row.local_pos[start:stop],
               row.modality[start:stop], patches=row.patches[first:last], patch_pos=row.patch_pos[first:last])


def step_lengths_of_rows(step_starts, steps_per_row, row_tokens) -> np.ndarray:
    """Tokens of every timestep of many rows at once (int64, row after row), from the rows' step
    starts laid end to end, each row's step count and each row's token count: a step runs to the
    next step's start, a row's last step to the row's end. The one rule for a shard's columns."""
    starts = np.asarray(step_starts, dtype=np.int64)
    nsteps = np.asarray(steps_per_row, dtype=np.int64)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    has = nsteps > 0
    ends[(np.cumsum(nsteps) - 1)[has]] = np.asarray(row_tokens, dtype=np.int64)[has]
    return ends - starts


def step_lengths(step_starts: np.ndarray, row_tokens: int) -> np.ndarray:
    """Tokens of each timestep of one row (int64), from its step starts and its length."""
    return step_lengths_of_rows(step_starts, [len(step_starts)], [row_tokens])


def unit_tokens(row: Row) -> int:
    """Tokens of the longest piece of a row a training sequence must hold whole for it to carry
    targets: a timestep of an episode, the whole of an image-caption row; 0 for text (any crop of
    a document has targets)."""
    if len(row.step_starts):
        return int(step_lengths(row.step_starts, len(row.tokens)).max())
    return len(row.tokens) if len(row.patches) else 0
