"""Readers of RL episode formats: Minari datasets, D4RL-style flat HDF5, episode tables, LeRobot
datasets and RLDS (Open X-Embodiment) folders.

Every reader turns its format into the same thing, `RawEpisode`s: a dict of observation fields
and a dict of action fields, each holding T per-step entries, plus T rewards. Field names are
flat (`obs`, `obs/position`, `action`, a table's column name); the kind a field is tokenised as
is guessed from its space or dtype (`guess_kind`) and can be overridden by the converter.
Readers open their files lazily and read episode by episode, never the whole dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from converters.base import SourceError
from converters.hf_datasets import hf_kind
from tokenizer_kit.frames import MIN_SIDE
from tokenizer_kit.frames import detect as detect_stack

SOURCE_KINDS = ("auto", "minari", "hdf5", "table", "lerobot", "rlds")


@dataclass(frozen=True)
class FieldInfo:
    """A field as the reader sees it: the kind it guessed and its per-step shape."""

    name: str
    kind: str  # text, image, discrete or continuous
    shape: tuple[int, ...] | None  # per step; images (H, W) or (H, W, C); None when unknown (text)
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # a Box's finite (low, high), flat


@dataclass
class RawEpisode:
    """One episode as arrays with T entries each (or the reason it could not be read)."""

    episode_id: int
    observations: dict = field(default_factory=dict)
    actions: dict = field(default_factory=dict)
    rewards: np.ndarray | None = None
    error: str | None = None  # set for an episode that is unreadable on its own


class Source(Protocol):
    input: str  # the input as given on the command line
    path: str  # the file (or directory) read: named in error messages, work units, resume stamps
    name: str  # the dataset's name: default task and prefix of source ids
    env_spec: object  # schemas.env_spec.EnvSpec the episodes were recorded in, when the format says (Minari)
    env_spec_problem: str | None  # why a recorded environment could not be taken

    def num_episodes(self) -> int: ...

    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        """(observation fields, action fields) by name."""
        ...

    def episodes(self, start: int, stop: int) -> Iterator[RawEpisode]:
        """Episodes number start..stop-1 (positions, in file order), read lazily."""
        ...

    def episode_lengths(self) -> np.ndarray:
        """Steps of every episode, from metadata or flags (cheap): to cut work units by size."""
        ...

    def returns(self) -> np.ndarray:
        """Return of every episode (float64), reading rewards only: for return filters."""
        ...

    def recorded_seeds(self) -> np.ndarray | None:
        """The reset seed each episode was recorded from, where the format keeps it (Minari), else None."""
        ...


class NoRecordedEnv:
    """For formats that record neither the environment (--env-spec gives it) nor reset seeds."""

    env_spec: object = None
    env_spec_problem: str | None = None

    def recorded_seeds(self) -> None:
        return None


def guess_kind(dtype: np.dtype, shape: tuple[int, ...] | None) -> str:
    """float -> continuous, integer/bool -> discrete, uint8 (H,W) or (H,W,1|3) -> image, a uint8
    frame stack (tokenizer_kit.frames.detect: (C,H,W) or (H,W,C)) -> image, str -> text."""
    dtype = np.dtype(dtype)
    if dtype.kind in "USO":
        return "text"
    if dtype == np.uint8 and shape is not None and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))) \
            and min(shape[:2]) >= MIN_SIDE:  # smaller (MiniGrid's 7x7x3) stays discrete
        return "image"
    if dtype == np.uint8 and detect_stack(shape, dtype) is not None:
        return "image"
    if dtype.kind in "iub":
        return "discrete"
    if dtype.kind == "f":
        return "continuous"
    raise SourceError(f"unsupported dtype {dtype}")


def detect_kind(path: str) -> str:
    """Which reader a path needs: minari (dataset dir or name), hdf5 (flat file) or table."""
    p = Path(path)
    if p.is_dir():
        if (p / "meta" / "info.json").is_file():
            return "lerobot"
        if (p / "features.json").is_file() and (p / "dataset_info.json").is_file():
            return "rlds"
        if (p / "metadata.json").is_file() or (p / "data" / "metadata.json").is_file():
            return "minari"
        if hf_kind(p) == "dataset":
            return "table"
        if hf_kind(p) == "dict":
            raise SourceError(f"{path}: a HF DatasetDict; pass one split's directory (e.g. {p / 'train'})")
        if any(p.glob("*.parquet")):
            return "table"
        raise SourceError(f"{path}: not a Minari dataset, a HF datasets directory or a directory of Parquet or "
                          f"HDF5 files")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in HDF5_SUFFIXES:
            return "hdf5"
        if suffix in (".parquet", ".pq"):
            return "table"
        raise SourceError(f"{path}: unknown RL file type {suffix!r} (expected .hdf5, .h5 or .parquet)")
    return "minari"  # a dataset id in the local Minari root, or nothing (the reader says so)


def open_source(path: str, kind: str = "auto", allow_hdf5_external: bool = False) -> Source:
    """The reader of `path`; HDF5 files are checked first (sources/h5check.py): external storage,
    links and virtual datasets refused unless `allow_hdf5_external`, declared sizes backed by bytes."""
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "minari":
        from .minari import MinariSource  # noqa: PLC0415 - cycle: it imports this package
        return MinariSource(path, allow_hdf5_external)
    if kind == "hdf5":
        from .hdf5 import FlatHDF5Source  # noqa: PLC0415 - cycle: it imports this package
        return FlatHDF5Source(path, allow_hdf5_external=allow_hdf5_external)
    if kind == "table":
        from .table import TableSource  # noqa: PLC0415 - cycle: it imports this package
        return TableSource(path)
    if kind == "lerobot":
        from .lerobot import LeRobotSource  # noqa: PLC0415 - cycle: it imports this package
        return LeRobotSource(path)
    if kind == "rlds":
        from .rlds import RLDSSource  # noqa: PLC0415 - cycle: it imports this package
        return RLDSSource(path)
    raise SourceError(f"unknown RL source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")


HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-\d{5}-of-\d{5}$")  # HF hub shards: train-00000-of-00004


def split_of(path: str | Path) -> str | None:
    """The split a sharded table file belongs to (`train` of `train-00003-of-00008.parquet`), else None."""
    m = SPLIT_FILE.match(Path(path).stem)
    return m.group("split") if m else None


def task_name(path: str | Path) -> str:
    """A table file's task: the folder of a sharded table (the jat-dataset's `<task>/train-*.parquet`,
    each task one folder of `<split>-0000k-of-0000N` files), else the file's own name."""
    p = Path(path)
    return p.parent.name if split_of(p) is not None and p.parent.name else p.stem


def expand_inputs(paths: list[str], split: str = "train") -> list[str]:
    """A directory of Parquet files, or else of flat HDF5 files (without HF or Minari metadata),
    counts as each of its files, sorted; a directory of split shards (`train-*`, `test-*`) as the
    files of `split` only."""
    out: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir() and hf_kind(p) is None and not (p / "metadata.json").is_file() \
                and not (p / "data" / "metadata.json").is_file():
            files = sorted(p.glob("*.parquet")) or sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in HDF5_SUFFIXES)
            splits = {s for f in files if (s := split_of(f)) is not None}
            if splits:
                files = [f for f in files if split_of(f) == split]
                if not files:
                    raise SourceError(f"{path}: no {split!r} split (has {', '.join(sorted(splits))}); "
                                      f"choose one with --split")
            if files:
                out.extend(str(f) for f in files)
                continue
        out.append(path)
    return out


def episode_bounds(done: np.ndarray) -> np.ndarray:
    """Episode boundaries of a flat step array: `done[t]` ends an episode at step t.

    Returns (E+1,) offsets; steps after the last done flag form a last (cut-off) episode.
    """
    ends = np.flatnonzero(done) + 1
    n = len(done)
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    return np.concatenate([[0], ends]).astype(np.int64) if n else np.zeros(1, np.int64)
