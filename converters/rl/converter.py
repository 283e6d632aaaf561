"""The RL converter: each work unit (a contiguous range of one input's episodes) -> one row per
episode under the `EpisodeSpec` the command line settled (converters/rl/plan.py), with its return, the
quantisation error of each field and the continuous action values that had to be clipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from schemas.manifest import FRAME_STACK_EVENTS, OUTSIDE_UNIT_RANGE_EVENT
from tokenizer_kit.errors import TokenizeError, locate
from tokenizer_kit.frames import episode_frames
from tokenizer_kit.layout import CONTINUOUS, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, build_episode
from tokenizer_kit.values import bins_to_continuous, from_unit_range, outside_unit_range, to_unit_range

from ..base import Record, SourceError, WorkUnit
from .sources import RawEpisode, Source, open_source

STEPS_PER_UNIT = 100_000  # big enough that per-unit costs (files, fsyncs) vanish, small enough to share


class RLConverter:
    """Episodes of one or more inputs with the same fields -> one row each."""

    name = "rl"
    rl = True

    def __init__(self, inputs: Sequence[str], spec: EpisodeSpec, layout: VocabLayout, *, source_kind: str = "auto",
                 text_tokenizer=None, task: str | None = None, min_return: dict[str, float] | None = None,
                 episodes_per_unit: int | None = None, steps_per_unit: int = STEPS_PER_UNIT,
                 settings: dict | None = None, frame_stack: str = "auto", strict_ranges: bool = False,
                 allow_hdf5_external: bool = False, env_spec=None):
        self.inputs = list(inputs)
        self.spec = spec
        self.layout = layout
        self.source_kind = source_kind
        self.text_tokenizer = text_tokenizer
        self.task = task
        self.min_return = dict(min_return or {})  # input path -> threshold
        self.episodes_per_unit = episodes_per_unit
        self.steps_per_unit = steps_per_unit
        self.settings = dict(settings or {})
        self.frame_stack = frame_stack
        self.strict_ranges = strict_ranges
        self.allow_hdf5_external = allow_hdf5_external
        self.env_spec = env_spec  # schemas.env_spec.EnvSpec the episodes were recorded in, or None
        self._sources: dict[str, Source] = {}  # by input
        self._input_of: dict[str, str] = {}  # the path a source reads -> its input
        self._centres: dict[bool, np.ndarray] = {}

    def __getstate__(self):  # for worker processes: readers reopen their files there
        return {**self.__dict__, "_sources": {}, "_centres": {}}

    def source(self, input_: str) -> Source:
        """The reader of an input (a work unit's path is the reader's `path`, also accepted)."""
        if input_ not in self.inputs:
            if input_ not in self._input_of:
                for i in self.inputs:
                    try:
                        self._input_of[self.source(i).path] = i
                    except SourceError:
                        continue
            input_ = self._input_of.get(input_, input_)
        if input_ not in self._sources:
            self._sources[input_] = open_source(input_, self.source_kind, self.allow_hdf5_external)
        return self._sources[input_]

    def work_units(self) -> list[WorkUnit]:
        units = []
        for i in self.inputs:
            try:
                src = self.source(i)
            except SourceError:  # unreadable (--on-error skip): one unit that is skipped when converted
                units.append(WorkUnit(f"{_safe(Path(i).name)}-unreadable", i))
                continue
            self._input_of[src.path] = i
            # the file read, not the input's spelling: a dataset id names the same units from any cwd
            tag = f"{_safe(Path(i).name)}-{hashlib.sha1(os.path.abspath(src.path).encode()).hexdigest()[:8]}"
            for start, stop in self._ranges(src):
                units.append(WorkUnit(f"{tag}-{start:08d}-{stop:08d}", src.path, start, stop))
        return units

    def _ranges(self, src: Source) -> list[tuple[int, int]]:
        """Contiguous episode ranges: N episodes each, or whole episodes adding up to about
        `steps_per_unit` steps (an episode longer than that is a unit of its own)."""
        n = src.num_episodes()
        if self.episodes_per_unit:
            return [(a, min(n, a + self.episodes_per_unit)) for a in range(0, n, self.episodes_per_unit)]
        lengths = np.asarray(src.episode_lengths(), dtype=np.int64)
        ranges, start, total = [], 0, 0
        for i, steps in enumerate(lengths):  # one pass over one int per episode
            total += int(steps)
            if total >= self.steps_per_unit:
                ranges.append((start, i + 1))
                start, total = i + 1, 0
        if start < n:
            ranges.append((start, n))
        return ranges

    def options(self) -> dict:
        extra: dict[str, Any] = {}
        if any(f.frame_stack is not None for f in self.spec.observations):
            extra["frame_stack"] = self.frame_stack
        if any(f.kind == "continuous" for f in self.spec.actions):
            extra["strict_ranges"] = self.strict_ranges
        cut = [s.path for s in self._sources.values() if getattr(s, "last_episode_cut", False)]
        if cut:
            extra["last_episode_cut"] = sorted(cut)  # ends with no terminal/timeout flag: taken as it is
        if self.env_spec is not None:
            extra["env_spec"] = self.env_spec.to_dict()
        seeds = self._recorded_seeds()
        if seeds:
            extra["recorded_seeds"] = seeds
        return {"episode_spec": self.spec.to_dict(), "source": self.source_kind,
                "final_observation": self._final_observation(), "episodes_per_unit": self.episodes_per_unit,
                "steps_per_unit": None if self.episodes_per_unit else self.steps_per_unit,
                "min_return": self.min_return or None, **self.settings, **extra}

    def _recorded_seeds(self) -> list[list[int]] | None:
        """The reset seeds every input's episodes were recorded from, as sorted [first, last]
        ranges (an evaluation must start from others); None unless every input keeps them."""
        found = [s.recorded_seeds() for s in self._readable_sources()]
        kept = [f for f in found if f is not None]
        if not found or len(kept) < len(found):
            return None
        seeds = np.unique(np.concatenate(kept))
        breaks = np.flatnonzero(np.diff(seeds) != 1)
        starts = np.concatenate([[0], breaks + 1])
        stops = np.concatenate([breaks, [len(seeds) - 1]])
        return [[int(seeds[a]), int(seeds[b])] for a, b in zip(starts, stops)]

    def notes(self, manifest) -> list[str]:
        """Warning lines about a finished conversion: an environment that could not be recorded,
        continuous actions clipped to [-1, 1]."""
        lines = []
        problems = [f"{s.path}: {s.env_spec_problem}" for s in self._sources.values() if s.env_spec_problem]
        if self.env_spec is None and problems:
            lines.append(f"gato-tokenize rl: warning: the environment the episodes were recorded in is not recorded "
                         f"({problems[0]}); give --env-spec for acting")
        outside = manifest.typed_stats.outside_unit_range or {}
        if not outside:
            return lines
        fields = ", ".join(f"{name} {n:,}" for name, n in sorted(outside.items()))
        return lines + [f"gato-tokenize rl: warning: continuous action values outside [-1, 1] were clipped to the end "
                f"bins ({fields}); declare their range with --action-bounds NAME=LOW:HIGH, or refuse them with "
                f"--strict-ranges"]

    def _readable_sources(self) -> Iterator[Source]:
        """The inputs' readers, without those unreadable (kept as skipped units under --on-error skip)."""
        for i in self.inputs:
            try:
                yield self.source(i)
            except SourceError:
                continue

    def _final_observation(self) -> str:
        """What became of the observation after an episode's last action: Minari stores it and it
        is dropped; flat HDF5 files and episode tables hold none (one observation per action)."""
        kinds = {type(src).__name__ for src in self._readable_sources()}
        if kinds == {"MinariSource"}:
            return "dropped"
        return "none in the source" if "MinariSource" not in kinds else "dropped where stored"

    def convert_unit(self, unit: WorkUnit) -> Iterator[Record]:
        src = self.source(unit.path)
        task = self.task or src.name
        threshold = self.min_return.get(src.input)
        stop = unit.stop if unit.stop is not None else src.num_episodes()
        for raw in src.episodes(unit.start, stop):
            sid = f"{src.name}/episode_{raw.episode_id}"
            try:
                record = self._record(raw, sid, task, threshold)
            except TokenizeError as e:
                yield Record(sid, task=task, skip_reason=f"{src.path}: {sid}: {e}")
                continue
            yield record

    def _record(self, raw: RawEpisode, sid: str, task: str, threshold: float | None) -> Record:
        if raw.error:
            raise TokenizeError(raw.error)
        first = self.spec.observations[0].name
        steps = len(raw.observations[first])
        if steps == 0:
            raise TokenizeError("empty episode (0 steps)")
        if raw.rewards is None:  # a dataset without rewards (LeRobot, some RLDS): no return, not 0
            if threshold is not None:
                raise TokenizeError("no rewards, so no return to compare with --min-return")
            rewards = None
        else:
            rewards = np.asarray(raw.rewards, dtype=np.float64).reshape(-1)
        if rewards is None:
            episode_return = None
        elif len(rewards) != steps:
            raise TokenizeError(f"episode arrays disagree in length: 'rewards' has {len(rewards)} steps, "
                                f"observation {first!r} {steps}")
        elif not np.isfinite(rewards).all():
            finite = np.isfinite(rewards)
            raise TokenizeError(f"field 'rewards': {'NaN' if np.isnan(rewards[~finite][0]) else 'infinite'} "
                                f"value at step {int(np.argmin(finite))}")
        else:
            episode_return = float(rewards.sum())
        if threshold is not None and episode_return is not None and episode_return < threshold:  # None: raised above
            # left out by --min-return: counted in the manifest, not an error
            return Record(sid, task=task, episode_return=episode_return, filtered=True)
        counts: dict[str, dict[str, int]] = {}
        observations = {}
        for f in self.spec.observations:
            value = raw.observations[f.name]
            if f.frame_stack is not None:
                value, taken = episode_frames(value, f.frame_stack, self.frame_stack, f.name)
                counts[FRAME_STACK_EVENTS[taken]] = {f.name: 1}
            elif f.kind == "image":
                value = _as_rgb(value)
            observations[f.name] = value
        outside = self._outside(raw.actions, steps)
        if outside:
            counts[OUTSIDE_UNIT_RANGE_EVENT] = {name: n for name, (n, _) in outside.items()}
            if self.strict_ranges:
                name, (n, where) = next(iter(outside.items()))
                raise TokenizeError(f"field {name!r}: {n} values outside [-1, 1] after rescaling, the first at "
                                    f"{where} (--strict-ranges; declare its range with --action-bounds)")
        row = build_episode(observations, raw.actions, self.spec, self.layout, self.text_tokenizer)
        return Record(sid, row=row, task=task, num_steps=steps, episode_return=episode_return,
                      field_errors=self._field_errors(row, observations, raw.actions, steps), counts=counts)

    def _outside(self, actions: dict, steps: int) -> dict[str, tuple[int, str]]:
        """{field: (values outside [-1, 1] after rescaling, where the first is)} of continuous actions."""
        out = {}
        for f in self.spec.actions:
            if f.kind != "continuous":
                continue
            x = np.asarray(actions[f.name])
            if f.bounds is not None:
                x = to_unit_range(x.reshape(steps, -1), *f.bounds, field=f.name)
            bad = outside_unit_range(x)
            if bad.any():
                out[f.name] = (int(np.count_nonzero(bad)), locate(x, bad))
        return out

    def _field_errors(self, row, observations: dict, actions: dict, steps: int) -> dict[str, tuple[float, float, int]]:
        """(max, sum, count) of |x - decode(token)| per continuous field: what
        tokenizer_kit.values.quantization_error gives, but reading the bins back from the row's own
        tokens and decoding through a table of the 1024 bin centres (no second binning, no power)."""
        fields = [(f, observations[f.name], f.mu_law) for f in self.spec.observations if f.kind == "continuous"]
        fields += [(f, actions[f.name], False) for f in self.spec.actions if f.kind == "continuous"]
        if not fields:
            return {}
        # continuous tokens of a step: observation fields, then action fields, each in spec order
        bins = row.tokens[row.modality == CONTINUOUS].reshape(steps, -1) - np.int32(self.layout.continuous_offset)
        errors, col = {}, 0
        for f, values, mu_law in fields:
            if mu_law not in self._centres:
                self._centres[mu_law] = bins_to_continuous(np.arange(self.layout.num_bins), self.layout, mu_law)
            x = np.asarray(values).reshape(steps, -1)
            decoded = self._centres[mu_law][bins[:, col:col + x.shape[1]]]
            if f.bounds is not None:  # compared in the action's own units
                decoded = from_unit_range(decoded, *f.bounds)
            with np.errstate(over="ignore", invalid="ignore"):  # |x| near 1e308: said by the writer, one line
                err = np.abs(x - decoded)
                total = float(err.sum())
            col += x.shape[1]
            errors[f.name] = (float(err.max()) if err.size else 0.0, total, int(err.size))
        return errors


def _as_rgb(images):
    """Grey (T,H,W) or (T,H,W,1) frames -> (T,H,W,3) uint8 at once, so the builder patchifies in one go.

    Integer pixels of another dtype (tables store int64) must lie in [0, 255]."""
    if isinstance(images, np.ndarray) and images.dtype.kind in "iu" and images.dtype != np.uint8 and images.size:
        bad = (images < 0) | (images > 255)
        if bad.any():
            raise TokenizeError(f"image pixels outside [0, 255] at {locate(images, bad)}")
        images = images.astype(np.uint8)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim == 3:
            return np.repeat(images[..., None], 3, axis=3)
        if images.ndim == 4 and images.shape[3] == 1:
            return np.repeat(images, 3, axis=3)
    return images


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "input"
