"""Streaming loader: shard directories -> fixed-length training batches (SPEC 5).

Reading a directory is trainer/source.py (rows as zero-copy views of mapped shards, local or
streamed from object storage); cutting sequences from rows is trainer/sampling.py; this module is
the torch side: the mixture of directories, the readers (one per rank and DataLoader worker), and
their resume state.

Determinism and resume: the randomness of sample k of a reader is drawn from a generator seeded
with (seed, rank, world size, reader, workers, k), and a reader's rows come from the directory's
row split (schemas.split). A reader's whole state is therefore a few counters (samples and batches
made, epoch and cursor of each directory's row stream); each batch travels with its reader's state,
so `GatoLoader.state_dict()` after n batches restarts every reader exactly where it was.
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import fields
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.cache import ShardCache
from schemas.split import directory_seed, resume_rows, split_rows, unread_rows
from tokenizer_kit.layout import VocabLayout

from .batch import ActionInputNoise, Batch, Sample, collate
from .sampling import MAX_PAIRS, Part, SampleConfig, assemble, caption_parts, rl_parts, text_parts
from .source import DataError, ShardSource, _mapped_mb

STATE_FORMAT = "gato-loader/1"
# Mapped shard pages allowed to pile up (MB) before a reader unmaps them: keeps RSS flat as data grows.
MAPPED_BUDGET_MB = 128


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
        resumed = (self.state.get("resume") or [None] * len(ds.sources))[d]
        if resumed is not None and epoch == resumed["epoch"]:
            # the epochs a run on another number of ranks or workers left half-read (schemas.split)
            unread = unread_rows(src.split, src.rows_per_shard, resumed["world"], resumed["workers"],
                                 [tuple(p) for p in resumed["positions"]], seed, shuffle=ds.training)
            rows = resume_rows(unread, ds.rank, ds.world_size, self.reader, ds.num_workers)[0]
        else:
            rows = split_rows(src.split, src.rows_per_shard, ds.rank, ds.world_size, self.reader, ds.num_workers,
                              epoch, seed, shuffle=ds.training)
        if len(rows) == 0 and ds.training and src.total_rows and resumed is None:
            # Fewer rows than readers: this reader shares another reader's rows rather than starving.
            idx = (ds.rank * nw + self.reader) % src.total_rows
            rows = split_rows(src.split, src.rows_per_shard, idx // nw, ds.world_size, idx % nw, ds.num_workers,
                              epoch, seed)
        self._cache[d] = (epoch, rows)
        src.plan(rows[self.state["cursor"][d]:] if epoch == self.state["epoch"][d] else rows)
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
                 prompt_len: int | None, action_noise: ActionInputNoise | None = None):
        self.sources, self.tasks = sources, tasks
        self.action_noise = action_noise
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
            batch = collate(samples, self.seq_len, self.training, self._rng(reader, state["batches"], 1),
                            self.action_noise)
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
        try:
            for reader, batch, state in self.iterate((physical + self.rotation) % nw):
                if info is not None:  # numpy crosses the worker pipe by value: measured 2-5x faster than
                    # shared-memory tensors (a file and a mapping per tensor), image batches included
                    batch = {f.name: getattr(batch, f.name).numpy() for f in fields(batch)}
                yield reader, batch, state
        except DataError as e:
            if info is None:
                raise
            # torch re-raises a worker's exception with its traceback as the message: pass the one
            # line on instead, for the main process to raise
            yield -1, str(e), None


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
            if reader < 0:
                raise DataError(batch)
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

    def load_elastic(self, states: list[dict]) -> None:
        """Resume from the loader states of every rank of a run with another number of ranks or
        workers: no row of the epochs it left half-read is read twice or skipped (the new readers
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
                 prompt_len: int | None = None, layout: VocabLayout | None = None,
                 cache: ShardCache | None = None, action_noise: float = 0.0) -> GatoLoader:
    """Loader over `data` ("DIR" or "DIR:WEIGHT", a DIR a path or an fsspec URL); refuses
    directories whose layout differs from each other's or from `layout` (the model's).

    `action_noise`: the share of continuous action inputs replaced in training (ActionInputNoise).

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
        src = ShardSource(path, weight, cache=cache)
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
