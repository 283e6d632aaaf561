"""OUT as fsspec sees it (a local path, file://, s3://, gs://...): a name only ever holds complete bytes.

Local: written under a temporary name beside the target, fsynced, renamed. Object storage: written
to a local temporary file, then uploaded in one request (an object appears only complete).
Credentials and endpoints come the standard way (AWS_* variables incl. AWS_ENDPOINT_URL, fsspec's
own config); any failure of the store becomes one `StorageError` line.
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


class StorageError(OSError):
    """OUT cannot be read or written (no space, no permission, unreachable store, bad credentials)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class OutDir:
    def __init__(self, url: str | os.PathLike):
        self.url = os.fspath(url)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
        except (ImportError, ValueError) as e:
            raise StorageError(f"{self.url}: {_one_line(e)}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")

    def __reduce__(self):  # workers and Ray tasks reopen it from its URL (fsspec filesystems carry sessions)
        return OutDir, (self.url,)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Anything the store raises, as one line naming what was being done."""
        try:
            yield
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - s3fs/gcsfs/botocore raise many types; all are one line
            if isinstance(e, (KeyboardInterrupt, SystemExit)) or not (
                    isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("botocore", "aiohttp", "google",
                                                                                     "s3fs", "gcsfs", "fsspec")):
                raise
            raise StorageError(f"{self.url}: cannot {what}: {_one_line(e)}") from None

    def makedirs(self) -> None:
        with self.errors("create the directory"):
            if self.local:
                Path(self.root, ".work").mkdir(parents=True, exist_ok=True)
            elif not self.fs.exists(self.root.split("/")[0]):
                raise StorageError(f"{self.url}: no such bucket")

    def sizes(self, sub: str = "") -> dict[str, int]:
        """{name: bytes} of the files directly in OUT (or OUT/sub), one listing."""
        where = self.path(sub) if sub else self.root
        with self.errors("list it"):
            if self.local:
                try:
                    return {e.name: e.stat().st_size for e in os.scandir(where) if e.is_file()}
                except FileNotFoundError:
                    return {}
            try:
                self.fs.invalidate_cache(where)
                entries = self.fs.ls(where, detail=True)
            except FileNotFoundError:
                return {}
            return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
                    if e.get("type") == "file"}

    def read_text(self, name: str) -> str | None:
        with self.errors(f"read {name}"):
            try:
                return self.fs.cat_file(self.path(name)).decode()
            except FileNotFoundError:
                return None

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
