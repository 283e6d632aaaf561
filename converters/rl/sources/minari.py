"""Minari datasets (HDF5 or Arrow backend), read with minari's own API one episode at a time.

An input is a dataset directory (the one holding `data/`, or `data/` itself) or a dataset id in
the local Minari root (`MINARI_DATASETS_PATH`, default ~/.minari/datasets); nothing is downloaded.
Spaces give the fields: Box float -> continuous, Box uint8 (H,W[,3]) -> image, other Box ints,
Discrete, MultiDiscrete and MultiBinary -> discrete, Text -> text; Dict and Tuple spaces are
flattened to `obs/KEY` (`obs/KEY/SUB`, `obs/0`). Minari stores T+1 observations per episode (the
final one, after the last action): it is dropped so that observation t and action t line up.
Images of JPEG-encoded datasets come back as minari decodes them (lossy on disk, not here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import minari
import numpy as np
from gymnasium import spaces

from converters.base import SourceError
from schemas.env_spec import EnvSpec, EnvSpecError
from tokenizer_kit.errors import first_line
from tokenizer_kit.fields import ACTION, OBS, field_name

from . import FieldInfo, RawEpisode, guess_kind
from .h5check import check_hdf5


def _data_path(path: str) -> Path:
    p = Path(path)
    if (p / "data" / "metadata.json").is_file():
        return p / "data"
    if (p / "metadata.json").is_file():
        return p
    if p.exists():
        raise SourceError(f"{path}: not a Minari dataset directory (no metadata.json)")
    # minari's own lookup (minari.storage.get_dataset_path) creates the root as a side effect
    root = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
    data = root / path / "data"
    if not (data / "metadata.json").is_file():
        versions = _versions(root, path)
        if len(versions) == 1:  # an id without its version: the one installed version
            return versions[0] / "data"
        if versions:
            raise SourceError(f"{path}: several versions installed ({', '.join(v.name for v in versions)}); "
                              f"name one")
        raise SourceError(f"{path}: no such file, directory or local Minari dataset (looked in {root})")
    return data


def _versions(root: Path, dataset_id: str) -> list[Path]:
    """Installed versions `ID-vN` of a dataset id given without its version."""
    where = root / dataset_id
    if not where.parent.is_dir():
        return []
    out = []
    for d in where.parent.glob(f"{where.name}-v*"):
        if d.name[len(where.name) + 2:].isdigit() and (d / "data" / "metadata.json").is_file():
            out.append(d)
    return sorted(out, key=lambda d: int(d.name[len(where.name) + 2:]))


def space_fields(space, prefix: str, out: dict[str, FieldInfo]) -> dict[str, FieldInfo]:
    """Flatten a gymnasium space into named fields with their guessed kind and per-step shape."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            space_fields(sub, field_name(prefix, key), out)
    elif isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            space_fields(sub, field_name(prefix, i), out)
    elif isinstance(space, spaces.Box):
        kind = guess_kind(space.dtype, tuple(space.shape))
        low, high = np.asarray(space.low, np.float64).ravel(), np.asarray(space.high, np.float64).ravel()
        bounds = None
        if kind == "continuous" and np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all():
            bounds = (tuple(low.tolist()), tuple(high.tolist()))
        out[prefix] = FieldInfo(prefix, kind, tuple(space.shape), bounds)
    elif isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        out[prefix] = FieldInfo(prefix, "discrete", space.shape)
    elif isinstance(space, spaces.Text):
        out[prefix] = FieldInfo(prefix, "text", None)
    else:
        raise SourceError(f"field {prefix!r}: unsupported space {type(space).__name__}")
    return out


def _flatten(space, value, prefix: str, out: dict) -> dict:
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            _flatten(sub, value[key], field_name(prefix, key), out)
    elif isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            _flatten(sub, value[i], field_name(prefix, i), out)
    else:
        out[prefix] = value
    return out


def _env_spec(ds):
    """(the environment the dataset was recorded in, as schemas.env_spec checks it, None) or
    (None, why not): minari has none (no reason given), cannot rebuild it, or it names wrappers
    acting will not import or that did not record their arguments."""
    try:
        spec = ds.env_spec
    except Exception as e:  # minari rebuilds it from JSON: a spec it cannot parse is only not known
        return None, f"unreadable env spec ({first_line(e)})"
    if spec is None:
        return None, None
    try:
        return EnvSpec.from_gymnasium(spec), None
    except (EnvSpecError, ValueError, TypeError) as e:
        return None, first_line(e)


class MinariSource:
    """A Minari dataset; episode positions index its `episode_indices`."""

    def __init__(self, path: str, allow_hdf5_external: bool = False):
        self.input = self.path = str(path)
        self._data = _data_path(self.input)
        if (self._data / "main_data.hdf5").is_file():  # before minari reads a byte of it
            check_hdf5(str(self._data / "main_data.hdf5"), allow_hdf5_external)
        ds = self._dataset()
        self.name = ds.id
        self._format = ds.storage.metadata.get("data_format", "hdf5")
        # what is read: its size/mtime tell the writer whether earlier work is stale
        self.path = str(self._data / "main_data.hdf5") if self._format == "hdf5" else str(self._data)
        self._indices = np.asarray(ds.episode_indices, dtype=np.int64)
        self._obs_space, self._act_space = ds.observation_space, ds.action_space
        # schemas.env_spec.EnvSpec, or None (and why, when minari has one that cannot be trusted)
        self.env_spec, self.env_spec_problem = _env_spec(ds)
        try:
            self._fields = (space_fields(self._obs_space, OBS, {}), space_fields(self._act_space, ACTION, {}))
        except SourceError as e:
            raise SourceError(f"{self.path}: {e}") from None
        if self._format == "hdf5":  # find a truncated or foreign file now, not halfway through
            self._h5().close()

    def _dataset(self):
        try:
            return minari.MinariDataset(self._data)
        except (ValueError, KeyError, OSError, AssertionError) as e:
            raise SourceError(f"{self.path}: unreadable Minari dataset ({first_line(e)})") from None

    def _h5(self):
        import h5py  # noqa: PLC0415 - only HDF5 data loads h5py: then workers spawn, not fork
        file = self._data / "main_data.hdf5"
        try:
            return h5py.File(file, "r")
        except OSError as e:
            raise SourceError(f"{file}: not a readable HDF5 file ({first_line(e)})") from None

    def num_episodes(self) -> int:
        return len(self._indices)

    def episode_lengths(self) -> np.ndarray:
        """From each episode's metadata (minari writes total_steps there), not from its arrays."""
        try:
            meta = self._dataset().storage.get_episode_metadata(self._indices.tolist())
            steps = [m["total_steps"] for m in meta]
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise SourceError(f"{self.path}: unreadable episode metadata ({first_line(e)})") from None
        bad = next((i for i, n in enumerate(steps) if isinstance(n, (bool, np.bool_))
                    or not isinstance(n, (int, np.integer)) or not 0 <= int(n) < 1 << 40), None)
        if bad is not None:  # a size from data: an integer in range, before anything is sized by it
            raise SourceError(f"{self.path}: episode {int(self._indices[bad])}: metadata total_steps "
                              f"{steps[bad]!r} is not a step count")
        lengths = np.asarray([int(n) for n in steps], dtype=np.int64)
        if self._format == "hdf5":  # and it must be what the file really holds
            with self._h5() as f:
                try:
                    real = [f[f"episode_{i}/rewards"].shape[0] for i in self._indices]
                except (KeyError, OSError, ValueError, TypeError, IndexError) as e:
                    raise SourceError(f"{self.path}: unreadable episode arrays ({first_line(e)})") from None
            k = next((j for j, (a, b) in enumerate(zip(lengths, real)) if a != b), None)
            if k is not None:
                raise SourceError(f"{self.path}: episode {int(self._indices[k])}: metadata total_steps "
                                  f"{int(lengths[k])}, its rewards hold {real[k]} steps")
        return lengths

    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        return self._fields

    def recorded_seeds(self) -> np.ndarray | None:
        """The reset seed of every episode, from its metadata (minari keeps `seed` where the episode
        was recorded from a seeded reset); None when any episode has none."""
        try:
            meta = self._dataset().storage.get_episode_metadata(self._indices.tolist())
            seeds = [m.get("seed") for m in meta]
        except (OSError, KeyError, ValueError):
            return None
        if not seeds or any(s is None or not isinstance(s, (int, np.integer)) for s in seeds):
            return None
        return np.asarray(seeds, np.int64)

    def returns(self) -> np.ndarray:
        try:
            if self._format == "hdf5":
                with self._h5() as f:
                    return np.array([np.sum(f[f"episode_{i}/rewards"][()], dtype=np.float64) for i in self._indices])
            import pyarrow.dataset as pds  # noqa: PLC0415 - 0.3 s import, Arrow datasets only
            out = []
            for i in self._indices:
                r = pds.dataset(str(self._data / str(i)), format=self._format,
                                ignore_prefixes=["_", ".", "metadata.json"]).to_table(columns=["rewards"])
                out.append(np.sum(r.column("rewards").to_numpy()[:-1], dtype=np.float64))  # last is padding
            return np.array(out, dtype=np.float64)
        except (OSError, KeyError, ValueError) as e:
            raise SourceError(f"{self.path}: unreadable episode rewards ({first_line(e)})") from None

    def episodes(self, start: int, stop: int) -> Iterator[RawEpisode]:
        indices = self._indices[start:stop].tolist()
        done = 0
        while done < len(indices):  # an unreadable episode is skipped alone: read on after it
            it = self._dataset().iterate_episodes(indices[done:])
            while True:
                try:
                    ep = next(it)
                except StopIteration:
                    return
                except (OSError, KeyError, ValueError, AssertionError, TypeError) as e:
                    yield RawEpisode(int(indices[done]), error=f"unreadable episode data ({first_line(e)})")
                    done += 1
                    break
                done += 1
                yield self._episode(ep)

    def _episode(self, ep) -> RawEpisode:
        rewards = np.asarray(ep.rewards).reshape(-1)
        steps = len(rewards)
        obs = _flatten(self._obs_space, ep.observations, OBS, {})
        act = _flatten(self._act_space, ep.actions, ACTION, {})
        raw = RawEpisode(int(ep.id), {}, act, rewards)
        for name, v in obs.items():
            if len(v) != steps + 1:
                raw.error = (f"episode arrays disagree in length: observation {name!r} has {len(v)} entries, "
                             f"expected {steps + 1} ({steps} rewards + the final observation)")
                return raw
            raw.observations[name] = v[:-1]  # drop the final observation: obs t pairs with action t
        for name, v in act.items():
            if len(v) != steps:
                raw.error = f"episode arrays disagree in length: action {name!r} has {len(v)} steps, {steps} rewards"
                return raw
        return raw
