"""Streaming loader: shard directories -> fixed-length training batches (SPEC 5).

Shards are memory-mapped; each row is reached through zero-copy numpy views of its Arrow list
offsets and flat values, so a sample costs a few slices and a directory is never loaded.

Determinism and resume: the randomness of sample k of a reader is drawn from a generator seeded
with (seed, rank, world size, reader, workers, k), and a reader's rows come from
`sharding.assign_rows`. A reader's whole state is therefore a few counters (samples and batches
made, epoch and cursor of each directory's row stream); each batch travels with its reader's state,
so `GatoLoader.state_dict()` after n batches restarts every reader exactly where it was.
"""

from __future__ import annotations

import bisect
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.manifest import Manifest
from schemas.shard import PATCH_BYTES, ROW_COLUMNS, open_shard
from tokenizer_kit.layout import PATCH_SLOT, VocabLayout

from .batch import Batch, Sample, collate
from schemas.split import assign_rows, directory_seed

KINDS = ("rl", "captions", "text")
MAX_PAIRS = 5  # image-caption pairs concatenated into one sequence [paper]
STATE_FORMAT = "gato-loader/1"
# Mapped shard pages allowed to pile up (MB) before a reader unmaps them: keeps RSS flat as data grows.
MAPPED_BUDGET_MB = 128


class DataError(ValueError):
    """Unusable loader input (bad DIR:WEIGHT, missing shard, wrong columns): one line."""


# --- reading one directory ------------------------------------------------------------------------

@dataclass
class RowView:
    """One row as numpy views into the memory-mapped shard (no copy)."""

    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    local_pos: np.ndarray  # int16
    step_starts: np.ndarray  # int32
    patches: np.ndarray  # (P, 768) uint8
    patch_pos: np.ndarray  # (P, 4) uint8


@dataclass
class _Chunk:
    """Offsets and flat values of one record batch, all zero-copy views of the mapped file."""

    tok_off: np.ndarray
    tokens: np.ndarray
    loss_mask: np.ndarray
    local_pos: np.ndarray
    ss_off: np.ndarray
    step_starts: np.ndarray
    pt_off: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray


def _flat(arr: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list array; offsets index `values` directly."""
    values = arr.values
    if pa.types.is_boolean(values.type):  # bool masks are bit-packed: one copy per chunk
        return arr.offsets.to_numpy(), values.to_numpy(zero_copy_only=False).astype(np.uint8)
    return arr.offsets.to_numpy(), values.to_numpy()


def _chunk(batch: pa.RecordBatch) -> _Chunk:
    tok_off, tokens = _flat(batch.column("tokens"))
    _, loss_mask = _flat(batch.column("loss_mask"))
    _, local_pos = _flat(batch.column("local_pos"))
    ss_off, step_starts = _flat(batch.column("step_starts"))
    pcol = batch.column("patches")
    pvals = pcol.values
    npv = len(pvals) + pvals.offset
    patches = (np.frombuffer(pvals.buffers()[1], np.uint8, count=npv * PATCH_BYTES).reshape(npv, PATCH_BYTES)
               if npv else np.zeros((0, PATCH_BYTES), np.uint8))
    qvals = batch.column("patch_pos").values  # fixed_size_list<uint8, 4>
    nq = len(qvals) + qvals.offset
    flat_q = qvals.values.to_numpy()
    patch_pos = flat_q[:nq * 4].reshape(nq, 4) if nq else np.zeros((0, 4), np.uint8)
    return _Chunk(tok_off, tokens, loss_mask, local_pos, ss_off, step_starts, pcol.offsets.to_numpy(), patches,
                  patch_pos)


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


def parse_data_arg(item: str) -> tuple[str, float]:
    """'DIR' or 'DIR:WEIGHT' -> (dir, weight); a weight is a positive token share (default 1)."""
    head, sep, tail = item.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return item, 1.0  # a colon inside the path, no weight
        if not (math.isfinite(weight) and weight > 0):
            raise DataError(f"--data {item!r}: weight must be a positive number, got {tail!r}")
        return head, weight
    return item, 1.0


class ShardSource:
    """One shard directory read memory-mapped: rows by global id (shard-major), per-row tasks.

    Opening is lazy and per process, so a source can be pickled into DataLoader workers.
    """

    def __init__(self, path: str, weight: float = 1.0):
        self.path = str(path)
        self.weight = float(weight)
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{path}: not a directory")
        self.manifest = Manifest.read(root)
        self.layout = self.manifest.vocab_layout
        self.rows_per_shard = [int(s.rows) for s in self.manifest.shards]
        self.total_rows = sum(self.rows_per_shard)
        self.total_tokens = int(self.manifest.total_tokens)
        self._pid = None
        self._open()
        self.kind = self._kind()
        self.task_names = self._task_names()

    # --- opening -------------------------------------------------------------------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        for k in ("_tables", "_chunks", "_chunk_bounds", "_row_task_local", "_recent", "_task_rows",
                  "_regions"):
            d.pop(k, None)
        d["_pid"] = None
        return d

    def _open(self) -> None:
        """Map every shard; build per-chunk views and the row -> chunk index (a few ints per row)."""
        tables, chunks, starts, task_codes = [], [], [0], []
        root = Path(self.path)
        names: list[str] = list(self.manifest.tasks)
        for info in self.manifest.shards:
            f = root / info.name
            if not f.is_file():
                raise DataError(f"{f}: shard listed in manifest.json is missing")
            try:
                table = open_shard(f)
            except (OSError, pa.ArrowInvalid) as e:
                raise DataError(f"{f}: unreadable shard ({str(e).splitlines()[0]})") from None
            missing = [c for c in list(ROW_COLUMNS) + ["task"] if c not in table.column_names]
            if missing:
                raise DataError(f"{f}: column {missing[0]!r} is missing")
            if table.num_rows != info.rows:
                raise DataError(f"{f}: {table.num_rows} rows, manifest.json says {info.rows}")
            tables.append(table)
            for batch in table.to_batches():
                if batch.num_rows == 0:
                    continue
                chunks.append(_chunk(batch))
                starts.append(starts[-1] + batch.num_rows)
                enc = pc.dictionary_encode(batch.column("task"))
                local = []
                for name in enc.dictionary.to_pylist():
                    if name not in names:
                        names.append(name)
                    local.append(names.index(name))
                task_codes.append(np.asarray(local, np.int32)[enc.indices.to_numpy()])
        self._tables, self._chunks = tables, chunks
        self._chunk_bounds = list(starts)  # one int per record batch, for bisect
        regions = [_mapped_region(t, root / info.name) for t, info in zip(tables, self.manifest.shards, strict=True)]
        self._regions = [r for r in regions if r is not None]
        self._recent: dict[int, RowView] = {}
        self._row_task_local = np.concatenate(task_codes) if task_codes else np.zeros(0, np.int32)
        self._local_task_names = names
        self._task_rows: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def release_pages(self) -> None:
        """Unmap the shard pages read so far (they stay in the page cache; the next read maps them
        again). Random reads map about 1 MB of file per touch on kernels with large page-cache
        folios, so without this a process's RSS creeps up to the size of the data it has read."""
        if self._pid == os.getpid():
            for addr, length in self._regions:
                _madvise_dontneed(addr, length)

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            self._open()

    def _kind(self) -> str:
        if self.manifest.converter in KINDS:
            return self.manifest.converter
        if self._tables and "num_steps" in self._tables[0].column_names:
            return "rl"
        return "captions" if any(len(c.patches) for c in self._chunks) else "text"

    def _task_names(self) -> list[str]:
        return list(self._local_task_names) or [Path(self.path).name]

    # --- rows ------------------------------------------------------------------------------------------
    def row(self, r: int) -> RowView:
        """Views of row r; the few rows of the current sample are kept, as a sample asks twice."""
        if self._pid != os.getpid():
            self._open()
        hit = self._recent.get(r)
        if hit is not None:
            return hit
        c = bisect.bisect_right(self._chunk_bounds, r) - 1
        ch = self._chunks[c]
        i = r - self._chunk_bounds[c]
        a, b = ch.tok_off[i:i + 2].tolist()
        sa, sb = ch.ss_off[i:i + 2].tolist()
        pa_, pb = ch.pt_off[i:i + 2].tolist()
        view = RowView(ch.tokens[a:b], ch.loss_mask[a:b], ch.local_pos[a:b], ch.step_starts[sa:sb],
                       ch.patches[pa_:pb], ch.patch_pos[pa_:pb])
        if len(self._recent) >= 16:
            self._recent.clear()
        self._recent[r] = view
        return view

    def row_lengths(self) -> np.ndarray:
        self._ensure_open()
        return np.concatenate([np.diff(c.tok_off) for c in self._chunks]) if self._chunks else np.zeros(0, np.int64)

    def row_task(self, r: int) -> int:
        """Index of row r's task in this directory's task list."""
        self._ensure_open()
        return int(self._row_task_local[r])

    def task_rows(self, t: int) -> np.ndarray:
        """Sorted ids of the rows of task t (cached per process)."""
        self._ensure_open()
        cache = self.__dict__.setdefault("_task_rows", {})
        if t not in cache:
            cache[t] = np.flatnonzero(self._row_task_local == t)
        return cache[t]

    def other_row_same_task(self, r: int, rng: np.random.Generator) -> int:
        """A uniformly drawn other episode of row r's task (r itself when it is the only one)."""
        rows = self.task_rows(self.row_task(r))
        m = len(rows)
        if m <= 1:
            return r
        j = randint(rng, m - 1)
        if j >= int(np.searchsorted(rows, r)):
            j += 1
        return int(rows[j])


# --- building samples --------------------------------------------------------------------------------

@dataclass
class Part:
    """Tokens [start, stop) of a row; `loss=False` zeroes its loss mask (prompts)."""

    row: int
    start: int
    stop: int
    loss: bool = True
    role: str = "window"  # window | doc | pair | prompt-goal | prompt-window


def randint(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n): one double draw (Generator.integers costs 30x more per call)."""
    return min(int(rng.random() * n), n - 1)


def _patch_range(view: RowView, a: int, b: int) -> tuple[int, int]:
    """Patches of the slots in tokens [a, b): count -1 slots before a (from the shorter side)."""
    n_p = len(view.patches)
    if n_p == 0:
        return 0, 0
    n = len(view.tokens)
    if a <= n - a:
        p0 = int(np.count_nonzero(view.tokens[:a] == PATCH_SLOT))
    else:
        p0 = n_p - int(np.count_nonzero(view.tokens[a:] == PATCH_SLOT))
    return p0, p0 + int(np.count_nonzero(view.tokens[a:b] == PATCH_SLOT))


def assemble(src: ShardSource, parts: list[Part], task_id: int) -> Sample:
    """Concatenate row slices into one Sample; patches travel with their slots."""
    toks, masks, lpos, patches, ppos = [], [], [], [], []
    for p in parts:
        v = src.row(p.row)
        toks.append(v.tokens[p.start:p.stop])
        m = v.loss_mask[p.start:p.stop]
        masks.append(m if p.loss else np.zeros(len(m), np.uint8))
        lpos.append(v.local_pos[p.start:p.stop])
        p0, p1 = _patch_range(v, p.start, p.stop)
        patches.append(v.patches[p0:p1])
        ppos.append(v.patch_pos[p0:p1])
    if len(parts) == 1:
        return Sample(toks[0], masks[0], lpos[0], patches[0], ppos[0], task_id)
    return Sample(np.concatenate(toks), np.concatenate(masks), np.concatenate(lpos),
                  np.concatenate(patches), np.concatenate(ppos), task_id)


def window_start(step_starts: np.ndarray, n: int, length: int, rng: np.random.Generator) -> int:
    """A uniformly drawn timestep boundary for a window of `length` tokens of an n-token episode.

    Candidates are the boundaries up to the first one at or after n - length, so the episode's end
    can be reached; a shorter episode starts at 0.
    """
    if n <= length or len(step_starts) == 0:
        return 0
    k_max = min(int(np.searchsorted(step_starts, n - length, side="left")), len(step_starts) - 1)
    return int(step_starts[randint(rng, k_max + 1)])


def goal_start(step_starts: np.ndarray, n: int, length: int) -> int:
    """Start of the episode's end: the first boundary leaving at most `length` tokens."""
    if n <= length:
        return 0
    k = int(np.searchsorted(step_starts, n - length, side="left"))
    return int(step_starts[k]) if k < len(step_starts) else n - length


@dataclass
class SampleConfig:
    seq_len: int
    prompt_prob: float = 0.25
    prompt_len: int | None = None

    @property
    def sample_len(self) -> int:
        return self.seq_len + 1  # collate shifts: L inputs, L targets

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_len if self.prompt_len is not None else self.seq_len // 4


def rl_parts(src: ShardSource, r: int, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """A window starting on a timestep boundary, after a prompt from another episode of the task
    for `prompt_prob` of sequences (half the episode's end, half a uniform window)."""
    budget = cfg.sample_len
    parts: list[Part] = []
    if cfg.prompt_prob > 0 and rng.random() < cfg.prompt_prob:
        pr = src.other_row_same_task(r, rng)
        pv = src.row(pr)
        n, P = len(pv.tokens), min(cfg.prompt_tokens, cfg.seq_len)
        if rng.random() < 0.5:
            a, role = goal_start(pv.step_starts, n, P), "prompt-goal"
        else:
            a, role = window_start(pv.step_starts, n, P, rng), "prompt-window"
        b = min(n, a + P)
        parts.append(Part(pr, a, b, loss=False, role=role))
        budget -= b - a
    v = src.row(r)
    n = len(v.tokens)
    a = window_start(v.step_starts, n, budget, rng)
    parts.append(Part(r, a, min(n, a + budget)))
    return parts


def text_parts(src: ShardSource, first: int, take, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """A random crop of a long document, or short documents packed (each ends with end-of-text)."""
    L1 = cfg.sample_len
    n = len(src.row(first).tokens)
    if n >= L1:
        a = randint(rng, n - L1 + 1)
        return [Part(first, a, a + L1, role="doc")]
    parts, total = [Part(first, 0, n, role="doc")], n
    while total < L1:
        r = take()
        if r is None:
            break
        n = len(src.row(r).tokens)
        k = min(n, L1 - total)
        parts.append(Part(r, 0, k, role="doc"))
        total += k
    return parts


def caption_parts(src: ShardSource, first: int, take, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """Up to 5 image-caption pairs, then randomly cropped to L + 1 tokens when longer (else padded)."""
    L1 = cfg.sample_len
    lens = [len(src.row(first).tokens)]
    rows = [first]
    while len(rows) < MAX_PAIRS and sum(lens) < L1:
        r = take()
        if r is None:
            break
        rows.append(r)
        lens.append(len(src.row(r).tokens))
    total = sum(lens)
    crop = randint(rng, total - L1 + 1) if total > L1 else 0
    end = crop + min(total, L1)
    parts, at = [], 0
    for r, n in zip(rows, lens, strict=True):
        a, b = max(crop - at, 0), min(end - at, n)
        if a < b:
            parts.append(Part(r, a, b, role="pair"))
        at += n
    return parts


# --- the reader (one rank's one worker) ----------------------------------------------------------------

def _fresh_state(num_dirs: int) -> dict:
    return {"samples": 0, "batches": 0, "epoch": [0] * num_dirs, "cursor": [0] * num_dirs}


class _Streams:
    """Row streams of one reader, one per directory: assign_rows epochs, advanced by a cursor."""

    def __init__(self, ds: "GatoStream", reader: int, state: dict):
        self.ds, self.reader, self.state = ds, reader, state
        self._cache: dict[int, tuple[int, np.ndarray]] = {}

    def _rows(self, d: int, epoch: int) -> np.ndarray:
        hit = self._cache.get(d)
        if hit is not None and hit[0] == epoch:
            return hit[1]
        ds = self.ds
        src = ds.sources[d]
        seed = ds.dir_seed(d)
        nw = max(1, ds.num_workers)
        rows = assign_rows(src.rows_per_shard, ds.rank, ds.world_size, self.reader, ds.num_workers, epoch, seed,
                           shuffle=ds.training)
        if len(rows) == 0 and ds.training and src.total_rows:
            # Fewer rows than readers: this reader shares another reader's rows rather than starving.
            idx = (ds.rank * nw + self.reader) % src.total_rows
            rows = assign_rows(src.rows_per_shard, idx // nw, ds.world_size, idx % nw, ds.num_workers, epoch, seed)
        self._cache[d] = (epoch, rows)
        return rows

    def take(self, d: int) -> int | None:
        """Next row id of directory d; None at the end of the (only) epoch in evaluation."""
        st = self.state
        rows = self._rows(d, st["epoch"][d])
        if st["cursor"][d] >= len(rows):
            if not self.ds.training or len(rows) == 0:
                return None
            st["epoch"][d] += 1
            st["cursor"][d] = 0
            rows = self._rows(d, st["epoch"][d])
        r = int(rows[st["cursor"][d]])
        st["cursor"][d] += 1
        return r


class GatoStream(IterableDataset):
    """The IterableDataset: each worker is one reader and yields (reader, Batch, reader state)."""

    def __init__(self, sources: list[ShardSource], tasks: list[str], seq_len: int, batch_size: int, seed: int,
                 num_workers: int, rank: int, world_size: int, training: bool, prompt_prob: float,
                 prompt_len: int | None):
        self.sources, self.tasks = sources, tasks
        self.cfg = SampleConfig(seq_len, prompt_prob, prompt_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.num_workers, self.rank, self.world_size, self.training = num_workers, rank, world_size, training
        self.task_maps = [np.asarray([tasks.index(t) for t in s.task_names], np.int64) for s in sources]
        self.probs = self._mixture()
        self._cum_probs = np.cumsum(self.probs).tolist()
        self.start_states: list[dict] = [_fresh_state(len(sources)) for _ in range(max(1, num_workers))]
        self.rotation = 0

    def _mixture(self) -> np.ndarray:
        """Chance of drawing each directory: weight / expected real tokens per sample, so that
        the tokens (not the sequences) are shared out as the weights say."""
        L1, P = self.cfg.sample_len, min(self.cfg.prompt_tokens, self.seq_len)
        per = []
        for s in self.sources:
            lens = s.row_lengths().astype(np.float64)
            if len(lens) == 0:
                per.append(0.0)
                continue
            if s.kind == "rl":
                pp = self.cfg.prompt_prob
                e = (1 - pp) * np.minimum(lens, L1).mean() + pp * (
                    np.minimum(lens, P).mean() + np.minimum(lens, L1 - P).mean())
            elif s.kind == "captions":
                e = min(float(L1), MAX_PAIRS * lens.mean())
            else:
                e = min(float(L1), lens.sum())
            per.append(float(e))
        w = np.asarray([s.weight / e if e > 0 else 0.0 for s, e in zip(self.sources, per, strict=True)])
        if w.sum() <= 0:
            raise DataError("no rows to read in " + ", ".join(s.path for s in self.sources))
        return w / w.sum()

    def dir_seed(self, d: int) -> int:
        return directory_seed(self.seed, d)

    def _rng(self, reader: int, counter: int, tag: int) -> np.random.Generator:
        """Generator of draw `counter` of a reader: Philox keyed by (seed, rank, world size, reader,
        workers), its counter set to (0, counter, tag): a pure function, and cheap to set."""
        cache = self.__dict__.setdefault("_philox", {})
        gen = cache.get(reader)
        if gen is None or gen[2] != os.getpid():
            key = np.random.SeedSequence([self.seed, self.rank, self.world_size, reader,
                                          max(1, self.num_workers)]).generate_state(2, np.uint64)
            gen = cache[reader] = (np.random.Generator(np.random.Philox(key=key)), key, os.getpid())
        g, key, _ = gen
        g.bit_generator.state = {"bit_generator": "Philox",
                                 "state": {"counter": np.array([0, counter, tag, 0], np.uint64), "key": key},
                                 "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        return g

    def sample(self, streams: _Streams, reader: int) -> tuple[Sample, int, list[Part]] | None:
        """Sample number state['samples'] of this reader: a pure function of the counters."""
        st = streams.state
        rng = self._rng(reader, st["samples"], 0)
        if self.training:
            d = min(bisect.bisect_right(self._cum_probs, rng.random()), len(self.sources) - 1)
            first = streams.take(d)
        else:  # one pass, directories taken in turn (any prefix of the pass covers every task)
            D, first = len(self.sources), None
            for i in range(D):
                d = (st["samples"] + i) % D
                first = streams.take(d)
                if first is not None:
                    break
            if first is None:
                return None
        src = self.sources[d]
        if src.kind == "rl":
            parts = rl_parts(src, first, rng, self.cfg)
        elif src.kind == "captions":
            parts = caption_parts(src, first, lambda: streams.take(d), rng, self.cfg)
        else:
            parts = text_parts(src, first, lambda: streams.take(d), rng, self.cfg)
        st["samples"] += 1
        return assemble(src, parts, int(self.task_maps[d][src.row_task(first)])), d, parts

    def iterate(self, reader: int) -> Iterator[tuple[int, Batch, dict]]:
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in self.start_states[reader].items()}
        streams = _Streams(self, reader, state)
        mapped_floor = _mapped_mb()  # file-backed RSS at the start or after the last release
        while True:
            samples = []
            while len(samples) < self.batch_size:
                out = self.sample(streams, reader)
                if out is None:
                    break
                samples.append(out[0])
            if not samples:
                return
            batch = collate(samples, self.seq_len, self.training, self._rng(reader, state["batches"], 1))
            state["batches"] += 1
            if _mapped_mb() - mapped_floor > MAPPED_BUDGET_MB:
                for src in self.sources:
                    src.release_pages()
                mapped_floor = _mapped_mb()
            yield reader, batch, {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
            if len(samples) < self.batch_size:
                return

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        nw = max(1, self.num_workers)
        for reader, batch, state in self.iterate((physical + self.rotation) % nw):
            if info is not None:  # numpy crosses the worker pipe by value: measured 2-5x faster than
                # shared-memory tensors (a file and a mapping per tensor), image batches included
                batch = {f.name: getattr(batch, f.name).numpy() for f in fields(batch)}
            yield reader, batch, state


def _identity(x):
    return x


class GatoLoader:
    """Iterable of Batch over shard directories; infinite in training, one pass in evaluation.

    `.layout`, `.tasks` (Batch.task_id indexes it), `.state_dict()` / `.load_state_dict()`.
    """

    def __init__(self, stream: GatoStream, layout: VocabLayout, data: list[str]):
        self.stream, self.layout, self.data = stream, layout, list(data)
        self.tasks = list(stream.tasks)
        self.num_workers = stream.num_workers
        self._consumed = 0
        self._states = [dict(s) for s in stream.start_states]
        self._pass_start = (0, list(self._states))  # where every evaluation pass begins

    @property
    def sources(self) -> list[ShardSource]:
        return self.stream.sources

    @property
    def mixture(self) -> dict[str, float]:
        """Chance of each directory per sequence (from the weights, counted in tokens)."""
        return {s.path: float(p) for s, p in zip(self.stream.sources, self.stream.probs, strict=True)}

    def __iter__(self) -> Iterator[Batch]:
        """Training: carries on from the last batch handed out (or the loaded state).
        Evaluation: every iter() is the same one pass, from the start (or the loaded state)."""
        nw = max(1, self.num_workers)
        if not self.stream.training:
            self._consumed, self._states = self._pass_start[0], list(self._pass_start[1])
        self.stream.start_states = [dict(s) for s in self._states]
        self.stream.rotation = self._consumed % nw
        if self.num_workers == 0:
            it = self.stream.iterate(0)
        else:
            it = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            prefetch_factor=2)
        for reader, batch, state in it:
            if isinstance(batch, dict):
                batch = Batch(**{k: torch.from_numpy(v) for k, v in batch.items()})
            self._states[reader] = state
            self._consumed += 1
            yield batch

    def trace(self, num_samples: int, reader: int = 0) -> list[tuple[Sample, int, list[Part]]]:
        """The first samples of a reader as (sample, directory index, row parts), for inspection:
        the same pure function the batches come from; the loader's own position is untouched."""
        streams = _Streams(self.stream, reader, _fresh_state(len(self.sources)))
        out = []
        while len(out) < num_samples:
            s = self.stream.sample(streams, reader)
            if s is None:
                break
            out.append(s)
        return out

    def state_dict(self) -> dict:
        """Counters only (plain Python types): loads with torch.load(weights_only=True)."""
        s = self.stream
        return {"format": STATE_FORMAT, "consumed": self._consumed, "seed": s.seed, "rank": s.rank,
                "world_size": s.world_size, "num_workers": s.num_workers, "seq_len": s.seq_len,
                "batch_size": s.batch_size, "training": s.training, "data": list(self.data),
                "readers": [{k: (list(v) if isinstance(v, list) else v) for k, v in st.items()} for st in self._states]}

    def load_state_dict(self, sd: dict) -> None:
        """Resume exactly where `sd` was taken; the run's shape must be the same."""
        if sd.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state of format {sd.get('format')!r}, expected {STATE_FORMAT!r}")
        s = self.stream
        for key in ("seed", "rank", "world_size", "num_workers", "seq_len", "batch_size", "training", "weights"):
            # Directories may have moved; their number and weights must not have changed.
            mine = [parse_data_arg(x)[1] for x in self.data] if key == "weights" else getattr(s, key)
            theirs = [parse_data_arg(x)[1] for x in sd["data"]] if key == "weights" else sd[key]
            if mine != theirs:
                raise ValueError(f"loader state was saved with {key}={theirs!r}, this loader has {key}={mine!r}")
        readers = sd["readers"]
        if len(readers) != max(1, s.num_workers) or any(len(r["epoch"]) != len(s.sources) for r in readers):
            raise ValueError("loader state does not match this loader's readers and directories")
        self._states = [{k: (list(v) if isinstance(v, list) else int(v)) for k, v in r.items()} for r in readers]
        self._consumed = int(sd["consumed"])
        self._pass_start = (self._consumed, list(self._states))


def build_loader(data: list[str], seq_len: int, batch_size: int, seed: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, training: bool = True, prompt_prob: float = 0.25,
                 prompt_len: int | None = None, layout: VocabLayout | None = None) -> GatoLoader:
    """Loader over `data` ("DIR" or "DIR:WEIGHT"); refuses directories whose layout differs
    from each other's or from `layout` (the model's).

    rank/world_size left at 0/1 inside an initialised torch.distributed job are taken from it,
    so that ranks never read the same rows by accident.
    """
    if (rank, world_size) == (0, 1) and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if not data:
        raise DataError("no shard directories given (--data DIR[:WEIGHT] ...)")
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside [0, {world_size})")
    if not 0.0 <= prompt_prob <= 1.0:
        raise DataError(f"prompt probability must be in [0, 1], got {prompt_prob}")
    if prompt_len is not None and not 0 < prompt_len <= seq_len:
        raise DataError(f"prompt length must be in [1, seq_len={seq_len}], got {prompt_len}")
    sources = []
    for item in data:
        path, weight = parse_data_arg(item)
        src = ShardSource(path, weight)
        if layout is not None:
            src.layout.check_same(layout, what=f"shard directory {path}", against="model")
        elif sources:
            src.layout.check_same(sources[0].layout, what=f"shard directory {path}",
                                  against=f"shard directory {sources[0].path}")
        sources.append(src)
    tasks: list[str] = []
    for s in sources:
        tasks += [t for t in s.task_names if t not in tasks]
    stream = GatoStream(sources, tasks, seq_len, batch_size, seed, num_workers, rank, world_size, training,
                        prompt_prob, prompt_len)
    return GatoLoader(stream, layout if layout is not None else sources[0].layout, list(data))
