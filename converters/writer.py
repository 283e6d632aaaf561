"""The shard writer: work units -> per-unit Arrow files -> rolling shards + manifest.json.

Why two stages. Each work unit is converted on its own (by any worker, in any order) into
`OUT/.work/<uid>.arrow` and then marked complete by `OUT/.work/<uid>.json` (its statistics and
skipped records). A final pass streams the completed units *in unit order* into
`shard-00000.arrow, shard-00001.arrow, ...` of about `shard_size` bytes each and writes
`manifest.json` last. So:

* output is byte-identical whatever `workers` is (row order = unit order, fixed batch sizes,
  no timestamps in shards);
* a re-run after a crash or kill only converts the units without a marker (`uid` hashes the
  conversion's settings, the unit and its file's size and mtime, so stale work is never reused);
* `--num-partitions K --partition i` converts units `i, i+K, i+2K, ...` into `OUT/.work` and stops
  there; the same command without `--partition` (run once every partition is done; it converts
  whatever is still missing) packs the shards and writes the manifest. Machines that do not share
  OUT copy their `OUT/.work/` files into one directory first (`rsync -a`, which keeps mtimes);
* nothing half-written is ever visible: every file is written under a temporary name and renamed,
  a failing unit leaves no marker, `.work/` is removed once the manifest is written.

Why it is cheap. Each record batch is serialised once, as the Arrow IPC stream message it will be in
a shard, and never decoded or re-encoded again unless a shard cut falls inside it: packing copies
the messages' bytes from the unit files into the shard (an IPC stream is a schema message, the batch
messages, an end marker) and hashes them on the way out, so no shard is ever re-read for its
sha256. Work files are not fsynced (only shards and the manifest are): a marker records its work
file's size (checked on resume: a short or missing file means the unit is converted again) and
CRC32 (checked as packing copies the bytes: a damaged unit is converted again and packing redone).

Memory stays flat: workers hold one record batch at a time, packing holds one batch message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError, ShardInfo
from schemas.shard import PATCH_BYTES, SHARD_PATTERN, rows_to_batch, shard_schema
from schemas.validate import validate_table
from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout
from tokenizer_kit.text import file_sha256

from .base import Converter, Record, SourceError, WorkUnit
from .progress import Progress

WORK_DIR = ".work"
WORK_FORMAT = 2  # of the work files and markers; part of every unit id, so older work is never reused
BATCH_ROWS = 1024  # rows per record batch inside a unit (fixed: batch boundaries are part of the bytes)
BATCH_BYTES = 1 << 20  # ~bytes per record batch (a larger row makes a batch of its own)
ON_ERROR = ("fail", "skip")
_NUM_MODALITIES = len(MODALITY_NAMES)
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end of an Arrow IPC stream


class UsageError(ValueError):
    """The command cannot run as asked (conflicting output directory, bad partition): exit 2."""


@dataclass
class ConvertResult:
    out: Path
    complete: bool  # shards and manifest written (False after a partition run)
    units_total: int
    units_converted: int  # converted by this run (the rest were already complete)
    manifest: Manifest | None = None
    seconds: float = 0.0
    up_to_date: bool = False  # the directory already held this exact conversion

    def summary(self) -> str:
        if self.manifest is None:
            return (f"{self.units_converted} of {self.units_total} units converted into {self.out / WORK_DIR} "
                    f"in {self.seconds:.1f}s; run again without --partition once all partitions are done")
        m = self.manifest
        mb = sum(s.bytes for s in m.shards) / 1e6
        rate = m.total_tokens / max(self.seconds, 1e-9) / 1e6
        head = "up to date: " if self.up_to_date else ""
        return (f"{head}{m.converter}: {m.total_rows} rows, {m.total_tokens} tokens in {len(m.shards)} shards "
                f"({mb:.1f} MB), {len(m.skipped)} skipped, {self.seconds:.1f}s ({rate:.2f}M tok/s) -> {self.out}")


# --- sizes ---------------------------------------------------------------------------------------

_SUFFIXES = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "K": 2**10, "M": 2**20, "G": 2**30, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'256MB' -> 256_000_000, '64MiB' or '64M' -> 67_108_864, '1000' -> 1000 (bytes)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = float(num) * _SUFFIXES[s[len(num):]]
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {text!r} (examples: 1000, 64MB, 1GiB)") from None
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return int(value)


def row_nbytes(batch: pa.RecordBatch) -> np.ndarray:
    """Estimated bytes of each row of a shard batch (what shard rolling counts), vectorised."""
    def lengths(name: str) -> np.ndarray:
        return np.diff(batch.column(name).offsets.to_numpy()).astype(np.int64)
    strings = (pc.binary_length(batch.column("source_id")).to_numpy(zero_copy_only=False)
               + pc.binary_length(batch.column("task")).to_numpy(zero_copy_only=False))
    return (lengths("tokens") * 8 + lengths("patches") * (PATCH_BYTES + 4) + lengths("step_starts") * 4
            + strings.astype(np.int64) + 64)


# --- one unit ------------------------------------------------------------------------------------

@dataclass
class _UnitStats:
    """Statistics of one unit; merged in unit order into the manifest."""

    rows: int = 0
    tokens: int = 0
    modality: list[int] = field(default_factory=lambda: [0] * _NUM_MODALITIES)
    field_errors: dict[str, list[float]] = field(default_factory=dict)  # name: [max, sum, count]
    # count, min, max, sum, sum of squares
    returns: list[float] = field(default_factory=lambda: [0, float("inf"), float("-inf"), 0.0, 0.0])
    tasks: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    filtered: int = 0  # records the converter left out on purpose (e.g. RL --min-return)

    def add_records(self, records: Sequence[Record], tasks: Sequence[str], batch: pa.RecordBatch) -> None:
        self.rows += len(records)
        mod = batch.column("modality").values.to_numpy(zero_copy_only=False)
        # one counting pass per code over uint8 (np.bincount would first widen every token to intp)
        self.modality = [a + int(np.count_nonzero(mod == code)) for code, a in enumerate(self.modality)]
        self.tokens += int(len(mod))
        for rec, task in zip(records, tasks, strict=True):
            self.tasks[task] = self.tasks.get(task, 0) + 1
            for name, (mx, total, n) in rec.field_errors.items():
                cur = self.field_errors.setdefault(name, [0.0, 0.0, 0])
                cur[0] = max(cur[0], float(mx))
                cur[1] += float(total)
                cur[2] += int(n)
            r = rec.episode_return
            if r is not None and np.isfinite(r):
                self.returns[0] += 1
                self.returns[1] = min(self.returns[1], float(r))
                self.returns[2] = max(self.returns[2], float(r))
                self.returns[3] += float(r)
                self.returns[4] += float(r) * float(r)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        n, lo, hi, total, squares = self.returns
        d["returns"] = [n, lo if n else None, hi if n else None, total, squares]
        return d


class InvalidRow(SourceError):
    """A row that fails schemas.validate (whatever --on-error says: it is a converter bug)."""


class _RecordFailed(SourceError):
    """A bad record under --on-error fail."""


def _row_estimate(rec: Record) -> int:
    r = rec.row
    return len(r.tokens) * 8 + len(r.patches) * (PATCH_BYTES + 4) + len(r.step_starts) * 4 + len(rec.source_id) + 64


def _with_place(msg: str, unit: WorkUnit) -> str:
    msg = str(msg).splitlines()[0] if str(msg) else "unreadable"
    return msg if unit.path and unit.path in msg else f"{unit.path or unit.key}: {msg}"


class _ByteSink:
    """A file written under a temporary name and renamed on commit, with a checksum of the bytes
    as they go out (a shard's sha256, a work file's CRC32), so nothing is read back to hash it."""

    def __init__(self, path: Path, digest: str):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        self.file = open(self.tmp, "wb")
        self.sha = hashlib.sha256() if digest == "sha256" else None
        self.crc = 0
        self.size = 0

    def write(self, data) -> None:
        self.file.write(data)
        if self.sha is not None:
            self.sha.update(data)
        else:
            self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)

    def commit(self, fsync: bool) -> None:
        """Rename into place; with fsync the bytes are on disk before the name appears."""
        self.file.flush()
        if fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    @property
    def digest(self) -> str | int:
        return self.sha.hexdigest() if self.sha is not None else self.crc


@functools.lru_cache(maxsize=4)
def _schema_message(rl: bool) -> bytes:
    """The first message of every shard and work file: the shard schema as Arrow IPC."""
    return shard_schema(rl).serialize().to_pybytes()


def convert_unit_to_file(converter: Converter, unit: WorkUnit, uid: str, work: Path, on_error: str,
                         task: str | None, report: Callable[[int, int], None], layout: VocabLayout) -> dict:
    """Convert one unit into `work/<uid>.arrow` and mark it complete with `work/<uid>.json`.

    The work file is an Arrow IPC stream; the marker lists each batch message as [bytes, rows,
    tokens, estimated row bytes], which is all packing needs to place it without decoding it.
    With on_error='fail' the first bad record raises SourceError and leaves neither file. Every
    batch is checked with schemas.validate first, so a converter bug cannot reach a shard.
    """
    stats = _UnitStats()
    index: list[list[int]] = []

    def make_batch(buf: list[Record]) -> bytes:
        tasks = [task or rec.task or converter.name for rec in buf]
        rl = converter.rl
        batch = rows_to_batch(
            [rec.row for rec in buf], [rec.source_id for rec in buf], tasks,
            [rec.num_steps if rec.num_steps is not None else len(rec.row.step_starts) for rec in buf] if rl else None,
            [rec.episode_return if rec.episode_return is not None else float("nan") for rec in buf] if rl else None)
        problems = validate_table(pa.Table.from_batches([batch]), layout)
        if problems:  # a converter bug: never write a row that breaks the contract
            raise InvalidRow(f"the {converter.name} converter built a row that breaks the shard contract: "
                             f"{problems[0]}")
        stats.add_records(buf, tasks, batch)
        tokens = len(batch.column("tokens").values)
        report(len(buf), tokens)
        message = batch.serialize()
        index.append([message.size, batch.num_rows, tokens, int(row_nbytes(batch).sum())])
        return message

    def messages():
        buf: list[Record] = []
        size = 0
        try:
            for rec in converter.convert_unit(unit):
                if rec.filtered:
                    stats.filtered += 1
                    continue
                if rec.row is None or rec.skip_reason:
                    reason = rec.skip_reason or "no row"
                    if on_error == "fail":
                        raise _RecordFailed(reason)
                    stats.skipped.append({"source": rec.source_id, "reason": reason})
                    report(0, 0)
                    continue
                buf.append(rec)
                size += _row_estimate(rec)
                if len(buf) >= BATCH_ROWS or size >= BATCH_BYTES:
                    yield make_batch(buf)
                    buf, size = [], 0
        except (_RecordFailed, InvalidRow):
            raise  # the converter's reason, as it is
        except (SourceError, TokenizeError) as e:  # the unit itself is unreadable
            if on_error == "fail":
                raise SourceError(_with_place(e, unit)) from None
            stats.skipped.append({"source": unit.key, "reason": _with_place(e, unit)})
        if buf:
            yield make_batch(buf)

    data_name, sink = None, None
    try:
        for message in messages():
            if sink is None:
                data_name = f"{uid}.arrow"
                sink = _ByteSink(work / data_name, "crc32")
                sink.write(_schema_message(converter.rl))
            sink.write(message)
        if sink is not None:
            sink.write(_EOS)
            sink.commit(fsync=False)  # the marker's size and CRC stand in for an fsync
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    marker = {"key": unit.key, "uid": uid, "file": data_name, "pid": os.getpid(), "format": WORK_FORMAT,
              "size": sink.size if sink else 0, "crc32": sink.digest if sink else 0, "batches": index,
              **stats.to_dict()}
    _write_json_atomic(work / f"{uid}.json", marker)
    return marker


def _write_json_atomic(path: Path, obj, fsync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, sort_keys=True)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


# --- worker processes ----------------------------------------------------------------------------

_W: dict = {}
_READY = "ready"


def _init_worker(converter, work: str, on_error: str, task, queue, layout) -> None:
    _W.update(converter=converter, work=Path(work), on_error=on_error, task=task, queue=queue, layout=layout)
    pa.array([0])  # pays pyarrow's one-time lazy imports (pandas) before saying ready
    queue.put((_READY, 0))


def _worker_unit(unit: WorkUnit, uid: str) -> dict:
    pending = [0, 0, time.perf_counter()]

    def report(records: int, tokens: int) -> None:
        pending[0] += records
        pending[1] += tokens
        if time.perf_counter() - pending[2] > 0.2:
            _W["queue"].put((pending[0], pending[1]))
            pending[:] = [0, 0, time.perf_counter()]

    marker = convert_unit_to_file(_W["converter"], unit, uid, _W["work"], _W["on_error"], _W["task"], report,
                                  _W["layout"])
    _W["queue"].put((pending[0], pending[1]))
    return marker


def _run_pool(converter, todo: list[tuple[WorkUnit, str]], work: Path, on_error: str, task, workers: int,
              progress: Progress, layout: VocabLayout) -> None:
    """`workers` processes in all: this one and workers-1 spawned ones.

    This process converts units too, so nothing waits while the others start (seconds: each
    imports pyarrow, SentencePiece...). A thread hands a spawned worker units only once it says it
    is ready, at most two at a time, so a small job is simply done here before they are up.
    """
    ctx = mp.get_context("spawn")  # safe with threads (SentencePiece, Arrow) and on every OS
    queue = ctx.Queue()
    lock = threading.Lock()
    waiting = deque(todo)
    errors: list[BaseException] = []
    stop = threading.Event()

    def next_unit():
        with lock:
            return waiting.popleft() if waiting else None

    def feed(pool) -> None:
        ready, running = 0, []
        try:
            while not stop.is_set():
                while True:
                    try:
                        first, second = queue.get_nowait()
                    except Exception:  # queue.Empty
                        break
                    if first == _READY:
                        ready += 1
                    else:
                        progress.update(first, second)
                still = []
                for r in running:
                    if r.ready():
                        r.get()  # re-raises the worker's error
                        progress.unit_done()
                    else:
                        still.append(r)
                running = still
                while len(running) < 2 * ready and (item := next_unit()) is not None:
                    running.append(pool.apply_async(_worker_unit, item))
                with lock:
                    if not waiting and not running:
                        return
                time.sleep(0.02)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    with ctx.Pool(workers - 1, initializer=_init_worker,
                  initargs=(converter, str(work), on_error, task, queue, layout)) as pool:
        feeder = threading.Thread(target=feed, args=(pool,), daemon=True)
        feeder.start()
        try:
            while not errors and (item := next_unit()) is not None:
                convert_unit_to_file(converter, *item, work, on_error, task, progress.update, layout)
                progress.unit_done()
            while feeder.is_alive():
                feeder.join(0.1)
            if errors:
                raise errors[0]
        finally:
            stop.set()
            feeder.join()


# --- packing -------------------------------------------------------------------------------------

class DamagedWork(SourceError):
    """A work file whose bytes no longer match its marker (a crash before they reached the disk)."""

    def __init__(self, uid: str, path: Path):
        super().__init__(f"{path}: work file damaged since it was written (size or CRC32 differs from its marker)")
        self.uid = uid


class _Shards:
    """Rolling shard files: batch messages appended in order, a new shard after each cut."""

    def __init__(self, out: Path, rl: bool):
        self.out, self.rl = out, rl
        self.infos: list[ShardInfo] = []
        self.sink: _ByteSink | None = None
        self.rows = self.tokens = 0

    def write(self, message, rows: int, tokens: int) -> None:
        if self.sink is None:
            self.sink = _ByteSink(self.out / SHARD_PATTERN.format(len(self.infos)), "sha256")
            self.sink.write(_schema_message(self.rl))
            self.rows = self.tokens = 0
        self.sink.write(message)
        self.rows += rows
        self.tokens += tokens

    def cut(self) -> None:
        if self.sink is None:
            return
        self.sink.write(_EOS)
        self.sink.commit(fsync=True)
        self.infos.append(ShardInfo(self.sink.path.name, self.rows, self.tokens, self.sink.size, self.sink.digest))
        self.sink = None

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None


class _Reader:
    """Reads a file piece by piece into one reused buffer (no allocation, no page faults per piece)."""

    def __init__(self):
        self.buf = bytearray(1 << 20)

    def read(self, f, n: int) -> memoryview:
        """The next n bytes of f (fewer if the file ends), valid until the next read."""
        if len(self.buf) < n:  # a new buffer: views of the old one may still be alive
            self.buf = bytearray(max(n, 2 * len(self.buf)))
        view = memoryview(self.buf)[:n]
        return view[:f.readinto(view) or 0]


def pack_shards(units: Sequence[tuple[Path, dict]], out: Path, rl: bool, shard_size: int) -> list[ShardInfo]:
    """Stream the (work file, marker) units in order into shard-NNNNN.arrow files of about
    shard_size bytes each: rows in unit order, a cut before the row that would overfill a shard
    (a row larger than a shard gets one of its own).

    A batch that fits whole is copied as the bytes it already is; only a batch that a cut falls
    inside is decoded (zero-copy) and its two slices serialised. Raises DamagedWork (and leaves
    no shard under a temporary name) when a work file differs from its marker.
    """
    schema = shard_schema(rl)
    head = _schema_message(rl)
    shards = _Shards(out, rl)
    filled = 0
    reader = _Reader()
    try:
        for path, marker in units:
            with open(path, "rb") as f:
                crc = 0
                data = reader.read(f, len(head))
                if data != head:
                    raise DamagedWork(marker["uid"], path)
                crc = zlib.crc32(data, crc)
                for nbytes, rows, tokens, estimate in marker["batches"]:
                    data = reader.read(f, nbytes)
                    if len(data) != nbytes:
                        raise DamagedWork(marker["uid"], path)
                    crc = zlib.crc32(data, crc)
                    if filled + estimate <= shard_size:  # the common case: the whole batch fits
                        shards.write(data, rows, tokens)
                        filled += estimate
                        continue
                    try:
                        batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(data)), schema)
                    except (pa.ArrowInvalid, OSError):
                        raise DamagedWork(marker["uid"], path) from None
                    sizes = row_nbytes(batch)
                    start = 0
                    while start < len(sizes):
                        cum = np.cumsum(sizes[start:])
                        take = int(np.searchsorted(cum, shard_size - filled, side="right"))
                        if take == 0 and filled == 0:
                            take = 1  # one row larger than a shard gets a shard of its own
                        if take == 0:
                            shards.cut()
                            filled = 0
                            continue
                        piece = batch.slice(start, take)
                        offs = piece.column("tokens").offsets
                        shards.write(piece.serialize(), take, int(offs[-1].as_py()) - int(offs[0].as_py()))
                        filled += int(cum[take - 1])
                        start += take
                data = reader.read(f, len(_EOS) + 1)
                crc = zlib.crc32(data, crc)
                if data != _EOS or crc != marker["crc32"]:
                    raise DamagedWork(marker["uid"], path)
        shards.cut()
    except BaseException:
        shards.abort()
        raise
    return shards.infos


# --- statistics ----------------------------------------------------------------------------------

def merge_stats(markers: Sequence[dict], rl: bool) -> tuple[dict, list[dict], dict[str, int]]:
    """(stats, skipped, rows per task) of the whole conversion, from unit markers in unit order."""
    rows = tokens = 0
    modality = [0] * _NUM_MODALITIES
    errors: dict[str, list[float]] = {}
    ret = [0, None, None, 0.0, 0.0]
    tasks: dict[str, int] = {}
    skipped: list[dict] = []
    filtered = 0
    for m in markers:
        rows += m["rows"]
        tokens += m["tokens"]
        modality = [a + b for a, b in zip(modality, m["modality"], strict=True)]
        for name, (mx, total, n) in m["field_errors"].items():
            cur = errors.setdefault(name, [0.0, 0.0, 0])
            cur[0] = max(cur[0], mx)
            cur[1] += total
            cur[2] += n
        n, lo, hi, total, squares = m["returns"]
        if n:
            ret[1] = lo if ret[1] is None else min(ret[1], lo)
            ret[2] = hi if ret[2] is None else max(ret[2], hi)
            ret[0] += n
            ret[3] += total
            ret[4] += squares
        for t, c in m["tasks"].items():
            tasks[t] = tasks.get(t, 0) + c
        skipped.extend(m["skipped"])
        filtered += m.get("filtered", 0)
    stats = {
        "rows": rows,
        "tokens": tokens,
        "tokens_by_modality": {MODALITY_NAMES[i]: c for i, c in enumerate(modality)},
        "field_errors": {k: {"max": v[0], "mean": v[1] / v[2] if v[2] else 0.0, "count": int(v[2])}
                         for k, v in sorted(errors.items())},
        "rows_per_task": dict(sorted(tasks.items())),
        "skipped": len(skipped),
        "filtered": filtered,  # left out on purpose by the converter's own options (not errors)
    }
    if rl:
        n = ret[0]
        mean = ret[3] / n if n else None
        std = float(np.sqrt(max(ret[4] / n - mean * mean, 0.0))) if n else None
        stats["episode_return"] = {"count": n, "min": ret[1], "max": ret[2], "mean": mean, "std": std}
    return stats, skipped, tasks


# --- the whole conversion ------------------------------------------------------------------------

def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def unit_id(fingerprint: str, unit: WorkUnit) -> str:
    """Names a unit's work files: changes with the settings, the unit, and its file's size/mtime."""
    try:
        st = os.stat(unit.path)
        stamp = [st.st_size, st.st_mtime_ns]
    except (OSError, ValueError):
        stamp = None
    return _sha([fingerprint, unit.key, unit.path, unit.start, unit.stop, stamp])[:24]


def _remove_temporaries(directory: Path, prefixes: Sequence[str]) -> None:
    for prefix in prefixes:
        for p in directory.glob(f".{prefix}*.tmp*"):
            p.unlink(missing_ok=True)


def _read_marker(work: Path, uid: str) -> dict | None:
    """The marker of a finished unit, or None where the unit must be converted (again): no marker,
    an unreadable one, one of another writer version, or a work file that is missing or of another
    size (a marker can outlive its unsynced work file in a crash of the machine)."""
    try:
        m = json.loads((work / f"{uid}.json").read_text())
        if m.get("format") != WORK_FORMAT:
            return None
        if m["file"] and os.stat(work / m["file"]).st_size != m["size"]:
            return None
        return m
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def convert(converter: Converter, out: str | os.PathLike, *, layout: VocabLayout,
            tokenizer_path: str | os.PathLike | None = None, workers: int = 1, on_error: str = "fail",
            shard_size: int = 256 * 10**6, num_partitions: int = 1, partition: int | None = None,
            task: str | None = None, progress: bool = True) -> ConvertResult:
    """Convert all work units of `converter` into a shard directory `out` (see the module docstring)."""
    t0 = time.perf_counter()
    if on_error not in ON_ERROR:
        raise UsageError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if num_partitions < 1 or (partition is not None and not 0 <= partition < num_partitions):
        raise UsageError(f"--partition must be in [0, {num_partitions}) and --num-partitions >= 1")
    if num_partitions > 1 and partition is None:
        raise UsageError("--num-partitions needs --partition i (or leave both out to finish the conversion)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")

    units = list(converter.work_units())
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise SourceError(f"two inputs give the same work unit {next(k for k in keys if keys.count(k) > 1)!r}")
    options = dict(converter.options())
    episode_spec = options.pop("episode_spec", None)
    tok_sha = file_sha256(tokenizer_path) if tokenizer_path else None
    fingerprint = _sha({"writer": WORK_FORMAT, "converter": converter.name, "options": options, "episode_spec": episode_spec,
                        "layout": layout.to_dict(), "tokenizer_sha256": tok_sha, "task": task, "rl": converter.rl})
    uids = [unit_id(fingerprint, u) for u in units]
    conversion = {"fingerprint": fingerprint, "units": len(units), "units_sha256": _sha(uids),
                  "shard_size": shard_size, "on_error": on_error}

    if (out / MANIFEST_NAME).exists():
        try:
            old = Manifest.read(out)
        except ManifestError:
            old = None
        if old is not None and old.stats.get("conversion") == conversion:
            return ConvertResult(out, True, len(units), 0, old, time.perf_counter() - t0, up_to_date=True)
        raise UsageError(f"{out} already holds a finished conversion of other inputs or options; "
                         f"choose another --out or delete it")

    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    mine = range(len(units)) if partition is None else range(partition, len(units), num_partitions)
    _remove_temporaries(work, [uids[i] for i in mine])
    todo = [(units[i], uids[i]) for i in mine if _read_marker(work, uids[i]) is None]

    bar = Progress(f"{converter.name}" + (f" [{partition}/{num_partitions}]" if partition is not None else ""),
                   len(todo), enabled=progress)
    try:
        if workers > 1 and len(todo) > 1:
            _run_pool(converter, todo, work, on_error, task, min(workers, len(todo)), bar, layout)
        else:
            for unit, uid in todo:
                convert_unit_to_file(converter, unit, uid, work, on_error, task, bar.update, layout)
                bar.unit_done()
    finally:
        bar.close()
        _remove_temporaries(work, [uid for _, uid in todo])

    if num_partitions > 1:
        return ConvertResult(out, False, len(units), len(todo), None, time.perf_counter() - t0)

    markers = [_read_marker(work, uid) for uid in uids]
    for i in [i for i, m in enumerate(markers) if m is None]:  # its work vanished since (a concurrent cleanup)
        markers[i] = convert_unit_to_file(converter, units[i], uids[i], work, on_error, task, lambda r, t: None, layout)
    if on_error == "fail":
        for m in markers:  # a unit finished earlier under --on-error skip
            if m["skipped"]:
                raise SourceError(m["skipped"][0]["reason"])

    for p in list(out.glob("shard-*.arrow")) + list(out.glob(".shard-*.tmp*")):
        p.unlink()  # leftovers of an interrupted packing pass: no manifest vouches for them
    redone: set[str] = set()
    while True:
        try:
            shards = pack_shards([(work / m["file"], m) for m in markers if m["file"]], out, converter.rl, shard_size)
            break
        except DamagedWork as e:  # changed since its marker was written: convert it again, pack again
            if e.uid in redone:
                raise
            redone.add(e.uid)
            i = uids.index(e.uid)
            (work / f"{e.uid}.json").unlink()
            for p in out.glob("shard-*.arrow"):
                p.unlink()
            markers[i] = convert_unit_to_file(converter, units[i], e.uid, work, on_error, task, lambda r, t: None,
                                              layout)
    stats, skipped, tasks = merge_stats(markers, converter.rl)
    stats["conversion"] = conversion

    if tokenizer_path:
        dest = out / TOKENIZER_NAME
        if not (dest.exists() and os.path.samefile(tokenizer_path, dest)):
            tmp = out / f".{TOKENIZER_NAME}.tmp{os.getpid()}"
            shutil.copyfile(tokenizer_path, tmp)
            os.replace(tmp, dest)
    manifest = Manifest(layout=layout.to_dict(), converter=converter.name, options=options, shards=shards,
                        stats=stats, skipped=skipped, tokenizer_sha256=tok_sha, episode_spec=episode_spec,
                        tasks=sorted(tasks))
    manifest.write(out)
    shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(out, True, len(units), len(todo), manifest, time.perf_counter() - t0)
