"""What killed runs and earlier conversions leave in OUT, and its removal: temporary files of a
unit's shards or marker, unit shards the manifest does not list, and the work directory itself."""

from __future__ import annotations

import os
import re

from schemas.storage import OutDir
from schemas.workunit import WORK_DIR

_TEMPORARY = re.compile(
    r"^\.(shard-(\d+)-\d+\.arrow|unit-(\d+)\.json|plan\.json|tokenizer\.model|manifest\.json|shards\.arrow)\.tmp\d+(-\d+)?$")
_UNIT_SHARD = re.compile(r"^shard-(\d+)-\d+\.arrow$")


def remove_temporaries(out: OutDir, units: set[int] | None) -> None:
    """Temporary files that killed processes left, of these units (None: all), never another
    running partition's. In an object store (no temporary names: uploads are whole), the
    unfinished multipart uploads of these units' shards that a kill -9 left."""
    if not out.local:
        out.abort_uploads([(name, uid) for name, uid in out.unfinished_uploads()
                           if (m := _UNIT_SHARD.match(name)) and (units is None or int(m.group(1)) in units)])
        return
    def mine(name: str) -> bool:
        m = _TEMPORARY.match(name)
        return m is not None and (units is None or int(m.group(2) or m.group(3) or -1) in units)
    out.remove([n for n in out.sizes() if mine(n)] + [f"{WORK_DIR}/{n}" for n in out.sizes(WORK_DIR) if mine(n)])


def remove_unlisted_shards(out: OutDir, listed: set[str]) -> None:
    """Unit shards in OUT that the manifest does not list (left by an earlier conversion)."""
    out.remove([n for n in out.sizes() if _UNIT_SHARD.match(n) and n not in listed])


def remove_work_dir(out: OutDir) -> None:
    """The work directory, once the manifest is written."""
    out.remove([f"{WORK_DIR}/{n}" for n in out.sizes(WORK_DIR)])
    if out.local:
        try:
            os.rmdir(out.path(WORK_DIR))
        except OSError:
            pass
