"""RLDS datasets as Open X-Embodiment publishes them: TFDS builder folders read without TensorFlow.

A folder holds `dataset_info.json`, `features.json` (the TFDS FeaturesDict: names, shapes, dtypes
and image encodings) and `NAME-SPLIT.tfrecord-NNNNN-of-NNNNN` files whose records are episodes,
each one `tf.train.Example` with the step features flattened: `steps/observation/<key>`,
`steps/action`, `steps/language_instruction`, `steps/reward`, `steps/is_first|is_last|is_terminal`.

Fields: `steps/observation/X` -> `obs/X` (encoded images -> images, float tensors -> continuous,
integer and bool tensors -> discrete, text -> text), other step features -> `obs/X` (the language
instruction is `obs/language_instruction`), `steps/action` -> `action` (`steps/action/X` ->
`action/X`), `steps/reward` -> rewards; the flags, `discount` and `episode_metadata/*` are not
fields. Episode positions run over the files in name order; a feature in a record that
features.json does not declare, a count that disagrees with its declared shape, or a damaged
record (tfrecord.py) is that episode's error.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import simplejpeg
from PIL import Image

from converters.base import SourceError
from converters.read_ahead import read_ahead
from tokenizer_kit.errors import first_line
from tokenizer_kit.fields import ACTION, OBS, field_key, field_name
from tokenizer_kit.images import MAX_PIXELS

from . import FieldInfo, NoRecordedEnv, RawEpisode
from .robot import inside
from .tfrecord import RecordError, _headers, count_records, parse_example, read_records

FILE_RE = re.compile(r".+\.tfrecord-\d{5}-of-\d{5}$")
NOT_FIELDS = ("steps/is_first", "steps/is_last", "steps/is_terminal", "steps/discount")
REWARD = "steps/reward"


@dataclass(frozen=True)
class Declared:
    """One feature as features.json declares it."""

    key: str  # flat, as serialised: steps/observation/image
    kind: str  # image, tensor or text
    shape: tuple[int, ...]  # per step (per episode outside steps); -1 or None dims unknown
    dtype: str
    in_steps: bool


def declared_features(tree: dict) -> dict[str, Declared]:
    """The flat features of a TFDS features.json."""
    out: dict[str, Declared] = {}

    def walk(node: dict, prefix: str, in_steps: bool) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"feature {prefix!r} is not an object")
        if "featuresDict" in node:
            for k, v in node["featuresDict"]["features"].items():
                walk(v, f"{prefix}/{k}" if prefix else k, in_steps)
        elif "sequence" in node:
            walk(node["sequence"]["feature"], prefix, True)
        elif "image" in node:
            d = node["image"]
            shape = tuple(int(s) for s in d.get("shape", {}).get("dimensions", []))
            out[prefix] = Declared(prefix, "image", shape, str(d.get("dtype", "uint8")), in_steps)
        elif "text" in node:
            out[prefix] = Declared(prefix, "text", (), "string", in_steps)
        elif "tensor" in node:
            d = node["tensor"]
            shape = tuple(int(s) for s in d.get("shape", {}).get("dimensions", []))
            out[prefix] = Declared(prefix, "tensor", shape, str(d["dtype"]), in_steps)
        else:
            raise ValueError(f"feature {prefix!r}: unknown kind ({', '.join(sorted(node))})")

    walk(tree, "", False)
    return out


def _field_name(key: str) -> str | None:
    if not key.startswith("steps/") or key in NOT_FIELDS or key == REWARD:
        return None
    rest = key[len("steps/"):]
    if field_key(rest)[0] == ACTION:
        return rest
    return field_name(OBS, rest.removeprefix("observation/"))


class RLDSSource(NoRecordedEnv):  # the format records no environment: --env-spec gives it
    """A TFDS builder folder of RLDS episodes; positions run over its TFRecord files in order."""

    def __init__(self, path: str):
        self.input = self.path = str(path)
        self.root = Path(path)
        try:
            info = json.loads((self.root / "dataset_info.json").read_text())
            self.name = str(info.get("name") or self.root.name)
            shard_lengths = {str(sp["name"]): [int(n) for n in sp.get("shardLengths") or []]
                             for sp in info.get("splits") or []}
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            raise SourceError(f"{self.path}/dataset_info.json: not readable JSON ({first_line(e)})") from None
        try:
            self.declared = declared_features(json.loads((self.root / "features.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SourceError(f"{self.path}/features.json: not a TFDS features file ({first_line(e)})") from None
        self.files = sorted(inside(self.root, p.name, "file") for p in self.root.iterdir() if FILE_RE.match(p.name))
        if not self.files:
            raise SourceError(f"{self.path}: no *.tfrecord-NNNNN-of-NNNNN files")
        self._counts = np.asarray([self._count(f, shard_lengths) for f in self.files], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)])
        self._fields = self._make_fields()

    def _count(self, f: Path, shard_lengths: dict[str, list[int]]) -> int:
        """Episodes of a file: dataset_info.json's shardLengths (so a damaged file keeps the
        positions of its lost episodes and later files keep their numbers), else counted."""
        m = re.fullmatch(rf"{re.escape(self.name)}-(.+)\.tfrecord-(\d{{5}})-of-(\d{{5}})", f.name)
        lengths = shard_lengths.get(m.group(1), []) if m else []
        if m and len(lengths) == int(m.group(3)) and int(m.group(2)) < len(lengths):
            return lengths[int(m.group(2))]
        return count_records(str(f))

    def _make_fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        obs: dict[str, FieldInfo] = {}
        act: dict[str, FieldInfo] = {}
        for d in self.declared.values():
            name = _field_name(d.key) if d.in_steps else None
            if name is None:
                continue
            if d.kind == "image":
                shape = d.shape if len(d.shape) == 3 and d.shape[2] != 1 else d.shape[:2]
                info = FieldInfo(name, "image", shape if -1 not in shape else None)
            elif d.kind == "text":
                info = FieldInfo(name, "text", None)
            else:
                kind = "continuous" if np.dtype(d.dtype).kind == "f" else "discrete"
                info = FieldInfo(name, kind, d.shape)
            (act if field_key(name)[0] == ACTION else obs)[name] = info
        if not act:
            raise SourceError(f"{self.path}/features.json: no steps/action feature")
        if not obs:
            raise SourceError(f"{self.path}/features.json: no step observation features")
        return obs, act

    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        return self._fields

    def num_episodes(self) -> int:
        return int(self._starts[-1])

    def episode_lengths(self) -> np.ndarray:
        """An estimate for cutting work units only (steps are known once a record is parsed): each
        episode's bytes over the first episode's bytes per step."""
        sizes = np.asarray([n or 0 for f in self.files for n, _ in _headers(str(f))], np.float64)
        first = next(self.episodes(0, 1))
        steps = len(next(iter(first.actions.values()))) if first.error is None else 1
        per_step = max(sizes[0] / max(steps, 1), 1.0) if len(sizes) else 1.0
        return np.maximum(1, np.round(sizes / per_step)).astype(np.int64)

    def returns(self) -> np.ndarray:
        if REWARD not in self.declared:
            raise SourceError(f"{self.path}: no {REWARD!r} feature, so no returns to filter by")
        return np.asarray([np.nan if e.rewards is None else float(e.rewards.sum())
                           for e in self.episodes(0, self.num_episodes())])

    def episodes(self, start: int, stop: int) -> Iterator[RawEpisode]:
        """Read and decoded one episode ahead of the consumer, in a thread: simplejpeg and the CRC
        check run without the GIL while the previous episode is tokenised and written."""
        return read_ahead(self._read(start, stop))

    def _read(self, start: int, stop: int) -> Generator[RawEpisode, None, None]:
        stop = min(stop, self.num_episodes())
        for k, path in enumerate(self.files):
            a, b = max(start, int(self._starts[k])), min(stop, int(self._starts[k + 1]))
            if a >= b:
                continue
            base = int(self._starts[k])
            pos = a
            for i, data in read_records(str(path), a - base, b - base):
                pos = base + i + 1
                if isinstance(data, RecordError):
                    yield RawEpisode(base + i, error=f"{path.name}: {str(data).split(': ', 1)[1]} (episode {base + i})")
                    continue
                yield self._episode(path, i, base + i, data)
            for e in range(pos, b):  # after a damaged record nothing of the file can be found again
                yield RawEpisode(e, error=f"{path.name}: record {e - base}: after a damaged record")

    def _episode(self, path: Path, record: int, ep: int, data: bytes) -> RawEpisode:
        where = f"{path.name}: record {record} (episode {ep})"
        try:
            ex = parse_example(data)
        except RecordError as e:
            return RawEpisode(ep, error=f"{where}: {e}")
        undeclared = sorted(set(ex) - set(self.declared))
        if undeclared:
            return RawEpisode(ep, error=f"{where}: feature {undeclared[0]!r} is not declared in features.json")
        raw = RawEpisode(ep)
        obs, act = self._fields
        steps = None
        try:
            for d in self.declared.values():
                name = _field_name(d.key) if d.in_steps else None
                if name is None and d.key != REWARD and d.key not in NOT_FIELDS:
                    continue
                if d.key not in ex:
                    if d.key in NOT_FIELDS or d.key == REWARD:
                        continue
                    raise ValueError(f"feature {d.key!r}: declared in features.json, not in the record")
                value = self._values(d, ex[d.key], steps)
                steps = len(value) if steps is None else steps
                if d.key == REWARD:
                    raw.rewards = np.asarray(value, np.float64).reshape(-1)
                elif name in act:
                    raw.actions[name] = value
                elif name in obs:
                    raw.observations[name] = value
        except ValueError as e:
            return RawEpisode(ep, error=f"{where}: {e}")
        return raw

    @staticmethod
    def _values(d: Declared, values, steps: int | None):
        """One feature's values in a record -> (T, *shape) array, or a list of T strings."""
        if d.kind == "text":
            if not isinstance(values, list):
                raise ValueError(f"feature {d.key!r}: expected bytes (text), got numbers")
            try:
                out: list | np.ndarray = [v.decode("utf-8") for v in values]
            except UnicodeDecodeError:
                raise ValueError(f"feature {d.key!r}: text that is not UTF-8") from None
        elif d.kind == "image":
            if not isinstance(values, list):
                raise ValueError(f"feature {d.key!r}: expected encoded images, got numbers")
            out = _decode_images(d, values)
        else:
            if isinstance(values, list):
                raise ValueError(f"feature {d.key!r}: expected numbers, got bytes")
            size = int(np.prod(d.shape)) if d.shape else 1
            if size <= 0 or len(values) % size:
                raise ValueError(f"feature {d.key!r}: {len(values)} values are not steps of shape {list(d.shape)}")
            arr = values.reshape(len(values) // size, *d.shape)
            out = arr.astype(np.float32, copy=False) if np.dtype(d.dtype).kind == "f" else arr
        if steps is not None and len(out) != steps:
            raise ValueError(f"feature {d.key!r}: {len(out)} steps, other features {steps}")
        return out


class _SizeError(ValueError):
    """An image whose size disagrees with features.json or with the episode's earlier steps."""


def _decode_images(d: Declared, blobs: list[bytes]) -> np.ndarray:
    """Encoded step images -> (T, H, W[, C]) uint8; JPEG (what OXE stores) through simplejpeg,
    other formats through Pillow. Each size is checked from the header before any pixel is decoded,
    and JPEGs decode straight into the episode's array (no per-step array to stack)."""
    rgb = len(d.shape) == 3 and d.shape[2] == 3
    declared = tuple(d.shape[:2]) if len(d.shape) >= 2 and -1 not in d.shape[:2] else None
    out: np.ndarray | None = None

    def slot(t: int, h: int, w: int) -> np.ndarray:
        nonlocal out
        if h * w > MAX_PIXELS:
            raise ValueError(f"{w}x{h} pixels, over {MAX_PIXELS}")
        if declared is not None and (h, w) != declared:
            raise _SizeError(f"feature {d.key!r}, step {t}: image {(h, w)}, features.json says {declared}")
        if out is None:
            out = np.empty((len(blobs), h, w, 3 if rgb else 1), np.uint8)
        elif out.shape[1:3] != (h, w):
            raise _SizeError(f"feature {d.key!r}, step {t}: image {(h, w)}, step 0 {out.shape[1:3]}")
        return out[t]

    for t, b in enumerate(blobs):
        try:
            if simplejpeg.is_jpeg(b):
                h, w, _, _ = simplejpeg.decode_jpeg_header(b)
                simplejpeg.decode_jpeg(b, colorspace="RGB" if rgb else "GRAY", buffer=slot(t, h, w))
                continue
            im = Image.open(io.BytesIO(b))
            dest = slot(t, im.height, im.width)
            pic = np.asarray(im.convert("RGB") if rgb else im)
            if pic.dtype != np.uint8:
                raise ValueError(f"{pic.dtype} pixels, not 8-bit")
            dest[...] = pic if rgb else pic.reshape(dest.shape)
        except _SizeError:
            raise
        except Exception as e:  # the decoders raise many types for bad data
            raise ValueError(f"feature {d.key!r}, step {t}: not a readable image ({first_line(e)})") from None
    if out is None:
        return np.zeros((0, *d.shape), np.uint8)
    return out if rgb else out[..., 0]
