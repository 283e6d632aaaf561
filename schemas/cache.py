"""A local cache of remote shards: each copy checked against the manifest's sha256 before use.

Copies are named by their sha256, so a file in the cache is always a verified, complete shard (it
is renamed into place only after its hash matched) and a shard that changed upstream is fetched
anew. Several processes (DataLoader workers, ranks of one node) may share a cache directory: a
lock file per shard makes one of them download while the others wait. Past `limit` bytes the
least recently used copies are deleted (a process still mapping one keeps its pages: unlinking a
mapped file is safe on POSIX). Background threads download the shards a reader will need next.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tokenizer_kit.files import file_sha256

from .errors import ReaderError
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
        self._pid = None
        self._pool: ThreadPoolExecutor | None = None
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
        return self.root / f"{sha256}.arrow"

    # --- fetching ------------------------------------------------------------------------------------
    def fetch(self, url: str, name: str, sha256: str) -> Path:
        """The verified local copy of shard `name` at `url`: from the cache, from a prefetch under
        way, or downloaded now. A copy whose hash differs is refused (named, with both hashes) and
        downloaded once more; a second bad copy is a ReaderError."""
        future = self._take_pending(sha256)
        if future is not None:
            return future.result()
        return self._fetch(url, name, sha256)

    def prefetch(self, items: list[tuple[str, str, str]]) -> None:
        """Start downloading (url, name, sha256) items in background threads, in order."""
        for url, name, sha256 in items:
            if self.path_of(sha256).is_file():
                continue
            with self._own_lock():
                if sha256 in self._pending:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="gato-prefetch")
                self._pending[sha256] = self._pool.submit(self._fetch, url, name, sha256)

    def _take_pending(self, sha256: str) -> Future | None:
        with self._own_lock():
            return self._pending.pop(sha256, None)

    def _own_lock(self) -> threading.Lock:
        """This process's lock; a forked worker starts afresh (the parent's threads, downloads
        under way and lock state are not its own)."""
        if self._pid != os.getpid():
            self._lock, self._pool, self._pending, self._pid = threading.Lock(), None, {}, os.getpid()
        return self._lock

    def _fetch(self, url: str, name: str, sha256: str) -> Path:
        dst = self.path_of(sha256)
        if dst.is_file():
            os.utime(dst)  # recently used
            return dst
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{sha256}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be downloading it right now
            if dst.is_file():
                os.utime(dst)
                return dst
            got = self._download(url, dst)
            if got != sha256:
                print(f"gato-kit: refused {name}: its sha256 is {got}, the manifest says {sha256}; "
                      "downloading it again", file=sys.stderr)
                got = self._download(url, dst)
                if got != sha256:
                    raise ReaderError(f"{url}: shard {name} has sha256 {got}, the manifest says {sha256} "
                                      "(downloaded twice; the object is corrupt or was replaced)")
            self.downloaded.append(name)
        self._evict(keep=dst)
        return dst

    def _download(self, url: str, dst: Path) -> str:
        """Copy url to dst under a temporary name and hash it; returns the hash. dst appears only
        when the hash is its name (the manifest's); a bad copy is removed. (The copy is hashed
        from the page cache right after it lands: as fast as hashing while it streams, and the
        download itself is the backend's own, as fast as a plain `get`.)"""
        fs, path = remote_fs(url)
        tmp = dst.with_name(f".{dst.name}.part{os.getpid()}-{threading.get_ident()}")
        try:
            fs.get_file(path, str(tmp))
            digest = file_sha256(tmp, CHUNK)
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
        """Delete least recently used copies until the cache is within its limit (never `keep`)."""
        if self.limit is None:
            return
        files = []
        for p in self.root.glob("*.arrow"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.limit:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size

    def touch(self, sha256: str) -> None:
        try:
            os.utime(self.path_of(sha256))
        except FileNotFoundError:
            pass
