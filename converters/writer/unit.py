"""One work unit, start to end, in whichever process or machine runs it: records -> checked record
batches -> its own shards -> its marker (written after its shards, so it vouches for them)."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import socket
from dataclasses import dataclass, replace
from typing import Generator

import numpy as np
import pyarrow as pa

from schemas.manifest import LongestUnit, SkippedRecord
from schemas.shard import full_columns, is_text_form, rows_to_batch, shard_schema
from schemas.validate import validate_table
from schemas.storage import OutDir
from schemas.workunit import FieldErrorSum, ReturnSums, UnitMarker, UnitStats, add_counts, marker_name
from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import MODALITY_NAMES, TEXT, VocabLayout
from tokenizer_kit.rows import unit_tokens
from tokenizer_kit.sequence import Row

from ..base import Converter, Record, SourceError, WorkUnit
from ..read_ahead import read_ahead
from .shards import ShardWriter, estimated_bytes

BATCH_ROWS = 1024  # rows per record batch (fixed: batch boundaries are part of the bytes)
BATCH_BYTES = 1 << 20  # ~bytes per record batch (a larger row makes a batch of its own)


class InvalidRow(SourceError):
    """A row that fails schemas.validate (whatever --on-error says: it is a converter bug)."""


class _RecordFailed(SourceError):
    """A bad record under --on-error fail."""


@dataclass(frozen=True)
class UnitSettings:
    """What every unit of one conversion is converted with (sent once to each process)."""

    out: OutDir
    layout: VocabLayout
    rl: bool
    on_error: str
    task: str | None
    shard_size: int
    compression: str
    test_share: float = 0.0  # the share of records (by their source_id) held out as the test split
    text: bool = False  # plain text rows: lean text shards (tokens only, uint16 when they fit)
    caption: bool = False  # image-caption rows: lean caption shards (per-token columns derived)

    @property
    def schema(self) -> pa.Schema:
        return shard_schema(self.rl, self.text, self.layout.vocab_size, self.caption)


@dataclass(frozen=True)
class UnitJob:
    index: int
    unit: WorkUnit
    uid: str


def held_out(source_id: str, share: float) -> bool:
    """Whether --test-share holds this record out: the first 8 bytes of sha256(source_id) as a
    fraction of 2^64, below `share`. The same records for any worker count, partition or re-run,
    and a record keeps its side when the share grows (the test set only gains records)."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(source_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return h < share * 2.0**64


def _with_place(msg, unit: WorkUnit) -> str:
    msg = str(msg).splitlines()[0] if str(msg) else "unreadable"
    return msg if unit.path and unit.path in msg else f"{unit.path or unit.key}: {msg}"


def _add_return(rec: Record, stats: UnitStats) -> str | None:
    """Add the record's episode return to the unit's, or say why its statistics cannot go into a
    manifest (JSON has no inf or nan) and add nothing."""
    r = rec.episode_return
    probe = None
    if r is not None and not math.isnan(r):  # nan: no return recorded
        r = float(r)
        probe = replace(stats.returns)
        probe.add(ReturnSums(1, r, r, r, 0.0))
        if not (math.isfinite(r) and probe.finite()):
            return f"{rec.source_id}: episode return {r!r} cannot go into the statistics (not a finite number)"
    for name, (mx, total, _) in rec.field_errors.items():
        if not (math.isfinite(mx) and math.isfinite(total)):
            return (f"{rec.source_id}: field {name!r}: values too large for the statistics (quantisation error "
                    f"up to {mx:.3g}; its sum overflows float64)")
    if probe is not None:
        stats.returns = probe
    return None


def _row(rec: Record) -> Row:
    """The row of a record that passed: skipped and filtered ones never reach the buffers."""
    assert rec.row is not None
    return rec.row


def _count(stats: UnitStats, records: list[Record], tasks: list[str], batch: pa.RecordBatch) -> None:
    stats.rows += len(records)
    if not is_text_form(batch.schema):
        mod = full_columns(batch).column("modality").values.to_numpy(zero_copy_only=False)
        # one counting pass per code over uint8 (np.bincount would first widen every token to intp)
        stats.tokens_by_modality = [a + int(np.count_nonzero(mod == code))
                                    for code, a in enumerate(stats.tokens_by_modality)]
        n = len(mod)
    else:  # a lean text batch: every token is text
        n = sum(len(_row(rec).tokens) for rec in records)
        stats.tokens_by_modality = [a + (n if code == TEXT else 0) for code, a in enumerate(stats.tokens_by_modality)]
    stats.tokens += int(n)
    first = stats.rows - len(records)  # the unit's row number of records[0]
    for k, (rec, task) in enumerate(zip(records, tasks, strict=True)):
        stats.rows_per_task[task] = stats.rows_per_task.get(task, 0) + 1
        add_counts(stats.counts, rec.counts)
        n = unit_tokens(_row(rec))
        if n > (stats.longest.tokens if stats.longest else 0):
            stats.longest = LongestUnit(n, first + k, rec.source_id)
        for name, (mx, total, n) in rec.field_errors.items():
            stats.field_errors.setdefault(name, FieldErrorSum()).add(FieldErrorSum(float(mx), float(total), int(n)))


def unit_batches(converter: Converter, unit: WorkUnit, s: UnitSettings, stats: UnitStats,
                 skipped: list[SkippedRecord]) -> Generator[tuple[str, pa.RecordBatch], None, None]:
    """The unit's rows as (split, record batch), each checked with schemas.validate (a converter bug
    never reaches a shard). Bad records: SourceError under on_error='fail', else listed in `skipped`.
    A record's split: its own (a source's test files), else `held_out` by --test-share."""
    def make_batch(buf: list[Record]) -> pa.RecordBatch:
        tasks = [s.task or rec.task or converter.name for rec in buf]
        rows = [_row(rec) for rec in buf]
        batch = rows_to_batch(
            rows, [rec.source_id for rec in buf], tasks,
            [rec.num_steps if rec.num_steps is not None else len(row.step_starts) for rec, row in zip(buf, rows)]
            if s.rl else None,
            [rec.episode_return if rec.episode_return is not None else float("nan") for rec in buf] if s.rl else None,
            s.schema)
        problems = validate_table(pa.Table.from_batches([batch]), s.layout)
        if problems:
            raise InvalidRow(f"the {converter.name} converter built a row that breaks the shard contract: "
                             f"{problems[0]}")
        _count(stats, buf, tasks, batch)
        return batch

    bufs: dict[str, list[Record]] = {"train": [], "test": []}
    sizes = {"train": 0, "test": 0}
    try:
        for rec in converter.convert_unit(unit):
            if rec.filtered:
                stats.filtered += 1
                continue
            reason = rec.skip_reason or ("no row" if rec.row is None else None) or _add_return(rec, stats)
            if reason is not None:
                if s.on_error == "fail":
                    raise _RecordFailed(reason)
                skipped.append(SkippedRecord(rec.source_id, reason))
                continue
            split = rec.split or ("test" if held_out(rec.source_id, s.test_share) else "train")
            bufs[split].append(rec)
            row = _row(rec)
            sizes[split] += estimated_bytes(len(row.tokens), len(row.patches), len(row.step_starts), len(rec.source_id))
            if len(bufs[split]) >= BATCH_ROWS or sizes[split] >= BATCH_BYTES:
                yield split, make_batch(bufs[split])
                bufs[split], sizes[split] = [], 0
    except (_RecordFailed, InvalidRow):
        raise  # the converter's reason, as it is
    except (SourceError, TokenizeError) as e:  # the unit itself is unreadable
        if s.on_error == "fail":
            raise SourceError(_with_place(e, unit)) from None
        skipped.append(SkippedRecord(unit.key, _with_place(e, unit)))
    for split, buf in bufs.items():
        if buf:
            yield split, make_batch(buf)


def run_unit(converter: Converter, s: UnitSettings, job: UnitJob) -> UnitMarker:
    """Convert one unit into its shards, then write its marker; a failure leaves no temporary file."""
    stats = UnitStats(tokens_by_modality=[0] * len(MODALITY_NAMES))
    skipped: list[SkippedRecord] = []
    numbers = itertools.count()
    writers = {split: ShardWriter(s.out, job.index, s.schema, s.shard_size, s.compression, split, numbers)
               for split in ("train", "test")}
    try:
        # Batch k+1 is built (tokenised, checked) in a thread while this one writes batch k: Arrow's
        # zstd, the sha256 and fsync run without the GIL. The same batches in the same order reach
        # the same writers, so the shards are those of building in line; `stats` and `skipped` are
        # read only after the loop, when the thread has ended.
        for split, batch in read_ahead(unit_batches(converter, job.unit, s, stats, skipped)):
            writers[split].add(batch)
        shards = sorted(writers["train"].close() + writers["test"].close(), key=lambda x: x.name)
        marker = UnitMarker(job.index, job.unit.key, job.uid, shards, stats, skipped, os.getpid(),
                            socket.gethostname())
        s.out.write_text(marker_name(job.index), marker.to_json())
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return marker
