"""manifest.json: what a shard directory holds and how it was made; written last, atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from tokenizer_kit.errors import first_line
from tokenizer_kit.files import atomic_path
from tokenizer_kit.frames import acting_mode
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec

from .env_spec import EnvSpec
from .names import UnsafeNameError, check_pattern, check_sha256
from .shard import READ_VERSIONS, SCHEMA_VERSION, SHARD_NAME_RE
from .shard_table import COMPACT_SHARDS, SHARD_TABLE_NAME, ShardTable, column

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.model"
ROW_KINDS = ("rl", "captions", "text")  # what a directory's rows are: episodes, image-caption pairs, documents

# The events a converter counts per record (`Record.counts`, by group then field) that the manifest
# keeps as typed statistics; manifests written before those existed keep them under `stats.counts`
# with these group names, and read back to the same typed fields.
FRAME_STACK_EVENTS = {"last": "frame_stack_last", "split": "frame_stack_split"}  # an episode's frames, each way
OUTSIDE_UNIT_RANGE_EVENT = "outside_unit_range"  # continuous action values clipped to [-1, 1]


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or of an unknown version."""


def _json_default(value):
    """numpy scalars and arrays (converter statistics) as plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


SPLITS = ("train", "test")  # a shard's rows are training rows, or held out (a source's own test files,
# or `gato-tokenize --test-share`); readers take one split or both


@dataclass
class ShardInfo:
    name: str
    rows: int
    tokens: int
    bytes: int
    sha256: str
    split: str = "train"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ManifestError(f"shard {self.name!r}: split {self.split!r} is not one of {', '.join(SPLITS)}")


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
                "layout": dict, "converter": str, "options": dict, "stats": dict, "skipped": list,
                "tokenizer_sha256": (str, type(None)), "episode_spec": (dict, type(None)), "tasks": list,
                "compression": str, "created": str}


def check_field_types(m: "Manifest", where: str) -> None:
    """Each top-level field of the type it must have (a manifest from a hub may hold anything):
    tasks a list of names, skipped records with text fields, a tokenizer sha256 of its shape."""
    for key, want in _FIELD_TYPES.items():
        value = getattr(m, key)
        if not isinstance(value, want):
            raise ManifestError(f"{where}: field {key!r} is {type(value).__name__}, expected "
                                f"{' or '.join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))}")
    if not all(isinstance(t, str) for t in m.tasks):
        raise ManifestError(f"{where}: field 'tasks' must be a list of names")
    if not all(isinstance(r, dict) and isinstance(r.get("source"), str) and isinstance(r.get("reason"), str)
               for r in m.skipped):
        raise ManifestError(f"{where}: field 'skipped' must be a list of {{source, reason}} records")
    if m.tokenizer_sha256 is not None:
        check_sha256(m.tokenizer_sha256, f"{where}: tokenizer_sha256")
    # the statistics' shapes: checked by Stats.from_dict, which every reading goes through (Manifest.parse)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_stats_types(st: dict, where: str) -> None:
    """The statistics' shapes (readers sum and compare them): counts are integers, maps are maps."""
    checks = {
        "rows": _is_int, "tokens": _is_int, "skipped": _is_int, "filtered": _is_int,
        "tokens_by_modality": lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
        "rows_per_task": lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
        "field_errors": lambda v: isinstance(v, dict) and all(
            isinstance(e, dict) and all(_is_num(e.get(k)) for k in ("max", "mean", "count")) for e in v.values()),
        "counts": lambda v: v is None or isinstance(v, dict) and all(
            isinstance(g, dict) and all(_is_int(x) for x in g.values()) for g in v.values()),
        "frame_stacks": lambda v: v is None or isinstance(v, dict) and all(
            isinstance(g, dict) and all(_is_int(g.get(m, 0)) for m in FRAME_STACK_EVENTS) for g in v.values()),
        "outside_unit_range": lambda v: v is None or isinstance(v, dict) and all(_is_int(x) for x in v.values()),
        "episode_return": lambda v: v is None or isinstance(v, dict) and all(
            x is None or _is_num(x) for x in v.values()),
        "longest_unit": lambda v: v is None or (isinstance(v, dict)
                                                and all(_is_int(v.get(k)) for k in ("tokens", "row"))),
        "conversion": lambda v: v is None or isinstance(v, dict),
    }
    for key, ok in checks.items():
        if key in st and not ok(st[key]):
            raise ManifestError(f"{where}: {key!r} has the wrong shape ({str(st[key])[:60]})")


def check_shard_list(shards: Sequence[ShardInfo], where: str) -> None:
    """A manifest's shard list as data from a hub must be before anything reads it: each name a
    shard name and listed once (a shard listed twice would be trained on twice), each sha256 64 hex
    digits (it becomes a cache path), counts non-negative integers."""
    seen: set[str] = set()
    for i, s in enumerate(shards):
        at = f"{where}: shards[{i}]"
        check_pattern(s.name, SHARD_NAME_RE, "shard name", at)
        check_sha256(s.sha256, f"{at} ({s.name})")
        for key in ("rows", "tokens", "bytes"):
            v = getattr(s, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ManifestError(f"{at} ({s.name}): {key} {v!r} is not a non-negative integer")
        if s.name in seen:
            raise ManifestError(f"{at}: shard {s.name} is listed twice")
        seen.add(s.name)


@dataclass
class SkippedRecord:
    """A record left out under --on-error skip, and why (one line naming file, record and field)."""

    source: str
    reason: str


@dataclass
class FieldError:
    """Absolute quantisation error of one field's 1024-bin round trip."""

    max: float
    mean: float
    count: int


@dataclass
class ReturnStats:
    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None


@dataclass
class LongestUnit:
    """The longest piece of a row a training sequence must hold whole (a timestep, or a caption
    pair): the smallest --seq-len whose sequences carry targets from every row."""

    tokens: int
    row: int
    source_id: str | None


@dataclass
class FrameStackCount:
    """Episodes of one stacked image field converted each way (tokenizer_kit.frames): `last` keeps
    each step's newest frame, `split` every frame."""

    last: int = 0
    split: int = 0

    def acting_mode(self) -> str:
        """How an agent builds this field's tokens: the way most episodes were converted."""
        return acting_mode({"last": self.last, "split": self.split})


@dataclass
class Stats:
    """The keys of `Manifest.stats` (a plain dict in the file; `Stats.from_dict` reads it typed)."""

    rows: int = 0
    tokens: int = 0
    tokens_by_modality: dict[str, int] = field(default_factory=dict)
    field_errors: dict[str, FieldError] = field(default_factory=dict)
    rows_per_task: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    filtered: int = 0  # left out on purpose by the converter's own options (not errors)
    episode_return: ReturnStats | None = None  # RL only
    counts: dict[str, dict[str, int]] | None = None  # converters' other grouped event counts (Record.counts)
    frame_stacks: dict[str, FrameStackCount] | None = None  # RL: episodes of each stacked field, each way
    outside_unit_range: dict[str, int] | None = None  # RL: continuous action values clipped, per field
    longest_unit: LongestUnit | None = None  # the longest step or pair
    conversion: dict | None = None  # what made the directory, so a re-run can tell it is up to date

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        """The statistics typed; a shape a writer never makes (data from a hub) is a ManifestError."""
        if not isinstance(d, dict):
            raise ManifestError(f"field 'stats' is {type(d).__name__}, expected dict")
        _check_stats_types(d, "stats")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["field_errors"] = {k: FieldError(**v) for k, v in known.get("field_errors", {}).items()}
        if known.get("episode_return") is not None:
            known["episode_return"] = ReturnStats(**known["episode_return"])
        if known.get("longest_unit") is not None:
            known["longest_unit"] = LongestUnit(**known["longest_unit"])
        if known.get("frame_stacks") is not None:
            known["frame_stacks"] = {k: FrameStackCount(**v) for k, v in known["frame_stacks"].items()}
        return cls(**known).with_events(known.get("counts"))

    def with_events(self, counts: dict[str, dict[str, int]] | None) -> "Stats":
        """These statistics with the converter's grouped event counts folded in: the frame-stack
        and clipping groups become their typed fields (summed with any already there), the other
        groups stay in `counts`. New conversions and manifests written before the typed fields
        (which kept the groups in `counts`) both come out the same way."""
        rest = {g: dict(v) for g, v in (counts or {}).items()}
        stacks = {k: replace(v) for k, v in (self.frame_stacks or {}).items()}
        for mode, group in FRAME_STACK_EVENTS.items():
            for name, n in (rest.pop(group, None) or {}).items():
                c = stacks.setdefault(name, FrameStackCount())
                setattr(c, mode, getattr(c, mode) + int(n))
        outside = dict(self.outside_unit_range or {})
        for name, n in (rest.pop(OUTSIDE_UNIT_RANGE_EVENT, None) or {}).items():
            outside[name] = outside.get(name, 0) + int(n)
        return replace(self, counts=rest or None, frame_stacks=dict(sorted(stacks.items())) or None,
                       outside_unit_range=dict(sorted(outside.items())) or None)


@dataclass
class Manifest:
    """Everything a reader must know to trust and decode a shard directory."""

    layout: dict
    converter: str
    options: dict = field(default_factory=dict)
    shards: Sequence[ShardInfo] = field(default_factory=list)  # a ShardTable past COMPACT_SHARDS
    stats: dict = field(default_factory=dict)  # Stats.to_dict()
    skipped: list[dict] = field(default_factory=list)  # asdict(SkippedRecord)
    tokenizer_sha256: str | None = None
    episode_spec: dict | None = None  # RL: EpisodeSpec.to_dict(), for decoding rows back
    env_spec: dict | None = None  # RL: schemas.env_spec.EnvSpec.to_dict(), the environment acting rebuilds
    tasks: list[str] = field(default_factory=list)
    compression: str = "none"  # Arrow IPC buffer compression of the shards: none, lz4 or zstd
    shard_table: dict | None = None  # past COMPACT_SHARDS shards: {name, count, sha256} of shards.arrow
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def vocab_layout(self) -> VocabLayout:
        return VocabLayout.from_dict(self.layout)

    @property
    def total_rows(self) -> int:
        return int(column(self.shards, "rows").sum()) if len(self.shards) else 0

    def only(self, split: str) -> "Manifest":
        """This manifest with only the shards of `split` (rows numbered over those)."""
        if isinstance(self.shards, ShardTable):
            return replace(self, shards=self.shards.where_split(split))
        return replace(self, shards=[s for s in self.shards if s.split == split])

    def rows_in(self, split: str) -> int:
        return int(self.only(split).total_rows)

    @property
    def total_tokens(self) -> int:
        return int(column(self.shards, "tokens").sum()) if len(self.shards) else 0

    def shard_rows(self) -> np.ndarray:
        """Rows of every listed shard, in order (int64; vectorised for a shard table)."""
        return column(self.shards, "rows").astype(np.int64) if len(self.shards) else np.zeros(0, np.int64)

    def frame_modes(self) -> dict[str, str]:
        """{stacked image field: `last` or `split`}: how an agent builds that field's tokens, the way
        most of this directory's episodes were converted (counted by the RL converter)."""
        return {n: c.acting_mode() for n, c in (self.typed_stats.frame_stacks or {}).items()}

    @property
    def row_kind(self) -> str | None:
        """What the rows are (one of ROW_KINDS), from the converter that wrote them, or `rl` for a
        directory with an episode spec; None when the manifest cannot tell (a caller looks at rows)."""
        if self.converter in ROW_KINDS:
            return self.converter
        return "rl" if self.episode_spec else None

    def to_dict(self) -> dict:
        if isinstance(self.shards, ShardTable):
            return {**asdict(replace(self, shards=[])), "shards": [asdict(s) for s in self.shards]}
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """Parse a manifest dict; an unknown schema version is refused, unknown keys ignored."""
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest must be a JSON object, got {type(d).__name__}")
        if d.get("schema_version") not in READ_VERSIONS:
            raise ManifestError(f"schema version {d.get('schema_version')!r} is not supported "
                                f"(this gato-kit reads versions {', '.join(map(str, READ_VERSIONS))})")
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        return cls(**d)

    @property
    def typed_stats(self) -> Stats:
        return Stats.from_dict(self.stats)

    @property
    def skipped_records(self) -> list[SkippedRecord]:
        return [SkippedRecord(**s) for s in self.skipped]

    @property
    def spec(self) -> EpisodeSpec | None:
        """The RL episode spec, typed (None for captions and text)."""
        return EpisodeSpec.from_dict(self.episode_spec) if self.episode_spec else None

    @property
    def env(self):
        """The environment the episodes were recorded in (schemas.env_spec.EnvSpec), when known."""
        return EnvSpec.from_dict(self.env_spec) if self.env_spec else None

    def to_json(self) -> str:
        """The file's text; a statistic that is not a finite number is refused (JSON has none)."""
        return self.encode()[0]

    def encode(self) -> tuple[str, bytes | None]:
        """(manifest.json's text, shards.arrow's bytes or None). Past COMPACT_SHARDS shards the
        per-shard records go to the table, which must be written before the manifest."""
        def dump(d: dict) -> str:
            return json.dumps(d, indent=1, sort_keys=True, default=_json_default, allow_nan=False) + "\n"
        if len(self.shards) <= COMPACT_SHARDS and not isinstance(self.shards, ShardTable):
            return dump(asdict(replace(self, shard_table=None))), None
        table = self.shards if isinstance(self.shards, ShardTable) else ShardTable.from_infos(self.shards)
        data = table.to_bytes()
        head = {"name": SHARD_TABLE_NAME, "count": len(table), "sha256": ShardTable.digest(data)}
        return dump(asdict(replace(self, shards=[], shard_table=head))), data

    def write(self, directory: str | os.PathLike) -> Path:
        """Write atomically: temporary file, fsync, rename (the shard table first, if any);
        numpy numbers in stats are fine."""
        path = Path(directory) / MANIFEST_NAME
        text, table = self.encode()
        if table is not None:
            with atomic_path(Path(directory) / SHARD_TABLE_NAME) as tmp:
                tmp.write_bytes(table)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest (not a shard directory, or its conversion has not finished)")
        try:
            text = path.read_text()
        except (OSError, ValueError) as e:  # ValueError: bytes that are not UTF-8
            raise ManifestError(f"{path}: unreadable manifest ({first_line(e)})") from None
        return cls.parse(text, str(path), lambda name: (Path(directory) / name).read_bytes())

    @classmethod
    def parse(cls, text: str | bytes, path: str, read_file=None) -> "Manifest":
        """A manifest from its JSON text; `path` names it in errors (a file or a URL). A manifest
        whose shards are in a shard table reads it with `read_file(name) -> bytes`."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            raise ManifestError(f"{path}: unreadable manifest ({first_line(e)})") from None
        try:
            manifest = cls.from_dict(d)
            VocabLayout.from_dict(manifest.layout)  # a layout that cannot exist: unreadable directory
            manifest.typed_stats  # noqa: B018 - statistics of the wrong shape: unreadable too, not a traceback later
            manifest.env  # noqa: B018 - an env spec naming a module outside the wrapper modules: refused on reading
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
        except (TypeError, KeyError, ValueError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e})") from None
        if manifest.shard_table is not None:
            manifest.shards = cls._read_table(manifest.shard_table, path, read_file)
        try:  # data from a hub: every field of its type, every shard named and listed once
            check_field_types(manifest, path)
            if isinstance(manifest.shards, ShardTable):
                manifest.shards.check(f"{path} ({SHARD_TABLE_NAME})")
            else:
                check_shard_list(manifest.shards, path)
        except UnsafeNameError as e:
            raise ManifestError(str(e)) from None
        return manifest

    @staticmethod
    def _read_table(head: dict, path: str, read_file) -> ShardTable:
        where = path.rsplit("/", 1)[0] + "/" + SHARD_TABLE_NAME if "/" in path else SHARD_TABLE_NAME
        if not isinstance(head, dict) or head.get("name") != SHARD_TABLE_NAME or read_file is None \
                or not isinstance(head.get("count"), int) or isinstance(head.get("count"), bool) \
                or not isinstance(head.get("sha256"), str):
            raise ManifestError(f"{path}: malformed manifest (shard_table {str(head)[:80]})")
        try:
            data = read_file(SHARD_TABLE_NAME)
        except FileNotFoundError:
            raise ManifestError(f"{where}: missing (the manifest keeps its shards there)") from None
        except OSError as e:
            raise ManifestError(f"{where}: unreadable ({first_line(e)})") from None
        return ShardTable.from_bytes(data, where, head["count"], head["sha256"])
