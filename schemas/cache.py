"""A local cache of remote shards: each copy proven against the manifest before use, and a bounded
store shared by the processes of one machine.

Copies are named by their sha256 (checked to be 64 hex digits first: a manifest comes from a hub,
and its fields become paths only through schemas.names), renamed into place only after their
hash matched. A copy on disk is still not trusted blindly: before use its size must be the
manifest's and its sha256 must have matched once for this very file (same size, mtime and inode):
the process that proved it writes a proof (`.SHA.proof`, atomically) that the others check against
the file instead of hashing it again; a copy edited in place, truncated or replaced no longer
matches its proof and is hashed again. A bad copy is removed and fetched again once; a second bad
one is refused with one line.

Concurrency, with flock only (released by the kernel when a process dies, so nothing goes stale):
- The bookkeeping (what is on disk, reserving room, evicting) runs under an exclusive flock of
  the cache directory itself: there is no lock file to leave behind.
- A download first reserves the shard's size (from the manifest) by creating its partial file
  `.SHA.SIZE.part` under that lock and holding an exclusive flock on it; another process wanting
  the same shard waits on that flock, and a partial whose flock is free belongs to a dead process
  and is removed (when room is made, and once by each process's first download). Partials count
  at their reserved size, so on-disk bytes never pass the limit.
- A reader pins a copy with a shared flock on the copy itself, taken before it is mapped and held
  by the mapping (Python's mmap keeps a duplicate of the descriptor): a copy stays pinned exactly
  as long as some process maps it. Eviction takes an exclusive non-blocking flock on a copy and
  skips it when that fails, so a copy in use is never unlinked (no open-but-deleted bytes); a
  reader whose pin came after an eviction sees the file unlinked and fetches again.
- Past `limit` the least recently used (access time) unpinned copies go. A reader that needs room
  waits for it (pins are released as readers move on); a prefetch never waits. `check_room`
  refuses up front a limit below what the readers pin at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pyarrow as pa

from .cache_dir import (ProofKey, bookkeeping, disk_bytes, live_partial, make_room, part_path, pin_present,
                        proof_path, read_proof, reap_dead_partials, write_proof)
from .errors import ReaderError
from .names import check_sha256
from .object_copy import WrongSize, copy_hashed
from .storage import remote_fs, storage_error

CHUNK = 8 << 20  # bytes per read while hashing
PREFETCH_THREADS = 3  # most downloads under way at once (ShardCache._waited says when more than one)
PINS_PER_READER = 2  # copies one reader of one directory maps at once: the one it reads and the next
IDLE_EXIT_S = 10.0  # a download thread with nothing to do for this long ends
ROOM_WAIT_S = 600.0  # how long a reader waits for other readers to release room before giving up


def default_cache_dir() -> Path:
    """$GATO_KIT_CACHE, else $XDG_CACHE_HOME/gato-kit, else ~/.cache/gato-kit."""
    if os.environ.get("GATO_KIT_CACHE"):
        return Path(os.environ["GATO_KIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gato-kit"


def _fd_sha256(fd: int) -> str:
    """sha256 of the file behind fd (the pinned inode itself, whatever its path now names)."""
    h, off = hashlib.sha256(), 0
    while block := os.pread(fd, CHUNK, off):
        h.update(block)
        off += len(block)
    return h.hexdigest()


class ShardCache:
    """Verified local copies of remote shards under `root`, at most `limit` bytes (None: no limit)."""

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        self.limit = limit
        self.downloaded: list[str] = []  # names fetched by this process (what tests and benchmarks count)
        self._pid: int | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # prefetches not yet started, in order
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.download_threads, self._waits = 0, 0  # threads taking prefetches from the queue (see _waited)
        self._proven: dict[str, ProofKey] = {}
        self._reaped: int | None = None  # the pid that removed dead processes' partial downloads

    def __getstate__(self):
        d = dict(self.__dict__)
        d.update(_pid=None, _queue=None, _pending={}, _lock=None, _reaped=None, download_threads=0, _waits=0)
        return d

    def __setstate__(self, d):
        d.setdefault("_proven", {})
        d.setdefault("_reaped", None)
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def path_of(self, sha256: str) -> Path:
        """Where the copy of a shard with this sha256 lives (refused unless it is a sha256)."""
        return self.root / f"{check_sha256(sha256, 'shard cache: manifest')}.arrow"

    def check_room(self, sizes: list[int], readers: int) -> None:
        """Refuse (CacheLimitError, naming the minimum) a limit below what `readers` (one per
        process and directory read at once) pin at once: each maps one copy and fetches the next,
        at worst the largest shard each."""
        if self.limit is None or not sizes:
            return
        readers = max(1, readers)
        need = max(sizes) * PINS_PER_READER * readers
        if self.limit < need:
            raise CacheLimitError(f"--cache-limit {self.limit} bytes is below the {need} bytes that {readers} "
                                  f"reader(s) need at once ({PINS_PER_READER} copies each, the largest shard is "
                                  f"{max(sizes)} bytes); give at least --cache-limit {need}")

    # --- using a copy ----------------------------------------------------------------------------------
    def fetch(self, url: str, name: str, sha256: str, size: int | None = None) -> Path:
        """The proven local copy of shard `name` at `url` (`size` bytes when given): from the cache,
        from a prefetch under way, or downloaded now. A bad copy is refused (named, with both
        hashes) and downloaded once more; a second bad copy is a ReaderError. The copy is not
        pinned: a caller that maps it while others evict should use `open`."""
        fd = self._pinned(url, name, sha256, size)
        os.close(fd)
        return self.path_of(sha256)

    def open(self, url: str, name: str, sha256: str, size: int | None, opener):
        """opener(buffer) of the proven copy, memory-mapped: the copy stays pinned (never evicted)
        for as long as the mapping lives, i.e. as long as anything made from the buffer does."""
        fd = self._pinned(url, name, sha256, size)
        try:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # holds a duplicate of fd, and so the pin
        finally:
            os.close(fd)
        return opener(pa.py_buffer(mapped))

    def _pinned(self, url: str, name: str, sha256: str, size: int | None) -> int:
        """A read-only descriptor of the proven copy with a shared flock on it (the pin)."""
        dst = self.path_of(sha256)  # its shape, before anything else
        future = self._take_pending(sha256)
        if future is not None:
            if not future.done():
                self._waited()
            try:
                future.result()
            except Exception:  # fetched again below: the reader, not a prefetch, reports it
                pass
        for _ in range(3):
            fd = pin_present(dst)
            if fd is None:
                fd = self._download(url, name, sha256, size, wait=True)
            if fd is not None and self._proven_fd(fd, dst, sha256, size):
                self._use(dst)
                return fd
            if fd is not None:
                os.close(fd)
        raise ReaderError(f"{url}: the cached copy of shard {name} went away three times before it could be read "
                          f"(another process replaced or removed it)")

    def _proven_fd(self, fd: int, dst: Path, sha256: str, size: int | None) -> bool:
        """Whether the pinned copy is the shard: its size first, then its sha256 unless it was
        proven already for this very file (same size, mtime and inode), by this process or by the
        one whose proof file is beside it. A bad copy is removed."""
        st = os.fstat(fd)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if size is not None and st.st_size != size:
            reason = f"it has {st.st_size} bytes, the manifest says {size}"
        elif self._proven.get(sha256) == key or read_proof(self.root, sha256) == key:
            self._proven[sha256] = key
            return True
        else:
            got = _fd_sha256(fd)
            if got == sha256:
                self._write_proof(sha256, key)
                return True
            reason = f"its sha256 is {got}"
        print(f"gato-kit: cached copy {dst} refused ({reason}); fetching it again", file=sys.stderr)
        with bookkeeping(self.root):
            try:
                if os.stat(dst).st_ino == st.st_ino:
                    dst.unlink()
                    proof_path(self.root, sha256).unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        return False

    def _write_proof(self, sha256: str, key: ProofKey) -> None:
        self._proven[sha256] = key
        write_proof(self.root, sha256, key)

    def _use(self, dst: Path) -> None:
        """Mark dst recently used (its access time; its mtime is part of its proof)."""
        try:
            os.utime(dst, ns=(time.time_ns(), dst.stat().st_mtime_ns))
        except FileNotFoundError:
            pass

    # --- prefetching -----------------------------------------------------------------------------------
    def prefetch(self, items: list[tuple]) -> None:
        """Start downloading (url, name, sha256[, size]) items in background threads, in order. A
        prefetch takes only room the cache can give without waiting."""
        for url, name, sha256, *rest in items:
            if self.path_of(sha256).is_file():
                continue
            with self._own_lock():
                if sha256 in self._pending:
                    continue
                future: Future = Future()
                self._pending[sha256] = future
                self._queue.put((future, (url, name, sha256, rest[0] if rest else None)))
                if self.download_threads == 0:
                    self._start_download_thread()

    def _start_download_thread(self) -> None:
        self.download_threads += 1
        threading.Thread(target=self._take_prefetches, args=(self._queue,), daemon=True,
                         name=f"gato-prefetch_{self.download_threads - 1}").start()

    def _take_prefetches(self, work: queue.SimpleQueue) -> None:
        """A download thread: prefetches in the order they were asked for, until none came for
        IDLE_EXIT_S (a killed process's partial download is reclaimed by the next: cache_dir)."""
        while True:
            try:
                future, args = work.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._own_lock():  # (prefetch puts and counts under the same lock)
                    if work.empty():
                        self.download_threads -= 1
                        return
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                self._prefetch_one(*args)
                future.set_result(None)
            except BaseException as e:  # handed to the reader waiting on it, which fetches again
                future.set_exception(e)

    def _prefetch_one(self, url: str, name: str, sha256: str, size: int | None) -> None:
        fd = self._download(url, name, sha256, size, wait=False)
        if fd is not None:
            os.close(fd)

    def _waited(self) -> None:
        """A reader is about to wait for a prefetch. Downloads run one at a time: on a store
        that shares this machine's cores (a test server, MinIO beside the job) concurrent ones
        only split them and delay the copy waited for (a cold pass over 49 MB from moto: 0.17 s
        one at a time, 0.20 s three). The first wait is the cold start, which nothing could have
        avoided; a reader that waits again reads faster than one download brings shards, so one
        more download thread starts, up to PREFETCH_THREADS (as a store far away, S3, serves
        several at once faster than one)."""
        with self._own_lock():
            self._waits += 1
            if self._waits > 1 and self.download_threads < PREFETCH_THREADS:
                self._start_download_thread()

    def _take_pending(self, sha256: str) -> Future | None:
        with self._own_lock():
            return self._pending.pop(sha256, None)

    def _own_lock(self) -> threading.Lock:
        """This process's lock; a forked worker starts afresh (the parent's threads, downloads
        under way and lock state are not its own)."""
        if self._pid != os.getpid():
            self._lock, self._queue, self._pending, self._pid = threading.Lock(), queue.SimpleQueue(), {}, os.getpid()
            self.download_threads, self._waits = 0, 0
        return self._lock

    # --- downloading -----------------------------------------------------------------------------------
    def _download(self, url: str, name: str, sha256: str, size: int | None, wait: bool) -> int | None:
        """Download the shard into room reserved for it and return its copy pinned; None when it
        is not needed (a copy appeared) or, with wait=False, when the cache has no room now."""
        dst = self.path_of(sha256)
        if size is None:
            size = self._remote_size(url)
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ROOM_WAIT_S
        for attempt in range(2):
            part, part_fd = self._reserve(dst, sha256, size, wait, deadline)
            if part is None:
                return None if part_fd is None else part_fd  # a copy another process finished, pinned
            try:
                got = self._get(url, part, size)
                with bookkeeping(self.root):
                    if got == sha256:
                        os.replace(part, dst)
                        st = os.fstat(part_fd)
                        self._write_proof(sha256, (st.st_size, st.st_mtime_ns, st.st_ino))
                        os.close(part_fd)  # the download's own lock, released (waiters look again) ...
                        part_fd = None
                        pin = os.open(dst, os.O_RDONLY)
                        fcntl.flock(pin, fcntl.LOCK_SH)  # ... and the copy pinned before anyone may evict it
                        self.downloaded.append(name)
                        return pin
                    part.unlink(missing_ok=True)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            finally:
                if part_fd is not None:
                    os.close(part_fd)
            what = f"has sha256 {got}, the manifest says {sha256}" if len(got) == 64 else \
                f"{got.removeprefix('it ')} ({size} in the manifest)"
            if attempt == 0:
                print(f"gato-kit: refused {name}: it {what}; downloading it again", file=sys.stderr)
        raise ReaderError(f"{url}: shard {name} {what} (downloaded twice; the object is corrupt or was replaced)")

    def _reserve(self, dst: Path, sha256: str, size: int, wait: bool, deadline: float):
        """(partial path, its descriptor with an exclusive flock): room for `size` bytes reserved.
        (None, pinned copy) when the copy is there (another process may have just finished it);
        (None, None) when wait is False and there is no room now."""
        part = part_path(self.root, sha256, size)
        if self.limit is not None and size > self.limit:
            raise ReaderError(f"{dst.parent}: a shard of {size} bytes cannot fit in --cache-limit {self.limit} bytes")
        while True:
            with bookkeeping(self.root):
                if self._reaped != os.getpid():  # once per process: partials of killed processes go
                    self._reaped = os.getpid()
                    reap_dead_partials(self.root)
                fd = pin_present(dst)
                if fd is not None:
                    return None, fd
                other = live_partial(part)
                if other is None:
                    if make_room(self.root, self.limit, size, dst):
                        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                        fcntl.flock(fd, fcntl.LOCK_EX)  # free: a partial is created and locked only here
                        return part, fd
                    if not wait:
                        return None, None
            if other is not None:  # another process downloads it: wait for it, then look again
                if not wait:
                    os.close(other)
                    return None, None
                fcntl.flock(other, fcntl.LOCK_SH)
                os.close(other)
                continue
            if time.monotonic() > deadline:
                raise ReaderError(f"{dst.parent}: --cache-limit {self.limit} bytes held {ROOM_WAIT_S:.0f} s by copies "
                                  f"other readers keep mapped; no room for {size} more (raise --cache-limit)")
            time.sleep(0.05)

    def _get(self, url: str, part: Path, size: int) -> str:
        """Copy url into part, hashed on the way (schemas.object_copy); returns the hash, or (when
        its size is wrong) why the object is not the shard."""
        try:
            return copy_hashed(url, part, size)
        except WrongSize as e:
            return str(e)
        except FileNotFoundError:
            raise ReaderError(f"{url}: shard listed in the manifest is missing from the store") from None
        except Exception as e:  # the store's errors (botocore, aiohttp, pyarrow) share no base but Exception
            raise storage_error(url, e) from None

    def disk_bytes(self) -> int:
        """Bytes the cache holds or has reserved: copies, and partial downloads at their full size."""
        return disk_bytes(self.root)

    def _remote_size(self, url: str) -> int:
        fs, path = remote_fs(url)
        try:
            return int(fs.size(path))
        except FileNotFoundError:
            raise ReaderError(f"{url}: shard listed in the manifest is missing from the store") from None
        except Exception as e:
            raise storage_error(url, e) from None

class CacheLimitError(ValueError):
    """A --cache-limit below what the readers need at once (bad usage, named with the minimum)."""
