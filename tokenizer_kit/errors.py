"""One error type for everything that cannot be tokenised, so callers can add file/record context;
the one way an exception becomes a message line, and the one policy every command line follows
(`gato-tokenize`, `gato-train` and its subcommands): bad usage exit 2, bad data or a failing system
one line and exit 1, never a traceback for either."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

LONG_LINE = 200  # characters kept of a line that may hold a whole dump (an allocator's, a pickle's)


class TokenizeError(ValueError):
    """A value, image or field that has no correct token. The message is one line."""


def locate(array: np.ndarray, bad: np.ndarray) -> str:
    """Describe the first True of `bad` as `step S index I` (first axis = time step) for messages."""
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    where = np.unravel_index(flat, array.shape) if array.ndim else ()
    value = array.reshape(-1)[flat]
    value = value.item() if isinstance(value, np.generic) else value  # 1.5, not np.float32(1.5)
    if len(where) == 0:
        return f"scalar (value {value!r})"
    if len(where) == 1:
        return f"index {int(where[0])} (value {value!r})"
    rest = int(where[1]) if len(where) == 2 else tuple(int(i) for i in where[1:])
    return f"step {int(where[0])} index {rest} (value {value!r})"


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (a library's message may run to pages),
    at most `limit` characters, or the exception's type name when the message is empty."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(e).__name__


def os_error_line(e: OSError) -> str:
    """An operating-system error as `FILE: reason` (disk full, read-only, a directory given for a file)."""
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    return f"{where}{e.strerror or first_line(e)}"


def run_command(prog: str, work: Callable[[], int | None],
                expected: tuple[type[BaseException], ...] = (),
                usage: tuple[type[BaseException], ...] = (),
                print_usage: Callable[[], None] | None = None,
                out_of_memory: tuple[type[BaseException], ...] = (MemoryError,),
                memory_hint: str = "") -> int:
    """Run a command's `work` under the one error policy and return its exit status.

    `usage` errors: the usage line (when given), then `PROG: error: MESSAGE`, exit 2. `expected`
    errors (bad data, a missing file): their first line, exit 1. Any other OSError: `FILE: reason`,
    exit 1. Running out of memory (`out_of_memory`, or a RuntimeError from an allocator that "cannot
    allocate"): one line with `memory_hint`, exit 1. Ctrl-C: `PROG: interrupted`, 130. Anything
    else is a bug and keeps its traceback."""
    def say(message: str) -> None:
        print(f"{prog}: error: {message}", file=sys.stderr)

    def memory(e: BaseException) -> int:
        say(f"out of memory ({first_line(e, LONG_LINE)})" + (f"; {memory_hint}" if memory_hint else ""))
        return 1

    try:
        return int(work() or 0)
    except usage as e:
        if print_usage is not None:
            print_usage()
        say(str(e))
        return 2
    except expected as e:
        say(first_line(e))
        return 1
    except OSError as e:
        say(os_error_line(e))
        return 1
    except out_of_memory as e:
        return memory(e)
    except RuntimeError as e:  # torch's CPU allocator says "can't allocate memory" as a RuntimeError
        if "allocate" not in str(e):
            raise
        return memory(e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
