"""One writer per output: `OUT/.lock` (or `.lock.partition-I` per partition) holds pid and host.

A second run exits 2 naming the holder. A lock whose process is gone (same host, no such pid) is
taken over: a killed run never blocks the next. Object stores have no atomic create-if-absent
through fsspec, so there one writer per prefix is the user's to keep.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


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


class OutLock:
    def __init__(self, directory: str | None, name: str = ".lock"):
        self.path = Path(directory, name) if directory is not None else None

    def __enter__(self) -> "OutLock":
        if self.path is None:
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                    pid, host = int(holder["pid"]), str(holder["host"])
                except (OSError, ValueError, KeyError, TypeError):
                    pid, host = -1, me["host"]  # half-written by a process killed at once: stale
                if host == me["host"] and (pid < 0 or not _alive(pid)):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise LockedError(f"{self.path.parent} is being written by process {pid} on {host} "
                                  f"(lock {self.path.name}); wait for it, or delete the lock if it is dead") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise LockedError(f"{self.path}: could not take the lock")

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
