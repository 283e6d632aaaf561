"""One shard directory as the loader reads it: rows by global id, as numpy views of mapped shards.

A local directory is mapped whole and in place (zero-copy, no cache). A remote one (an fsspec URL)
is read shard by shard through a ShardCache: a shard is downloaded (sha256-checked) and mapped when
a reader first needs it, the next ones in the reader's plan download in the background, and only
a few stay mapped. Whatever is known about all rows of a remote directory comes from its manifest,
so no process downloads a shard it does not read.

Every record batch is checked against the contract (schemas.reader.check_batch) the first time a
row of it is read, so bad ids, lengths or offsets stop the run with one line naming shard, row
and column instead of training on them.
"""

from __future__ import annotations

import bisect
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.cache import ShardCache
from schemas.errors import ReaderError
from schemas.manifest import MANIFEST_NAME, ManifestError
from schemas.reader import BatchView, RowView, ShardDir, batch_view, check_batch
from schemas.shard import ROW_COLUMNS, open_shard
from schemas.storage import is_remote, local_path

KINDS = ("rl", "captions", "text")
MAX_MAPPED_REMOTE = 4  # shards of a remote directory kept mapped by one reader
PREFETCH = 3  # shards of a reader's plan downloaded ahead of the one it reads

__all__ = ["DataError", "RowView", "ShardSource", "KINDS"]


class DataError(ValueError):
    """Unusable loader input (bad DIR:WEIGHT, missing shard, wrong columns, a row that breaks the
    contract): one line."""


# --- releasing mapped pages -------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LIBC = None


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path`, from /proc/self/maps."""
    target, out = str(path.resolve()), []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == target:
                    a, b = parts[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:
        pass
    return out


def _mapped_region(table: pa.Table, path: Path) -> tuple[int, int] | None:
    """Page-aligned (address, length) span of a table's buffers, only when it lies inside a
    mapping of the shard file: never heap memory, which MADV_DONTNEED would wipe."""
    lo, hi = None, None
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    lo = buf.address if lo is None else min(lo, buf.address)
                    hi = buf.address + buf.size if hi is None else max(hi, buf.address + buf.size)
    if lo is None:
        return None
    lo -= lo % _PAGE
    if not any(a <= lo and hi <= b for a, b in _file_mappings(path)):
        return None
    return lo, hi - lo


def _mapped_mb() -> float:
    """File-backed resident memory of this process (statm `shared`), cheap to read every batch."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[2]) * _PAGE / 2**20
    except OSError:
        return 0.0


def _madvise_dontneed(addr: int, length: int) -> None:
    """madvise(MADV_DONTNEED) on a read-only file mapping: drops the page-table entries only;
    the data is read again from the page cache on the next touch. Linux only; a no-op elsewhere."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        import ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _LIBC.madvise(addr, length, 4)  # MADV_DONTNEED


# --- one mapped shard ---------------------------------------------------------------------------------

@dataclass
class _Mapped:
    """A mapped shard: its record batches, their views, row starts and contract checks."""

    name: str
    batches: list[pa.RecordBatch]
    views: list[BatchView]
    bounds: list[int]  # first row of each batch, then the shard's row count (for bisect)
    tasks: np.ndarray  # task index (into the source's list) of every row
    region: tuple[int, int] | None
    checked: list[bool] = field(default_factory=list)


class ShardSource:
    """One shard directory read memory-mapped: rows by global id (shard-major), per-row tasks.

    Opening is lazy and per process, so a source can be pickled into DataLoader workers.
    `split` is the row-split rule its readers use (schemas.split): "rows" for a local directory,
    "shards" for a remote one, so that a node downloads only its own shards.
    """

    def __init__(self, path: str, weight: float = 1.0, cache: ShardCache | None = None):
        self.path = str(path)
        self.weight = float(weight)
        self.remote = is_remote(self.path)
        if not self.remote and not local_path(self.path).is_dir():
            raise DataError(f"{path}: not a directory")
        self.cache = cache
        try:
            self.dir = ShardDir.open(self.path, cache=cache)
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
        if self.dir.manifest is None:
            raise ManifestError(f"{self.path}/{MANIFEST_NAME}: no manifest (not a shard directory, or its "
                                "conversion has not finished)")
        self.manifest = self.dir.manifest
        if self.dir.missing:
            raise DataError(f"{self.path}/{self.dir.missing[0]}: shard listed in manifest.json is missing")
        self.layout = self.manifest.vocab_layout
        self.split = "shards" if self.remote else "rows"
        self.rows_per_shard = self.manifest.shard_rows().tolist()  # vectorised for a 200,000-shard table
        self._starts = np.concatenate([[0], np.cumsum(self.rows_per_shard)]).astype(np.int64).tolist()
        self.total_rows = sum(self.rows_per_shard)
        self.total_tokens = int(self.manifest.total_tokens)
        self._pid = None
        self._open()
        self.kind = self._kind()
        self.task_names = list(self._names) or [Path(self.path).name]

    # --- opening -------------------------------------------------------------------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        for k in ("_mapped", "_recent", "_task_rows", "_row_task_local"):
            d.pop(k, None)
        d["_pid"] = None
        return d

    def _open(self) -> None:
        """Local: map every shard now (their views and per-row tasks are a few ints a row).
        Remote: map nothing yet; tasks are the manifest's."""
        self._mapped: OrderedDict[int, _Mapped] = OrderedDict()
        self._recent: dict[int, RowView] = {}
        self._task_rows: dict = {}
        self._plan: list[int] = []
        self._names: list[str] = list(self.manifest.tasks)
        if not self.remote:
            for s in range(len(self.manifest.shards)):
                self._map(s)
            self._row_task_local = (np.concatenate([m.tasks for m in self._mapped.values()]) if self._mapped
                                    else np.zeros(0, np.int32))
        self._pid = os.getpid()

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            self._open()

    def _map(self, s: int) -> _Mapped:
        """Map shard s (downloading a remote one first); its task names join the source's list."""
        info = self.manifest.shards[s]
        try:
            f = self.dir.file(s)  # the manifest's shards are all present (checked at construction)
            table = open_shard(f)
        except ReaderError as e:
            raise DataError(str(e)) from None
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{self.path}/{info.name}: unreadable shard ({str(e).splitlines()[0]})") from None
        where = f"{self.path}/{info.name}"
        missing = [c for c in list(ROW_COLUMNS) + ["task"] if c not in table.column_names]
        if missing:
            raise DataError(f"{where}: column {missing[0]!r} is missing")
        if table.num_rows != info.rows:
            raise DataError(f"{where}: {table.num_rows} rows, manifest.json says {info.rows}")
        batches = [b for b in table.to_batches() if b.num_rows]
        bounds, codes = [0], []
        for batch in batches:
            bounds.append(bounds[-1] + batch.num_rows)
            enc = pc.dictionary_encode(batch.column("task"))
            local = []
            for name in enc.dictionary.to_pylist():
                if name not in self._names:
                    if self.remote and self.manifest.tasks:  # the task list was fixed from the manifest
                        raise DataError(f"{where}: task {name!r} is not among the manifest's tasks")
                    self._names.append(name)
                local.append(self._names.index(name))
            codes.append(np.asarray(local, np.int32)[enc.indices.to_numpy()])
        if self.remote and not self.manifest.tasks:
            codes = [np.zeros(len(c), np.int32) for c in codes]  # one task: the directory's name
        m = _Mapped(info.name, batches, [batch_view(b) for b in batches], bounds,
                    np.concatenate(codes) if codes else np.zeros(0, np.int32),
                    _mapped_region(table, f) if not self.remote else None, [False] * len(batches))
        self._mapped[s] = m
        return m

    def _shard(self, s: int) -> _Mapped:
        m = self._mapped.get(s)
        if m is not None:
            if self.remote:
                self._mapped.move_to_end(s)
            return m
        m = self._map(s)
        if len(self._mapped) > MAX_MAPPED_REMOTE:
            self._mapped.popitem(last=False)
            self._recent.clear()  # its views may point into the shard let go
        self._prefetch_after(s)
        return m

    def plan(self, rows: np.ndarray) -> None:
        """The rows a reader is about to read, in order: a remote source downloads their shards
        ahead of use (the first ones now, the next while the reader reads)."""
        if not self.remote or not len(rows):
            return
        self._ensure_open()  # (a worker's first call: opening later would drop the plan)
        shard = np.searchsorted(np.asarray(self._starts), rows, side="right") - 1
        _, first = np.unique(shard, return_index=True)
        self._plan = shard[np.sort(first)].tolist()
        self._prefetch(self._plan[:PREFETCH])

    def _prefetch_after(self, s: int) -> None:
        if self.remote and s in self._plan:
            k = self._plan.index(s)
            self._prefetch(self._plan[k + 1:k + 1 + PREFETCH])

    def _prefetch(self, shards: list[int]) -> None:
        if self.dir.cache is None:
            return
        items = [(f"{self.path}/{self.manifest.shards[s].name}", self.manifest.shards[s].name,
                  self.manifest.shards[s].sha256) for s in shards if s not in self._mapped]
        self.dir.cache.prefetch(items)

    def release_pages(self) -> None:
        """Unmap the shard pages read so far (they stay in the page cache; the next read maps them
        again). Random reads map about 1 MB of file per touch on kernels with large page-cache
        folios, so without this a process's RSS creeps up to the size of the data it has read."""
        if self._pid == os.getpid():
            for m in self._mapped.values():
                if m.region is not None:
                    _madvise_dontneed(*m.region)

    def _kind(self) -> str:
        if self.manifest.converter in KINDS:
            return self.manifest.converter
        if self.remote:
            return "rl" if self.manifest.episode_spec else "text"
        mapped = list(self._mapped.values())
        if any(m.batches and "num_steps" in m.batches[0].schema.names for m in mapped[:1]):
            return "rl"
        return "captions" if any(len(v.patches) for m in mapped for v in m.views) else "text"

    # --- rows ------------------------------------------------------------------------------------------
    def _locate(self, r: int) -> tuple[int, int]:
        s = bisect.bisect_right(self._starts, r) - 1
        return s, r - self._starts[s]

    def row(self, r: int) -> RowView:
        """Views of row r; the few rows of the current sample are kept, as a sample asks twice."""
        if self._pid != os.getpid():
            self._open()
        hit = self._recent.get(r)
        if hit is not None:
            return hit
        s, i = self._locate(r)
        m = self._shard(s)
        c = bisect.bisect_right(m.bounds, i) - 1
        if not m.checked[c]:
            self._check(m, c)
        view = m.views[c].row(i - m.bounds[c])
        if len(self._recent) >= 16:
            self._recent.clear()
        self._recent[r] = view
        return view

    def _check(self, m: _Mapped, c: int) -> None:
        """The contract check of record batch c of a shard, once: a problem stops the run."""
        problem = check_batch(m.batches[c], self.layout)
        if problem is not None:
            where = f"{self.path}/{m.name}"
            if problem.row is None:
                rows = f"rows {m.bounds[c]}..{m.bounds[c + 1] - 1}"
                raise DataError(f"{where}: {rows}, column {problem.column}: {problem.reason}")
            sid = f" ({problem.source_id})" if problem.source_id else ""
            raise DataError(f"{where}: row {m.bounds[c] + problem.row}{sid}, column {problem.column}: "
                            f"{problem.reason}")
        m.checked[c] = True

    def row_lengths(self) -> np.ndarray:
        """Tokens of every row. A remote directory's come from its manifest (each row of a shard
        counted at the shard's mean), so that no process downloads shards to weigh the mixture."""
        self._ensure_open()
        if self.remote:
            return np.repeat(np.asarray([s.tokens / s.rows if s.rows else 0.0 for s in self.manifest.shards]),
                             self.rows_per_shard)
        lens = [np.diff(v.tok_off) for m in self._mapped.values() for v in m.views]
        return np.concatenate(lens) if lens else np.zeros(0, np.int64)

    def longest_unit(self) -> tuple[int, int | None, str | None]:
        """(tokens, row, source id) of the longest piece a sequence must hold whole: a timestep of
        an RL row, a whole image-caption row; (0, None, None) for text. From the manifest's
        statistics when the converter recorded them, else by scanning the rows' step starts."""
        if self.kind == "text":
            return 0, None, None
        rec = self.manifest.typed_stats.longest_unit
        if rec is not None:
            return rec.tokens, rec.row, rec.source_id
        best, at = 0, None
        for s in range(len(self.rows_per_shard)):
            base = self._starts[s]
            for v, first in zip(self._shard(s).views, self._shard(s).bounds, strict=False):
                rows = v.num_rows
                if self.kind == "rl":
                    nsteps = np.diff(v.ss_off)
                    starts = v.step_starts[v.ss_off[0]:v.ss_off[-1]].astype(np.int64)
                    owner = np.repeat(np.arange(rows), nsteps)
                    ends = np.append(starts[1:], 0)
                    last = np.cumsum(nsteps) - 1  # each row's last step ends at the row's end
                    ends[last[nsteps > 0]] = np.diff(v.tok_off)[nsteps > 0]
                    lengths = ends - starts
                else:
                    lengths, owner = np.diff(v.tok_off), np.arange(rows)
                if len(lengths) and int(lengths.max()) > best:
                    best, at = int(lengths.max()), base + first + int(owner[int(np.argmax(lengths))])
        return best, at, None

    def row_task(self, r: int) -> int:
        """Index of row r's task in this directory's task list."""
        self._ensure_open()
        if not self.remote:
            return int(self._row_task_local[r])
        s, i = self._locate(r)
        return int(self._shard(s).tasks[i])

    def same_task_rows(self, r: int) -> np.ndarray:
        """Sorted ids of the rows sharing row r's task that a prompt for r may come from: the whole
        directory when local, r's own shard when remote (a node reads only its own shards)."""
        self._ensure_open()
        if not self.remote:
            t = int(self._row_task_local[r])
            if t not in self._task_rows:
                self._task_rows[t] = np.flatnonzero(self._row_task_local == t)
            return self._task_rows[t]
        s, i = self._locate(r)
        tasks = self._shard(s).tasks
        key = (s, int(tasks[i]))
        if key not in self._task_rows:
            self._task_rows[key] = np.flatnonzero(tasks == tasks[i]) + self._starts[s]
        return self._task_rows[key]
