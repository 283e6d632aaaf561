"""The shard writer: work units -> per-unit shards + markers -> manifest.json (see driver.py).

    shards.py     one unit's record batches -> its shard files, rolled by size, hashed, compressed
    unit.py       one unit start to end: records -> checked batches -> shards -> marker
    engines.py    who runs the units: in process, a process pool, or Ray tasks
    leftovers.py  what killed or earlier runs left in OUT, removed
    lock.py       one writer per output
    driver.py     list units, skip finished ones, run the rest, write the manifest

Where OUT lives (a path or fsspec URL) is schemas.storage.OutDir; what OUT/.work/ says is done is
schemas.workunit.WorkDir (the reader side of the same contract, which `inspect` asks too).
"""

from schemas.storage import StorageError
from schemas.workunit import WORK_DIR

from .driver import ConvertResult, UsageError, convert, finalize
from .engines import ENGINES
from .lock import LockedError
from .shards import COMPRESSIONS

__all__ = ["COMPRESSIONS", "ENGINES", "WORK_DIR", "ConvertResult", "LockedError", "StorageError", "UsageError",
           "convert", "finalize"]
