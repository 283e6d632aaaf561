"""Turn expected failures into one line on stderr and exit 1; never a traceback for bad data."""

from __future__ import annotations

from typing import Callable

from schemas.errors import EXPECTED_ERRORS as _READ_ERRORS
from tokenizer_kit.errors import run_command

from .base import SourceError
from .writer.lock import LockedError

EXPECTED_ERRORS = _READ_ERRORS + (SourceError,)


def run_reporting_errors(func: Callable, args) -> int:
    """A gato-tokenize command under the one error policy (tokenizer_kit.errors.run_command);
    another live conversion writing this OUT is bad usage (exit 2), not bad data."""
    return run_command("gato-tokenize", lambda: func(args), EXPECTED_ERRORS, usage=(LockedError,))
