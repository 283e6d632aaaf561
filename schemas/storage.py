"""Where shard directories live: a local path, or an fsspec URL (s3://, gs://, file://, ...).

Credentials and endpoints come the standard way (AWS_* variables including AWS_ENDPOINT_URL,
fsspec's configuration), so one command runs against S3, MinIO or a test server. Remote shards are
read through a local cache of verified copies (schemas/cache.py); local ones are mapped in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec

from .errors import ReaderError


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


def remote_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) of a URL: one filesystem per protocol and process, shared by
    its threads (fsspec's own instance cache is per thread, and a new S3 client costs a session)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    # credentials and endpoints come from the environment: a changed one needs a new client
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "FSSPEC_"))))
    key = (protocol, os.getpid(), env)
    fs = _FILESYSTEMS.get(key)
    try:
        if fs is None:
            fs, path = fsspec.core.url_to_fs(url)
            _FILESYSTEMS[key] = fs
            return fs, path
        return fs, fs._strip_protocol(url)
    except (ImportError, ValueError) as e:  # unknown protocol, or its backend is not installed
        raise ReaderError(f"{url}: cannot open ({str(e).splitlines()[0]})") from None


def storage_error(url: str, e: BaseException) -> ReaderError:
    """One line for a store that cannot be reached or refuses us (endpoint, credentials, bucket)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ReaderError(f"{url}: cannot read from the store ({type(e).__name__}: {text})")


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
