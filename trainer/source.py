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
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow_numpy import to_numpy
from schemas.cache import ShardCache
from schemas.errors import ReaderError
from schemas.manifest import MANIFEST_NAME, ROW_KINDS, ManifestError
from schemas.reader import RowView, ShardDir, batch_view, check_batch
from schemas.shard import ROW_COLUMNS, is_text_form, open_shard
from schemas.shard_table import column
from schemas.split import shard_row_starts
from schemas.storage import is_remote, local_path
from tokenizer_kit.errors import first_line
from tokenizer_kit.rows import step_lengths_of_rows

from .mapped import MappedShard, madvise_dontneed, mapped_region

KINDS = ROW_KINDS
MAX_MAPPED_REMOTE = 4  # shards of a remote directory kept mapped by one reader
PREFETCH = 3  # shards of a reader's plan downloaded ahead of the one it reads

__all__ = ["DataError", "RowView", "ShardSource", "KINDS"]


class DataError(ValueError):
    """Unusable loader input (bad DIR:WEIGHT, missing shard, wrong columns, a row that breaks the
    contract): one line."""


def _index_tokens(m: "MappedShard", where: str, tokens: int) -> None:
    """The shard's token stream: each batch's flat tokens, where batches and rows start, and
    whether every per-token column holds text's constants (loss 1, no local position, no patch)."""
    starts, rows, constant = [0], [np.zeros(1, np.int64)], True
    for v in m.views:
        a, b = int(v.tok_off[0]), int(v.tok_off[-1])
        m.flat.append(v.tokens[a:b])
        rows.append(v.tok_off[1:].astype(np.int64) - a + starts[-1])
        starts.append(starts[-1] + b - a)
        if constant and b > a and v.loss_mask.strides != (0,):  # (broadcast: a lean text shard)
            lm, lp = v.loss_mask[a:b], v.local_pos[a:b]
            constant = (len(lm) == b - a and len(lp) == b - a and int(lm.min()) == 1 and int(lp.min()) == -1
                        and int(lp.max()) == -1 and int(v.pt_off[-1]) == int(v.pt_off[0]))
    if starts[-1] != tokens:
        raise DataError(f"{where}: {starts[-1]} tokens, manifest.json says {tokens}")
    m.tok_starts, m.row_starts, m.constant = starts, np.concatenate(rows), constant
    if len(m.tasks) and int(m.tasks.min()) == int(m.tasks.max()):
        m.one_task = int(m.tasks[0])


class ShardSource:
    """One shard directory read memory-mapped: rows by global id (shard-major), per-row tasks.

    Opening is lazy and per process, so a source can be pickled into DataLoader workers.
    `split` is the row-split rule its readers use (schemas.split): "rows" for a local directory,
    "shards" for a remote one, so that a node downloads only its own shards.
    """

    def __init__(self, path: str, weight: float = 1.0, cache: ShardCache | None = None, subset: str | None = None):
        """`subset`: "train" or "test" reads only the shards of that split (the manifest's); None: all."""
        self.path = str(path)
        self.weight = float(weight)
        self.remote = is_remote(self.path)
        if not self.remote and not local_path(self.path).is_dir():
            raise DataError(f"{path}: not a directory")
        self.cache = cache
        try:
            self.dir = ShardDir.open(self.path, cache=cache, split=subset)
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
        # int64 arrays, not lists: 200,000 shards are 3 MB here and ~15 MB as Python ints
        self.rows_per_shard = self.manifest.shard_rows()
        self._starts = shard_row_starts(self.rows_per_shard)
        self.total_rows = int(self.rows_per_shard.sum())
        # tokens of each shard, from the manifest (checked against the shard when it is mapped)
        self.tokens_per_shard = column(self.manifest.shards, "tokens").astype(np.int64)
        self.total_tokens = int(self.manifest.total_tokens)
        self._pid: int | None = None
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
        """Map nothing yet: a shard is mapped (and its token stream indexed) when first read, in
        each process once. Tasks are the manifest's; a local directory whose manifest lists none
        is mapped whole to learn them (a shard's task names join the list in shard order)."""
        self._mapped: OrderedDict[int, MappedShard] = OrderedDict()
        self._recent: dict[int, RowView] = {}
        self._task_rows: dict = {}
        self._plan: list[int] = []
        self._names: list[str] = list(self.manifest.tasks)
        self._row_task_local: np.ndarray | None = None
        self._pid = os.getpid()
        if not self.remote and not self._names:
            self._local_tasks()

    def _local_tasks(self) -> np.ndarray:
        """Task index of every row of a local directory (maps every shard, once per process)."""
        if self._row_task_local is None:
            tasks = [self._shard(s).tasks for s in range(len(self.manifest.shards))]
            self._row_task_local = np.concatenate(tasks) if tasks else np.zeros(0, np.int32)
        return self._row_task_local

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            self._open()

    def _map(self, s: int) -> MappedShard:
        """Map shard s (downloading a remote one first); its task names join the source's list."""
        info = self.manifest.shards[s]
        try:
            # the manifest's shards are all present (checked at construction); a remote copy is
            # proven and pinned while it is mapped (schemas.cache)
            f = None if self.remote else self.dir.file(s)
            table = self.dir.table(s, full=False) if self.remote else open_shard(f, full=False)  # stored columns
        except ReaderError as e:
            raise DataError(str(e)) from None
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{self.path}/{info.name}: unreadable shard ({first_line(e)})") from None
        where = f"{self.path}/{info.name}"
        need = ["tokens", "task"] if is_text_form(table.schema) else list(ROW_COLUMNS) + ["task"]
        missing = [c for c in need if c not in table.column_names]
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
            codes.append(np.asarray(local, np.int32)[to_numpy(enc.indices)])
        if self.remote and not self.manifest.tasks:
            codes = [np.zeros(len(c), np.int32) for c in codes]  # one task: the directory's name
        views = [batch_view(b) for b in batches]
        m = MappedShard(info.name, batches, views, bounds,
                    np.concatenate(codes) if codes else np.zeros(0, np.int32),
                    Path(f) if f is not None else None, [False] * len(batches))  # None: remote
        _index_tokens(m, where, info.tokens)
        self._mapped[s] = m
        return m

    def _shard(self, s: int) -> MappedShard:
        m = self._mapped.get(s)
        if m is not None:
            if self.remote:
                self._mapped.move_to_end(s)
            return m
        # a mapped remote copy is pinned in the cache: let the oldest go first (a bounded cache
        # keeps one per reader, the room schemas.cache.check_room counts); a local directory stays mapped
        keep = 1 if self.dir.cache is not None and self.dir.cache.limit is not None else MAX_MAPPED_REMOTE
        if self.remote and len(self._mapped) >= keep:
            self._mapped.popitem(last=False)
            self._recent.clear()  # its views may point into the shard let go
        m = self._map(s)
        self._prefetch_after(s)
        return m

    def plan(self, shard: np.ndarray) -> None:
        """The shards of the units a reader is about to read, in order: a remote source downloads
        them ahead of use (the first ones now, the next while the reader reads)."""
        if not self.remote or not len(shard):
            return
        self._ensure_open()  # (a worker's first call: opening later would drop the plan)
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
                  self.manifest.shards[s].sha256, self.manifest.shards[s].bytes)
                 for s in shards if s not in self._mapped]
        self.dir.cache.prefetch(items)

    def release_pages(self) -> None:
        """Unmap the shard pages read so far (they stay in the page cache; the next read maps them
        again). Random reads map about 1 MB of file per touch on kernels with large page-cache
        folios, so without this a process's RSS creeps up to the size of the data it has read."""
        if self._pid == os.getpid():
            for m in self._mapped.values():
                if isinstance(m.region, Path):  # found once, when first released (reading the maps costs)
                    m.region = mapped_region(pa.Table.from_batches(m.batches), m.region) if m.batches else None
                if m.region is not None:
                    madvise_dontneed(*m.region)

    def _kind(self) -> str:
        if self.manifest.row_kind is not None:
            return self.manifest.row_kind
        if self.remote:
            return "text"
        mapped = [self._shard(s) for s in range(len(self.manifest.shards))]
        if any(m.batches and "num_steps" in m.batches[0].schema.names for m in mapped[:1]):
            return "rl"
        return "captions" if any(len(v.patches) for m in mapped for v in m.views) else "text"

    # --- the token stream of a text directory ------------------------------------------------------------
    @property
    def row_starts(self) -> np.ndarray:
        """First global row id of each shard, then the row count."""
        return self._starts

    def text_constant(self, s: int) -> bool:
        """Whether shard s's per-token columns are text's constants, so windows are token slices."""
        self._ensure_open()
        return self._shard(s).constant

    def window(self, s: int, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of shard s's token stream: a view of the mapped shard (a copy only when
        the range crosses a record batch)."""
        self._ensure_open()
        m = self._shard(s)
        c = bisect.bisect_right(m.tok_starts, a) - 1
        if not m.checked[c]:
            self._check(m, c)
        if b <= m.tok_starts[c + 1]:
            return m.flat[c][a - m.tok_starts[c]:b - m.tok_starts[c]]
        pieces = []
        while a < b:
            if not m.checked[c]:
                self._check(m, c)
            hi = min(b, m.tok_starts[c + 1])
            pieces.append(m.flat[c][a - m.tok_starts[c]:hi - m.tok_starts[c]])
            a, c = hi, c + 1
        return np.concatenate(pieces)

    def fill_windows(self, out: np.ndarray, shards: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        """out[i, :stops[i] - starts[i]] = tokens [starts[i], stops[i]) of shard shards[i]: the text
        fast path, one slice copy per sequence and no per-token column read."""
        self._ensure_open()
        for i, (s, a, b) in enumerate(zip(shards.tolist(), starts.tolist(), stops.tolist())):
            m = self._mapped.get(s) or self._shard(s)
            ts = m.tok_starts
            c = bisect.bisect_right(ts, a) - 1
            if b <= ts[c + 1] and m.checked[c]:
                out[i, :b - a] = m.flat[c][a - ts[c]:b - ts[c]]
            else:
                out[i, :b - a] = self.window(s, a, b)

    def window_tasks(self, shards: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Task index of the row holding each window's first token."""
        out = np.zeros(len(shards), np.int64)
        for s in np.unique(shards).tolist():
            m = self._mapped.get(s) or self._shard(s)
            if m.one_task is not None:
                out[shards == s] = m.one_task
            else:
                sel = shards == s
                out[sel] = m.tasks[np.searchsorted(m.row_starts, starts[sel], side="right") - 1]
        return out

    def window_rows(self, s: int, a: int, b: int) -> list[tuple[int, int, int]]:
        """(global row, start, stop) of the rows that tokens [a, b) of shard s's stream cover."""
        self._ensure_open()
        m = self._shard(s)
        rs = m.row_starts
        b = min(b, int(rs[-1]))
        first = int(np.searchsorted(rs, a, side="right")) - 1
        out = []
        i = first
        while i < len(rs) - 1 and rs[i] < b:
            lo, hi = max(a, int(rs[i])), min(b, int(rs[i + 1]))
            if hi > lo:
                out.append((int(self._starts[s]) + i, lo - int(rs[i]), hi - int(rs[i])))
            i += 1
        return out

    def window_task(self, s: int, a: int) -> int:
        """Task index of the row holding token a of shard s's stream."""
        m = self._shard(s)
        i = int(np.searchsorted(m.row_starts, a, side="right")) - 1
        return int(m.tasks[i])

    # --- rows ------------------------------------------------------------------------------------------
    def _locate(self, r: int) -> tuple[int, int]:
        s = int(np.searchsorted(self._starts, r, side="right")) - 1
        return s, r - int(self._starts[s])

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

    def _check(self, m: MappedShard, c: int) -> None:
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
            tokens = column(self.manifest.shards, "tokens").astype(np.float64)
            return np.repeat(tokens / np.maximum(self.rows_per_shard, 1), self.rows_per_shard)
        if self.__dict__.get("_row_lengths") is None:  # once: it travels to the workers with the source
            lens = [np.diff(v.tok_off) for s in range(len(self.manifest.shards)) for v in self._shard(s).views]
            self._row_lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        return self._row_lengths

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
            base = int(self._starts[s])
            for v, first in zip(self._shard(s).views, self._shard(s).bounds, strict=False):
                rows = v.num_rows
                if self.kind == "rl":
                    nsteps = np.diff(v.ss_off)
                    owner = np.repeat(np.arange(rows), nsteps)
                    lengths = step_lengths_of_rows(v.step_starts[v.ss_off[0]:v.ss_off[-1]], nsteps, np.diff(v.tok_off))
                else:
                    lengths, owner = np.diff(v.tok_off), np.arange(rows)
                if len(lengths) and int(lengths.max()) > best:
                    best, at = int(lengths.max()), base + first + int(owner[int(np.argmax(lengths))])
        if self.remote:  # the scan's last copy is not kept mapped (pinned in the cache) in this process
            self._mapped.clear()
            self._recent.clear()
        return best, at, None

    def row_task(self, r: int) -> int:
        """Index of row r's task in this directory's task list."""
        self._ensure_open()
        if not self.remote:
            return int(self._local_tasks()[r])
        s, i = self._locate(r)
        return int(self._shard(s).tasks[i])

    def same_task_rows(self, r: int) -> np.ndarray:
        """Sorted ids of the rows sharing row r's task that a prompt for r may come from: the whole
        directory when local, r's own shard when remote (a node reads only its own shards)."""
        self._ensure_open()
        if not self.remote:
            tasks = self._local_tasks()
            t = int(tasks[r])
            if t not in self._task_rows:
                self._task_rows[t] = np.flatnonzero(tasks == t)
            return self._task_rows[t]
        s, i = self._locate(r)
        tasks = self._shard(s).tasks
        key = (s, int(tasks[i]))
        if key not in self._task_rows:
            self._task_rows[key] = np.flatnonzero(tasks == tasks[i]) + self._starts[s]
        return self._task_rows[key]
