"""One work unit's record batches -> its shard files, rolled at --shard-size, each hashed once
complete (read back from the page cache it was just written through)."""

from __future__ import annotations

import os
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import ShardInfo
from schemas.shard import PATCH_BYTES, UNIT_SHARD_PATTERN
from schemas.storage import OutDir
from tokenizer_kit.files import file_sha256

COMPRESSIONS = ("none", "lz4", "zstd")

def estimated_bytes(tokens, patches, steps, string_bytes):
    """A row's bytes as shard rolling and batch cutting count them (whatever the compression), from
    its list lengths: ints for one row, or numpy arrays for a batch's rows at once."""
    return tokens * 8 + patches * (PATCH_BYTES + 4) + steps * 4 + string_bytes + 64


def row_nbytes(batch: pa.RecordBatch) -> np.ndarray:
    def lengths(name: str) -> np.ndarray:
        if name not in batch.schema.names:  # a version-2 text batch: no steps, no patches
            return np.zeros(batch.num_rows, np.int64)
        return np.diff(batch.column(name).offsets.to_numpy()).astype(np.int64)
    strings = (pc.binary_length(batch.column("source_id")).to_numpy(zero_copy_only=False)
               + pc.binary_length(batch.column("task")).to_numpy(zero_copy_only=False))
    return estimated_bytes(lengths("tokens"), lengths("patches"), lengths("step_starts"), strings.astype(np.int64))


class ShardWriter:
    """Shards `shard-UUUUU-000.arrow, -001, ...` of one unit: plain Arrow IPC streams, cut before
    the row that would overfill one (a row larger than a shard gets one of its own). Each appears
    under its name only complete (see OutDir.staged)."""

    def __init__(self, out: OutDir, unit_index: int, schema: pa.Schema, shard_size: int, compression: str = "none"):
        self.out, self.unit_index, self.shard_size = out, unit_index, shard_size
        self.schema = schema
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
                self._path = str(self._open.enter_context(self.out.staged(self._name())))
                self._stream = pa.ipc.new_stream(self._path, self.schema, options=self.options)  # closed once, by cut()
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
            info = ShardInfo(self._name(), self._rows, self._tokens, os.path.getsize(self._path),
                             file_sha256(self._path))
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
            try:  # raised into the staged file's context, which removes it instead of publishing it
                stack.__exit__(OSError, OSError("aborted"), None)
            except OSError:
                pass
        try:
            self.out.remove([s.name for s in self.shards])
        except OSError:
            pass

