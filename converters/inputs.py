"""Inputs given as fsspec URLs (s3://, gs://, ...) -> local files, for converters that read paths.

Each remote file is fetched through fsspec once into a persistent cache ($GATO_KIT_INPUT_CACHE,
else ~/.cache/gato-kit/inputs) and fetched again only when its ETag changes, so a re-run finds the
same local file (same size and mtime: its work units are reused) and converters read plain paths.
Object keys come from the store, so each becomes a path only through schemas.names.inside: a key
with `../` or an absolute path is refused (one line, exit 1) before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas.names import inside, redact
from schemas.storage import OutDir, is_remote
from tokenizer_kit.files import atomic_path


def cache_dir() -> Path:
    return Path(os.environ.get("GATO_KIT_INPUT_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gato-kit" / "inputs")


def localize_inputs(inputs: list[str]) -> list[str]:
    """Local paths stay; file:// loses its scheme; a remote file or prefix is fetched (every file
    under a prefix, keeping its layout below the cache's per-URL folder)."""
    return [_fetch(item) if is_remote(item) else item.removeprefix("file://") for item in inputs]


def _fetch(url: str) -> str:
    store = OutDir(url)
    fs, root = store.fs, store.root
    local_root = inside(cache_dir(), redact(url).replace("://", "/").rstrip("/"), "input URL")
    with store.errors("read the input"):
        if not fs.exists(root):
            raise FileNotFoundError(f"{url}: no such input")
        if fs.isfile(root):
            files = {root: local_root}
        else:
            files = {f: inside(local_root, f[len(root):].lstrip("/"), f"{redact(url)}: object key")
                     for f in fs.find(root)}
        for remote, local in files.items():
            info = fs.info(remote)
            stamp = local.with_name(f".{local.name}.etag")
            tag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("size"))
            if local.exists() and stamp.exists() and stamp.read_text() == tag:
                continue  # unchanged: same local file, same work units
            local.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(local, fsync=False) as tmp:
                fs.get_file(remote, str(tmp))
            stamp.write_text(tag)
    return str(local_root)
