"""One object of a store copied into a local file, hashed on the way: the shard cache's download.

S3 objects are read by pyarrow's S3 client (C++), whose reads run without the GIL, in 8 MiB
ranged requests. s3fs reads a body 64 KiB at a time in Python on its event-loop thread, and each
piece waits for the GIL: beside a thread busy in Python (a loader's reader, a training loop) a
49 MB download took 8-9 s instead of 0.12 s, and a cold-cache pass over a 49 MB directory took
0.24 s against 0.19 s through pyarrow (benchmarks/bench_stream.py measures both). The pyarrow
client is configured from the process's s3fs client (endpoint, region, keys) and StoreSettings
(timeout, attempts, with the AWS SDK's standard retries: backoff and jitter), so both read the
same store the same way. Other stores, and an S3 without pyarrow's S3 support, go through fsspec.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from fsspec.callbacks import Callback

from tokenizer_kit.files import file_sha256

from .storage import client_key, remote_fs
from .store_settings import StoreSettings

CHUNK = 8 << 20  # bytes per ranged read, and per hashing step


class WrongSize(Exception):
    """The object is not the size the manifest gives it (the message says what it is)."""


def copy_hashed(url: str, dst: Path, size: int) -> str:
    """Copy the object at `url` to `dst` (created or truncated) and return its sha256 (hex). An
    object that is not `size` bytes raises WrongSize before a byte is written past `size` (a size
    from data is a budget: the cache reserved room for exactly that many bytes)."""
    fs = arrow_s3(url)
    if fs is not None:
        return _copy_arrow(fs, url.split("://", 1)[1], dst, size)
    return _copy_fsspec(url, dst, size)


def _copy_arrow(fs, path: str, dst: Path, size: int) -> str:
    h = hashlib.sha256()
    with fs.open_input_file(path) as src:  # a HEAD: the object's size, before any byte is read
        if src.size() != size:
            raise WrongSize(f"it has {src.size()} bytes")
        with open(dst, "wb") as out:
            while chunk := src.read_buffer(CHUNK):
                h.update(chunk)
                out.write(chunk)
    return h.hexdigest()


def _copy_fsspec(url: str, dst: Path, size: int) -> str:
    fs, path = remote_fs(url)
    fs.get_file(path, str(dst), callback=_SizeGuard(size))
    got = os.stat(dst).st_size
    if got != size:
        raise WrongSize(f"it has {got} bytes")
    return file_sha256(dst, CHUNK)  # read back from the page cache, right after it landed


class _SizeGuard(Callback):
    """Stops an fsspec download whose object is not `size` bytes before it writes past it."""

    def __init__(self, size: int):
        super().__init__()
        self.want, self.got = size, 0

    def set_size(self, size):
        if size is not None and size != self.want:
            raise WrongSize(f"it has {size} bytes")

    def relative_update(self, inc=1):
        self.got += inc
        if self.got > self.want:
            raise WrongSize(f"it has more than {self.want} bytes")


_ARROW_S3: dict[tuple, object] = {}


def arrow_s3(url: str):
    """pyarrow's S3 filesystem for an s3:// URL, set up as this process's s3fs client is (one per
    process and environment, as schemas.storage.remote_fs); None for other stores, or where this
    pyarrow has no S3 support."""
    if url.split("://", 1)[0] not in ("s3", "s3a"):
        return None
    key = client_key()
    if key not in _ARROW_S3:
        _ARROW_S3[key] = _make_arrow_s3(url)
    return _ARROW_S3[key]


def _make_arrow_s3(url: str):
    try:
        from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem  # noqa: PLC0415 - only readers of S3 need it
    except ImportError:  # a pyarrow built without S3
        return None
    s3fs_fs, _ = remote_fs(url)
    s3fs_fs.connect()
    meta = s3fs_fs.s3.meta
    settings = StoreSettings.from_env()
    options: dict = {"region": meta.region_name or "us-east-1", "connect_timeout": settings.timeout,
                     "request_timeout": settings.timeout,
                     "retry_strategy": AwsStandardS3RetryStrategy(max_attempts=settings.attempts)}
    endpoint = urlparse(meta.endpoint_url or "")
    if endpoint.hostname and not endpoint.hostname.endswith(".amazonaws.com"):  # MinIO, a test server, ...
        options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    if getattr(s3fs_fs, "anon", False):
        options["anonymous"] = True
    elif getattr(s3fs_fs, "key", None) and getattr(s3fs_fs, "secret", None):  # keys given to s3fs itself
        options.update(access_key=s3fs_fs.key, secret_key=s3fs_fs.secret, session_token=s3fs_fs.token)
    return S3FileSystem(**options)
