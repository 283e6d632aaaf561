"""One error type for everything that cannot be tokenised, so callers can add file/record context."""

from __future__ import annotations

import numpy as np


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
