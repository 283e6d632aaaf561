"""The errors every command turns into one line and exit 1: bad data, not a bug.

Shared by converters and trainer, which must not import each other: each adds its own error
types to this tuple.
"""

from __future__ import annotations

from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import LayoutError

from .manifest import ManifestError
from .names import UnsafeNameError


class ReaderError(ManifestError):
    """A shard directory that cannot answer: unreadable or corrupt shard, no such row, storage
    that cannot be reached. The message is one line naming the directory or shard."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    TokenizeError, LayoutError, ManifestError, UnsafeNameError, FileNotFoundError, IsADirectoryError, PermissionError)
