"""The general rule of the shard contract: every column, token, step and patch of a table checked,
every problem named (row index and source_id, column, what is wrong).

Checks run over whole columns at once (flat values + offsets), so a shard is validated at memory
speed. schemas/validate.py is the entry point; its fast path proves the common tables valid by
checking one step's pattern against these very rules (valid_pattern_slots), so a change here is a
change to what the proof proves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout

from .arrow_numpy import list_offsets, to_numpy
from .shard import (CAPTION_DERIVED, LEAN_VERSIONS, RL_COLUMNS, ROW_COLUMNS, SCALAR_COLUMNS, SLOT_ID, TOKEN_TYPES,
                    schema_version, shard_form)

MAX_PROBLEMS_PER_CHECK = 5  # beyond this a check reports a count, so output stays readable


@dataclass(frozen=True)
class Problem:
    """One way a table breaks the contract: where (row or None for the whole table) and why."""

    row: int | None
    column: str
    reason: str
    source_id: str | None = None

    def __str__(self) -> str:
        if self.row is None:
            return f"column {self.column}: {self.reason}"
        source = f" ({self.source_id})" if self.source_id else ""
        return f"row {self.row}{source}, column {self.column}: {self.reason}"


_NUMPY = {t.id: np.dtype(d) for t, d in ((pa.int32(), np.int32), (pa.int16(), np.int16), (pa.uint8(), np.uint8))}


def chunk_view(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of one chunk of a list column as numpy, offsets relative to the values;
    zero-copy views of the Arrow buffers (only bool values, stored as bits, are unpacked)."""
    bufs = arr.buffers()
    dtype = _NUMPY.get(arr.type.value_type.id)
    if dtype is not None and isinstance(arr, pa.ListArray) and bufs[1] is not None and \
            bufs[1].size >= (arr.offset + len(arr) + 1) * 4:  # the common case: read the buffers directly
        offsets = np.frombuffer(bufs[1], np.int32, len(arr) + 1, arr.offset * 4)
        first, last = int(offsets[0]), int(offsets[-1])
        start = arr.values.offset + first
        if bufs[3] is not None and bufs[3].size >= (start + last - first) * dtype.itemsize:
            values = np.frombuffer(bufs[3], dtype, last - first, start * dtype.itemsize)
            return values, (offsets - first if first else offsets)
    offsets = list_offsets(arr)  # of this slice of the array, unlike .values
    first, last = int(offsets[0]), int(offsets[-1])
    values = arr.values.slice(first, last - first)
    if isinstance(values.type, pa.FixedSizeListType):
        width = values.type.list_size
        values = values.values.slice(values.offset * width, len(values) * width)
    return to_numpy(values), offsets - first


def flat_column(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a whole list column (chunks combined by Arrow's pooled allocator)."""
    return chunk_view(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)


def _offsets(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Offsets of a list column across its chunks, without touching (or copying) its values."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts, base = [np.zeros(1, np.int64)], 0
    for c in chunks:
        o = list_offsets(c).astype(np.int64)
        parts.append(o[1:] - o[0] + base)
        base += int(o[-1] - o[0])
    return np.concatenate(parts)


def _rows_of(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row index of every True element of a flat mask."""
    return np.searchsorted(offsets, np.flatnonzero(mask), side="right") - 1


class Report:
    def __init__(self, source_ids: pa.ChunkedArray | None):
        self.problems: list[Problem] = []
        self.source_ids = source_ids  # looked up only for rows with a problem

    def rows(self, rows: np.ndarray, column: str, reason: str) -> None:
        rows = np.unique(rows)
        for r in rows[:MAX_PROBLEMS_PER_CHECK]:
            sid = self.source_ids[int(r)].as_py() if self.source_ids is not None else None
            self.problems.append(Problem(int(r), column, reason, sid))
        if len(rows) > MAX_PROBLEMS_PER_CHECK:
            self.problems.append(Problem(None, column, f"{reason}: {len(rows) - MAX_PROBLEMS_PER_CHECK} more rows"))


def check_schema(schema: pa.Schema) -> list[Problem]:
    """Columns and types of version 1, or of a lean form of versions 2 and 3 (schemas.shard_forms): text (tokens,
    source_id, task), caption (no loss_mask, local_pos, modality, step_starts) or full, each with
    uint16 or int32 tokens; the columns a form leaves out are derived (full_columns)."""
    problems = []
    expected = dict(ROW_COLUMNS) | SCALAR_COLUMNS
    form = shard_form(schema) if schema_version(schema) in LEAN_VERSIONS else "full"
    if form == "text":
        expected = dict(SCALAR_COLUMNS)
    elif form == "caption":
        expected = {k: v for k, v in expected.items() if k not in CAPTION_DERIVED}
    if schema_version(schema) in LEAN_VERSIONS and "tokens" in schema.names:
        got = schema.field("tokens").type
        if got not in [pa.list_(t) for t in TOKEN_TYPES]:
            problems.append(Problem(None, "tokens", f"wrong type {got}, expected list<uint16> or list<int32>"))
        expected.pop("tokens", None)
    if "episode_return" in schema.names or "num_steps" in schema.names:
        expected |= RL_COLUMNS
    for name, typ in expected.items():
        if name not in schema.names:
            problems.append(Problem(None, name, "column missing"))
            continue
        got = schema.field(name).type
        ok = got == typ or (name == "loss_mask" and got == pa.list_(pa.bool_()))
        if not ok:
            problems.append(Problem(None, name, f"wrong type {got}, expected {typ}"))
    return problems


def check_slot_sentinel(schema: pa.Schema, layout: VocabLayout) -> list[Problem]:
    """uint16 tokens of a form with patch slots write a slot as SLOT_ID: sound only when no id of
    the layout can be SLOT_ID (at most 65,535 ids), else a slot and an id would read alike."""
    if "tokens" in schema.names and schema.field("tokens").type == pa.list_(pa.uint16()) and \
            shard_form(schema) != "text" and layout.vocab_size > SLOT_ID:
        return [Problem(None, "tokens", f"uint16 ids with patch slot {SLOT_ID} need a vocabulary of at most "
                                        f"{SLOT_ID} ids; the layout's has {layout.vocab_size}")]
    return []


@functools.lru_cache(maxsize=16)
def id_ranges(layout: VocabLayout) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of legal ids per modality code, as arrays indexed by the code."""
    ranges = np.array([layout.id_range(m) for m in range(SEPARATOR + 1)], np.int64)
    return ranges[:, 0].copy(), ranges[:, 1].copy()


def nulls_inside(table: pa.Table) -> list[Problem]:
    """Rows with null values inside a list column (no list may hold one, SPEC 7). Arrow records
    each array's null count, so a table without any costs one look per chunk and column."""
    rep = Report(table.column("source_id"))
    for name in ROW_COLUMNS:
        row0 = 0
        for chunk in table.column(name).chunks:
            inner = chunk.values
            deep = inner.values if isinstance(inner.type, pa.FixedSizeListType) else None
            if inner.null_count or (deep is not None and deep.null_count):
                flat = chunk.flatten()  # this chunk's slice of the values
                null = to_numpy(flat.is_null()).astype(bool)
                if deep is not None:  # a patch position with a null among its 4 numbers
                    null = null | to_numpy(flat.flatten().is_null()).reshape(len(flat), -1).any(1)
                offsets = list_offsets(chunk)
                rows = _rows_of(null, offsets - offsets[0]) + row0
                if len(rows):
                    rep.rows(rows, name, "null values inside the list (columns are not nullable)")
            row0 += len(chunk)
    return rep.problems


def count_modalities(table: pa.Table) -> np.ndarray:
    """Tokens per modality code (codes past SEPARATOR are not counted), chunk by chunk, no copies."""
    counts = np.zeros(SEPARATOR + 1, np.int64)
    if "modality" not in table.schema.names or table.schema.field("modality").type != ROW_COLUMNS["modality"]:
        return counts  # a broken schema is reported; there is nothing to count
    for chunk in table.column("modality").chunks:
        mod, _ = chunk_view(chunk)
        if not len(mod):
            continue
        lo, hi = int(mod.min()), int(mod.max())
        if lo == hi:
            counts[lo] += len(mod) if lo <= SEPARATOR else 0
        else:
            counts[lo:min(hi, SEPARATOR) + 1] += [np.count_nonzero(mod == m) for m in range(lo, min(hi, SEPARATOR) + 1)]
    return counts


# --- the general path: every token ----------------------------------------------------------------

def validate_tokens(table: pa.Table, layout: VocabLayout) -> list[Problem]:
    """Every check on every token; each problem found is named."""
    rep = Report(table.column("source_id"))
    tokens, off = flat_column(table.column("tokens"))
    lengths = np.diff(off)
    cols = {}
    for name in ("loss_mask", "local_pos", "modality"):
        cols[name], o = flat_column(table.column(name))
        bad = np.flatnonzero(np.diff(o) != lengths)
        if len(bad):
            rep.rows(bad, name, "length differs from tokens")
    if rep.problems:
        return rep.problems
    mask = cols["loss_mask"].astype(np.uint8, copy=False)
    pos, mod = cols["local_pos"], cols["modality"]
    episode_rows = np.diff(flat_column(table.column("step_starts"))[1]) > 0
    if not check_values(rep, tokens, off, mask, pos, mod, layout, episode_rows):
        return rep.problems

    slot_at = np.flatnonzero(tokens == PATCH_SLOT)
    slot_counts = np.bincount(np.searchsorted(off, slot_at, side="right") - 1, minlength=len(lengths))
    poff = _offsets(table.column("patches"))  # 768 bytes a patch: never copied
    pp, ppoff = flat_column(table.column("patch_pos"))
    pcounts = np.diff(poff)
    bad = np.flatnonzero(pcounts != slot_counts)
    if len(bad):
        rep.rows(bad, "patches", "patch count differs from the number of -1 slots")
    bad = np.flatnonzero(np.diff(ppoff) != pcounts)
    if len(bad):
        rep.rows(bad, "patch_pos", "one position per patch expected")
    elif len(pp):
        bad_q = bad_patch_pos(pp, layout)
        if bad_q.any():
            rep.rows(np.searchsorted(poff, np.flatnonzero(bad_q), side="right") - 1, "patch_pos",
                     f"interval empty or past {layout.position_bins} bins")

    ss, soff = flat_column(table.column("step_starts"))
    nsteps = np.diff(soff)
    if "num_steps" in table.schema.names:
        bad = np.flatnonzero(to_numpy(table.column("num_steps")) != nsteps)
        if len(bad):
            rep.rows(bad, "num_steps", "differs from the number of step_starts")
    # rl_row: per-token "row has steps"; None when every row has (pure RL shards need no mask)
    any_rl, all_rl = len(ss) > 0, bool((nsteps > 0).all())
    rl_row = None if all_rl else np.repeat(nsteps > 0, lengths)
    if rl_row is not None:  # not all_rl
        # text and image-caption rows: no separators, no local positions (SPEC 4)
        sep = mod == SEPARATOR
        if sep.any():
            stray = sep & ~rl_row
            if stray.any():
                rep.rows(_rows_of(stray, off), "modality", "separator in a row without steps")
        if len(pos) and (int(pos.min()) != NO_POSITION or int(pos.max()) != NO_POSITION):
            stray = (pos != NO_POSITION) & ~rl_row
            if stray.any():
                rep.rows(_rows_of(stray, off), "local_pos", "local position in a row without steps")
    if any_rl:
        row_of_step = np.repeat(np.arange(len(nsteps)), nsteps)
        first = np.zeros(len(ss), bool)
        first[soff[:-1][nsteps > 0]] = True
        outside = (ss < 0) | (ss >= lengths[row_of_step])
        if outside.any():
            rep.rows(row_of_step[outside], "step_starts", "offset outside the row")
        not_zero = first & (ss != 0)
        if not_zero.any():
            rep.rows(row_of_step[not_zero], "step_starts", "first step does not start at 0")
        dec = np.zeros(len(ss), bool)
        dec[1:] = (np.diff(ss.astype(np.int64)) <= 0) & ~first[1:]
        if dec.any():
            rep.rows(row_of_step[dec], "step_starts", "not strictly increasing")
        if not (outside.any() or dec.any() or not_zero.any()):  # steps must tile each row
            check_steps(rep, off, ss, soff, nsteps, row_of_step, mod, mask, pos, layout)
    return rep.problems


# loss mask allowed per modality: text 1, image and separator 0, discrete/continuous 0 or 1
# (which of the two is decided per step in check_steps)
_LEAST_MASK = np.array([1, 0, 0, 0, 0], np.uint8)
_MOST_MASK = np.array([1, 0, 1, 1, 0], np.uint8)


def check_values(rep: Report, tokens, off, mask, pos, mod, layout: VocabLayout,
                  episode_rows: np.ndarray | None = None) -> bool:
    """Modality codes, ids in their modality's range, loss mask per modality, local positions in
    range, token by token. False when the modality codes are unknown (nothing else can be checked).
    Text without loss is allowed only in episode rows (`episode_rows`, bool per row), whose
    observation text may be kept out of the loss; check_steps rules on it there."""
    if len(mod) and int(mod.max()) > SEPARATOR:
        bad_mod = mod > SEPARATOR
        rep.rows(_rows_of(bad_mod, off), "modality", f"unknown modality code (max {int(mod.max())})")
        return False
    lo, hi = id_ranges(layout)
    # A few long runs of one modality (text) are checked by min/max per run; many short runs
    # (RL steps) by one lookup of each token's range. Precise reasons only where a check fails.
    starts = np.concatenate([[0], np.flatnonzero(mod[1:] != mod[:-1]) + 1]) if len(mod) else np.zeros(0, np.intp)
    if len(starts) * 64 <= len(mod):
        run_mod = mod[starts]
        ids_bad = len(starts) and bool(((np.minimum.reduceat(tokens, starts) < lo[run_mod]) |
                                        (np.maximum.reduceat(tokens, starts) >= hi[run_mod])).any())
        mask_bad = len(starts) and bool(((np.minimum.reduceat(mask, starts) < _LEAST_MASK[run_mod]) |
                                         (np.maximum.reduceat(mask, starts) > _MOST_MASK[run_mod])).any())
    else:
        ids_bad = bool(((tokens < lo[mod]) | (tokens >= hi[mod])).any())
        mask_bad = bool(((mask < _LEAST_MASK[mod]) | (mask > _MOST_MASK[mod])).any())
    if ids_bad:
        out = (tokens < lo[mod]) | (tokens >= hi[mod])
        i = int(np.flatnonzero(out)[0])
        rep.rows(_rows_of(out, off), "tokens",
                 f"id outside its modality's range (first: id {int(tokens[i])} as modality {int(mod[i])}, "
                 f"legal [{lo[mod[i]]}, {hi[mod[i]]}))")
    if mask_bad:
        if (mask > 1).any():
            rep.rows(_rows_of(mask > 1, off), "loss_mask", "values other than 0 and 1")
        wrong_mask = ((mod == IMAGE) | (mod == SEPARATOR)) & (mask != 0)
        if wrong_mask.any():
            rep.rows(_rows_of(wrong_mask, off), "loss_mask", "loss on an image patch or separator")
        text_unmasked = (mod == TEXT) & (mask != 1)
        if text_unmasked.any():
            rows = _rows_of(text_unmasked, off)
            if episode_rows is not None:
                rows = rows[~episode_rows[rows]]
            if len(rows):
                rep.rows(rows, "loss_mask", "text token without loss")
    if len(pos) and (int(pos.min()) < NO_POSITION or int(pos.max()) >= layout.local_positions):
        bad_pos = (pos < NO_POSITION) | (pos >= layout.local_positions)
        rep.rows(_rows_of(bad_pos, off), "local_pos", f"outside [-1, {layout.local_positions})")
    return True


def bad_patch_pos(pp: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """Per patch: is its [row0, row1) x [col0, col1) interval empty or past the position bins?"""
    q = pp.reshape(-1, 4).astype(np.int64)
    return (q[:, 0] >= q[:, 1]) | (q[:, 2] >= q[:, 3]) | (q[:, 1] > layout.position_bins) | (
        q[:, 3] > layout.position_bins)


def check_steps(rep: Report, off, ss, soff, nsteps, row_of_step, mod, mask, pos, layout: VocabLayout) -> None:
    """Inside RL rows: one separator per step; observation tokens (before it) have positions
    0, 1, ... and no loss unless text; action tokens (after it) have loss, no patches and no position
    or the one shared action position (SPEC 4).

    Work per step is done on step-sized arrays (searchsorted over separator offsets); per token only
    one np.repeat of a part code (observation 0, separator 1, action 2, no steps 3) and a few
    compact comparisons, since these passes run over every token of an RL shard."""
    n = len(mod)
    starts = off[row_of_step] + ss  # flat offset of each step
    starts = starts.astype(np.int64, copy=False)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    last = soff[1:][nsteps > 0] - 1  # last step of each row with steps ends at the row's end
    ends[last] = off[1:][nsteps > 0]
    sep_at = np.flatnonzero(mod == SEPARATOR)
    sep_at = sep_at[nsteps[np.searchsorted(off, sep_at, side="right") - 1] > 0]  # strays are reported elsewhere
    first_sep = np.searchsorted(sep_at, starts)
    count = np.searchsorted(sep_at, ends) - first_sep
    if (count != 1).any():
        rep.rows(row_of_step[count != 1], "modality", "a step without exactly one separator")
        return
    restart = (mod[starts] != SEPARATOR) & (pos[starts] != 0)
    if restart.any():
        rep.rows(row_of_step[restart], "local_pos", "local positions do not restart at 0 at a step start")
    sep_of = sep_at[first_sep]
    # part code of every token: observation 0, separator 1, action 2, row without steps 3, by one
    # np.repeat of segments that tile the tokens ([obs, separator, action] per step)
    seg_len = np.stack([sep_of - starts, np.ones_like(sep_of), ends - sep_of - 1], 1).reshape(-1)
    seg_code = np.tile(np.array([0, 1, 2], np.int8), len(starts))
    plain = np.flatnonzero(nsteps == 0)
    if len(plain):
        seg_start = np.concatenate([np.stack([starts, sep_of, sep_of + 1], 1).reshape(-1), off[plain]])
        order = np.argsort(seg_start, kind="stable")
        seg_len = np.concatenate([seg_len, off[plain + 1] - off[plain]])[order]
        seg_code = np.concatenate([seg_code, np.full(len(plain), 3, np.int8)])[order]
    part = np.repeat(seg_code, seg_len)
    obs, act, sep = part == 0, part == 2, part == 1
    step_on = np.empty(n, bool)  # position = previous token's + 1; step starts are checked for 0 above
    if n:
        step_on[0] = True
        np.equal(pos[1:] - pos[:-1], 1, out=step_on[1:])
        step_on[starts] = True
    checks = (
        (lambda: obs & ~step_on, "local_pos", "observation positions are not 0, 1, ... inside the step"),
        (lambda: obs & (mask > (mod == TEXT)), "loss_mask", "loss on a non-text observation token"),
        (lambda: act & (mask != 1), "loss_mask", "action token without loss"),
        (lambda: act & (mod == IMAGE), "modality", "image patch among the action tokens"),
        (lambda: act & (pos != NO_POSITION) & (pos != layout.local_positions - 1), "local_pos",
         "action token with a position other than none or the shared action position"),
        (lambda: sep & (pos != NO_POSITION), "local_pos", "separator with a local position"),
    )
    for bad_of, column, reason in checks:
        bad = bad_of()
        if bad.any():
            rep.rows(_rows_of(bad, off), column, reason)
