"""Turn expected failures into one line on stderr and exit 1; never a traceback for bad data."""

from __future__ import annotations

import sys
from typing import Callable

from schemas.errors import EXPECTED_ERRORS as _READ_ERRORS

from .base import SourceError
from .writer.lock import LockedError

EXPECTED_ERRORS = _READ_ERRORS + (SourceError,)


def run_reporting_errors(func: Callable, args) -> int:
    prog = "gato-tokenize"
    try:
        code = func(args)
    except LockedError as e:  # another live conversion writes this OUT: bad usage, not bad data
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except EXPECTED_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, read-only file system, ...: the system's reason, one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
        print(f"{prog}: error: {where}{reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
