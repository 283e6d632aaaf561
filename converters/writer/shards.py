"""One work unit's record batches -> its shard files, rolled at --shard-size, hashed as written."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import ShardInfo
from schemas.shard import PATCH_BYTES, UNIT_SHARD_PATTERN, shard_schema
from schemas.storage import OutDir


COMPRESSIONS = ("none", "lz4", "zstd")

def row_nbytes(batch: pa.RecordBatch) -> np.ndarray:
    """Estimated bytes of each row (what shard rolling counts, whatever the compression), vectorised."""
    def lengths(name: str) -> np.ndarray:
        return np.diff(batch.column(name).offsets.to_numpy()).astype(np.int64)
    strings = (pc.binary_length(batch.column("source_id")).to_numpy(zero_copy_only=False)
               + pc.binary_length(batch.column("task")).to_numpy(zero_copy_only=False))
    return (lengths("tokens") * 8 + lengths("patches") * (PATCH_BYTES + 4) + lengths("step_starts") * 4
            + strings.astype(np.int64) + 64)


class _Hashing:
    """The file pyarrow's stream writer writes to: the sha256 is taken as the bytes go out."""

    def __init__(self, file):
        self.file, self.sha, self.size, self.closed = file, hashlib.sha256(), 0, False

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.closed = True


class ShardWriter:
    """Shards `shard-UUUUU-000.arrow, -001, ...` of one unit: plain Arrow IPC streams, cut before
    the row that would overfill one (a row larger than a shard gets one of its own). Each appears
    under its name only complete (see OutDir.staged)."""

    def __init__(self, out: OutDir, unit_index: int, rl: bool, shard_size: int, compression: str = "none"):
        self.out, self.unit_index, self.shard_size = out, unit_index, shard_size
        self.schema = shard_schema(rl)
        self.options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
        self.shards: list[ShardInfo] = []
        self._open: ExitStack | None = None
        self._rows = self._tokens = self._filled = 0

    def add(self, batch: pa.RecordBatch) -> None:
        sizes = row_nbytes(batch)
        start = 0
        while start < len(sizes):
            cum = np.cumsum(sizes[start:])
            take = int(np.searchsorted(cum, self.shard_size - self._filled, side="right"))
            if take == 0 and self._filled == 0:
                take = 1
            if take == 0:
                self.cut()
                continue
            piece = batch if start == 0 and take == len(sizes) else batch.slice(start, take)
            self._write(piece)
            self._filled += int(cum[take - 1])
            start += take

    def _name(self) -> str:
        return UNIT_SHARD_PATTERN.format(self.unit_index, len(self.shards))

    def _write(self, piece: pa.RecordBatch) -> None:
        with self.out.errors(f"write {self._name()}"):
            if self._open is None:
                self._open = ExitStack()
                path = self._open.enter_context(self.out.staged(self._name()))
                self._file = _Hashing(self._open.enter_context(open(path, "wb")))
                self._stream = pa.ipc.new_stream(self._file, self.schema, options=self.options)
                self._rows = self._tokens = 0
            self._stream.write_batch(piece)
        offs = piece.column("tokens").offsets
        self._rows += piece.num_rows
        self._tokens += int(offs[-1].as_py()) - int(offs[0].as_py())

    def cut(self) -> None:
        """Finish the open shard (it appears under its name now)."""
        self._filled = 0
        if self._open is None:
            return
        with self.out.errors(f"write {self._name()}"):
            self._stream.close()
            self._file.flush()
            info = ShardInfo(self._name(), self._rows, self._tokens, self._file.size, self._file.sha.hexdigest())
            stack, self._open = self._open, None
            stack.close()
        self.shards.append(info)

    def close(self) -> list[ShardInfo]:
        self.cut()
        return self.shards

    def abort(self) -> None:
        """Remove the open shard's temporary file and the unit's finished shards (no marker will vouch
        for them), best effort: the first error is the one to report."""
        if self._open is not None:
            stack, self._open = self._open, None
            try:
                stack.__exit__(_Aborted, _Aborted(), None)
            except (_Aborted, OSError):
                pass
        try:
            self.out.remove([s.name for s in self.shards])
        except OSError:
            pass


class _Aborted(Exception):
    """Thrown into an open shard's context so that its temporary file is removed."""
