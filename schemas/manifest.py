"""manifest.json: what a shard directory holds and how it was made; written last, atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizer_kit.layout import VocabLayout

from .shard import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.model"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or of an unknown version."""


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
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"schema version {d.get('schema_version')!r} is not supported "
                                f"(this gato-kit reads version {SCHEMA_VERSION})")
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        return cls(**d)

    def write(self, directory: str | os.PathLike) -> Path:
        """Write atomically: temporary file, fsync, rename."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest (not a shard directory, or its conversion has not finished)")
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: unreadable manifest ({e})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e})") from None
