"""One work unit's record batches -> its shard files, rolled at --shard-size (bytes on disk, after
compression), each hashed as it grows: the bytes of every piece are read back (from the page cache
they were just written through) right after it is written, so closing a shard hashes only its end
marker instead of reading the whole file again while nothing else of the unit can run."""

from __future__ import annotations

import hashlib
import itertools
import os
from contextlib import ExitStack
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.manifest import ShardInfo
from schemas.shard import PATCH_BYTES, UNIT_SHARD_PATTERN
from schemas.storage import OutDir

COMPRESSIONS = ("none", "lz4", "zstd")
HASH_READ_BYTES = 1 << 22  # read back for hashing this much at a time

def estimated_bytes(tokens, patches, steps, string_bytes):
    """A row's bytes as shard rolling and batch cutting count them (whatever the compression), from
    its list lengths: ints for one row, or numpy arrays for a batch's rows at once."""
    return tokens * 8 + patches * (PATCH_BYTES + 4) + steps * 4 + string_bytes + 64


def row_nbytes(batch: pa.RecordBatch) -> np.ndarray:
    def lengths(name: str) -> np.ndarray:
        if name not in batch.schema.names:  # a lean text batch: no steps, no patches
            return np.zeros(batch.num_rows, np.int64)
        return np.diff(batch.column(name).offsets.to_numpy()).astype(np.int64)
    strings = (pc.binary_length(batch.column("source_id")).to_numpy(zero_copy_only=False)
               + pc.binary_length(batch.column("task")).to_numpy(zero_copy_only=False))
    return estimated_bytes(lengths("tokens"), lengths("patches"), lengths("step_starts"), strings.astype(np.int64))


EOS_BYTES = 8  # the end-of-stream marker closing a shard
PIECES_PER_SHARD = 8  # a shard is written in at least this many record batches: the last ones are small,
# so a shard ends close to --shard-size on disk whatever the compression ratio does within it


class ShardWriter:
    """Shards `shard-UUUUU-000.arrow, -001, ...` of one unit: plain Arrow IPC streams, cut before
    the row that would make the file larger than --shard-size on disk (a row larger than a shard gets
    one of its own). Each appears under its name only complete (see OutDir.staged).

    Why on disk: with zstd, pixel rows compress 10-100x, so a size counted before compression made
    thousands of tiny files. A row's compressed size is known only once written, so rows are written
    in pieces, each sized by the bytes on disk per estimated byte measured so far in this unit."""

    def __init__(self, out: OutDir, unit_index: int, schema: pa.Schema, shard_size: int, compression: str = "none",
                 split: str = "train", numbers: Iterator[int] | None = None):
        """`split`: what the manifest says of these shards' rows; `numbers`: where shard numbers come
        from (a unit's train and test writers share one count, so their names never collide)."""
        self.out, self.unit_index, self.shard_size, self.split = out, unit_index, shard_size, split
        self._numbers = numbers if numbers is not None else itertools.count()
        self._number = 0
        self.schema = schema
        self.options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
        self.shards: list[ShardInfo] = []
        self._open: ExitStack | None = None
        self._reader: int | None = None  # the open shard read back for its sha256 (a descriptor)
        self._rows = self._tokens = self._filled = 0  # _filled: the open shard's bytes on disk
        self._est_total = self._disk_total = 0  # estimated bytes written, and what they took on disk
        self._framing: int | None = None  # bytes of an empty stream (schema and end marker)

    def _ratio(self) -> float:
        """Bytes on disk per estimated byte (compression and framing) over what this unit wrote."""
        return self._disk_total / self._est_total if self._est_total else 1.0

    def add(self, batch: pa.RecordBatch) -> None:
        sizes = row_nbytes(batch)
        start = 0
        while start < len(sizes):
            cum = np.cumsum(sizes[start:]) * self._ratio()  # expected bytes on disk
            room = self.shard_size - (self._filled or self._framing or 0) - EOS_BYTES
            take = int(np.searchsorted(cum, min(room, self.shard_size / PIECES_PER_SHARD), side="right"))
            if take == 0 and (self._filled == 0 or cum[0] <= room):
                take = 1
            if take and cum[take - 1] > room / 2:  # near the limit: the piece's exact size decides
                while take > 1 and self._exact_size(batch.slice(start, take)) > room:
                    take //= 2
                if self._filled and self._exact_size(batch.slice(start, take)) > room:
                    take = 0
            if take == 0:
                self.cut()
                continue
            piece = batch if start == 0 and take == len(sizes) else batch.slice(start, take)
            before = self._filled
            self._write(piece)
            self._filled = self._sink.tell()
            self._est_total += int(sizes[start:start + take].sum())
            self._disk_total += self._filled - before
            start += take

    def _exact_size(self, piece: pa.RecordBatch) -> int:
        """The bytes `piece` takes in a shard (compressed as it will be), written to memory."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema, options=self.options) as w:
            w.write_batch(piece)
        if self._framing is None:
            empty = pa.BufferOutputStream()
            pa.ipc.new_stream(empty, self.schema, options=self.options).close()
            self._framing = empty.tell()
        return sink.tell() - self._framing

    def _name(self) -> str:
        return UNIT_SHARD_PATTERN.format(self.unit_index, self._number)

    def _write(self, piece: pa.RecordBatch) -> None:
        if self._open is None:
            self._number = next(self._numbers)
        with self.out.errors(f"write {self._name()}"):
            if self._open is None:
                self._open = ExitStack()
                self._path = str(self._open.enter_context(self.out.staged(self._name())))
                self._sink = pa.OSFile(self._path, "wb")  # unbuffered: written bytes are in the file at once
                self._reader = os.open(self._path, os.O_RDONLY)
                self._hash, self._hashed = hashlib.sha256(), 0
                self._stream = pa.ipc.new_stream(self._sink, self.schema, options=self.options)  # closed by cut()
                self._rows = self._tokens = 0
            self._stream.write_batch(piece)
            self._hash_written(self._sink.tell())
        offs = piece.column("tokens").offsets
        self._rows += piece.num_rows
        self._tokens += int(offs[-1].as_py()) - int(offs[0].as_py())

    def _hash_written(self, end: int) -> None:
        """Add the open shard's bytes up to `end` to its sha256, read back from the file."""
        assert self._reader is not None  # opened with the shard, in add()
        while self._hashed < end:
            block = os.pread(self._reader, min(HASH_READ_BYTES, end - self._hashed), self._hashed)
            if not block:
                raise OSError(f"{self._path}: {end - self._hashed} written bytes cannot be read back")
            self._hash.update(block)
            self._hashed += len(block)

    def _close_reader(self) -> None:
        fd, self._reader = self._reader, None
        if fd is not None:
            os.close(fd)

    def cut(self) -> None:
        """Finish the open shard (it appears under its name now)."""
        self._filled = 0
        if self._open is None:
            return
        with self.out.errors(f"write {self._name()}"):
            self._stream.close()
            self._sink.close()
            size = os.path.getsize(self._path)
            self._hash_written(size)  # the end-of-stream marker
            self._close_reader()
            info = ShardInfo(self._name(), self._rows, self._tokens, size, self._hash.hexdigest(), self.split)
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
            for close in (self._sink.close, self._close_reader):
                try:
                    close()
                except OSError:
                    pass
            try:  # raised into the staged file's context, which removes it instead of publishing it
                stack.__exit__(OSError, OSError("aborted"), None)
            except OSError:
                pass
        try:
            self.out.remove([s.name for s in self.shards])
        except OSError:
            pass

