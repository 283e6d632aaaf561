"""One digest rule for the pinned-output tests: every column's dtype, shape and bytes of a row."""

from __future__ import annotations

import hashlib

import numpy as np


def update_with_row(h: "hashlib._Hash", row) -> None:
    for col in (row.tokens, row.loss_mask, row.local_pos, row.modality, row.step_starts, row.patches, row.patch_pos):
        a = np.ascontiguousarray(col)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
