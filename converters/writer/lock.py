"""One writer per output: `OUT/.lock` (or `.lock.partition-I` per partition) holds pid and host.

A second run exits 2 naming the holder. A lock whose process is gone (same host, no such pid) is
taken over: a killed run never blocks the next. In an object store the lock is an object made by
the store's conditional create (S3 `PUT` with `If-None-Match: *`, which AWS S3, MinIO and moto
honour: s3fs's mode="create"), so two writers on one prefix get exit 2 there too; a lock left by a
run killed on another machine cannot be proven stale from here, so the message says to delete it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from schemas.storage import OutDir


class LockedError(RuntimeError):
    """Another live process writes this output (exit 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str | None, host: str) -> tuple[int, str, str]:
    """(pid, host, since) of a lock's text; a half-written one (a process killed at once) reads as
    a dead process of this host: stale."""
    try:
        holder = json.loads(text or "")
        return int(holder["pid"]), str(holder["host"]), str(holder.get("since", "?"))
    except (ValueError, KeyError, TypeError):
        return -1, host, "?"


def _locked(where: str, name: str, pid: int, host: str, since: str) -> LockedError:
    return LockedError(f"{where} is being written by process {pid} on {host} (lock {name}, since {since}); "
                       f"wait for it, or delete the lock if it is dead")


class OutLock:
    def __init__(self, directory: str | OutDir | None, name: str = ".lock"):
        self.store = directory if isinstance(directory, OutDir) and not directory.local else None
        if isinstance(directory, OutDir):
            directory = directory.root if directory.local else None
        self.name = name
        self.path = Path(directory, name) if directory is not None else None

    def __enter__(self) -> "OutLock":
        if self.store is not None:
            return self._enter_remote()
        if self.path is None:
            return self
        me: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    text = self.path.read_text()
                except OSError:
                    text = None
                pid, host, since = _holder(text, me["host"])
                if host == me["host"] and (pid < 0 or not _alive(pid)):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise _locked(str(self.path.parent), self.path.name, pid, host, since) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise LockedError(f"{self.path}: could not take the lock")

    def _enter_remote(self) -> "OutLock":
        store = self.store
        assert store is not None  # __enter__ comes here for a remote directory only
        me: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(3):
            if store.create(self.name, json.dumps(me)):
                return self
            pid, host, since = _holder(store.read_text(self.name), me["host"])
            if host == me["host"] and (pid < 0 or not _alive(pid)):
                store.remove([self.name])  # stale: its process is gone
                continue
            raise _locked(store.url, self.name, pid, host, since)
        raise LockedError(f"{store.url}/{self.name}: could not take the lock")

    def __exit__(self, *exc) -> None:
        if self.store is not None:
            self.store.remove([self.name])
        elif self.path is not None:
            self.path.unlink(missing_ok=True)
