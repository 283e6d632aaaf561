"""A mapped shard as a reader holds it, and the memory its pages pin: the record batches with their
views and checks, and releasing read pages (madvise) so a reader's resident memory stays flat as
the data grows (trainer/stream.py looks at it every few batches)."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.reader import BatchView

# --- releasing mapped pages -------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LIBC = None


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path`, from /proc/self/maps."""
    target, out = str(path.resolve()), []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == target:
                    a, b = parts[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:
        pass
    return out


def mapped_region(table: pa.Table, path: Path) -> tuple[int, int] | None:
    """Page-aligned (address, length) span of a table's buffers that lie inside a mapping of the
    shard file: never heap memory, which MADV_DONTNEED would wipe (a lean shard's derived
    columns and widened ids live on the heap beside its mapped patches)."""
    maps = file_mappings(path)
    lo, hi = None, None
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size and any(a <= buf.address and buf.address + buf.size <= b
                                                        for a, b in maps):
                    lo = buf.address if lo is None else min(lo, buf.address)
                    hi = buf.address + buf.size if hi is None else max(hi, buf.address + buf.size)
    if lo is None or hi is None:  # no buffer in the file: both are None
        return None
    lo -= lo % _PAGE
    if not any(a <= lo and hi <= b for a, b in maps):
        return None
    return lo, hi - lo


def mapped_mb() -> float:
    """File-backed resident memory of this process (statm `shared`), cheap to read every batch."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[2]) * _PAGE / 2**20
    except OSError:
        return 0.0


def madvise_dontneed(addr: int, length: int) -> None:
    """madvise(MADV_DONTNEED) on a read-only file mapping: drops the page-table entries only;
    the data is read again from the page cache on the next touch. Linux only; a no-op elsewhere."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _LIBC.madvise(addr, length, 4)  # MADV_DONTNEED


# --- one mapped shard ---------------------------------------------------------------------------------

@dataclass
class MappedShard:
    """A mapped shard: its record batches, their views, row starts and contract checks."""

    name: str
    batches: list[pa.RecordBatch]
    views: list[BatchView]
    bounds: list[int]  # first row of each batch, then the shard's row count (for bisect)
    tasks: np.ndarray  # task index (into the source's list) of every row
    region: tuple[int, int] | None | Path  # the shard's path until the span is first needed
    checked: list[bool] = field(default_factory=list)
    flat: list[np.ndarray] = field(default_factory=list)  # each batch's tokens, rows back to back
    tok_starts: list[int] = field(default_factory=list)  # first token of each batch in the shard, then the total
    # first token of each row in the shard, then the total (set with the token stream: source._index_tokens)
    row_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    constant: bool = False  # every row's per-token columns are text's (loss 1, no position, no patch)
    one_task: int | None = None  # the task of every row, when they share one
