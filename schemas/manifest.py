"""manifest.json: what a shard directory holds and how it was made; written last, atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec

from .shard import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.model"


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


@dataclass
class ShardInfo:
    name: str
    rows: int
    tokens: int
    bytes: int
    sha256: str


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
    counts: dict[str, dict[str, int]] | None = None  # converters' grouped event counts (Record.counts)
    longest_unit: LongestUnit | None = None  # the longest step or pair
    conversion: dict | None = None  # what made the directory, so a re-run can tell it is up to date

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["field_errors"] = {k: FieldError(**v) for k, v in known.get("field_errors", {}).items()}
        if known.get("episode_return") is not None:
            known["episode_return"] = ReturnStats(**known["episode_return"])
        if known.get("longest_unit") is not None:
            known["longest_unit"] = LongestUnit(**known["longest_unit"])
        return cls(**known)


@dataclass
class Manifest:
    """Everything a reader must know to trust and decode a shard directory."""

    layout: dict
    converter: str
    options: dict = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # Stats.to_dict()
    skipped: list[dict] = field(default_factory=list)  # asdict(SkippedRecord)
    tokenizer_sha256: str | None = None
    episode_spec: dict | None = None  # RL: EpisodeSpec.to_dict(), for decoding rows back
    env_spec: dict | None = None  # RL: schemas.env_spec.EnvSpec.to_dict(), the environment acting rebuilds
    tasks: list[str] = field(default_factory=list)
    compression: str = "none"  # Arrow IPC buffer compression of the shards: none, lz4 or zstd
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def vocab_layout(self) -> VocabLayout:
        return VocabLayout.from_dict(self.layout)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def frame_modes(self) -> dict[str, str]:
        """{stacked image field: `last` or `split`}: how an agent builds that field's tokens, the way
        most of this directory's episodes were converted (counted by the RL converter)."""
        from tokenizer_kit.frames import acting_mode
        counts = self.typed_stats.counts or {}
        names = set(counts.get("frame_stack_last") or {}) | set(counts.get("frame_stack_split") or {})
        return {n: acting_mode({m: (counts.get(f"frame_stack_{m}") or {}).get(n, 0) for m in ("last", "split")})
                for n in sorted(names)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """Parse a manifest dict; an unknown schema version is refused, unknown keys ignored."""
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest must be a JSON object, got {type(d).__name__}")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"schema version {d.get('schema_version')!r} is not supported "
                                f"(this gato-kit reads version {SCHEMA_VERSION})")
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        return cls(**d)

    def check_layout(self, layout: VocabLayout, what: str = "shards", against: str = "model") -> None:
        """Refuse (LayoutError naming both) when this directory's layout is not `layout`."""
        self.vocab_layout.check_same(layout, what, against)

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
        from .env_spec import EnvSpec
        return EnvSpec.from_dict(self.env_spec) if self.env_spec else None

    def to_json(self) -> str:
        """The file's text; a statistic that is not a finite number is refused (JSON has none)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_json_default, allow_nan=False) + "\n"

    def write(self, directory: str | os.PathLike) -> Path:
        """Write atomically: temporary file, fsync, rename; numpy numbers in stats are fine."""
        path = Path(directory) / MANIFEST_NAME
        text = self.to_json()
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
            raise ManifestError(f"{path}: unreadable manifest ({str(e).splitlines()[0] if str(e) else e!r})") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str | bytes, path: str) -> "Manifest":
        """A manifest from its JSON text; `path` names it in errors (a file or a URL)."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            raise ManifestError(f"{path}: unreadable manifest ({str(e).splitlines()[0] if str(e) else e!r})") from None
        try:
            manifest = cls.from_dict(d)
            VocabLayout.from_dict(manifest.layout)  # a layout that cannot exist: unreadable directory
            manifest.typed_stats  # statistics of the wrong shape: unreadable too, not a traceback later
            manifest.env  # an env spec naming a module outside the wrapper modules: refused on reading
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
        except (TypeError, KeyError, ValueError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e})") from None
        return manifest
