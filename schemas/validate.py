"""Validation of shard tables against schema v1 and a layout, returning precise reasons.

Checks run over whole columns at once (flat values + offsets), so a shard is validated at
memory speed; each problem names the row (index and source_id), the column and what is wrong.

Two paths. RL rows whose steps all share one length and one modality / loss mask / local
position pattern (fixed-size fields: the common case) are *proved* valid by checking one step's
pattern and then only that the columns repeat it (a memcmp of each column against itself shifted
by one step, on zero-copy views of the Arrow buffers) and that every id lies in its step
position's range (min/max per step position); plain text rows by min/max of each column. Anything
else, and any table the proof does not go through for, takes the general path, which checks
every token and names every problem (so the fast path never decides what is reported).

Both paths stay in one module (over 500 lines on purpose): the proof is only sound because it
checks the very rules the general path checks, and a reader sees that best side by side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout

from .shard import RL_COLUMNS, ROW_COLUMNS, SCALAR_COLUMNS, TOKEN_TYPES, full_columns, is_text_form, schema_version

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


def _view(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
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
    offsets = arr.offsets.to_numpy()  # of this slice of the array, unlike .values
    first, last = int(offsets[0]), int(offsets[-1])
    values = arr.values.slice(first, last - first)
    if isinstance(values.type, pa.FixedSizeListType):
        width = values.type.list_size
        values = values.values.slice(values.offset * width, len(values) * width)
    return values.to_numpy(zero_copy_only=False), offsets - first


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a whole list column (chunks combined by Arrow's pooled allocator)."""
    return _view(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)


def _offsets(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Offsets of a list column across its chunks, without touching (or copying) its values."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts, base = [np.zeros(1, np.int64)], 0
    for c in chunks:
        o = c.offsets.to_numpy().astype(np.int64)
        parts.append(o[1:] - o[0] + base)
        base += int(o[-1] - o[0])
    return np.concatenate(parts)


def _rows_of(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row index of every True element of a flat mask."""
    return np.searchsorted(offsets, np.flatnonzero(mask), side="right") - 1


class _Report:
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
    """Columns and types of version 1, or of a version-2 text shard (tokens, uint16 or int32,
    with source_id and task: the per-token columns are derived, schemas.shard.full_columns)."""
    problems = []
    expected = dict(ROW_COLUMNS) | SCALAR_COLUMNS
    if schema_version(schema) == 2 and is_text_form(schema) and "tokens" in schema.names:
        got = schema.field("tokens").type
        if got not in [pa.list_(t) for t in TOKEN_TYPES]:
            problems.append(Problem(None, "tokens", f"wrong type {got}, expected list<uint16> or list<int32>"))
        expected = dict(SCALAR_COLUMNS)
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


@functools.lru_cache(maxsize=16)
def _id_ranges(layout: VocabLayout) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of legal ids per modality code, as arrays indexed by the code."""
    ranges = np.array([layout.id_range(m) for m in range(SEPARATOR + 1)], np.int64)
    return ranges[:, 0].copy(), ranges[:, 1].copy()


def validate_table(table: pa.Table, layout: VocabLayout) -> list[Problem]:
    """Every problem of one shard's table; [] when it holds to the contract."""
    return _validate(table, layout, count=False)[0]


def validate_and_count(table: pa.Table, layout: VocabLayout) -> tuple[list[Problem], np.ndarray]:
    """validate_table's problems and the number of tokens of each modality code (what verify
    compares with the manifest), taken from the step pattern where the fast path proves the table."""
    return _validate(table, layout, count=True)


def _validate(table: pa.Table, layout: VocabLayout, count: bool) -> tuple[list[Problem], np.ndarray | None]:
    problems = check_schema(table.schema)
    problems += [Problem(None, name, f"{table.column(name).null_count} null values (columns are not nullable)")
                 for name in table.schema.names if table.column(name).null_count]
    if not problems and is_text_form(table.schema):
        counts = _proved_text_form(table, layout)
        if counts is not None:
            return [], counts
    if not problems:
        table = full_columns(table)  # a version-2 text shard's derived columns, as version 1 stores them
        problems = _nulls_inside(table)
    if not problems:
        counts = _proof(table, layout)
        if counts is not None:
            return [], counts
        problems = _validate_tokens(table, layout)
    return problems, _count_modalities(table) if count else None


def _nulls_inside(table: pa.Table) -> list[Problem]:
    """Rows with null values inside a list column (no list may hold one, SPEC 7). Arrow records
    each array's null count, so a table without any costs one look per chunk and column."""
    rep = _Report(table.column("source_id"))
    for name in ROW_COLUMNS:
        row0 = 0
        for chunk in table.column(name).chunks:
            inner = chunk.values
            deep = inner.values if isinstance(inner.type, pa.FixedSizeListType) else None
            if inner.null_count or (deep is not None and deep.null_count):
                flat = chunk.flatten()  # this chunk's slice of the values
                null = flat.is_null().to_numpy(zero_copy_only=False)
                if deep is not None:  # a patch position with a null among its 4 numbers
                    null = null | flat.flatten().is_null().to_numpy(zero_copy_only=False).reshape(len(flat), -1).any(1)
                offsets = chunk.offsets.to_numpy()
                rows = _rows_of(null, offsets - offsets[0]) + row0
                if len(rows):
                    rep.rows(rows, name, "null values inside the list (columns are not nullable)")
            row0 += len(chunk)
    return rep.problems


def _count_modalities(table: pa.Table) -> np.ndarray:
    """Tokens per modality code (codes past SEPARATOR are not counted), chunk by chunk, no copies."""
    counts = np.zeros(SEPARATOR + 1, np.int64)
    if "modality" not in table.schema.names or table.schema.field("modality").type != ROW_COLUMNS["modality"]:
        return counts  # a broken schema is reported; there is nothing to count
    for chunk in table.column("modality").chunks:
        mod, _ = _view(chunk)
        if not len(mod):
            continue
        lo, hi = int(mod.min()), int(mod.max())
        if lo == hi:
            counts[lo] += len(mod) if lo <= SEPARATOR else 0
        else:
            counts[lo:min(hi, SEPARATOR) + 1] += [np.count_nonzero(mod == m) for m in range(lo, min(hi, SEPARATOR) + 1)]
    return counts


# --- the general path: every token ----------------------------------------------------------------

def _validate_tokens(table: pa.Table, layout: VocabLayout) -> list[Problem]:
    """Every check on every token; each problem found is named."""
    rep = _Report(table.column("source_id"))
    tokens, off = _flat(table.column("tokens"))
    lengths = np.diff(off)
    cols = {}
    for name in ("loss_mask", "local_pos", "modality"):
        cols[name], o = _flat(table.column(name))
        bad = np.flatnonzero(np.diff(o) != lengths)
        if len(bad):
            rep.rows(bad, name, "length differs from tokens")
    if rep.problems:
        return rep.problems
    mask = cols["loss_mask"].astype(np.uint8, copy=False)
    pos, mod = cols["local_pos"], cols["modality"]
    episode_rows = np.diff(_flat(table.column("step_starts"))[1]) > 0
    if not _check_values(rep, tokens, off, mask, pos, mod, layout, episode_rows):
        return rep.problems

    slot_at = np.flatnonzero(tokens == PATCH_SLOT)
    slot_counts = np.bincount(np.searchsorted(off, slot_at, side="right") - 1, minlength=len(lengths))
    poff = _offsets(table.column("patches"))  # 768 bytes a patch: never copied
    pp, ppoff = _flat(table.column("patch_pos"))
    pcounts = np.diff(poff)
    bad = np.flatnonzero(pcounts != slot_counts)
    if len(bad):
        rep.rows(bad, "patches", "patch count differs from the number of -1 slots")
    bad = np.flatnonzero(np.diff(ppoff) != pcounts)
    if len(bad):
        rep.rows(bad, "patch_pos", "one position per patch expected")
    elif len(pp):
        bad_q = _bad_patch_pos(pp, layout)
        if bad_q.any():
            rep.rows(np.searchsorted(poff, np.flatnonzero(bad_q), side="right") - 1, "patch_pos",
                     f"interval empty or past {layout.position_bins} bins")

    ss, soff = _flat(table.column("step_starts"))
    nsteps = np.diff(soff)
    if "num_steps" in table.schema.names:
        bad = np.flatnonzero(table.column("num_steps").to_numpy() != nsteps)
        if len(bad):
            rep.rows(bad, "num_steps", "differs from the number of step_starts")
    # rl_row: per-token "row has steps"; None when every row has (pure RL shards need no mask)
    any_rl, all_rl = len(ss) > 0, bool((nsteps > 0).all())
    rl_row = None if all_rl else np.repeat(nsteps > 0, lengths)
    if not all_rl:
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
            _check_steps(rep, off, ss, soff, nsteps, row_of_step, mod, mask, pos, layout)
    return rep.problems


# loss mask allowed per modality: text 1, image and separator 0, discrete/continuous 0 or 1
# (which of the two is decided per step in _check_steps)
_LEAST_MASK = np.array([1, 0, 0, 0, 0], np.uint8)
_MOST_MASK = np.array([1, 0, 1, 1, 0], np.uint8)


def _check_values(rep: _Report, tokens, off, mask, pos, mod, layout: VocabLayout,
                  episode_rows: np.ndarray | None = None) -> bool:
    """Modality codes, ids in their modality's range, loss mask per modality, local positions in
    range, token by token. False when the modality codes are unknown (nothing else can be checked).
    Text without loss is allowed only in episode rows (`episode_rows`, bool per row), whose
    observation text may be kept out of the loss; _check_steps rules on it there."""
    if len(mod) and int(mod.max()) > SEPARATOR:
        bad_mod = mod > SEPARATOR
        rep.rows(_rows_of(bad_mod, off), "modality", f"unknown modality code (max {int(mod.max())})")
        return False
    lo, hi = _id_ranges(layout)
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


def _bad_patch_pos(pp: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """Per patch: is its [row0, row1) x [col0, col1) interval empty or past the position bins?"""
    q = pp.reshape(-1, 4).astype(np.int64)
    return (q[:, 0] >= q[:, 1]) | (q[:, 2] >= q[:, 3]) | (q[:, 1] > layout.position_bins) | (
        q[:, 3] > layout.position_bins)


def _check_steps(rep: _Report, off, ss, soff, nsteps, row_of_step, mod, mask, pos, layout: VocabLayout) -> None:
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


# --- the fast path: RL rows made of one repeated step pattern --------------------------------------

@functools.lru_cache(maxsize=16)
def _slot_is_image_only(layout: VocabLayout) -> bool:
    """Whether an id of -1 is legal for image patches only: then, ids once checked, a row's patch
    slots are its image tokens and need no counting."""
    lo, hi = _id_ranges(layout)
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
    lo, hi = _id_ranges(layout)
    n = 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        tokens, off = _view(batch.column("tokens"))
        for name in ("step_starts", "patches", "patch_pos"):
            o = batch.column(name).offsets.to_numpy()
            if o[0] != o[-1]:
                return None
        for name, want in (("modality", TEXT), ("loss_mask", 1), ("local_pos", NO_POSITION)):
            values, o = _view(batch.column(name))
            if not np.array_equal(o, off) or len(values) and not (values.min() == values.max() == want):
                return None
        if len(tokens) and not (tokens.min() >= lo[TEXT] and tokens.max() < hi[TEXT]):
            return None
        n += len(tokens)
    counts = np.zeros(SEPARATOR + 1, np.int64)
    counts[TEXT] = n
    return counts


def _proved_text_form(table: pa.Table, layout: VocabLayout) -> np.ndarray | None:
    """Tokens per modality of a version-2 text table whose ids all lie in the text range (its
    other columns are constants by construction): a min/max per chunk, nothing derived. Else None."""
    lo, hi = _id_ranges(layout)
    n = 0
    for chunk in table.column("tokens").chunks:
        if chunk.null_count or chunk.values.null_count:
            return None
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy()
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
    lo, hi = _id_ranges(layout)
    ss, soff = _flat(table.column("step_starts"))  # one int32 a step: cheap to combine
    nsteps = np.diff(soff)
    if not len(ss) or not nsteps.all():
        return None
    k = pattern = id_lo = id_hi = None
    offsets: dict[str, list[np.ndarray]] = {name: [] for name in _PATTERN_OFFSETS}
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        tokens, off = _view(batch.column("tokens"))
        offsets["tokens"].append(off)
        cols = []
        for name in ("modality", "loss_mask", "local_pos"):
            values, o = _view(batch.column(name))
            offsets[name].append(o)
            cols.append(values)
        if k is None:
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
        poff = batch.column("patches").offsets.to_numpy()
        offsets["patches"].append(poff - poff[0] if poff[0] else poff)
        pp, ppoff = _view(batch.column("patch_pos"))
        offsets["patch_pos"].append(ppoff)
        if slots and not (_repeats(pp, 4 * slots) and not _bad_patch_pos(pp[:4 * slots], layout).any()):
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
            and np.array_equal(table.column("num_steps").to_numpy(), nsteps)):
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
    rep = _Report(None)
    off = np.array([0, len(mod_a)])
    tokens = _id_ranges(layout)[0][mod_a]  # ids are checked per step position, apart from this
    if not _check_values(rep, tokens, off, mask_a, pos_a, mod_a, layout, np.ones(1, bool)) or rep.problems:
        return None
    z = np.zeros(1, np.int64)
    _check_steps(rep, off, z, np.array([0, 1]), np.ones(1, np.int64), z, mod_a, mask_a, pos_a, layout)
    return None if rep.problems else int(np.count_nonzero(mod_a == IMAGE))
