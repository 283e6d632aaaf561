"""The cache directory on disk, as every process of a machine shares it: copies (`SHA.arrow`),
partial downloads holding their reserved room (`.SHA.SIZE.part`), proofs (`.SHA.proof`), the
cache-wide lock, and room made by evicting least recently used copies nobody has pinned.

Only flock is used (the kernel releases it when a process dies, so nothing goes stale): the
bookkeeping lock is an flock of the directory itself, a live download holds an exclusive flock on
its partial, and a reader's pin is a shared flock on the copy (schemas.cache says how they fit).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from tokenizer_kit.files import atomic_path

ProofKey = tuple[int, int, int]  # (size, mtime_ns, inode) of the file a sha256 was taken of


class Entry(NamedTuple):
    """A copy or a partial download: its bytes (a partial at its reserved size) and last use."""

    size: int
    atime_ns: int
    path: Path
    is_copy: bool


def try_lock(fd: int, how: int) -> bool:
    """flock without waiting: whether it was taken."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def part_path(root: Path, sha256: str, size: int) -> Path:
    return root / f".{sha256}.{int(size)}.part"


def proof_path(root: Path, sha256: str) -> Path:
    return root / f".{sha256}.proof"


@contextmanager
def bookkeeping(root: Path) -> Iterator[None]:
    """The cache-wide exclusive lock: an flock of the cache directory (a fresh descriptor each
    time, so threads of one process exclude each other too)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def entries(root: Path) -> list[Entry]:
    """Every copy and partial download under root."""
    out: list[Entry] = []
    try:
        found = list(os.scandir(root))
    except FileNotFoundError:
        return out
    for e in found:
        copy = e.name.endswith(".arrow") and not e.name.startswith(".")
        part = e.name.startswith(".") and e.name.endswith(".part")
        if not (copy or part):
            continue
        try:
            st = e.stat()
        except FileNotFoundError:
            continue
        fields = e.name.split(".")  # a partial is `.SHA.SIZE.part`; anything else counts its bytes only
        reserved = int(fields[2]) if part and len(fields) == 4 and fields[2].isdigit() else 0
        out.append(Entry(max(st.st_size, reserved), st.st_atime_ns, Path(e.path), copy))
    return out


def disk_bytes(root: Path) -> int:
    """Bytes the cache holds or has reserved: copies, and partial downloads at their full size."""
    return sum(e.size for e in entries(root))


def live_partial(part: Path) -> int | None:
    """A descriptor of `part` when a live process is downloading into it (its flock is held); a
    partial left by a dead process is removed. Called under the bookkeeping lock."""
    try:
        fd = os.open(part, os.O_RDONLY)
    except FileNotFoundError:
        return None
    if try_lock(fd, fcntl.LOCK_SH):  # nobody holds it exclusively: its downloader is gone
        part.unlink(missing_ok=True)
        os.close(fd)
        return None
    return fd


def reap_dead_partials(root: Path) -> None:
    """Remove the partial downloads of processes that died (under the bookkeeping lock)."""
    for e in entries(root):
        if not e.is_copy and (live := live_partial(e.path)) is not None:
            os.close(live)


def evict(p: Path) -> bool:
    """Unlink the copy at p (and its proof) unless it is pinned (mapped or being opened by a reader)."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        if not try_lock(fd, fcntl.LOCK_EX):
            return False
        p.unlink(missing_ok=True)
        (p.parent / f".{p.stem}.proof").unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def make_room(root: Path, limit: int | None, size: int, keep: Path) -> bool:
    """Whether `size` more bytes fit within `limit`, once least recently used unpinned copies are
    evicted (never `keep`) and dead processes' partials removed. Called under the bookkeeping lock."""
    if limit is None:
        return True
    found = entries(root)
    total = sum(e.size for e in found)
    for e in sorted(found, key=lambda x: x.atime_ns):
        if total + size <= limit:
            break
        if not e.is_copy:
            live = live_partial(e.path)
            if live is None:  # a dead process's partial, removed
                total -= e.size
            else:
                os.close(live)
        elif e.path != keep and evict(e.path):
            total -= e.size
    return total + size <= limit


def pin_present(dst: Path) -> int | None:
    """A shared flock (the pin) on the copy at dst if one is still linked there once the pin is
    taken (an evictor holds an exclusive flock while it unlinks, so a pin taken after it sees the
    file gone)."""
    try:
        fd = os.open(dst, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        if os.fstat(fd).st_ino == os.stat(dst).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def read_proof(root: Path, sha256: str) -> ProofKey | None:
    """The (size, mtime, inode) some process proved to hash to sha256, if its proof is readable."""
    try:
        p = json.loads(proof_path(root, sha256).read_text())
        return (p["size"], p["mtime_ns"], p["ino"]) if p.get("sha256") == sha256 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_proof(root: Path, sha256: str, key: ProofKey) -> None:
    """Record that the file with this (size, mtime, inode) hashed to sha256, atomically (a reader
    sees the whole record or none); best effort: without it other processes hash the copy themselves."""
    try:
        with atomic_path(proof_path(root, sha256), fsync=False) as tmp:  # a lost proof costs one hash, no more
            tmp.write_text(json.dumps({"sha256": sha256, "size": key[0], "mtime_ns": key[1], "ino": key[2]}))
    except OSError:
        pass
