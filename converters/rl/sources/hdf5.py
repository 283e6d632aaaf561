"""D4RL-style flat HDF5: `observations`, `actions`, `rewards`, `terminals`, `timeouts` step arrays.

Episodes end at every step where `terminals` or `timeouts` is set; steps after the last flag form
a last, cut-off episode. `infos/*`, `metadata/*` and `next_observations` are ignored. An
`observations` (or `actions`) group instead of an array is read as a Dict space: one field per
array, named `obs/KEY`. Only the flags are read up front; the step arrays are read with h5py in
chunks of at least `chunk_steps` steps, episode by episode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from converters.base import SourceError
from tokenizer_kit.errors import first_line
from tokenizer_kit.fields import ACTION, OBS

from . import FieldInfo, NoRecordedEnv, RawEpisode, episode_bounds, guess_kind
from .h5check import check_hdf5

GROUPS = (("observations", OBS), ("actions", ACTION))
# What h5py raises on a damaged file, besides OSError: damaged metadata surfaces as any of these.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


class FlatHDF5Source(NoRecordedEnv):  # the format records no environment: --env-spec gives it
    """One flat HDF5 file; episode positions are the episodes' order in the file."""

    def __init__(self, path: str, chunk_steps: int = 1 << 16, allow_hdf5_external: bool = False):
        self.input = self.path = str(path)
        self.name = Path(path).stem
        self.chunk_steps = chunk_steps
        check_hdf5(self.path, allow_hdf5_external)  # before any data is read or allocated
        with self._open() as f:
            try:
                self._keys = self._field_keys(f)
                n = self._check_lengths(f)
                done = np.zeros(n, dtype=bool)
                for flag in ("terminals", "timeouts"):
                    if flag in f:
                        for lo in range(0, n, 1 << 24):  # in chunks: no second full-size temporary
                            done[lo:lo + (1 << 24)] |= np.asarray(f[flag][lo:lo + (1 << 24)], dtype=bool).reshape(-1)
                self._infos = self._field_infos(f)
            except SourceError:
                raise
            except H5_ERRORS as e:
                raise SourceError(f"{self.path}: unreadable HDF5 data ({first_line(e)})") from None
        self._bounds = episode_bounds(done)
        # steps after the last flag: an episode the recording may have cut off; the converter says so
        self.last_episode_cut = bool(n and not done[-1])

    def _open(self):
        try:
            return h5py.File(self.path, "r")
        except H5_ERRORS as e:
            raise SourceError(f"{self.path}: not a readable HDF5 file ({first_line(e)})") from None

    def _field_keys(self, f) -> dict[str, dict[str, str]]:
        """{"obs": {field name: HDF5 path}, "action": {...}}."""
        if "observations" not in f and any(k.startswith("episode_") for k in f):
            raise SourceError(f"{self.path}: this is a Minari file; pass its dataset directory instead")
        keys: dict[str, dict[str, str]] = {}
        for key, prefix in GROUPS:
            if key not in f:
                raise SourceError(f"{self.path}: no {key!r} array (D4RL-style files need observations, "
                                  f"actions, rewards, terminals and timeouts)")
            node = f[key]
            if isinstance(node, h5py.Group):
                found: dict[str, str] = {}
                # the lambda runs inside visititems, in this iteration: the loop variables are the ones meant
                node.visititems(lambda name, obj: found.__setitem__(f"{prefix}/{name}", f"{key}/{name}")  # noqa: B023
                                if isinstance(obj, h5py.Dataset) else None)
                keys[prefix] = dict(sorted(found.items()))
            else:
                keys[prefix] = {prefix: key}
        if "rewards" not in f:
            raise SourceError(f"{self.path}: no 'rewards' array")
        return keys

    def _check_lengths(self, f) -> int:
        lengths = {p: f[p].shape[0] if f[p].shape else 0 for group in self._keys.values() for p in group.values()}
        for name in ("rewards", "terminals", "timeouts"):
            if name in f:
                lengths[name] = f[name].shape[0] if f[name].shape else 0
        n = lengths["rewards"]
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            k, v = next(iter(bad.items()))
            raise SourceError(f"{self.path}: step arrays disagree in length: {k!r} has {v} steps, "
                              f"'rewards' has {n}")
        return n

    def _field_infos(self, f) -> dict[str, dict[str, FieldInfo]]:
        out: dict[str, dict[str, FieldInfo]] = {}
        for prefix, group in self._keys.items():
            out[prefix] = {}
            for name, p in group.items():
                ds = f[p]
                shape = tuple(ds.shape[1:])
                try:
                    kind = guess_kind(ds.dtype, shape)
                except SourceError as e:
                    raise SourceError(f"{self.path}: field {name!r}: {e}") from None
                out[prefix][name] = FieldInfo(name, kind, shape)
        return out

    def num_episodes(self) -> int:
        return len(self._bounds) - 1

    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._bounds)

    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        return self._infos[OBS], self._infos[ACTION]

    def returns(self) -> np.ndarray:
        with self._open() as f:
            try:
                rewards = np.asarray(f["rewards"][()], dtype=np.float64).reshape(-1)
            except H5_ERRORS as e:
                raise SourceError(f"{self.path}: unreadable HDF5 data ({first_line(e)})") from None
        if len(rewards) == 0:
            return np.zeros(0)
        return np.add.reduceat(rewards, self._bounds[:-1])

    def episodes(self, start: int, stop: int) -> Iterator[RawEpisode]:
        bounds = self._bounds
        stop = min(stop, self.num_episodes())
        if start >= stop:
            return
        with self._open() as f:
            paths = {**{n: p for g in self._keys.values() for n, p in g.items()}, "rewards": "rewards"}
            lo = hi = int(bounds[start])
            end = int(bounds[stop])
            buf: dict[str, np.ndarray] = {}
            for e in range(start, stop):
                a, b = int(bounds[e]), int(bounds[e + 1])
                if b > hi:  # refill: one read per array covers this and the next episodes
                    lo, hi = a, min(end, max(b, a + self.chunk_steps))
                    try:
                        buf = {n: f[p][lo:hi] for n, p in paths.items()}
                    except H5_ERRORS:  # damaged somewhere in the chunk: read this episode alone
                        lo, hi = a, b
                        try:
                            buf = {n: f[p][lo:hi] for n, p in paths.items()}
                        except H5_ERRORS as err:
                            hi = a  # the next episode reads afresh
                            yield RawEpisode(e, error=f"unreadable HDF5 data at steps {a}-{b} ({first_line(err)})")
                            continue
                s = slice(a - lo, b - lo)
                yield RawEpisode(e, {n: buf[n][s] for n in self._keys[OBS]},
                                 {n: buf[n][s] for n in self._keys[ACTION]}, buf["rewards"][s].reshape(-1))
