"""How patiently every object-store request is made: a timeout per try, bounded tries with
exponential backoff and jitter, and a line on stderr for each retry, so a stalled or flaky store
ends in a one-line error instead of a silent hang.

Settings come from the environment (GATO_KIT_STORE_TIMEOUT, GATO_KIT_STORE_ATTEMPTS) so that every
process that touches the store (DataLoader workers, pool workers, Ray tasks on other machines, which
get them through Ray's runtime environment) uses the same ones without a flag to thread through.
The retrying itself is the store client's own (botocore's "standard" mode: exponential backoff with
full jitter over 5xx, throttling, timeouts and dropped connections; s3fs resumes a download whose
connection dropped mid-body), configured here in one place.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any

import fsspec

from .errors import ReaderError


@dataclass(frozen=True)
class StoreSettings:
    """The object-store client's patience; each field is read from its environment variable."""

    timeout: float = field(default=60.0, metadata={
        "env": "GATO_KIT_STORE_TIMEOUT", "min": 0.1,
        "help": "seconds one try of a request waits for the store (to connect, or for its next bytes)"})
    attempts: int = field(default=4, metadata={
        "env": "GATO_KIT_STORE_ATTEMPTS", "min": 1,
        "help": "tries per request (1: no retry); retries back off exponentially with jitter"})

    @classmethod
    def from_env(cls) -> "StoreSettings":
        """The settings of this process; a malformed value is one line naming the variable."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            try:
                v = int(raw) if f.type == "int" else float(raw)
            except ValueError:
                v = None
            if v is None or not v >= f.metadata["min"]:
                raise ReaderError(f"{f.metadata['env']}={raw!r}: expected a number >= {f.metadata['min']} "
                                  f"({f.metadata['help']})")
            values[f.name] = v
        return cls(**values)

    def fsspec_options(self, protocol: str) -> dict:
        """Keyword arguments of the fsspec filesystem of `protocol` that apply these settings."""
        if protocol in ("s3", "s3a"):
            return {"config_kwargs": {"connect_timeout": self.timeout, "read_timeout": self.timeout,
                                      "retries": {"total_max_attempts": self.attempts, "mode": "standard"}}}
        if protocol in ("gs", "gcs"):
            return {"timeout": self.timeout}
        return {}


def open_fs(url: str, **kwargs):
    """(fsspec filesystem, path) of `url` with these settings applied (fsspec.core.url_to_fs's
    kwargs pass through). s3fs's own retry layer, around botocore's, stays at 2 tries: enough to
    resume a download whose connection dropped mid-body, without multiplying the waits."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    settings = StoreSettings.from_env()
    announce_retries()
    fs, path = fsspec.core.url_to_fs(url, **settings.fsspec_options(protocol), **kwargs)
    if protocol in ("s3", "s3a"):
        fs.retries = min(2, settings.attempts)
    return fs, path


class _RetryNotice(logging.Handler):
    """One stderr line per retry the store client makes: progress, so a slow store is never silent."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Retry needed, retrying request after delay of"):
            delay = msg.rsplit(":", 1)[-1].strip()
            print(f"gato-kit: object store did not answer in time or failed; retrying in {float(delay):.1f} s",
                  file=sys.stderr, flush=True)


_NOTICE = _RetryNotice(logging.DEBUG)
_RETRY_LOGGER = "botocore.retries.standard"  # botocore's (and aiobotocore's) retry handler logs each retry here


def announce_retries() -> None:
    """Print a line for each retry of this process's store clients (idempotent). Only the retry
    handler's own logger is turned up, and kept from propagating, so an application's logging
    configuration never sees botocore's debug lines because of it."""
    log = logging.getLogger(_RETRY_LOGGER)
    if _NOTICE not in log.handlers:
        log.addHandler(_NOTICE)
        log.setLevel(logging.DEBUG)
        log.propagate = False
