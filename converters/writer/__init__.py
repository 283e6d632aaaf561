"""The shard writer: work units -> per-unit shards + markers -> manifest.json (see driver.py).

    storage.py  OUT as fsspec sees it; a name only ever holds complete bytes
    shards.py   one unit's record batches -> its shard files, rolled by size, hashed, compressed
    unit.py     one unit start to end: records -> checked batches -> shards -> marker
    engines.py  who runs the units: in process, a process pool, or Ray tasks
    workdir.py  what OUT/.work/ says is done (resume, finalize, inspect)
    lock.py     one writer per output
    driver.py   list units, skip finished ones, run the rest, write the manifest
"""

from schemas.workunit import WORK_DIR

from .driver import ConvertResult, UsageError, convert, finalize
from .engines import ENGINES
from .lock import LockedError
from .shards import COMPRESSIONS, row_nbytes
from .storage import OutDir, StorageError
from .workdir import WorkDir

__all__ = ["COMPRESSIONS", "ENGINES", "WORK_DIR", "ConvertResult", "LockedError", "OutDir", "StorageError",
           "UsageError", "WorkDir", "convert", "finalize", "row_nbytes"]
