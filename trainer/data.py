"""Streaming loader: shard directories -> fixed-length training batches (SPEC 5).

Reading a directory is trainer/source.py (rows as zero-copy views of mapped shards, local or
streamed from object storage); cutting sequences from rows is trainer/sampling.py; one reader
(one rank's one worker: its row streams, draws and counters) is trainer/stream.py. This module is
the torch side: the mixture of directories given on the command line, the readers run in this
process or DataLoader workers, and the loader's resume state (every reader's counters, also when
the number of ranks or workers changes).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from schemas.cache import ShardCache, default_cache_dir
from schemas.split import epoch_tokens
from tokenizer_kit.layout import VocabLayout

from .batch import ActionInputNoise, Batch, CompactBatch, Sample, expand
from .sampling import Part
from .source import DataError, ShardSource
from .stream import GatoStream, Streams, fresh_state

STATE_FORMAT = "gato-loader/1"


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
        it: Iterable[tuple[int, CompactBatch, dict]]
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

    def trace(self, num_samples: int, reader: int = 0) -> list[tuple[Sample, int, list[Part] | None]]:
        """The first samples of a reader as (sample, directory index, row parts), for inspection:
        the same pure function the batches come from; the loader's own position is untouched."""
        streams = Streams(self.stream, reader, fresh_state(len(self.sources)))
        out: list[tuple[Sample, int, list[Part] | None]] = []
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
        fresh = fresh_state(len(s.sources))
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
        transition: list[dict] = [{"workers": int(sd["num_workers"]), "epoch": [int(r["epoch"][d]) for r in old],
                       "cursor": [int(r["cursor"][d]) for r in old]} for d in range(D)]
        s.transition = list(transition)
        fresh = []
        for _ in range(max(1, s.num_workers)):
            st = fresh_state(D)
            st["epoch"] = [max(t["epoch"]) + 1 for t in transition]
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
    sources: list[ShardSource] = []
    for item in data:
        path, weight = parse_data_arg(item)
        if cache is None and "://" in path and not path.startswith("file://"):
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
