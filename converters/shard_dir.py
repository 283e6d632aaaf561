"""A shard directory as a reader sees it: its manifest (if written yet) and its complete shards.

Writers rename a shard into place only when it is complete (temporary files start with '.'), and
write manifest.json last. So a reader can look at a directory that is still being written: with a
manifest, the listed shards count; without one, every `shard-N.arrow` on disk is complete.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ManifestError, ShardInfo
from schemas.shard import SHARD_NAME_RE, open_shard
from tokenizer_kit.layout import VocabLayout

SHARD_RE = re.compile(SHARD_NAME_RE)


class ShardDirError(ManifestError):
    """A shard directory that cannot answer: unreadable shard, no such row or source id."""


@dataclass
class ShardFile:
    """One complete shard: its path and the manifest's record of it (None when unlisted)."""

    name: str
    path: Path
    info: ShardInfo | None = None


@dataclass
class ShardDir:
    path: Path
    manifest: Manifest | None
    shards: list[ShardFile]  # what a reader reads: the manifest's shards present on disk, in order
    missing: list[str] = field(default_factory=list)  # listed in the manifest, absent on disk
    unlisted: list[str] = field(default_factory=list)  # complete on disk, not (yet) in the manifest
    _rows: list[int] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ShardDir":
        """Read the manifest if there is one (a malformed one is an error) and list complete shards."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        on_disk = sorted(p.name for p in root.iterdir() if SHARD_RE.match(p.name) and p.is_file())
        manifest = Manifest.read(root) if (root / MANIFEST_NAME).exists() else None
        if manifest is None:
            return cls(root, None, [ShardFile(n, root / n) for n in on_disk])
        present = set(on_disk)
        listed = [s.name for s in manifest.shards]
        shards = [ShardFile(s.name, root / s.name, s) for s in manifest.shards if s.name in present]
        return cls(root, manifest, shards, missing=[n for n in listed if n not in present],
                   unlisted=[n for n in on_disk if n not in set(listed)])

    # --- what the manifest says -------------------------------------------------------------------
    @property
    def layout(self) -> VocabLayout:
        if self.manifest is None:
            raise ManifestError(f"{self.path / MANIFEST_NAME}: no manifest yet, so the vocab layout is unknown")
        return self.manifest.vocab_layout

    @property
    def tokenizer_path(self) -> Path | None:
        p = self.path / TOKENIZER_NAME
        return p if p.is_file() else None

    def text_tokenizer(self):
        """The directory's SentencePiece model, or None when it has none (text then shows as ids)."""
        from tokenizer_kit.text import TextTokenizer
        p = self.tokenizer_path
        return TextTokenizer(p) if p is not None else None

    # --- rows ---------------------------------------------------------------------------------------
    def table(self, i: int) -> pa.Table:
        """Shard i, memory-mapped."""
        s = self.shards[i]
        try:
            return open_shard(s.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise ShardDirError(f"{s.path}: unreadable shard ({str(e).splitlines()[0]})") from None

    @property
    def rows_per_shard(self) -> list[int]:
        """Rows of each shard (the manifest's count, else the shard's own)."""
        if self._rows is None:
            self._rows = [s.info.rows if s.info is not None else self.table(i).num_rows
                          for i, s in enumerate(self.shards)]
        return self._rows

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_shard)

    def locate(self, row: int) -> tuple[int, int]:
        """Global row index (shards in order) -> (shard index, row inside it)."""
        if not 0 <= row < self.num_rows:
            raise ShardDirError(f"row {row} is outside [0, {self.num_rows}) of {self.path}")
        ends = np.cumsum(self.rows_per_shard)
        i = int(np.searchsorted(ends, row, side="right"))
        return i, row - (int(ends[i - 1]) if i else 0)

    def find_source(self, source_id: str) -> tuple[int, int]:
        """(shard index, row) of the first row whose source_id is `source_id`."""
        import pyarrow.compute as pc
        for i in range(len(self.shards)):
            hits = pc.index(self.table(i).column("source_id"), source_id).as_py()
            if hits >= 0:
                return i, hits
        raise ShardDirError(f"no row with source_id {source_id!r} in {self.path}")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def head_and_tail(items: list, keep: int, up_to: int | None = None) -> list:
    """All items if there are at most `up_to` (2*keep by default), else the first and last `keep`
    with a None between (where a listing says how many it left out): long listings stay short."""
    return items if len(items) <= (up_to or 2 * keep) else items[:keep] + [None] + items[-keep:]
