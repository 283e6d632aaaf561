"""OUT as fsspec sees it (a path, file://, s3://, gs://...): a name only ever holds complete bytes.

Local: written under a temporary name beside the target, fsynced, renamed. Object storage: written
to a local temporary file, then uploaded in one request. Credentials and endpoints come the
standard way (AWS_* variables incl. AWS_ENDPOINT_URL, fsspec's config); whatever the store raises
becomes one `StorageError` line.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tokenizer_kit.files import atomic_path

_STORE_MODULES = ("botocore", "aiohttp", "aiobotocore", "google", "s3fs", "gcsfs", "fsspec")


class StorageError(OSError):
    """OUT cannot be read or written (no space, no permission, unreachable store, bad credentials)."""


class OutDir:
    def __init__(self, url: str | os.PathLike):
        self.url = os.fspath(url)
        with self.errors("open it"):
            self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
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
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StorageError(f"{self.url}: cannot {what}: {msg}") from None

    def makedirs(self) -> None:
        with self.errors("create it"):
            if self.local:
                Path(self.root, ".work").mkdir(parents=True, exist_ok=True)
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
            fd, tmp = tempfile.mkstemp(prefix="gato-kit-", suffix=".upload")
            os.close(fd)
            try:
                yield Path(tmp)
                self.fs.put_file(tmp, self.path(name))
            finally:
                os.unlink(tmp)

    def write_text(self, name: str, text: str) -> None:
        with self.staged(name) as tmp:
            tmp.write_text(text)

    def remove(self, names: list[str]) -> None:
        with self.errors("remove leftovers"):
            for name in names:
                try:
                    self.fs.rm_file(self.path(name))
                except FileNotFoundError:
                    pass
