"""Validation of shard tables against schema v1 and a layout, returning precise reasons.

Checks run over whole columns at once (flat values + offsets), so a shard is validated at
memory speed; each problem names the row (index and source_id), the column and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout

from .shard import RL_COLUMNS, ROW_COLUMNS, SCALAR_COLUMNS

MAX_PROBLEMS_PER_CHECK = 5  # beyond this a check reports a count, so output stays readable


@dataclass(frozen=True)
class Problem:
    row: int | None
    column: str
    reason: str
    source_id: str | None = None

    def __str__(self) -> str:
        where = "" if self.row is None else f"row {self.row}" + (f" ({self.source_id})" if self.source_id else "") + ", "
        return f"{where}column {self.column}: {self.reason}"


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column as numpy, offsets relative to the values."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values
    if isinstance(values.type, pa.FixedSizeListType):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0]


def _rows_of(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row index of every True element of a flat mask."""
    return np.searchsorted(offsets, np.flatnonzero(mask), side="right") - 1


class _Report:
    def __init__(self, source_ids):
        self.problems: list[Problem] = []
        self.source_ids = source_ids

    def rows(self, rows: np.ndarray, column: str, reason: str) -> None:
        rows = np.unique(rows)
        for r in rows[:MAX_PROBLEMS_PER_CHECK]:
            sid = self.source_ids[int(r)] if self.source_ids is not None else None
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


def validate_table(table: pa.Table, layout: VocabLayout) -> list[Problem]:
    """Every problem of one shard's table; [] when it holds to the contract."""
    problems = check_schema(table.schema)
    if problems:
        return problems
    sid = table.column("source_id").to_pylist() if table.num_rows else []
    rep = _Report(sid)
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
    mask = mask.astype(np.uint8)

    bad_mod = mod > SEPARATOR
    if bad_mod.any():
        rep.rows(_rows_of(bad_mod, off), "modality", f"unknown modality code (max {int(mod.max())})")
        return rep.problems
    lo = np.array([layout.id_range(m)[0] for m in range(SEPARATOR + 1)], np.int64)
    hi = np.array([layout.id_range(m)[1] for m in range(SEPARATOR + 1)], np.int64)
    out = (tokens < lo[mod]) | (tokens >= hi[mod])
    if out.any():
        i = int(np.flatnonzero(out)[0])
        rep.rows(_rows_of(out, off), "tokens",
                 f"id outside its modality's range (first: id {int(tokens[i])} as modality {int(mod[i])}, "
                 f"legal [{lo[mod[i]]}, {hi[mod[i]]}))")
    if (mask > 1).any():
        rep.rows(_rows_of(mask > 1, off), "loss_mask", "values other than 0 and 1")
    wrong_mask = ((mod == IMAGE) | (mod == SEPARATOR)) & (mask != 0)
    if wrong_mask.any():
        rep.rows(_rows_of(wrong_mask, off), "loss_mask", "loss on an image patch or separator")
    text_unmasked = (mod == TEXT) & (mask != 1)
    if text_unmasked.any():
        rep.rows(_rows_of(text_unmasked, off), "loss_mask", "text token without loss")
    bad_pos = (pos < NO_POSITION) | (pos >= layout.local_positions)
    if bad_pos.any():
        rep.rows(_rows_of(bad_pos, off), "local_pos", f"outside [-1, {layout.local_positions})")

    slots = (tokens == PATCH_SLOT)
    slot_counts = np.add.reduceat(slots.astype(np.int64), off[:-1]) if len(tokens) else np.zeros(len(lengths), np.int64)
    slot_counts = np.where(lengths == 0, 0, slot_counts)
    _, poff = _flat(table.column("patches"))
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
    rl_row = np.repeat(nsteps > 0, lengths)
    if not rl_row.all():
        # text and image-caption rows: no separators, no local positions (SPEC 4)
        stray = ~rl_row & (mod == SEPARATOR)
        if stray.any():
            rep.rows(_rows_of(stray, off), "modality", "separator in a row without steps")
        stray = ~rl_row & (pos != NO_POSITION)
        if stray.any():
            rep.rows(_rows_of(stray, off), "local_pos", "local position in a row without steps")
    if len(ss):
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
        if not (outside.any() or dec.any()):
            # one separator per step, and local positions restart at each step
            step_id = np.zeros(len(tokens), np.int64)
            starts_flat = off[row_of_step] + ss
            np.add.at(step_id, starts_flat, 1)
            step_id = np.cumsum(step_id) - 1  # global step index of each token (RL rows only)
            seps = np.bincount(step_id[rl_row & (mod == SEPARATOR)], minlength=len(ss))
            bad = seps != 1
            if bad.any():
                rep.rows(row_of_step[bad], "modality", "a step without exactly one separator")
            start_pos = pos[starts_flat]
            restart = (mod[starts_flat] != SEPARATOR) & (start_pos != 0)
            if restart.any():
                rep.rows(row_of_step[restart], "local_pos", "local positions do not restart at 0 at a step start")
            if not (seps != 1).any():
                _check_steps(rep, off, mod, mask, pos, step_id, starts_flat, rl_row, layout)
    return rep.problems


def _check_steps(rep: _Report, off, mod, mask, pos, step_id, starts_flat, rl_row, layout: VocabLayout) -> None:
    """Inside RL rows whose steps each hold one separator: observation tokens (before it) have
    positions 0, 1, ... and no loss unless text; action tokens (after it) have loss, no patches and
    no position or the one shared action position (SPEC 4)."""
    sep = rl_row & (mod == SEPARATOR)
    seen = np.cumsum(sep)
    before_step = seen[starts_flat] - sep[starts_flat]
    after_sep = (seen - before_step[step_id]) > 0
    obs = rl_row & ~after_sep
    act = rl_row & after_sep & ~sep
    index_in_step = np.arange(len(mod)) - (starts_flat[step_id] if len(starts_flat) else 0)
    checks = (
        (obs & (pos != index_in_step), "local_pos", "observation positions are not 0, 1, ... inside the step"),
        (obs & (mod != TEXT) & (mask != 0), "loss_mask", "loss on a non-text observation token"),
        (act & (mask != 1), "loss_mask", "action token without loss"),
        (act & (mod == IMAGE), "modality", "image patch among the action tokens"),
        (act & (pos != NO_POSITION) & (pos != layout.local_positions - 1), "local_pos",
         "action token with a position other than none or the shared action position"),
        (sep & (pos != NO_POSITION), "local_pos", "separator with a local position"),
    )
    for bad, column, reason in checks:
        if bad.any():
            rep.rows(_rows_of(bad, off), column, reason)
