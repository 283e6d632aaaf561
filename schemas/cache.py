"""A local cache of remote shards: each copy proven against the manifest before use.

Copies are named by their sha256 (checked to be 64 hex digits first: a manifest comes from a hub,
and its fields become paths only through schemas.names), renamed into place only after their
hash matched. A copy on disk is still not trusted blindly: before use its size must be the
manifest's, and its sha256 is computed again once per process and whenever its size, mtime or
inode changed (a copy edited in place, truncated or replaced is caught). A bad copy is removed and
fetched again once; a second bad one is refused with one line.

Several processes (DataLoader workers, ranks of one node) may share a cache directory: a lock
file per shard makes one of them download while the others wait, and a reader holds a shared
lock on it while it maps the copy (a pin), which eviction respects. Past `limit` bytes the least
recently used (by access time) unpinned copies are deleted (a process still mapping one keeps its
pages: unlinking a mapped file is safe on POSIX). `check_room` refuses up front a limit below what
the readers need at once. Background threads download the shards a reader will need next.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tokenizer_kit.files import file_sha256

from .errors import ReaderError
from .names import check_sha256
from .storage import remote_fs, storage_error

CHUNK = 8 << 20  # bytes per read while hashing
PREFETCH_THREADS = 3  # downloads under way at once (a store serves several faster than one)


def default_cache_dir() -> Path:
    """$GATO_KIT_CACHE, else $XDG_CACHE_HOME/gato-kit, else ~/.cache/gato-kit."""
    if os.environ.get("GATO_KIT_CACHE"):
        return Path(os.environ["GATO_KIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gato-kit"


class ShardCache:
    """Verified local copies of remote shards under `root`, at most `limit` bytes (None: no limit)."""

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        self.limit = limit
        self.downloaded: list[str] = []  # names fetched by this process (what tests and benchmarks count)
        self._pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        # sha256 -> (size, mtime, inode) of copies this process hashed: not hashed again
        self._proven: dict[str, tuple[int, int, int]] = {}
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        d.update(_pid=None, _pool=None, _pending={}, _lock=None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def path_of(self, sha256: str) -> Path:
        """Where the copy of a shard with this sha256 lives (refused unless it is a sha256)."""
        return self.root / f"{check_sha256(sha256, 'shard cache: manifest')}.arrow"

    def _lock_path(self, sha256: str) -> Path:
        return self.root / f".{check_sha256(sha256, 'shard cache: manifest')}.lock"

    def check_room(self, sizes: list[int], readers: int) -> None:
        """Refuse (CacheLimitError, naming the minimum) a limit below what `readers` processes need
        at once: each pins one copy while mapping it, at worst the largest shard."""
        if self.limit is None or not sizes:
            return
        need = max(sizes) * max(1, readers)
        if self.limit < need:
            raise CacheLimitError(f"--cache-limit {self.limit} bytes is below the {need} bytes that {max(1, readers)} "
                                  f"reader(s) need at once (the largest shard is {max(sizes)} bytes); "
                                  f"give at least --cache-limit {need}")

    # --- fetching ------------------------------------------------------------------------------------
    def fetch(self, url: str, name: str, sha256: str, size: int | None = None) -> Path:
        """The proven local copy of shard `name` at `url` (`size` bytes when given): from the cache,
        from a prefetch under way, or downloaded now. A bad copy is refused (named, with both
        hashes) and downloaded once more; a second bad copy is a ReaderError."""
        self.path_of(sha256)  # its shape, before anything else
        future = self._take_pending(sha256)
        if future is not None:
            got = future.result()
            if self._proven_now(got, sha256, size):
                return got
        return self._fetch(url, name, sha256, size)

    def open(self, url: str, name: str, sha256: str, size: int | None, opener):
        """opener(path) of the proven copy, with the copy pinned (not evicted) while it runs. A copy
        another process evicted between fetching and pinning is fetched again (three tries)."""
        for _ in range(3):
            dst = self.fetch(url, name, sha256, size)
            with open(self._lock_path(sha256), "a+") as pin:
                fcntl.flock(pin, fcntl.LOCK_SH)
                if dst.is_file():
                    return opener(dst)
        raise ReaderError(f"{url}: the cached copy of shard {name} was evicted three times before it could be read "
                          f"(raise --cache-limit)")

    def prefetch(self, items: list[tuple]) -> None:
        """Start downloading (url, name, sha256[, size]) items in background threads, in order."""
        for url, name, sha256, *rest in items:
            if self.path_of(sha256).is_file():
                continue
            with self._own_lock():
                if sha256 in self._pending:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="gato-prefetch")
                self._pending[sha256] = self._pool.submit(self._fetch, url, name, sha256, rest[0] if rest else None)

    def _take_pending(self, sha256: str) -> Future | None:
        with self._own_lock():
            return self._pending.pop(sha256, None)

    def _own_lock(self) -> threading.Lock:
        """This process's lock; a forked worker starts afresh (the parent's threads, downloads
        under way and lock state are not its own)."""
        if self._pid != os.getpid():
            self._lock, self._pool, self._pending, self._pid = threading.Lock(), None, {}, os.getpid()
        return self._lock

    def _proven_now(self, dst: Path, sha256: str, size: int | None) -> bool:
        """Whether the copy at dst is the shard: its size first, then its sha256 unless this process
        already hashed this very file (same size, mtime and inode). A bad copy is removed."""
        try:
            st = dst.stat()
        except FileNotFoundError:
            return False
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if size is not None and st.st_size != size:
            reason = f"it has {st.st_size} bytes, the manifest says {size}"
        elif self._proven.get(sha256) == key:
            return True
        else:
            got = file_sha256(dst, CHUNK)
            if got == sha256:
                self._proven[sha256] = key
                return True
            reason = f"its sha256 is {got}"
        print(f"gato-kit: cached copy {dst} refused ({reason}); fetching it again", file=sys.stderr)
        dst.unlink(missing_ok=True)
        return False

    def _use(self, dst: Path) -> Path:
        """Mark dst recently used (its access time; its mtime is part of its proof)."""
        try:
            os.utime(dst, ns=(time.time_ns(), dst.stat().st_mtime_ns))
        except FileNotFoundError:
            pass
        return dst

    def _fetch(self, url: str, name: str, sha256: str, size: int | None = None) -> Path:
        dst = self.path_of(sha256)
        if self._proven_now(dst, sha256, size):
            return self._use(dst)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path(sha256), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be downloading it right now
            if self._proven_now(dst, sha256, size):
                return self._use(dst)
            got = self._download(url, dst, size)
            if got != sha256:
                print(f"gato-kit: refused {name}: its sha256 is {got}, the manifest says {sha256}; "
                      "downloading it again", file=sys.stderr)
                got = self._download(url, dst, size)
                if got != sha256:
                    raise ReaderError(f"{url}: shard {name} has sha256 {got}, the manifest says {sha256} "
                                      "(downloaded twice; the object is corrupt or was replaced)")
            st = dst.stat()
            self._proven[sha256] = (st.st_size, st.st_mtime_ns, st.st_ino)
            self.downloaded.append(name)
        self._evict(keep=dst)
        return dst

    def _download(self, url: str, dst: Path, size: int | None = None) -> str:
        """Copy url to dst under a temporary name and hash it; returns the hash. dst appears only
        when the hash is its name (the manifest's); a bad copy is removed. (The copy is hashed
        from the page cache right after it lands: as fast as hashing while it streams, and the
        download itself is the backend's own, as fast as a plain `get`.)"""
        fs, path = remote_fs(url)
        tmp = dst.with_name(f".{dst.name}.part{os.getpid()}-{threading.get_ident()}")
        try:
            fs.get_file(path, str(tmp))
            digest = file_sha256(tmp, CHUNK)
            if size is not None and tmp.stat().st_size != size:
                digest = f"{digest} ({tmp.stat().st_size} bytes, the manifest says {size})"
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise ReaderError(f"{url}: shard listed in the manifest is missing from the store") from None
        except Exception as e:  # the store's errors (botocore, aiohttp) share no base but Exception
            tmp.unlink(missing_ok=True)
            raise storage_error(url, e) from None
        if digest == dst.stem:
            os.replace(tmp, dst)
        else:
            tmp.unlink(missing_ok=True)
        return digest

    # --- eviction --------------------------------------------------------------------------------------
    def _evict(self, keep: Path) -> None:
        """Delete least recently used copies until the cache is within its limit (never `keep`,
        never a copy a reader has pinned)."""
        if self.limit is None:
            return
        files = []
        for p in self.root.glob("*.arrow"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            files.append((st.st_atime_ns, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.limit:
                break
            if p == keep:
                continue
            with open(self.root / f".{p.stem}.lock", "a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # pinned by a reader, or being fetched again
                    continue
                p.unlink(missing_ok=True)
            total -= size


class CacheLimitError(ValueError):
    """A --cache-limit below what the readers need at once (bad usage, named with the minimum)."""
