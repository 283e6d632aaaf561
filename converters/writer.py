"""The shard writer: work units -> record batch messages -> rolling shards + manifest.json.

Each work unit's rows become Arrow record batches, checked with schemas.validate and serialised
once, as the IPC messages they will be in a shard. Shards take them *in unit order*:
`shard-00000.arrow, shard-00001.arrow, ...` of about `shard_size` bytes each, cut before the row
that would overfill one, and `manifest.json` is written last. The next unit in order is converted
straight into the shards (one write, hashed as it goes out: nothing is read back for its sha256).
A worker process's unit waits for its turn in shared memory (`_Ring`, a fixed 64 MiB per worker,
reused: no file written and read back), from which packing copies its messages into the shards.
Any other unit converted ahead of its turn (by a `--partition` run, or by this process while it
waits for a worker) goes to `OUT/.work/<uid>.arrow` (an IPC stream) with the marker
`OUT/.work/<uid>.json` (statistics, skipped records, its batch index, size and CRC32), and
packing later copies its messages' bytes the same way; only a batch that a cut falls inside is
decoded and its slices re-serialised. So:

* output is byte-identical whatever `workers` is (row order = unit order, fixed batch sizes,
  no timestamps in shards; a shard is a schema message, batch messages and an end marker, the
  same bytes pyarrow's stream writer makes);
* a re-run after a crash or kill converts only the units not yet done: after every unit the
  packer saves its state (`.work/pack.state`: finished shards, the open shard's size, rows and
  sha256 so far), so a killed run resumes at the unit it died in, and work files of later units
  are reused (`uid` hashes the conversion's settings, the unit and its file's size and mtime, so
  stale work is never reused; units still in a worker's ring are lost with it, and done again).
  A packed unit's work file is deleted and its marker rewritten to say its rows are in the shards
  only, so `.work/` and the shards together stay about the size of the output;
* `--num-partitions K --partition i` converts units `i, i+K, i+2K, ...` into `OUT/.work` and stops
  there; the same command without `--partition` (run once every partition is done; it converts
  whatever is still missing) packs the shards and writes the manifest. Machines that do not share
  OUT copy their `OUT/.work/` files into one directory first (`rsync -a`, which keeps mtimes);
* nothing half-written is ever visible: files are written under a temporary name and renamed,
  a failing unit leaves no marker, shards stay in `.work/` until the conversion is complete,
  and `.work/` is removed once the manifest is written. Shards and the manifest are fsynced; work
  files are not, so their size is checked on resume and their CRC32 while packing (a short or
  damaged one is converted again).

Memory stays flat: workers hold one record batch at a time plus their ring, packing holds one
batch message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError, ShardInfo
from schemas.shard import PATCH_BYTES, SHARD_PATTERN, rows_to_batch, shard_schema
from schemas.validate import validate_table
from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import MODALITY_NAMES, VocabLayout
from tokenizer_kit.files import atomic_path, file_sha256

from .base import Converter, Record, SourceError, WorkUnit
from .progress import Progress

WORK_DIR = ".work"
WORK_FORMAT = 2  # of the work files and markers; part of every unit id, so older work is never reused
LOOKAHEAD_UNITS = 4  # per worker: how far ahead of the packer worker processes take units (see _Pool)
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
        filtered = f", {m.stats['filtered']} filtered out" if m.stats.get("filtered") else ""
        return (f"{head}{m.converter}: {m.total_rows} rows, {m.total_tokens} tokens in {len(m.shards)} shards "
                f"({mb:.1f} MB), {len(m.skipped)} skipped{filtered}, {self.seconds:.1f}s ({rate:.2f}M tok/s) "
                f"-> {self.out}")


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


def unit_messages(converter: Converter, unit: WorkUnit, on_error: str, task: str | None,
                  report: Callable[[int, int], None], layout: VocabLayout, stats: _UnitStats,
                  index: list[list[int]]) -> Iterator[pa.Buffer]:
    """The unit's rows as Arrow IPC record batch messages (the bytes they will have in a shard).

    Each message's [bytes, rows, tokens, estimated row bytes] is appended to `index` before it is
    yielded; statistics and skipped records go to `stats`. With on_error='fail' the first bad
    record raises SourceError. Every batch is checked with schemas.validate first, so a converter
    bug cannot reach a shard.
    """
    def make_batch(buf: list[Record]) -> pa.Buffer:
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


def _marker(unit: WorkUnit, uid: str, stats: _UnitStats, index: list, file: str | None = None,
            size: int = 0, crc: int = 0, direct: bool = False) -> dict:
    return {"key": unit.key, "uid": uid, "file": file, "pid": os.getpid(), "format": WORK_FORMAT,
            "direct": direct, "size": size, "crc32": crc, "batches": index, **stats.to_dict()}


def _mark(work: Path, unit: WorkUnit, uid: str, stats: _UnitStats, index: list, file: str | None = None,
          size: int = 0, crc: int = 0, direct: bool = False) -> dict:
    """Write the unit's marker (it is complete) and return it."""
    marker = _marker(unit, uid, stats, index, file, size, crc, direct)
    _write_json_atomic(work / f"{uid}.json", marker)
    return marker


def _mark_in_shards(work: Path, marker: dict) -> dict:
    """Rewrite a packed unit's marker as if it had gone straight into the shards (`direct`): its
    rows live there only, so a resume before the next saved state converts it again."""
    marker = {k: v for k, v in marker.items() if k not in ("ring", "region", "places", "spill")}
    marker["direct"] = True
    _write_json_atomic(work / f"{marker['uid']}.json", marker)
    return marker


def convert_unit_to_file(converter: Converter, unit: WorkUnit, uid: str, work: Path, on_error: str,
                         task: str | None, report: Callable[[int, int], None], layout: VocabLayout) -> dict:
    """Convert one unit into the Arrow IPC stream `work/<uid>.arrow` and mark it complete with
    `work/<uid>.json` (its batch index and statistics). A failure leaves neither file."""
    stats, index = _UnitStats(), []
    data_name, sink = None, None
    try:
        for message in unit_messages(converter, unit, on_error, task, report, layout, stats, index):
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
    return _mark(work, unit, uid, stats, index, data_name, sink.size if sink else 0, sink.digest if sink else 0)


def convert_unit_to_ring(converter: Converter, unit: WorkUnit, uid: str, work: Path, ring: _Ring, ring_index: int,
                         on_error: str, task: str | None, report: Callable[[int, int], None],
                         layout: VocabLayout) -> dict:
    """Convert one unit (in a worker process) into `ring`, shared memory the packer copies straight
    into the shards; batches that find the ring full go to `work/<uid>.spill` instead. Returns
    the unit's marker but writes none: the unit is not durable until it is in the shards."""
    stats, index, places = _UnitStats(), [], []
    start = ring.written()
    spill_name, spill = None, None
    try:
        for message in unit_messages(converter, unit, on_error, task, report, layout, stats, index):
            pos = ring.put(message)
            if pos is None:  # the packer is behind: this batch waits on disk
                if spill is None:
                    spill_name = f"{uid}.spill"
                    spill = open(work / spill_name, "wb")
                spill.write(message)
                pos = -1
            places.append(pos)
    except BaseException:
        if spill is not None:
            spill.close()
            (work / spill_name).unlink(missing_ok=True)
        raise
    if spill is not None:
        spill.close()
    return {**_marker(unit, uid, stats, index), "ring": ring_index, "region": [start, ring.written()],
            "places": places, "spill": spill_name}


def _write_json_atomic(path: Path, obj, fsync: bool = False) -> None:
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(json.dumps(obj, sort_keys=True))


# --- worker processes ----------------------------------------------------------------------------

RING_BYTES = 64 << 20  # per worker process: its converted units wait here until the packer takes them


class _Ring:
    """Shared memory between one worker process (writes batch messages) and the packer (copies them
    into the shards): a worker's unit reaches a shard with no work file on disk, written and read
    back, in between. Pages are reused, so the kernel allocates nothing per unit either.

    Positions only grow (a message sits at `pos % capacity`). The worker advances `written`; the
    packer frees a unit's [start, end) region once it is in the shards. The worker writes its units
    in the order it converts them, which is not the packing order, so a region is freed once every
    region before it is (`consumed`); a message finding no room is the worker's to put elsewhere.
    """

    _HEADER = 64  # two uint64 counters: written (by the worker), freed (by the packer)

    def __init__(self, name: str | None = None, size: int | None = None):
        from multiprocessing import shared_memory
        self.shm = shared_memory.SharedMemory(name=name, create=name is None,
                                              size=(size or RING_BYTES) if name is None else 0)
        self.counters = np.ndarray((2,), np.uint64, self.shm.buf[:16])
        self.data = np.ndarray((self.shm.size - self._HEADER,), np.uint8, self.shm.buf[self._HEADER:])
        self.done: dict[int, int] = {}  # the packer's consumed regions not yet freed: start -> end
        self.unlinked = False

    @property
    def name(self) -> str:
        return self.shm.name

    def written(self) -> int:
        return int(self.counters[0])

    def put(self, message) -> int | None:
        """Copy a message in (the worker); its position, or None when there is no room for it."""
        n, cap = message.size, len(self.data)
        w = int(self.counters[0])
        pad = cap - w % cap if w % cap + n > cap else 0  # a message never wraps: skip to the start
        if w + pad + n - int(self.counters[1]) > cap:
            return None
        pos = w + pad
        self.data[pos % cap:pos % cap + n] = np.frombuffer(message, np.uint8)
        self.counters[0] = pos + n
        return pos

    def view(self, pos: int, n: int) -> memoryview:
        o = pos % len(self.data)
        return memoryview(self.data[o:o + n])

    def consumed(self, start: int, end: int) -> None:
        """A unit's region is in the shards (the packer): free it and any consumed ones after it."""
        if end > start:
            self.done[start] = end
        freed = int(self.counters[1])
        while (nxt := self.done.pop(freed, None)) is not None:
            freed = nxt
        self.counters[1] = freed

    def unlink(self) -> None:
        """Remove the name (once every worker has attached): the memory then goes with the last
        process that maps it, even if all of them are killed."""
        if not self.unlinked:
            self.unlinked = True
            self.shm.unlink()

    def close(self, unlink: bool = False) -> None:
        del self.counters, self.data
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            pass
        if unlink:
            self.unlink()

    @staticmethod
    def room(count: int) -> bool:
        """Whether /dev/shm can hold `count` rings with room to spare (a full one kills with SIGBUS)."""
        try:
            st = os.statvfs("/dev/shm")
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= 2 * count * RING_BYTES


_W: dict = {}
_READY = "ready"


def _start_method() -> str:
    """How worker processes start. A forked worker is ready at once; a spawned one first spends
    ~0.6 s of CPU importing numpy, pyarrow and pandas, a tenth of a 6-second conversion's work.
    Fork is used on Linux, as HF datasets and PyTorch's DataLoader do with pyarrow in the parent,
    except once HDF5 is loaded (its library state must not be shared with a child: Minari and
    D4RL-style sources then spawn). Elsewhere, spawn (macOS system libraries are not fork-safe)."""
    return "fork" if sys.platform == "linux" and "h5py" not in sys.modules else "spawn"


def _init_worker(converter, work: str, on_error: str, task, queue, layout, rings: list[str], claimed,
                 forked: bool) -> None:
    if forked:  # the converter as spawn would give it: it reopens its own files (no inherited handles)
        converter = pickle.loads(pickle.dumps(converter))
    _W.update(converter=converter, work=Path(work), on_error=on_error, task=task, queue=queue, layout=layout)
    with claimed.get_lock():  # one ring per process (a replacement for a dead worker gets none)
        k = claimed.value
        claimed.value += 1
    if k < len(rings):
        _W.update(ring=_Ring(rings[k]), ring_index=k)
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

    if "ring" in _W:
        marker = convert_unit_to_ring(_W["converter"], unit, uid, _W["work"], _W["ring"], _W["ring_index"],
                                      _W["on_error"], _W["task"], report, _W["layout"])
    else:
        marker = convert_unit_to_file(_W["converter"], unit, uid, _W["work"], _W["on_error"], _W["task"], report,
                                      _W["layout"])
    _W["queue"].put((pending[0], pending[1]))
    return marker


class _Pool:
    """workers-1 worker processes converting units ahead of the packer, fed by a thread.

    This process converts units too (it takes them with `take`), so nothing waits while the others
    start (a spawned one needs about a second to import numpy, pyarrow...; see _start_method). The
    thread hands a worker units only once it says it is ready, at most two at a time, so a small
    job is simply done here before they are up. Finished units' markers are collected by unit
    index (`result`).

    A worker's unit reaches the shards through its `_Ring` (shared memory; `.work/<uid>.spill` for
    what does not fit), except in `--partition` runs, which write work files. A unit this process
    converts when it is next in order goes straight into the shards; one it converts ahead of its
    turn (while it waits for a worker's) goes through a work file, written and read back. So
    workers take units from the *back* of a window ahead of the packing position (`position`,
    which the packer moves) and this process takes them from the front: it meets a worker's
    finished units after converting the ones before them, instead of waiting on the very next one.
    The window (LOOKAHEAD_UNITS per worker) bounds what a worker holds, so it fits its ring.
    """

    def __init__(self, converter, todo: dict[int, tuple[WorkUnit, str]], work: Path, on_error: str, task,
                 workers: int, progress: Progress, layout: VocabLayout, window: int, rings: bool):
        ctx = mp.get_context(_start_method())
        self.queue = ctx.Queue()
        self.lock = threading.Lock()
        self.waiting = dict(todo)  # unit index -> (unit, uid), in unit order
        self.position = 0  # the first unit not yet in the shards (moved by the packer)
        self.window = window  # units ahead of `position` that workers may take
        self.finished: dict[int, dict] = {}
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.progress = progress
        # rings only where units are packed as they come (not in --partition runs: those keep work files)
        self.rings = [_Ring() for _ in range(workers - 1)] if rings and _Ring.room(workers - 1) else []
        self.pool = ctx.Pool(workers - 1, initializer=_init_worker,
                             initargs=(converter, str(work), on_error, task, self.queue, layout,
                                       [r.name for r in self.rings], ctx.Value("i", 0),
                                       ctx.get_start_method() == "fork"))
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def take(self, i: int | None = None) -> tuple[int, WorkUnit, str] | None:
        """Unit i (the first waiting one if None) for this process, unless a worker has it."""
        with self.lock:
            if i is None:
                i = next(iter(self.waiting), None)
            item = self.waiting.pop(i, None) if i is not None else None
        return (i, *item) if item is not None else None

    def take_ahead(self) -> tuple[int, WorkUnit, str] | None:
        """For a worker: the last waiting unit in the window after `position` (None: wait)."""
        with self.lock:
            limit = self.position + self.window
            i = next((j for j in reversed(self.waiting) if j < limit), None)
            item = self.waiting.pop(i) if i is not None else None
        return (i, *item) if item is not None else None

    def result(self, i: int) -> dict | None:
        """The marker of unit i once a worker finished it; raises a worker's error."""
        if self.errors:
            raise self.errors[0]
        with self.lock:
            return self.finished.pop(i, None)

    def join(self) -> None:
        """Wait until every unit handed out is done; raises a worker's error."""
        while self.feeder.is_alive():
            self.feeder.join(0.1)
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self.stop.set()
        self.feeder.join()
        self.pool.terminate()
        self.pool.join()
        for ring in self.rings:
            ring.close(unlink=True)
        self.rings = []

    def _feed(self) -> None:
        ready, running = 0, {}
        try:
            while not self.stop.is_set():
                while True:
                    try:
                        first, second = self.queue.get_nowait()
                    except Exception:  # queue.Empty
                        break
                    if first == _READY:
                        ready += 1
                        if ready == len(self.rings):  # every worker has attached its ring
                            for ring in self.rings:
                                ring.unlink()
                    else:
                        self.progress.update(first, second)
                for i, r in list(running.items()):
                    if r.ready():
                        marker = r.get()  # re-raises the worker's error
                        del running[i]
                        with self.lock:
                            self.finished[i] = marker
                        self.progress.unit_done()
                while len(running) < 2 * ready and (item := self.take_ahead()) is not None:
                    running[item[0]] = self.pool.apply_async(_worker_unit, item[1:])
                with self.lock:
                    if not self.waiting and not running:
                        return
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.errors.append(e)


# --- packing -------------------------------------------------------------------------------------

class DamagedWork(SourceError):
    """A work file whose bytes no longer match its marker (a crash before they reached the disk)."""

    def __init__(self, uid: str, path: Path):
        super().__init__(f"{path}: work file damaged since it was written (size or CRC32 differs from its marker)")
        self.uid = uid


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


PACK_STATE = "pack.state"  # in .work/: where the rolling shards stand (not *.json: those are unit markers)


def _sync_and_rename(file, part: Path, final: Path) -> None:
    """A finished shard onto the disk, then under its name (so a name always means whole bytes)."""
    try:
        os.fsync(file.fileno())
    finally:
        file.close()
    os.replace(part, final)


class _Packer:
    """Rolling shards: batch messages appended in unit order into `.work/shard-NNNNN.arrow`, a cut
    before the row that would overfill a shard (a row larger than a shard gets one of its own).

    A batch that fits whole goes in as the bytes it already is; only a batch that a cut falls inside
    is decoded (zero-copy) and its two slices serialised. Each shard's sha256 is updated as its
    bytes go out; a finished shard is fsynced and renamed by a thread while packing goes on. After
    every unit `save` records the state (completed shards, the open shard's size, rows, tokens and
    sha256 so far) so that a killed run resumes exactly there (`resume`).
    Shards stay in .work/ until the conversion is complete, so none is visible before its manifest.
    """

    def __init__(self, work: Path, rl: bool, shard_size: int, conversion: dict):
        self.work, self.rl, self.shard_size, self.conversion = work, rl, shard_size, conversion
        self.schema = shard_schema(rl)
        self.infos: list[ShardInfo] = []
        self.next_unit = 0
        self.file = None
        self.sha = hashlib.sha256()
        self.size = self.rows = self.tokens = self.filled = 0
        self.sync_thread: ThreadPoolExecutor | None = None
        self.closing: list[Future] = []  # shards being fsynced and renamed (`cut`)

    def _part(self) -> Path:
        return self.work / (SHARD_PATTERN.format(len(self.infos)) + ".part")

    def _write(self, data) -> None:
        if self.file is None:
            self.file = open(self._part(), "wb")
            self.sha = hashlib.sha256()
            self.size = self.rows = self.tokens = self.filled = 0
            self._write(_schema_message(self.rl))
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def add(self, message, rows: int, tokens: int, estimate: int) -> None:
        """Append one record batch message (of `estimate` row bytes), cutting where a shard is full."""
        if self.filled + estimate <= self.shard_size:  # the common case: the whole batch fits
            self._write(message)
            self.rows += rows
            self.tokens += tokens
            self.filled += estimate
            return
        batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(message)), self.schema)
        sizes = row_nbytes(batch)
        start = 0
        while start < len(sizes):
            cum = np.cumsum(sizes[start:])
            take = int(np.searchsorted(cum, self.shard_size - self.filled, side="right"))
            if take == 0 and self.filled == 0:
                take = 1  # one row larger than a shard gets a shard of its own
            if take == 0:
                self.cut()
                continue
            piece = batch.slice(start, take)
            offs = piece.column("tokens").offsets
            self._write(piece.serialize())
            self.rows += take
            self.tokens += int(offs[-1].as_py()) - int(offs[0].as_py())
            self.filled += int(cum[take - 1])
            start += take

    def cut(self) -> None:
        """Finish the open shard: end marker, then fsync and rename in the background (`settle`)."""
        if self.file is None:
            self.filled = 0
            return
        self.file.write(_EOS)
        self.sha.update(_EOS)
        self.size += len(_EOS)
        self.file.flush()
        name = SHARD_PATTERN.format(len(self.infos))
        self._settle_earlier()
        self.closing.append(self._syncer().submit(_sync_and_rename, self.file, self.work / (name + ".part"),
                                                  self.work / name))
        self.file = None
        self.infos.append(ShardInfo(name, self.rows, self.tokens, self.size, self.sha.hexdigest()))
        self.filled = 0

    def _syncer(self) -> ThreadPoolExecutor:
        # fsync waits for the disk (~0.1 s per 256 MB shard here): a thread does it while rows go on
        if self.sync_thread is None:
            self.sync_thread = ThreadPoolExecutor(1, thread_name_prefix="shard-fsync")
        return self.sync_thread

    def _settle_earlier(self) -> None:
        """Forget the shards already settled, raising the error of one whose fsync or rename failed."""
        settled = [f for f in self.closing if f.done()]  # once: one finishing meanwhile waits its turn
        self.closing = [f for f in self.closing if f not in settled]
        for f in settled:
            f.result()

    def settle(self) -> None:
        """Wait until every finished shard is on disk under its name; raises a failed fsync's error."""
        closing, self.closing = self.closing, []
        for f in closing:
            f.result()

    def add_file(self, path: Path, marker: dict) -> None:
        """Append a unit's work file, checking its bytes against the marker's CRC32 on the way."""
        reader = _Reader()
        head = _schema_message(self.rl)
        with open(path, "rb") as f:
            data = reader.read(f, len(head))
            if data != head:
                raise DamagedWork(marker["uid"], path)
            crc = zlib.crc32(data)
            for nbytes, rows, tokens, estimate in marker["batches"]:
                data = reader.read(f, nbytes)
                if len(data) != nbytes:
                    raise DamagedWork(marker["uid"], path)
                crc = zlib.crc32(data, crc)
                try:
                    self.add(data, rows, tokens, estimate)
                except (pa.ArrowInvalid, OSError):
                    raise DamagedWork(marker["uid"], path) from None
            data = reader.read(f, len(_EOS) + 1)
            if data != _EOS or zlib.crc32(data, crc) != marker["crc32"]:
                raise DamagedWork(marker["uid"], path)

    def add_ring(self, ring: _Ring, marker: dict, work: Path) -> None:
        """Append a unit a worker left in its ring (and, where the ring was full, its spill file)."""
        spill = open(work / marker["spill"], "rb") if marker["spill"] else None
        reader = _Reader()
        try:
            for (nbytes, rows, tokens, estimate), pos in zip(marker["batches"], marker["places"], strict=True):
                if pos >= 0:
                    with ring.view(pos, nbytes) as data:
                        self.add(data, rows, tokens, estimate)
                else:
                    data = reader.read(spill, nbytes)
                    if len(data) != nbytes:
                        raise SourceError(f"{work / marker['spill']}: spill file shorter than its unit")
                    self.add(data, rows, tokens, estimate)
        finally:
            if spill is not None:
                spill.close()

    def save(self, next_unit: int) -> None:
        """Record that units before next_unit are in the shards (the open one flushed, not synced)."""
        self.next_unit = next_unit
        if self.file is not None:
            self.file.flush()
        state = {"conversion": self.conversion, "next_unit": next_unit, "shards": [asdict(s) for s in self.infos],
                 "open": None if self.file is None else {
                     "size": self.size, "rows": self.rows, "tokens": self.tokens, "filled": self.filled,
                     "sha256": self.sha.copy().hexdigest()}}
        _write_json_atomic(self.work / PACK_STATE, state)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.sync_thread is not None:
            self.sync_thread.shutdown(wait=True)
            self.sync_thread = None

    @classmethod
    def resume(cls, work: Path, rl: bool, shard_size: int, conversion: dict) -> _Packer | None:
        """The packer as the last `save` left it, or None where that state cannot be trusted (none,
        another conversion's, or its files changed since): then every shard is made again."""
        try:
            state = json.loads((work / PACK_STATE).read_text())
            if state["conversion"] != conversion:
                return None
            p = cls(work, rl, shard_size, conversion)
            p.infos = [ShardInfo(**s) for s in state["shards"]]
            for s in p.infos:
                part = work / (s.name + ".part")
                if not (work / s.name).exists() and _size(part) == s.bytes and file_sha256(part) == s.sha256:
                    os.replace(part, work / s.name)  # finished, but killed before its fsync and rename
                if _size(work / s.name) != s.bytes:
                    return None
            p.next_unit = int(state["next_unit"])
            if state["open"] is not None:
                o = state["open"]
                part = p._part()
                finished = work / SHARD_PATTERN.format(len(p.infos))
                if not part.exists() and finished.exists():  # a cut after the saved state: open it again
                    os.replace(finished, part)
                if os.stat(part).st_size < o["size"]:
                    return None
                f = open(part, "r+b")
                f.truncate(o["size"])
                reader = _Reader()
                while data := reader.read(f, 1 << 20):
                    p.sha.update(data)
                if p.sha.hexdigest() != o["sha256"]:
                    f.close()
                    return None
                p.file = f  # at its end, ready to append
                p.size, p.rows, p.tokens, p.filled = o["size"], o["rows"], o["tokens"], o["filled"]
            return p
        except (OSError, ValueError, KeyError, TypeError):
            return None


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
    """The marker of a finished unit; None where there is none, or one unreadable or of another
    writer version (the unit is converted again)."""
    try:
        m = json.loads((work / f"{uid}.json").read_text())
        return m if isinstance(m, dict) and m.get("format") == WORK_FORMAT else None
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


class _Restart(Exception):
    """Packing must start over from the first unit (a damaged work file it could not step back from)."""


def convert(converter: Converter, out: str | os.PathLike, *, layout: VocabLayout,
            tokenizer_path: str | os.PathLike | None = None, workers: int = 1, on_error: str = "fail",
            shard_size: int = 256 * 10**6, num_partitions: int = 1, partition: int | None = None,
            task: str | None = None, progress: bool = True) -> ConvertResult:
    """Convert all work units of `converter` into a shard directory `out` (see the module docstring)."""
    kw = dict(layout=layout, tokenizer_path=tokenizer_path, workers=workers, on_error=on_error,
              shard_size=shard_size, num_partitions=num_partitions, partition=partition, task=task, progress=progress)
    while True:  # each restart has removed a damaged work file, so this ends
        try:
            return _convert(converter, out, **kw)
        except _Restart:
            continue


def _convert(converter: Converter, out: str | os.PathLike, *, layout: VocabLayout,
             tokenizer_path: str | os.PathLike | None, workers: int, on_error: str, shard_size: int,
             num_partitions: int, partition: int | None, task: str | None, progress: bool) -> ConvertResult:
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
    fingerprint = _sha({"writer": WORK_FORMAT, "converter": converter.name, "options": options,
                        "episode_spec": episode_spec, "layout": layout.to_dict(), "tokenizer_sha256": tok_sha,
                        "task": task, "rl": converter.rl})
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
    final = partition is None
    if final:  # shards of an interrupted run: back into .work/ if its pack state vouches for them, else gone
        for p in out.glob(".shard-*.tmp*"):
            p.unlink()
        for p in out.glob("shard-*.arrow"):
            if not (work / p.name).exists():
                os.replace(p, work / p.name)
            else:
                p.unlink()
    mine = range(len(units)) if final else range(partition, len(units), num_partitions)
    _remove_temporaries(work, [uids[i] for i in mine])
    markers: list[dict | None] = [_read_marker(work, uid) for uid in uids]
    packer = _Packer.resume(work, converter.rl, shard_size, conversion)
    if packer is not None and not all(markers[:packer.next_unit]):
        packer = None  # shards whose units' statistics are lost: made again
    packed = packer.next_unit if packer is not None else 0  # units already in the shards

    def done(i: int, m: dict | None) -> bool:
        if m is None or i < packed:
            return m is not None
        if m["direct"]:  # went straight into shards after the last saved state: lost with them
            return False
        return m["file"] is None or _size(work / m["file"]) == m["size"]  # a crash can outlive an unsynced file

    todo = {i: (units[i], uids[i]) for i in mine if not done(i, markers[i])}
    converted = len(todo)
    for i in todo:
        markers[i] = None
    if final and on_error == "fail":
        for m in markers:  # a unit finished earlier under --on-error skip
            if m is not None and m["skipped"]:
                raise SourceError(m["skipped"][0]["reason"])

    bar = Progress(f"{converter.name}" + (f" [{partition}/{num_partitions}]" if partition is not None else ""),
                   len(todo), enabled=progress)
    pool = _Pool(converter, todo, work, on_error, task, min(workers, len(todo)), bar, layout,
                 window=LOOKAHEAD_UNITS * workers if final else len(units), rings=final) \
        if workers > 1 and len(todo) > 1 else None
    try:
        if not final:  # work files only
            items = iter(todo.items())
            while (item := pool.take() if pool else next(((i, *u) for i, u in items), None)) is not None:
                convert_unit_to_file(converter, *item[1:], work, on_error, task, bar.update, layout)
                bar.unit_done()
            if pool:
                pool.join()
            return ConvertResult(out, False, len(units), converted, None, time.perf_counter() - t0)
        if packer is None:
            for p in list(work.glob("shard-*.arrow")) + list(work.glob("shard-*.part")):
                p.unlink()
            packer = _Packer(work, converter.rl, shard_size, conversion)
            packer.save(0)
        for i in range(packer.next_unit, len(units)):
            if pool:
                pool.position = i
            while markers[i] is None:
                if pool is None or pool.take(i) is not None:  # next in order: straight into the shards
                    markers[i] = _convert_into_shards(converter, units[i], uids[i], work, on_error, task, bar, layout,
                                                      packer)
                    break
                if (m := pool.result(i)) is not None:
                    markers[i] = m
                elif (item := pool.take()) is not None:  # a later unit, while a worker does this one
                    j, unit, uid = item
                    markers[j] = convert_unit_to_file(converter, unit, uid, work, on_error, task, bar.update, layout)
                    bar.unit_done()
                else:
                    time.sleep(0.01)
            m, packed_file = markers[i], None
            if m.get("ring") is not None:  # from a worker's ring
                packer.add_ring(pool.rings[m["ring"]], m, work)
                pool.rings[m["ring"]].consumed(*m["region"])
                if m["spill"]:
                    (work / m["spill"]).unlink()
                markers[i] = _mark_in_shards(work, m)
            elif m["file"] and not m["direct"]:
                try:
                    packer.add_file(work / m["file"], m)
                    packed_file = work / m["file"]
                    markers[i] = _mark_in_shards(work, m)
                except DamagedWork:  # changed since its marker was written: back to the last state, convert it
                    packer.close()
                    (work / m["file"]).unlink(missing_ok=True)
                    packer = _Packer.resume(work, converter.rl, shard_size, conversion)
                    if packer is None or packer.next_unit != i:  # a cut fell inside it: make every shard again
                        (work / PACK_STATE).unlink(missing_ok=True)
                        raise _Restart from None
                    markers[i] = _convert_into_shards(converter, units[i], uids[i], work, on_error, task, bar,
                                                      layout, packer)
                    converted += 1
            packer.save(i + 1)
            if packed_file is not None:  # not kept twice: .work/ + shards stay about the output's size
                packed_file.unlink()
        packer.cut()
        packer.settle()
        packer.save(len(units))
        if pool:
            pool.join()
    finally:
        if pool:
            pool.close()
        if packer is not None:
            packer.close()
        bar.close()
        _remove_temporaries(work, [uids[i] for i in mine])

    stats, skipped, tasks = merge_stats(markers, converter.rl)
    stats["conversion"] = conversion
    if tokenizer_path:
        dest = out / TOKENIZER_NAME
        if not (dest.exists() and os.path.samefile(tokenizer_path, dest)):
            from tokenizer_kit.files import atomic_copy
            atomic_copy(tokenizer_path, dest)  # also removes what killed runs left
    for s in packer.infos:  # complete: the shards come out of .work/, the manifest last
        os.replace(work / s.name, out / s.name)
    manifest = Manifest(layout=layout.to_dict(), converter=converter.name, options=options, shards=packer.infos,
                        stats=stats, skipped=skipped, tokenizer_sha256=tok_sha, episode_spec=episode_spec,
                        tasks=sorted(tasks))
    manifest.write(out)
    shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(out, True, len(units), converted, manifest, time.perf_counter() - t0)


def _convert_into_shards(converter: Converter, unit: WorkUnit, uid: str, work: Path, on_error: str, task,
                         bar: Progress, layout: VocabLayout, packer: _Packer) -> dict:
    """Convert the next unit in order straight into the shards: no work file, no second copy."""
    stats, index = _UnitStats(), []
    for message in unit_messages(converter, unit, on_error, task, bar.update, layout, stats, index):
        packer.add(message, *index[-1][1:])
    bar.unit_done()
    return _mark(work, unit, uid, stats, index, direct=True)
