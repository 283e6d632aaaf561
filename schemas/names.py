"""The one rule for every name that comes from data.

Object keys, manifest and marker fields, `state.json` file names, HDF5 links: a dataset from a
public hub is hostile, so a name it carries becomes a path only after (1) it has the shape it must
have (a sha256 is 64 hex digits, a shard name matches the shard pattern) and (2) it resolves inside
its root (no absolute path, no `..` out, no symlink out). Both checks live here and every reader
asks them; a refused name is an `UnsafeNameError`, one line naming where the name came from.

URLs may carry credentials (`s3://KEY:SECRET@bucket/...`): `redact` removes them from any text
before it reaches a message, a log, a manifest or a folder name.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s]+)@")


class UnsafeNameError(ValueError):
    """A name from data that does not have its shape or leaves its root. The message is one line."""


def check_sha256(value: object, where: str) -> str:
    """`value` when it is a sha256 (64 lowercase hex digits), else UnsafeNameError naming `where`."""
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise UnsafeNameError(f"{where}: sha256 {_show(value)} is not 64 hex digits")
    return value


def check_pattern(value: object, pattern: str | re.Pattern, what: str, where: str) -> str:
    """`value` when it matches `pattern` (a shard name, a unit key), else UnsafeNameError."""
    if not isinstance(value, str) or not re.match(pattern, value):
        raise UnsafeNameError(f"{where}: {what} {_show(value)} is not a valid {what}")
    return value


def inside(root: str | os.PathLike, name: str, where: str) -> Path:
    """`root/name` resolved, refused unless it stays inside `root` (resolved too): a relative name,
    no `..` out, no symlink out. Returns the resolved path."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafeNameError(f"{where}: name {_show(name)} is empty or not text")
    if os.path.isabs(name) or name.startswith("~"):
        raise UnsafeNameError(f"{where}: name {_show(name)} is an absolute path")
    base = Path(root).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise UnsafeNameError(f"{where}: name {_show(name)} leads outside {base}")
    return target


def redact(text: str) -> str:
    """`text` with the user info of every URL in it (`KEY:SECRET@`) replaced by `***@`."""
    return _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}***@", text)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _RedactingStream:
    """A text stream that redacts URL user info from everything written through it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def redact_std_streams() -> None:
    """Every line a command prints (its errors, argparse's, warnings, progress) goes through
    `redact`: installed once at each CLI's entry, so no message path can forget it."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _RedactingStream):
            setattr(sys, name, _RedactingStream(stream))
