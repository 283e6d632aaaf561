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
class Manifest:
    """Everything a reader must know to trust and decode a shard directory."""

    layout: dict
    converter: str
    options: dict = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # {"source": ..., "reason": ...}
    tokenizer_sha256: str | None = None
    episode_spec: dict | None = None  # RL: EpisodeSpec.to_dict(), for decoding rows back
    tasks: list[str] = field(default_factory=list)
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

    def write(self, directory: str | os.PathLike) -> Path:
        """Write atomically: temporary file, fsync, rename; numpy numbers in stats are fine."""
        path = Path(directory) / MANIFEST_NAME
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_json_default) + "\n"
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest (not a shard directory, or its conversion has not finished)")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            raise ManifestError(f"{path}: unreadable manifest ({str(e).splitlines()[0] if str(e) else e!r})") from None
        try:
            manifest = cls.from_dict(d)
            VocabLayout.from_dict(manifest.layout)  # a layout that cannot exist: unreadable directory
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
        except (TypeError, KeyError, ValueError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e})") from None
        return manifest
