"""One digest rule for the pinned-output tests: every column's dtype, shape and bytes of a row."""

from __future__ import annotations

import hashlib

import numpy as np


def update_with_row(h: "hashlib._Hash", row) -> None:
    for col in (row.tokens, row.loss_mask, row.local_pos, row.modality, row.step_starts, row.patches, row.patch_pos):
        a = np.ascontiguousarray(col)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())


def shard_rows_digest(out) -> str:
    """The same rule over the rows of a converted directory as its readers see them: every shard in
    the manifest's order, each row's source_id then its columns (row_from_table: version-1 columns
    and dtypes, whatever form the shard stores)."""
    from pathlib import Path

    from schemas.manifest import Manifest
    from schemas.shard import open_shard, row_from_table

    h = hashlib.sha256()
    for info in Manifest.read(Path(out)).shards:
        table = open_shard(Path(out) / info.name)
        for i in range(table.num_rows):
            h.update(table.column("source_id")[i].as_py().encode())
            update_with_row(h, row_from_table(table, i))
    return h.hexdigest()


def converter_rows_digest(converter) -> str:
    """The same rule over a converter's rows in unit order, before any shard is written."""
    h = hashlib.sha256()
    for unit in converter.work_units():
        for r in converter.convert_unit(unit):
            assert r.skip_reason is None, r.skip_reason
            h.update(r.source_id.encode())
            update_with_row(h, r.row)
    return h.hexdigest()
