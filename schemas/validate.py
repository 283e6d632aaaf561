"""Validation of shard tables against schema v1 and a layout, returning precise reasons.

Two paths. RL rows whose steps all share one length and one modality / loss mask / local
position pattern (fixed-size fields: the common case) are *proved* valid by checking one step's
pattern and then only that the columns repeat it (a memcmp of each column against itself shifted
by one step, on zero-copy views of the Arrow buffers) and that every id lies in its step
position's range (min/max per step position); plain text rows by min/max of each column. Anything
else, and any table the proof does not go through for, takes the general path
(schemas/validate_rules.py), which checks every token and names every problem (so the fast path
never decides what is reported).

The proof is only sound because it checks the very rules the general path checks: the one step
pattern goes through validate_rules' own per-token and per-step checks (_valid_pattern_slots), and
tests/schemas/test_validate.py proves the fast path against the general rule on the same tables.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout

from .arrow_numpy import list_offsets, to_numpy
from .shard import full_columns, is_text_form
from .validate_rules import (Problem, Report, bad_patch_pos, check_schema, check_slot_sentinel, check_steps,
                             check_values, chunk_view, count_modalities, flat_column, id_ranges, nulls_inside,
                             validate_tokens)

__all__ = ["Problem", "check_schema", "validate_table", "validate_and_count"]


def validate_table(table: pa.Table, layout: VocabLayout) -> list[Problem]:
    """Every problem of one shard's table; [] when it holds to the contract."""
    return _validate(table, layout, count=False)[0]


def validate_and_count(table: pa.Table, layout: VocabLayout) -> tuple[list[Problem], np.ndarray]:
    """validate_table's problems and the number of tokens of each modality code (what verify
    compares with the manifest), taken from the step pattern where the fast path proves the table."""
    problems, counts = _validate(table, layout, count=True)
    assert counts is not None  # count=True: always counted
    return problems, counts


def _validate(table: pa.Table, layout: VocabLayout, count: bool) -> tuple[list[Problem], np.ndarray | None]:
    problems = check_schema(table.schema) or check_slot_sentinel(table.schema, layout)
    problems += [Problem(None, name, f"{table.column(name).null_count} null values (columns are not nullable)")
                 for name in table.schema.names if table.column(name).null_count]
    if not problems and is_text_form(table.schema):
        counts = _proved_text_form(table, layout)
        if counts is not None:
            return [], counts
    if not problems:
        table = full_columns(table)  # a lean shard's derived columns and int32 ids, as version 1 stores them
        problems = nulls_inside(table)
    if not problems:
        counts = _proof(table, layout)
        if counts is not None:
            return [], counts
        problems = validate_tokens(table, layout)
    return problems, count_modalities(table) if count else None


# --- the fast path: RL rows made of one repeated step pattern --------------------------------------

@functools.lru_cache(maxsize=16)
def _slot_is_image_only(layout: VocabLayout) -> bool:
    """Whether an id of -1 is legal for image patches only: then, ids once checked, a row's patch
    slots are its image tokens and need no counting."""
    lo, hi = id_ranges(layout)
    return all((lo[m] <= PATCH_SLOT < hi[m]) == (m == IMAGE) for m in range(SEPARATOR + 1))


def _repeats(a: np.ndarray, k: int) -> bool:
    """Whether a flat array repeats with period k: itself shifted by k, compared by one memcmp."""
    return len(a) <= k or pa.py_buffer(a[k:]).equals(pa.py_buffer(a[:-k]))


def _column_range(ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each of the k columns of ids seen as (len // k, k) rows: reduced over blocks
    of whole rows about 1024 wide, so numpy's inner loops stay long and nothing is copied."""
    rows = ids.reshape(-1, k)
    r = max(1, 1024 // k)
    full = len(rows) // r * r
    parts = []
    if full:
        block = ids[:full * k].reshape(-1, r * k)
        parts.append((block.min(0).reshape(r, k).min(0), block.max(0).reshape(r, k).max(0)))
    if full < len(rows):
        parts.append((rows[full:].min(0), rows[full:].max(0)))
    return (np.minimum.reduce([p[0] for p in parts]), np.maximum.reduce([p[1] for p in parts]))


def _proof(table: pa.Table, layout: VocabLayout) -> np.ndarray | None:
    """Tokens per modality when a fast path proves the table valid; None: the general path decides."""
    if table.num_rows == 0 or not _slot_is_image_only(layout):
        return None
    if "num_steps" in table.schema.names:
        return _proved_by_pattern(table, layout)
    return _proved_text(table, layout)


def _proved_text(table: pa.Table, layout: VocabLayout) -> np.ndarray | None:
    """Tokens per modality when every row is plain text (no steps, no patches, loss on every token,
    no local positions, ids in the text range): a few min/max per chunk, no copies. Else None."""
    lo, hi = id_ranges(layout)
    n = 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        tokens, off = chunk_view(batch.column("tokens"))
        for name in ("step_starts", "patches", "patch_pos"):
            o = list_offsets(batch.column(name))
            if o[0] != o[-1]:
                return None
        for name, want in (("modality", TEXT), ("loss_mask", 1), ("local_pos", NO_POSITION)):
            values, o = chunk_view(batch.column(name))
            if not np.array_equal(o, off) or len(values) and not (values.min() == values.max() == want):
                return None
        if len(tokens) and not (tokens.min() >= lo[TEXT] and tokens.max() < hi[TEXT]):
            return None
        n += len(tokens)
    counts = np.zeros(SEPARATOR + 1, np.int64)
    counts[TEXT] = n
    return counts


def _proved_text_form(table: pa.Table, layout: VocabLayout) -> np.ndarray | None:
    """Tokens per modality of a lean text table whose ids all lie in the text range (its
    other columns are constants by construction): a min/max per chunk, nothing derived. Else None."""
    lo, hi = id_ranges(layout)
    n = 0
    for chunk in table.column("tokens").chunks:
        if chunk.null_count or chunk.values.null_count:
            return None
        offsets = list_offsets(chunk)
        values = to_numpy(chunk.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
        if len(values) and not (int(values.min()) >= lo[TEXT] and int(values.max()) < hi[TEXT]):
            return None
        n += len(values)
    counts = np.zeros(SEPARATOR + 1, np.int64)
    counts[TEXT] = n
    return counts


def _proved_by_pattern(table: pa.Table, layout: VocabLayout) -> np.ndarray | None:
    """Tokens per modality when the table is valid by the fast path: every row is RL, made of steps
    of one length k, and its modality, loss mask and local positions repeat the first step's, which
    passes every per-token and per-step check itself; then ids need checking only against the range
    of their position in the step, and a row's patch slots are its steps times the pattern's image
    tokens. None (nothing reported) whenever any of this does not hold: the general path decides.

    Per record batch only views, the memcmps and the id min/max: the per-row and per-step checks
    run once over the whole table (their arrays are small), as do the offsets' comparisons."""
    lo, hi = id_ranges(layout)
    ss, soff = flat_column(table.column("step_starts"))  # one int32 a step: cheap to combine
    nsteps = np.diff(soff)
    if not len(ss) or not nsteps.all():
        return None
    k = pattern = id_lo = id_hi = None
    offsets: dict[str, list[np.ndarray]] = {name: [] for name in _PATTERN_OFFSETS}
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        tokens, off = chunk_view(batch.column("tokens"))
        offsets["tokens"].append(off)
        cols = []
        for name in ("modality", "loss_mask", "local_pos"):
            values, o = chunk_view(batch.column(name))
            offsets[name].append(o)
            cols.append(values)
        if k is None or pattern is None:  # the first batch sets both
            k = int(ss[1]) if nsteps[0] > 1 else int(off[1])
            if k <= 0 or len(tokens) < k:
                return None
            pattern = [c[:k].copy() for c in cols]
            key = tuple(p.astype(np.uint8 if p.dtype == bool else p.dtype).tobytes() for p in pattern)
            slots = _valid_pattern_slots(layout, *key)
            if slots is None:
                return None
        if len(tokens) % k or not all(c[:k].tobytes() == p.tobytes() and _repeats(c, k) for c, p in zip(cols, pattern)):
            return None
        mn, mx = _column_range(tokens, k)
        id_lo = mn if id_lo is None else np.minimum(id_lo, mn)
        id_hi = mx if id_hi is None else np.maximum(id_hi, mx)
        poff = list_offsets(batch.column("patches"))
        offsets["patches"].append(poff - poff[0] if poff[0] else poff)
        pp, ppoff = chunk_view(batch.column("patch_pos"))
        offsets["patch_pos"].append(ppoff)
        if slots and not (_repeats(pp, 4 * slots) and not bad_patch_pos(pp[:4 * slots], layout).any()):
            return None
    if pattern is None or not ((id_lo >= lo[pattern[0]]).all() and (id_hi < hi[pattern[0]]).all()):
        return None
    # whole table: row lengths agree across columns and are whole steps, steps start at 0, k, 2k, ...
    # (chunk by chunk offsets relative to the chunk: equal offsets, equal lengths)
    flat = {name: np.concatenate(o) if len(o) > 1 else o[0] for name, o in offsets.items()}
    if not (all(np.array_equal(flat[name], flat["tokens"]) for name in ("modality", "loss_mask", "local_pos"))
            and np.array_equal(flat["patch_pos"], flat["patches"])
            and np.array_equal(_lengths(offsets["tokens"]), nsteps * k)
            and np.array_equal(_lengths(offsets["patches"]), nsteps * slots)
            and np.array_equal(to_numpy(table.column("num_steps")), nsteps)):
        return None
    first = soff[:-1]
    if ss[first].any():
        return None
    step = np.diff(ss)
    step[first[1:] - 1] = k
    if not (step == k).all():
        return None
    return np.bincount(pattern[0], minlength=SEPARATOR + 1).astype(np.int64) * len(ss)


_PATTERN_OFFSETS = ("tokens", "modality", "loss_mask", "local_pos", "patches", "patch_pos")


def _lengths(offsets: list[np.ndarray]) -> np.ndarray:
    """Row lengths from the offsets of several chunks (each chunk's offsets start a new run)."""
    if len(offsets) == 1:
        return np.diff(offsets[0])
    d = np.diff(np.concatenate(offsets))
    return np.delete(d, np.cumsum([len(o) for o in offsets[:-1]]) - 1)


@functools.lru_cache(maxsize=64)
def _valid_pattern_slots(layout: VocabLayout, mod: bytes, mask: bytes, pos: bytes) -> int | None:
    """Patch slots of one step pattern when it passes, as a row of its own (with legal ids), the
    general path's per-token and step checks; None when it does not. Cached: a shard has one
    pattern, and the writer validates it batch after batch."""
    mod_a, mask_a = np.frombuffer(mod, np.uint8), np.frombuffer(mask, np.uint8)
    pos_a = np.frombuffer(pos, np.int16)
    if not len(mod_a) or int(mod_a.max()) > SEPARATOR:
        return None
    rep = Report(None)
    off = np.array([0, len(mod_a)])
    tokens = id_ranges(layout)[0][mod_a]  # ids are checked per step position, apart from this
    if not check_values(rep, tokens, off, mask_a, pos_a, mod_a, layout, np.ones(1, bool)) or rep.problems:
        return None
    z = np.zeros(1, np.int64)
    check_steps(rep, off, z, np.array([0, 1]), np.ones(1, np.int64), z, mod_a, mask_a, pos_a, layout)
    return None if rep.problems else int(np.count_nonzero(mod_a == IMAGE))
