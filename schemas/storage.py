"""Where shard directories live: a local path, or an fsspec URL (s3://, gs://, file://, ...), for
readers and writers alike.

Credentials and endpoints come the standard way (AWS_* variables including AWS_ENDPOINT_URL,
fsspec's configuration), so one command runs against S3, MinIO or a test server. Remote shards are
read through a local cache of verified copies (schemas/cache.py); local ones are mapped in place.
Writes go through `OutDir`, where a name only ever holds complete bytes: locally written under a
temporary name beside the target, fsynced and renamed; in object storage written to a local
temporary file, then uploaded in one request. Whatever a store raises becomes one line.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tokenizer_kit.errors import first_line
from tokenizer_kit.files import atomic_path

from .errors import ReaderError
from .store_settings import StoreSettings, open_fs


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL of a store other than the local disk (file:// counts as local)."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    """A local path or file:// URL as a Path."""
    text = os.fspath(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


_FILESYSTEMS: dict[tuple, fsspec.AbstractFileSystem] = {}


def client_key() -> tuple:
    """What a store client made in this process is valid for: the process (a forked worker makes its
    own) and the environment its credentials, endpoint and settings come from (a change needs a new one)."""
    return os.getpid(), tuple(sorted((k, v) for k, v in os.environ.items()
                                     if k.startswith(("AWS_", "GOOGLE_", "FSSPEC_", "GATO_KIT_STORE_"))))


def remote_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) of a URL: one filesystem per protocol and process, shared by
    its threads (fsspec's own instance cache is per thread, and a new S3 client costs a session)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    key = (protocol, *client_key())
    fs = _FILESYSTEMS.get(key)
    try:
        if fs is None:
            fs, path = open_fs(url)
            _FILESYSTEMS[key] = fs
            return fs, path
        return fs, fs._strip_protocol(url)
    except (ImportError, ValueError) as e:  # unknown protocol, or its backend is not installed
        raise ReaderError(f"{url}: cannot open ({first_line(e)})") from None


def gave_up(e: BaseException) -> str:
    """What to add to a store error caused by timeouts: how long was waited, and the knobs."""
    if "timeout" not in f"{type(e).__name__} {e}".lower():
        return ""
    s = StoreSettings.from_env()
    return (f" (no answer after {s.attempts} tries of {s.timeout:g} s each; "
            "GATO_KIT_STORE_TIMEOUT and GATO_KIT_STORE_ATTEMPTS set them)")


def storage_error(url: str, e: BaseException) -> ReaderError:
    """One line for a store that cannot be reached or refuses us (endpoint, credentials, bucket)."""
    text = first_line(e)
    return ReaderError(f"{url}: cannot read from the store ({type(e).__name__}: {text}){gave_up(e)}")


def read_bytes(url: str) -> bytes:
    """One whole object (a manifest, a tokenizer model); a missing one raises FileNotFoundError."""
    fs, path = remote_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # botocore/aiohttp errors have no common base but Exception
        raise storage_error(url, e) from None


def list_names(url: str) -> list[str]:
    """Names of the objects directly under a URL (a missing directory is FileNotFoundError)."""
    fs, path = remote_fs(url)
    try:
        entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such directory") from None
    except Exception as e:
        raise storage_error(url, e) from None
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


# --- the write side: a directory a conversion writes --------------------------------------------

_STORE_MODULES = ("botocore", "aiohttp", "aiobotocore", "google", "s3fs", "gcsfs", "fsspec")


class StorageError(OSError):
    """OUT cannot be read or written (no space, no permission, unreachable store, bad credentials)."""


class OutDir:
    """A directory to write (the writer's OUT, or a fetched input's prefix) as one fsspec filesystem.
    Its own filesystem instance, not the shared read-side one: workers reopen it from its URL."""

    def __init__(self, url: str | os.PathLike):
        self.url = os.fspath(url)
        with self.errors("open it"):
            self.fs, root = open_fs(self.url, skip_instance_cache=True)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")

    def __reduce__(self):  # other processes reopen it from its URL (a filesystem carries sessions)
        return OutDir, (self.url,)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - stores raise many types (botocore, aiohttp...); each is one line
            if not isinstance(e, (OSError, ImportError)) and type(e).__module__.split(".")[0] not in _STORE_MODULES:
                raise
            msg = first_line(e)
            raise StorageError(f"{self.url}: cannot {what}: {msg}{gave_up(e)}") from None

    def makedirs(self, sub: str = "") -> None:
        """OUT (and OUT/sub) locally; in object storage (no directories) only check the bucket exists."""
        with self.errors("create it"):
            if self.local:
                Path(self.root, sub).mkdir(parents=True, exist_ok=True)
            elif not self.fs.exists(self.root.split("/")[0]):
                raise FileNotFoundError("no such bucket")

    def sizes(self, sub: str = "") -> dict[str, int]:
        """{name: bytes} of the files directly in OUT (or OUT/sub), in one listing."""
        where = self.path(sub) if sub else self.root
        with self.errors("list it"):
            try:
                if self.local:
                    return {e.name: e.stat().st_size for e in os.scandir(where) if e.is_file()}
                self.fs.invalidate_cache(where)
                return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                        for e in self.fs.ls(where, detail=True) if e.get("type") == "file"}
            except FileNotFoundError:
                return {}

    def read_text(self, name: str) -> str | None:
        with self.errors(f"read {name}"):
            try:
                return self.fs.cat_file(self.path(name)).decode()
            except FileNotFoundError:
                return None

    def read_bytes(self, name: str) -> bytes:
        """A whole file of OUT; a missing one raises FileNotFoundError."""
        with self.errors(f"read {name}"):
            return self.fs.cat_file(self.path(name))

    def read_texts(self, names: list[str]) -> dict[str, str]:
        """Several small files at once (an object store fetches them concurrently); absent ones left out."""
        if self.local or not names:
            return {n: t for n in names if (t := self.read_text(n)) is not None}
        with self.errors("read the work directory"):
            got = self.fs.cat([self.path(n) for n in names], on_error="omit")
        return {n: got[self.path(n)].decode() for n in names if self.path(n) in got}

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """A local path to write `name` to; on success it appears in OUT whole, on failure nowhere."""
        with self.errors(f"write {name}"):
            if self.local:
                with atomic_path(self.path(name)) as tmp:
                    yield tmp
                return
            fd, upload = tempfile.mkstemp(prefix="gato-kit-", suffix=".upload")
            os.close(fd)
            try:
                yield Path(upload)
                self.fs.put_file(upload, self.path(name))
            finally:
                os.unlink(upload)

    def write_text(self, name: str, text: str) -> None:
        with self.staged(name) as tmp:
            tmp.write_text(text)

    def create(self, name: str, text: str) -> bool:
        """Write `name` only if it does not exist (the store's conditional create); False if it does."""
        with self.errors(f"create {name}"):
            if self.local:
                try:
                    with open(self.path(name), "x") as f:
                        f.write(text)
                    return True
                except FileExistsError:
                    return False
            try:
                self.fs.pipe_file(self.path(name), text.encode(), mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):  # a backend without conditional create: plain write
                self.fs.pipe_file(self.path(name), text.encode())
            return True

    def move(self, src: str, dst: str) -> None:
        """Put `src` in OUT under `dst` whole (a rename locally; a server-side copy in a store)."""
        with self.errors(f"move {src} to {dst}"):
            if self.local:
                os.replace(self.path(src), self.path(dst))
            else:
                self.fs.mv(self.path(src), self.path(dst))

    def unfinished_uploads(self) -> list[tuple[str, str]]:
        """(name, upload id) of the multipart uploads under OUT that were started and never
        completed or aborted (a process killed mid-upload leaves them, billed, invisible to a
        listing). Only S3 has them; other stores give none."""
        if self.local or not hasattr(self.fs, "call_s3"):
            return []
        bucket, _, prefix = self.root.partition("/")
        found: list[tuple[str, str]] = []
        marker: dict[str, str] = {}
        with self.errors("list unfinished uploads"):
            while True:
                page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/", **marker)
                found += [(u["Key"][len(prefix) + 1:], u["UploadId"]) for u in page.get("Uploads", [])
                          if "/" not in u["Key"][len(prefix) + 1:]]
                if not page.get("IsTruncated"):
                    return found
                marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def abort_uploads(self, uploads: list[tuple[str, str]]) -> None:
        bucket, _, prefix = self.root.partition("/")
        with self.errors("abort unfinished uploads"):
            for name, upload_id in uploads:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=f"{prefix}/{name}", UploadId=upload_id)

    def remove(self, names: list[str]) -> None:
        with self.errors("remove leftovers"):
            for name in names:
                try:
                    self.fs.rm_file(self.path(name))
                except FileNotFoundError:
                    pass
