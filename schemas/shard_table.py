"""The manifest's per-shard records as one compact Arrow table (`shards.arrow`) beside a small JSON
head, for directories with many shards: 200,000 shards are ~190 bytes each as JSON (38 MB that
every rank would parse into 200,000 objects), and ~45 bytes each here, read as a few columns.

The table has one column per ShardInfo field (whatever fields it has), sha256 as 32 raw bytes.
It is a sequence of ShardInfo, so code that walks `manifest.shards` reads it unchanged; readers
that need a whole column (rows per shard) take it vectorised with `column()`.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.errors import first_line

from .shard import SHARD_NAME_RE

SHARD_TABLE_NAME = "shards.arrow"
COMPACT_SHARDS = 10_000  # more shards than this: the manifest's shards go to the table

if TYPE_CHECKING:
    from .manifest import ShardInfo


def _shard_info():
    from .manifest import ShardInfo  # noqa: PLC0415 - circular: manifest imports this module
    return ShardInfo


class ShardTable(Sequence["ShardInfo"]):
    """ShardInfo records held as Arrow columns; item i is built when asked for."""

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()
        self._names = [f.name for f in fields(_shard_info())]

    @classmethod
    def from_infos(cls, infos: Sequence) -> "ShardTable":
        cols = {}
        for name in (f.name for f in fields(_shard_info())):
            values = [getattr(s, name) for s in infos]
            if name == "sha256":
                cols[name] = pa.array([bytes.fromhex(v) for v in values], pa.binary(32))
            else:
                cols[name] = pa.array(values)
        return cls(pa.table(cols))

    def to_bytes(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, self.table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
            w.write_table(self.table)
        return sink.getvalue().to_pybytes()

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str, count: int, sha256: str) -> "ShardTable":
        """The table in `data` (the file at `where`), checked against what the manifest's head says
        of it; anything else is a ManifestError naming the file."""
        from .manifest import ManifestError  # noqa: PLC0415 - circular: manifest imports this module
        if cls.digest(data) != sha256:
            raise ManifestError(f"{where}: sha256 {cls.digest(data)} differs from the manifest's {sha256}")
        try:
            # the system allocator: mimalloc's arenas (Arrow's default) held ~8 MB past the table's
            # 18 MB for 200,000 shards, in every rank, for the rank's whole life
            table = pa.ipc.open_file(pa.BufferReader(data), memory_pool=pa.system_memory_pool()).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise ManifestError(f"{where}: unreadable shard table ({first_line(e)})") from None
        want = [f.name for f in fields(_shard_info())]
        if table.num_rows != count or any(n not in table.column_names for n in want):
            raise ManifestError(f"{where}: {table.num_rows} shards with columns {table.column_names}; the manifest "
                                f"says {count} with {want}")
        return cls(table.select(want))

    def check(self, where: str) -> None:
        """The table is data from a hub as much as the manifest naming it: every shard name of the
        shard pattern and listed once, sha256s 32 bytes, counts non-negative integers, splits known
        (manifest.check_shard_list's rule, vectorised: 200,000 shards are checked in milliseconds)."""
        import pyarrow.compute as pc  # noqa: PLC0415 - start-up time: pyarrow.compute costs ~90 ms, needed on few paths

        from .manifest import SPLITS, ManifestError  # noqa: PLC0415 - circular: manifest imports this module
        t, n = self.table, self.table.num_rows
        names = t.column("name")
        if not pa.types.is_string(names.type) or names.null_count or (n and not pc.all(
                pc.match_substring_regex(names, SHARD_NAME_RE)).as_py()):
            raise ManifestError(f"{where}: a shard name that is not a shard file's name")
        if _has_duplicates(names):
            raise ManifestError(f"{where}: a shard is listed twice")
        if t.schema.field("sha256").type != pa.binary(32) or t.column("sha256").null_count:
            raise ManifestError(f"{where}: sha256 must be 32 bytes for every shard")
        for key in ("rows", "tokens", "bytes"):
            col = t.column(key)
            if not pa.types.is_integer(col.type) or col.null_count or (n and pc.min(col).as_py() < 0):
                raise ManifestError(f"{where}: {key} must be non-negative integers")
        # the distinct splits, compared in Python: pa.array of a Python list would import pandas
        # (pyarrow looks for it), some 90 MB in every rank that opens a manifest
        if "split" in t.column_names and n and not set(pc.unique(t.column("split")).to_pylist()) <= set(SPLITS):
            raise ManifestError(f"{where}: a split that is not one of {', '.join(SPLITS)}")

    def where_split(self, split: str) -> "ShardTable":
        """The shards of one split (train or test), still as a table."""
        import pyarrow.compute as pc  # noqa: PLC0415 - start-up time: pyarrow.compute costs ~90 ms, needed on few paths
        return ShardTable(self.table.filter(pc.equal(self.table.column("split"), split)))

    def column(self, name: str) -> np.ndarray:
        """One field of every shard (ints as int64)."""
        col = self.table.column(name).combine_chunks()
        if pa.types.is_int64(col.type) and col.null_count == 0:  # a view of the buffer: no copy, no pandas
            return np.frombuffer(col.buffers()[1], np.int64, count=len(col), offset=col.offset * 8)
        if name == "sha256":
            return np.asarray([v.hex() for v in col.to_pylist()], dtype=object)
        return np.asarray(col.to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"shard {i} of {n}")
        i = i % n if i < 0 else i
        values = {name: self.table.column(name)[i].as_py() for name in self._names}
        values["sha256"] = values["sha256"].hex()
        return _shard_info()(**values)

    def __iter__(self) -> Iterator:
        batch = 4096  # a few thousand records as Python values at a time, not all 200,000
        for start in range(0, len(self), batch):
            part = self.table.slice(start, batch).to_pydict()
            part["sha256"] = [v.hex() for v in part["sha256"]]
            info = _shard_info()
            yield from (info(*vals) for vals in zip(*(part[n] for n in self._names)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"ShardTable({len(self)} shards)"


def column(shards: Sequence, name: str) -> np.ndarray:
    """One field of every shard of a manifest, vectorised when its shards are a ShardTable."""
    if isinstance(shards, ShardTable):
        return shards.column(name)
    return np.asarray([getattr(s, name) for s in shards])


def _has_duplicates(names: pa.ChunkedArray) -> bool:
    """Whether a string column holds a value twice, by order rather than by hashing: pyarrow's hash
    kernels (count_distinct, unique) held 44 MB of a rank's memory for 200,000 shard names. A
    writer lists its shards in name order, so the usual case is one comparison of neighbours."""
    import pyarrow.compute as pc  # noqa: PLC0415 - start-up time: pyarrow.compute costs ~90 ms, needed on few paths
    col = names.combine_chunks()
    n = len(col)
    if n < 2:
        return False
    if pc.all(pc.less(col.slice(0, n - 1), col.slice(1))).as_py():
        return False
    ordered = col.take(pc.sort_indices(col))
    return bool(pc.any(pc.equal(ordered.slice(0, n - 1), ordered.slice(1))).as_py())
