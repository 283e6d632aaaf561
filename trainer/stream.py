"""One reader of the streaming loader (one rank's one DataLoader worker): its row streams, the
samples and batches it draws, and the counters that are its whole state.

What an epoch is: each directory's units (trainer.sampling.EpochUnits: text windows that cover
every token once, RL row windows spread over each row, caption rows), dealt to the readers by the
directory's split (schemas.split). Text windows whose per-token columns are text's constants are
sliced straight from the mapped token buffers (the fast path: no per-token column is read).

Determinism and resume: the directories of batch b of a reader are drawn at once from a generator
keyed by (seed, rank, world size, reader, workers, b, 2), and the uniforms its samples use (RL
windows and prompts, caption crops) at once from one keyed by (..., b, 3); units come from the
directory's split (schemas.split). A reader's whole state is therefore a few counters (samples and batches
made, epoch and cursor of each directory's row stream); each batch travels with its reader's state,
so `GatoLoader.state_dict()` (trainer/data.py) after n batches restarts every reader exactly where it was.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from schemas.split import directory_seed, resume_rows, split_rows, unread_rows

from .batch import ActionInputNoise, CompactBatch, Sample, compact
from .mapped import mapped_mb
from .sampling import (MAX_PAIRS, EpochUnits, Part, SampleConfig, assemble, caption_parts, epoch_units, rl_parts,
                       text_parts)
from .source import DataError, ShardSource

# Mapped shard pages allowed to pile up (MB) before a reader unmaps them: keeps RSS flat as data grows.
MAPPED_BUDGET_MB = 128
RSS_CHECK_EVERY = 8  # most batches between two looks at that RSS (a look costs about a text batch's 5%)


def fresh_state(num_dirs: int) -> dict:
    return {"samples": 0, "batches": 0, "epoch": [0] * num_dirs, "cursor": [0] * num_dirs, "carry": [-1] * num_dirs}


class Streams:
    """Row streams of one reader, one per directory: assign_rows epochs, advanced by a cursor."""

    def __init__(self, ds: "GatoStream", reader: int, state: dict):
        self.ds, self.reader, self.state = ds, reader, state
        self._cache: dict[int, tuple[int, np.ndarray]] = {}
        self._carried: dict[int, np.ndarray] = {}

    def _rows(self, d: int, epoch: int) -> np.ndarray:
        hit = self._cache.get(d)
        if hit is not None and hit[0] == epoch:
            return hit[1]
        ds = self.ds
        src, units = ds.sources[d], ds.units[d]
        seed = ds.dir_seed(d)
        nw = max(1, ds.num_workers)
        resumed = (self.state.get("resume") or [None] * len(ds.sources))[d]
        if resumed is not None and epoch == resumed["epoch"]:
            # the epochs a run on another number of ranks left half-read (schemas.split), in units
            unread = unread_rows(src.split, units.per_shard, resumed["world"], resumed["workers"],
                                 [tuple(p) for p in resumed["positions"]], seed, shuffle=ds.training)
            rows = resume_rows(unread, ds.rank, ds.world_size, self.reader, ds.num_workers)[0]
        else:
            rows = split_rows(src.split, units.per_shard, ds.rank, ds.world_size, self.reader, ds.num_workers,
                              epoch, seed, shuffle=ds.training)
        if len(rows) == 0 and ds.training and units.total and resumed is None:
            # Fewer units than readers: this reader shares another reader's units rather than starving.
            idx = (ds.rank * nw + self.reader) % units.total
            rows = split_rows(src.split, units.per_shard, idx // nw, ds.world_size, idx % nw, ds.num_workers,
                              epoch, seed)
        self._cache[d] = (epoch, rows)
        if src.remote:
            src.plan(units.shards_of(rows[self.state["cursor"][d]:] if epoch == self.state["epoch"][d] else rows,
                                     src.row_starts))
        return rows

    def _carry(self, d: int) -> np.ndarray | None:
        """This reader's share of the units an earlier run with another worker count left unread
        in its epochs of directory d (GatoStream.carry_units); None once read, or when there are none."""
        carry = self.state.get("carry")
        if carry is None or carry[d] < 0:
            return None
        if d not in self._carried:
            self._carried[d] = self.ds.carry_units(d)[self.reader::max(1, self.ds.num_workers)]
        return self._carried[d]

    def take_many(self, d: int, n: int) -> np.ndarray:
        """The next n units of directory d (training: epochs roll over), as `take` n times would."""
        st, out = self.state, []
        left = self._carry(d)
        if left is not None:
            c = st["carry"][d]
            k = min(n, len(left) - c)
            out.append(left[c:c + k])
            st["carry"][d] = c + k if c + k < len(left) else -1
            n -= k
        while n > 0:
            rows = self._rows(d, st["epoch"][d])
            if st["cursor"][d] >= len(rows):
                if len(rows) == 0:
                    raise DataError(f"{self.ds.sources[d].path}: no units to read")
                st["epoch"][d] += 1
                st["cursor"][d] = 0
                continue
            c = st["cursor"][d]
            k = min(n, len(rows) - c)
            out.append(rows[c:c + k])
            st["cursor"][d] = c + k
            n -= k
        return np.concatenate(out) if len(out) != 1 else out[0]

    def take(self, d: int) -> int | None:
        """Next unit of directory d; None at the end of the (only) epoch in evaluation."""
        if self._carry(d) is not None:
            return int(self.take_many(d, 1)[0])
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
                 prompt_len: int | None, action_noise: ActionInputNoise | None = None):
        self.sources, self.tasks = sources, tasks
        self.action_noise = action_noise
        self.cfg = SampleConfig(seq_len, prompt_prob, prompt_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.num_workers, self.rank, self.world_size, self.training = num_workers, rank, world_size, training
        self.task_maps = [np.asarray([tasks.index(t) for t in s.task_names], np.int64) for s in sources]
        self.units: list[EpochUnits] = [epoch_units(s, self.cfg) for s in sources]
        vocab = max(s.layout.vocab_size for s in sources)
        # ids as they cross the worker pipe; read in this process, straight to the model's int64
        self.id_dtype = np.int64 if num_workers == 0 else np.uint16 if vocab <= 2**16 else np.int32
        self.probs = self._mixture()
        self._cum_probs = np.cumsum(self.probs).tolist()
        self.start_states: list[dict] = [fresh_state(len(sources)) for _ in range(max(1, num_workers))]
        self.transition: list[dict | None] = [None] * len(sources)  # see carry_units
        self.rotation = 0

    def _mixture(self) -> np.ndarray:
        """Chance of drawing each directory: weight / expected real tokens per sample, so that
        the tokens (not the sequences) are shared out as the weights say."""
        L1, P = self.cfg.sample_len, min(self.cfg.prompt_tokens, self.seq_len)
        per = []
        for s in self.sources:
            if s.kind == "text":  # full windows: the manifest's token count says all
                per.append(float(min(L1, s.total_tokens)))
                continue
            lens = s.row_lengths().astype(np.float64)
            if len(lens) == 0:
                per.append(0.0)
                continue
            if s.kind == "rl":
                pp = self.cfg.prompt_prob
                e = (1 - pp) * np.minimum(lens, L1).mean() + pp * (
                    np.minimum(lens, P).mean() + np.minimum(lens, L1 - P).mean())
            else:
                e = min(float(L1), MAX_PAIRS * lens.mean())
            per.append(float(e))
        w = np.asarray([s.weight / e if e > 0 else 0.0 for s, e in zip(self.sources, per, strict=True)])
        if w.sum() <= 0:
            raise DataError("no rows to read in " + ", ".join(s.path for s in self.sources))
        return w / w.sum()

    def carry_units(self, d: int) -> np.ndarray:
        """Units of directory d that the readers of a run with another worker count (`transition`,
        set by GatoLoader.load_state_dict) had not read in the epochs they were in, in epoch order:
        the new readers share them out before their own epochs begin, so no unit of those epochs
        is read twice or skipped."""
        t = self.transition[d]
        assert t is not None, "a carry is set only with a transition"
        src, units = self.sources[d], self.units[d]
        parts = []
        for e in range(min(t["epoch"]), max(t["epoch"]) + 1):
            for r in range(max(1, t["workers"])):
                rows = split_rows(src.split, units.per_shard, self.rank, self.world_size, r, t["workers"], e,
                                  self.dir_seed(d), shuffle=True)
                done = t["cursor"][r] if e == t["epoch"][r] else (len(rows) if e < t["epoch"][r] else 0)
                parts.append(rows[done:])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

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

    def draw(self, streams: Streams, reader: int, with_parts: bool = False
             ) -> list[tuple[Sample, int, list[Part] | None]]:
        """The samples of batch number state['batches'] of this reader as (sample, directory,
        parts; parts only `with_parts` for a text window): a pure function of the counters."""
        st = streams.state
        B, D = self.batch_size, len(self.sources)
        if self.training:
            dirs, units = self._plan_batch(streams, reader)
            dirs, units = dirs.tolist(), units.tolist()
        out, uniforms = [], None
        for i in range(B):
            if self.training:
                d, unit = dirs[i], units[i]
            else:  # one pass, directories taken in turn (any prefix of the pass covers every task)
                unit = None
                for k in range(D):
                    d = (st["samples"] + k) % D
                    unit = streams.take(d)
                    if unit is not None:
                        break
                if unit is None:
                    break
            if uniforms is None and self.sources[d].kind != "text":  # one draw for the batch's samples
                uniforms = self._rng(reader, st["batches"], 3).random((B, DRAWS_PER_SAMPLE))
            rng = _Uniforms(uniforms[i], self, reader, st["samples"]) if uniforms is not None else None
            out.append(self._one(streams, rng, d, unit, with_parts))
            st["samples"] += 1
        return out

    def _plan_batch(self, streams: Streams, reader: int) -> tuple[np.ndarray, np.ndarray]:
        """Training: the directory and unit of every sample of the next batch, drawn at once."""
        u = self._rng(reader, streams.state["batches"], 2).random(self.batch_size)
        dirs = np.minimum(np.searchsorted(self._cum_probs, u, side="right"), len(self.sources) - 1)
        units = np.zeros(self.batch_size, np.int64)
        for d in np.unique(dirs).tolist():
            sel = dirs == d
            units[sel] = streams.take_many(d, int(np.count_nonzero(sel)))
        return dirs, units

    def _text_batch(self, streams: Streams, dirs: np.ndarray, units: np.ndarray) -> CompactBatch | None:
        """The fast path: a training batch of text windows only, cut by offset arithmetic from the
        mapped token buffers (None when a shard's per-token columns are not text's constants)."""
        B, L, L1 = self.batch_size, self.seq_len, self.cfg.sample_len
        tokens = np.zeros((B, L1), self.id_dtype)
        lengths = np.zeros(B, np.int32)
        tasks = np.zeros(B, np.int32)
        for d in np.unique(dirs).tolist():
            src, eu = self.sources[d], self.units[d]
            sel = np.flatnonzero(dirs == d)
            g = units[sel]
            shards = np.searchsorted(eu.cum, g, side="right") - 1
            if not all(src.text_constant(s) for s in np.unique(shards).tolist()):
                return None
            a = (g - eu.cum[shards]) * L
            b = np.minimum(a + L1, src.tokens_per_shard[shards])
            view = tokens if len(sel) == B else np.zeros((len(sel), L1), self.id_dtype)
            src.fill_windows(view, shards, a, b)
            if view is not tokens:
                tokens[sel] = view
            lengths[sel] = b - a
            tasks[sel] = self.task_maps[d][src.window_tasks(shards, a)]
        streams.state["samples"] += B
        none = np.zeros(0, np.int64)
        return CompactBatch(tokens, lengths, None, None, _NO_PATCHES, np.zeros(0, np.int32), np.zeros(0, np.uint8),
                            np.zeros(0, np.uint8), tasks, none, none)

    def _one(self, streams: Streams, rng: "_Uniforms | None", d: int, unit: int, with_parts: bool
             ) -> tuple[Sample, int, list[Part] | None]:
        src, units, cfg = self.sources[d], self.units[d], self.cfg
        if src.kind == "text":
            s, j, _ = units.locate(unit)
            a = j * cfg.seq_len
            if src.text_constant(s) and not with_parts:  # the fast path: one slice of the mapped tokens
                toks = src.window(s, a, min(a + cfg.sample_len, src.tokens_per_shard[s]))
                return Sample(toks, None, None, _NO_PATCHES, _NO_POS,
                              int(self.task_maps[d][src.window_task(s, a)])), d, None
            parts = text_parts(src, unit, units, cfg.seq_len)
        else:
            assert rng is not None, "GatoStream.draw draws uniforms for every non-text sample"
            if src.kind == "rl":
                row, j, k = units.locate(unit)
                parts = rl_parts(src, row, rng, cfg, (j, k))
            else:
                parts = caption_parts(src, unit, lambda: streams.take(d), rng, cfg)
        task_row = parts[0].row if src.kind == "text" else row if src.kind == "rl" else unit
        return assemble(src, parts, int(self.task_maps[d][src.row_task(task_row)])), d, parts

    def iterate(self, reader: int) -> Iterator[tuple[int, CompactBatch, dict]]:
        state: dict = {k: (list(v) if isinstance(v, list) else v) for k, v in self.start_states[reader].items()}
        streams = Streams(self, reader, state)
        mapped_floor = mapped_mb()  # file-backed RSS at the start or after the last release
        last_mb, since_look, look_every = mapped_floor, 0, 1  # the first look learns the rate
        fast = self.training and all(s.kind == "text" for s in self.sources)
        while True:
            batch = None
            if fast:
                saved = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
                dirs, units = self._plan_batch(streams, reader)
                batch = self._text_batch(streams, dirs, units)
                if batch is None:  # a shard with other per-token columns: this batch the general way
                    state.update(saved)
            if batch is None:
                samples = [s for s, _, _ in self.draw(streams, reader)]
                if not samples:
                    return
                batch = compact(samples, self.seq_len, self.training, self._rng(reader, state["batches"], 1),
                                self.action_noise, self.id_dtype)
            state["batches"] += 1
            since_look += 1
            if since_look >= look_every:
                now = mapped_mb()
                rate = (now - last_mb) / since_look  # MB of shard pages a batch maps
                if now - mapped_floor + rate > MAPPED_BUDGET_MB:  # (or would be, after the next batch)
                    for src in self.sources:
                        src.release_pages()
                    now = mapped_floor = mapped_mb()
                # look again before the budget can be passed at that rate: random RL rows over GBs
                # of shards map ~70 MB a batch, text windows a few hundred kB
                room = MAPPED_BUDGET_MB - (now - mapped_floor)
                look_every = int(min(max(room / rate, 1), RSS_CHECK_EVERY)) if rate > 0 else RSS_CHECK_EVERY
                last_mb, since_look = now, 0
            yield reader, batch, {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
            if len(batch.lengths) < self.batch_size:
                return

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        nw = max(1, self.num_workers)
        try:
            # a CompactBatch (numpy, smallest types) crosses the worker pipe by value: measured 2-5x
            # faster than shared-memory tensors (a file and a mapping per tensor), image batches included
            yield from self.iterate((physical + self.rotation) % nw)
        except DataError as e:
            if info is None:
                raise
            # torch re-raises a worker's exception with its traceback as the message: pass the one
            # line on instead, for the main process to raise
            yield -1, str(e), None


DRAWS_PER_SAMPLE = 8  # uniforms drawn per sample with its batch (an RL sample with a prompt uses 5)


class _Uniforms:
    """A sample's share of its batch's uniform draws, handed out by `random()` (all that the
    samplers ask of a generator); past its share, a generator keyed by the sample's number."""

    __slots__ = ("u", "i", "more")

    def __init__(self, u: np.ndarray, stream: "GatoStream", reader: int, sample: int):
        self.u, self.i = u.tolist(), 0
        self.more: tuple[GatoStream, int, int] | np.random.Generator = (stream, reader, sample)

    def random(self) -> float:
        if self.i < len(self.u):
            self.i += 1
            return self.u[self.i - 1]
        if isinstance(self.more, tuple):
            stream, reader, sample = self.more
            self.more = stream._rng(reader, sample, 0)
        return float(self.more.random())


_NO_PATCHES = np.zeros((0, 768), np.uint8)
_NO_POS = np.zeros((0, 4), np.uint8)
