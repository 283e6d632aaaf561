"""A run directory given as a URL (`gato-train --out s3://bucket/run`): written locally, then uploaded.

The trainer always writes a local directory (atomic renames, appends to metrics.jsonl). When --out
is a URL, that directory is a staging copy under the cache: a run's files are downloaded into it
before the run starts (so a resume finds its checkpoint), and uploaded after every checkpoint and
at the end, the checkpoint last, so the bucket never holds metrics ahead of a checkpoint they need.
An object store shows an object only once it is complete, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from schemas.errors import ReaderError
from schemas.storage import is_remote, join, local_path, remote_fs, storage_error

from .checkpoint import CHECKPOINT_NAME, STEP_DIR


class RunStore:
    """Where a run's files live: `local` is written by the trainer, `url` (if any) mirrors it."""

    def __init__(self, out: str, cache_dir: str | os.PathLike, rank: int = 0):
        self.url = out.rstrip("/") if is_remote(out) else None
        if self.url is None:
            self.local = local_path(out)
            return
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.local = Path(cache_dir) / "runs" / f"{key}-rank{rank}"

    def pull(self) -> None:
        """Replace the staging copy by the run's files in the store (nothing when --out is local)."""
        if self.url is None:
            return
        if self.local.exists():
            shutil.rmtree(self.local)
        self.local.mkdir(parents=True)
        fs, root = remote_fs(self.url)
        try:
            names = [p[len(root):].strip("/") for p in fs.find(root, detail=False)]
        except FileNotFoundError:
            return  # a new run
        except Exception as e:
            raise storage_error(self.url, e) from None
        for name in names:
            dest = (self.local / name).resolve()
            if not name or self.local.resolve() not in dest.parents:  # a key that would leave the folder
                raise ReaderError(f"{join(self.url, name)}: not a file name inside the run")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{root}/{name}", str(dest))
            except Exception as e:
                raise storage_error(join(self.url, name), e) from None

    def push(self) -> None:
        """Upload every file of the staging copy (step copies and TensorBoard events too), the
        checkpoint last; then remove the step copies --keep-last pruned from the store."""
        if self.url is None:
            return
        fs, root = remote_fs(self.url)
        files = sorted((p for p in self.local.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(self.local).parts)),
                       key=lambda p: (p.name == CHECKPOINT_NAME, str(p)))
        for p in files:
            name = p.relative_to(self.local).as_posix()
            try:
                fs.put_file(str(p), f"{root}/{name}")
            except Exception as e:
                raise ReaderError(f"{join(self.url, name)}: cannot write to the store "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        try:
            stored = fs.ls(f"{root}/{STEP_DIR}", detail=False, refresh=True)
        except FileNotFoundError:
            stored = []
        pruned = [p for p in stored if not (self.local / STEP_DIR / p.rstrip("/").rsplit("/", 1)[-1]).is_file()]
        if pruned:
            fs.rm(pruned)
