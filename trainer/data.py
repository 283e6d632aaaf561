"""Streaming loader: shard directories -> fixed-length training batches (SPEC 5).

Reading a directory is trainer/source.py (rows as zero-copy views of mapped shards, local or
streamed from object storage); cutting sequences from rows is trainer/sampling.py; this module is
the torch side: the mixture of directories, the readers (one per rank and DataLoader worker), and
their resume state.

What an epoch is: each directory's units (trainer.sampling.EpochUnits: text windows that cover
every token once, RL row windows spread over each row, caption rows), dealt to the readers by the
directory's split (schemas.split). Text windows whose per-token columns are text's constants are
sliced straight from the mapped token buffers (the fast path: no per-token column is read).

Determinism and resume: the directories of batch b of a reader are drawn at once from a generator
keyed by (seed, rank, world size, reader, workers, b, 2), and the uniforms its samples use (RL
windows and prompts, caption crops) at once from one keyed by (..., b, 3); units come from the
directory's split (schemas.split). A reader's whole state is therefore a few counters (samples and batches
made, epoch and cursor of each directory's row stream); each batch travels with its reader's state,
so `GatoLoader.state_dict()` after n batches restarts every reader exactly where it was.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.cache import ShardCache
from schemas.split import directory_seed, resume_rows, split_rows, unread_rows
from tokenizer_kit.layout import VocabLayout

from .batch import ActionInputNoise, Batch, CompactBatch, Sample, compact, expand
from .sampling import (MAX_PAIRS, EpochUnits, Part, SampleConfig, assemble, caption_parts, epoch_units, rl_parts,
                       text_parts)
from .source import DataError, ShardSource, _mapped_mb

STATE_FORMAT = "gato-loader/1"
# Mapped shard pages allowed to pile up (MB) before a reader unmaps them: keeps RSS flat as data grows.
MAPPED_BUDGET_MB = 128
RSS_CHECK_EVERY = 8  # batches between two looks at that RSS (a look costs about a text batch's 5%)


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


# --- the reader (one rank's one worker) ----------------------------------------------------------------

def _fresh_state(num_dirs: int) -> dict:
    return {"samples": 0, "batches": 0, "epoch": [0] * num_dirs, "cursor": [0] * num_dirs, "carry": [-1] * num_dirs}


class _Streams:
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
        self.start_states: list[dict] = [_fresh_state(len(sources)) for _ in range(max(1, num_workers))]
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

    def draw(self, streams: _Streams, reader: int, with_parts: bool = False
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

    def _plan_batch(self, streams: _Streams, reader: int) -> tuple[np.ndarray, np.ndarray]:
        """Training: the directory and unit of every sample of the next batch, drawn at once."""
        u = self._rng(reader, streams.state["batches"], 2).random(self.batch_size)
        dirs = np.minimum(np.searchsorted(self._cum_probs, u, side="right"), len(self.sources) - 1)
        units = np.zeros(self.batch_size, np.int64)
        for d in np.unique(dirs).tolist():
            sel = dirs == d
            units[sel] = streams.take_many(d, int(np.count_nonzero(sel)))
        return dirs, units

    def _text_batch(self, streams: _Streams, dirs: np.ndarray, units: np.ndarray) -> CompactBatch | None:
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
            b = np.minimum(a + L1, np.asarray(src.tokens_per_shard, np.int64)[shards])
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

    def _one(self, streams: _Streams, rng: "_Uniforms | None", d: int, unit: int, with_parts: bool
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
            if src.kind == "rl":
                row, j, k = units.locate(unit)
                parts = rl_parts(src, row, rng, cfg, (j, k))
            else:
                parts = caption_parts(src, unit, lambda: streams.take(d), rng, cfg)
        task_row = parts[0].row if src.kind == "text" else row if src.kind == "rl" else unit
        return assemble(src, parts, int(self.task_maps[d][src.row_task(task_row)])), d, parts

    def iterate(self, reader: int) -> Iterator[tuple[int, CompactBatch, dict]]:
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in self.start_states[reader].items()}
        streams = _Streams(self, reader, state)
        mapped_floor = _mapped_mb()  # file-backed RSS at the start or after the last release
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
            if state["batches"] % RSS_CHECK_EVERY == 0 and _mapped_mb() - mapped_floor > MAPPED_BUDGET_MB:
                for src in self.sources:
                    src.release_pages()
                mapped_floor = _mapped_mb()
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
        self.more = (stream, reader, sample)

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

    def epoch_lines(self) -> list[str]:
        """Tokens one epoch of each directory delivers at this seq_len (schemas.split.epoch_tokens)."""
        from schemas.split import epoch_tokens
        out = []
        for src in self.sources:
            e = epoch_tokens(src.kind, src.tokens_per_shard, None if src.kind == "text" else src.row_lengths(),
                             self.stream.seq_len)
            d = e["directory_tokens"] or 1
            what = (f"{e['distinct_targets']:,} of {e['directory_tokens']:,} tokens as targets "
                    f"({100 * e['distinct_targets'] / d:.2f}%)" if e["distinct_targets"] is not None else
                    f"windows holding {e['tokens']:,} tokens for {e['directory_tokens']:,} "
                    f"({100 * e['tokens'] / d:.1f}%, overlaps counted)")
            out.append(f"  epoch of {src.path}: {e['sequences']:,} sequences, {what}")
        return out

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
            if reader < 0:
                raise DataError(batch)
            self._states[reader] = state
            self._consumed += 1
            yield expand(batch)

    def trace(self, num_samples: int, reader: int = 0) -> list[tuple[Sample, int, list[Part]]]:
        """The first samples of a reader as (sample, directory index, row parts), for inspection:
        the same pure function the batches come from; the loader's own position is untouched."""
        streams = _Streams(self.stream, reader, _fresh_state(len(self.sources)))
        out = []
        while len(out) < num_samples:
            items = self.stream.draw(streams, reader, with_parts=True)
            out += items
            streams.state["batches"] += 1
            if len(items) < self.stream.batch_size:
                break
        return out[:num_samples]

    def state_dict(self) -> dict:
        """Counters only (plain Python types): loads with torch.load(weights_only=True)."""
        s = self.stream
        return {"format": STATE_FORMAT, "consumed": self._consumed, "seed": s.seed, "rank": s.rank,
                "world_size": s.world_size, "num_workers": s.num_workers, "seq_len": s.seq_len,
                "batch_size": s.batch_size, "training": s.training, "data": list(self.data),
                "readers": [{k: (list(v) if isinstance(v, list) else v) for k, v in st.items()} for st in self._states],
                "transition": [None if t is None or all(st["carry"][d] < 0 for st in self._states)  # (carried)
                               else {k: (list(v) if isinstance(v, list) else v) for k, v in t.items()}
                               for d, t in enumerate(s.transition)]}

    def load_elastic(self, states: list[dict]) -> None:
        """Resume from the loader states of every rank of a run with another number of ranks (and
        perhaps workers): no unit of the epochs it left half-read is read twice or skipped (the new readers
        share out what its readers had not read, schemas.split.resume_rows); later epochs follow
        this run's own split. Sample randomness restarts (it is keyed by rank and world size)."""
        s = self.stream
        for sd in states:
            if sd.get("format") != STATE_FORMAT:
                raise ValueError(f"loader state of format {sd.get('format')!r}, expected {STATE_FORMAT!r}")
            for key in ("seed", "seq_len", "batch_size", "training"):
                if sd[key] != getattr(s, key):
                    raise ValueError(f"loader state was saved with {key}={sd[key]!r}, this loader has "
                                     f"{key}={getattr(s, key)!r}")
            if [parse_data_arg(x)[1] for x in sd["data"]] != [parse_data_arg(x)[1] for x in self.data]:
                raise ValueError("loader state was saved with other --data weights")
        world, workers = len(states), states[0]["num_workers"]
        readers = [r for sd in sorted(states, key=lambda sd: sd["rank"]) for r in sd["readers"]]
        if [sd["rank"] for sd in sorted(states, key=lambda sd: sd["rank"])] != list(range(world)) \
                or len(readers) != world * max(1, workers) or any(len(r["epoch"]) != len(s.sources) for r in readers):
            raise ValueError("loader states do not make a whole run (every rank's readers and directories)")
        for d in range(len(s.sources)):  # a chain of changes inside one epoch is not supported: say so
            spec = [r.get("resume") and r["resume"][d] for r in readers]
            if any(p and r["epoch"][d] == p["epoch"] for p, r in zip(spec, readers, strict=True)):
                raise ValueError(f"the run changed its number of ranks before, and has not finished the epoch that "
                                 f"left half-read; resume on {world} ranks until the epoch after "
                                 f"{max(p['epoch'] for p in spec if p)} starts")
        if any(c >= 0 for r in readers for c in r.get("carry") or []):
            raise ValueError("the run changed its number of workers before, and has not finished the units it "
                             f"carried over; resume on {world} ranks until they are read")
        s.transition = [None] * len(s.sources)
        fresh = _fresh_state(len(s.sources))
        fresh["resume"] = []
        for d in range(len(s.sources)):
            positions = [[int(r["epoch"][d]), int(r["cursor"][d])] for r in readers]
            last = max(p[0] for p in positions)
            fresh["epoch"][d] = last  # the resume rows stand for epochs up to `last`; then last + 1
            fresh["resume"].append({"epoch": last, "world": world, "workers": workers, "positions": positions})
        self._states = [{k: [dict(x) if isinstance(x, dict) else x for x in v] if isinstance(v, list) else v
                         for k, v in fresh.items()} for _ in range(max(1, s.num_workers))]
        self._consumed = 0
        self._pass_start = (0, list(self._states))

    def load_state_dict(self, sd: dict) -> None:
        """Resume exactly where `sd` was taken; the run's shape must be the same, but for the
        worker count in training: then the units the old readers had not read in their epochs
        are shared out among the new ones first (GatoStream.carry_units), so every unit of those
        epochs is still read once, and the new readers' own epochs follow."""
        if sd.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state of format {sd.get('format')!r}, expected {STATE_FORMAT!r}")
        s = self.stream
        pending = [t for t in sd.get("transition") or [] if t is not None]
        if sd.get("num_workers") != s.num_workers and s.training and sd.get("training") and not pending:
            self._load_other_workers(sd)
            return
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
        for st in self._states:  # (a state from before carries existed)
            st.setdefault("carry", [-1] * len(s.sources))
        s.transition = [None if t is None else dict(t) for t in sd.get("transition") or [None] * len(s.sources)]
        self._consumed = int(sd["consumed"])
        self._pass_start = (self._consumed, list(self._states))

    def _load_other_workers(self, sd: dict) -> None:
        s = self.stream
        for key in ("seed", "rank", "world_size", "seq_len", "batch_size", "weights"):
            mine = [parse_data_arg(x)[1] for x in self.data] if key == "weights" else getattr(s, key)
            theirs = [parse_data_arg(x)[1] for x in sd["data"]] if key == "weights" else sd[key]
            if mine != theirs:
                raise ValueError(f"loader state was saved with {key}={theirs!r}, this loader has {key}={mine!r}")
        old = sd["readers"]
        D = len(s.sources)
        if len(old) != max(1, sd["num_workers"]) or any(len(r["epoch"]) != D for r in old):
            raise ValueError("loader state does not match its worker count and this loader's directories")
        s.transition = [{"workers": int(sd["num_workers"]), "epoch": [int(r["epoch"][d]) for r in old],
                         "cursor": [int(r["cursor"][d]) for r in old]} for d in range(D)]
        fresh = []
        for _ in range(max(1, s.num_workers)):
            st = _fresh_state(D)
            st["epoch"] = [max(t["epoch"]) + 1 for t in s.transition]
            st["carry"] = [0] * D
            fresh.append(st)
        self._states = fresh
        self._consumed = int(sd["consumed"])
        self._pass_start = (self._consumed, list(self._states))


def build_loader(data: list[str], seq_len: int, batch_size: int, seed: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, training: bool = True, prompt_prob: float = 0.25,
                 prompt_len: int | None = None, layout: VocabLayout | None = None,
                 cache: ShardCache | None = None, action_noise: float = 0.0, subset: str | None = None) -> GatoLoader:
    """Loader over `data` ("DIR" or "DIR:WEIGHT", a DIR a path or an fsspec URL); refuses
    directories whose layout differs from each other's or from `layout` (the model's).

    `action_noise`: the share of continuous action inputs replaced in training (ActionInputNoise).
    `subset`: "train" or "test": only the shards of that split of each directory (None: all).

    Remote directories are read through `cache` (default: schemas.cache.default_cache_dir(), no
    size limit); local ones are mapped in place.

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
    if not 0.0 <= action_noise < 1.0:
        raise DataError(f"action input noise must be in [0, 1), got {action_noise}")
    if prompt_len is not None and not 0 < prompt_len <= seq_len:
        raise DataError(f"prompt length must be in [1, seq_len={seq_len}], got {prompt_len}")
    sources = []
    for item in data:
        path, weight = parse_data_arg(item)
        if cache is None and "://" in path and not path.startswith("file://"):
            from schemas.cache import default_cache_dir
            cache = ShardCache(default_cache_dir() / "shards")
        src = ShardSource(path, weight, cache=cache, subset=subset)
        if layout is not None:
            src.layout.check_same(layout, what=f"shard directory {path}", against="model")
        elif sources:
            src.layout.check_same(sources[0].layout, what=f"shard directory {path}",
                                  against=f"shard directory {sources[0].path}")
        sources.append(src)
    tasks: list[str] = []
    for s in sources:
        tasks += [t for t in s.task_names if t not in tasks]
    lay = layout if layout is not None else sources[0].layout
    noise = (ActionInputNoise(action_noise, lay.continuous_offset, lay.continuous_offset + lay.num_bins)
             if training and action_noise > 0 else None)
    stream = GatoStream(sources, tasks, seq_len, batch_size, seed, num_workers, rank, world_size, training,
                        prompt_prob, prompt_len, noise)
    return GatoLoader(stream, lay, list(data))
