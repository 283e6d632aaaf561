"""Validation of shard tables against schema v1 and a layout, returning precise reasons.

Checks run over whole columns at once (flat values + offsets), so a shard is validated at
memory speed; each problem names the row (index and source_id), the column and what is wrong.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout

from .shard import RL_COLUMNS, ROW_COLUMNS, SCALAR_COLUMNS

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


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column as numpy, offsets relative to the values."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.flatten()  # not .values: that ignores the slice of a sliced table's arrays
    if isinstance(values.type, pa.FixedSizeListType):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0]


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
    problems = []
    expected = dict(ROW_COLUMNS) | SCALAR_COLUMNS
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
    problems = check_schema(table.schema)
    problems += [Problem(None, name, f"{table.column(name).null_count} null values (columns are not nullable)")
                 for name in table.schema.names if table.column(name).null_count]
    if problems:
        return problems
    rep = _Report(table.column("source_id"))
    tokens, off = _flat(table.column("tokens"))
    lengths = np.diff(off)
    for name in ("loss_mask", "local_pos", "modality"):
        _, o = _flat(table.column(name))
        bad = np.flatnonzero(np.diff(o) != lengths)
        if len(bad):
            rep.rows(bad, name, "length differs from tokens")
    if rep.problems:
        return rep.problems
    mask, _ = _flat(table.column("loss_mask"))
    pos, _ = _flat(table.column("local_pos"))
    mod, _ = _flat(table.column("modality"))
    mask = mask.astype(np.uint8, copy=False)

    if len(mod) and int(mod.max()) > SEPARATOR:
        bad_mod = mod > SEPARATOR
        rep.rows(_rows_of(bad_mod, off), "modality", f"unknown modality code (max {int(mod.max())})")
        return rep.problems
    # Ids and masks are checked per run of equal modality (min/max of each run against the
    # modality's range: one pass, and a text batch is one run); the precise per-token reasons are
    # worked out only where a check fails, so a valid shard validates at memory speed.
    lo, hi = _id_ranges(layout)
    starts = np.concatenate([[0], np.flatnonzero(mod[1:] != mod[:-1]) + 1]) if len(mod) else np.zeros(0, np.intp)
    run_mod = mod[starts]
    if len(starts) and ((np.minimum.reduceat(tokens, starts) < lo[run_mod]) |
                        (np.maximum.reduceat(tokens, starts) >= hi[run_mod])).any():
        out = (tokens < lo[mod]) | (tokens >= hi[mod])
        i = int(np.flatnonzero(out)[0])
        rep.rows(_rows_of(out, off), "tokens",
                 f"id outside its modality's range (first: id {int(tokens[i])} as modality {int(mod[i])}, "
                 f"legal [{lo[mod[i]]}, {hi[mod[i]]}))")
    # loss mask allowed per modality: text 1, image and separator 0, discrete/continuous 0 or 1
    # (which of the two is decided per step in _check_steps)
    least = np.array([1, 0, 0, 0, 0], np.uint8)
    most = np.array([1, 0, 1, 1, 0], np.uint8)
    if len(starts) and ((np.minimum.reduceat(mask, starts) < least[run_mod]) |
                        (np.maximum.reduceat(mask, starts) > most[run_mod])).any():
        if (mask > 1).any():
            rep.rows(_rows_of(mask > 1, off), "loss_mask", "values other than 0 and 1")
        wrong_mask = ((mod == IMAGE) | (mod == SEPARATOR)) & (mask != 0)
        if wrong_mask.any():
            rep.rows(_rows_of(wrong_mask, off), "loss_mask", "loss on an image patch or separator")
        text_unmasked = (mod == TEXT) & (mask != 1)
        if text_unmasked.any():
            rep.rows(_rows_of(text_unmasked, off), "loss_mask", "text token without loss")
    if len(pos) and (int(pos.min()) < NO_POSITION or int(pos.max()) >= layout.local_positions):
        bad_pos = (pos < NO_POSITION) | (pos >= layout.local_positions)
        rep.rows(_rows_of(bad_pos, off), "local_pos", f"outside [-1, {layout.local_positions})")

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
        q = pp.reshape(-1, 4).astype(np.int64)
        bad_q = (q[:, 0] >= q[:, 1]) | (q[:, 2] >= q[:, 3]) | (q[:, 1] > layout.position_bins) | (
            q[:, 3] > layout.position_bins)
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
    if _same_steps(off, starts, ends, nsteps, mod, mask, pos, layout):
        return
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


def _same_steps(off, starts, ends, nsteps, mod, mask, pos, layout: VocabLayout) -> bool:
    """Fast path for the common case of fixed-size fields: every token is in a step, all steps have
    one length k and the same modality, loss mask and local position pattern. Then checking one step
    proves them all (three passes over the tokens instead of the general path's dozens).
    False: not this case, or the first step has a problem (the general path then names it)."""
    n, k = len(mod), int(ends[0] - starts[0]) if len(starts) else 0
    if len(starts) < 2 or k == 0 or not nsteps.all() or k * len(starts) != n or \
            not (starts == np.arange(0, n, k)).all():
        return False
    for col in (mod, mask, pos):
        grid = col.reshape(-1, k)
        if not (grid == grid[0]).all():
            return False
    one = _Report(None)
    z = np.zeros(1, np.int64)
    _check_steps(one, np.array([0, k]), z, np.array([0, 1]), np.ones(1, np.int64), z, mod[:k], mask[:k], pos[:k],
                 layout)
    return not one.problems
