"""Inputs given as fsspec URLs (s3://, gs://, ...) -> local files, for converters that read paths.

Each remote file is fetched through fsspec once into a persistent cache ($GATO_KIT_INPUT_CACHE,
else ~/.cache/gato-kit/inputs) and fetched again only when its ETag changes, so a re-run finds the
same local file (same size and mtime: its work units are reused) and converters read plain paths.
Object keys come from the store, so each becomes a path only through schemas.names.inside: a key
with `../` or an absolute path is refused (one line, exit 1) before anything is written.
"""

from __future__ import annotations

import os
from glob import has_magic
from pathlib import Path

from schemas.names import inside, redact
from schemas.storage import OutDir, is_remote
from tokenizer_kit.files import atomic_path


def cache_dir() -> Path:
    return Path(os.environ.get("GATO_KIT_INPUT_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gato-kit" / "inputs")


def localize_inputs(inputs: list[str]) -> list[str]:
    """Local paths stay; file:// loses its scheme; a remote file or prefix is fetched (every file
    under a prefix, keeping its layout below the cache's per-URL folder); a URL with a glob
    pattern (`s3://bucket/raw/*.txt`: the shell cannot expand it) is each match, sorted."""
    out: list[str] = []
    for item in inputs:
        if not is_remote(item):
            out.append(item.removeprefix("file://"))
        elif has_magic(item):
            out.extend(_fetch(url) for url in _glob(item))
        else:
            out.append(_fetch(item))
    return out


def _glob(pattern: str) -> list[str]:
    store = OutDir(pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0].rsplit("/", 1)[0])
    protocol = pattern.split("://", 1)[0]
    with store.errors("list the input pattern"):
        matches = sorted(store.fs.glob(store.fs._strip_protocol(pattern)))
    if not matches:
        raise FileNotFoundError(f"{pattern}: matches no input")
    return [f"{protocol}://{m}" for m in matches]


_FETCHED: dict[str, str] = {}  # this process's fetched inputs: local path -> URL


def fetched_inputs() -> dict[str, str]:
    """{local path: URL} of every input this process fetched: what a machine that does not share
    this one's disk needs to fetch a unit's input itself (converters.writer.engines' Ray tasks)."""
    return dict(_FETCHED)


def ensure_local(path: str | None, fetched: dict[str, str]) -> None:
    """Where a unit runs on another machine: if its input `path` is not there but was fetched
    from a URL by the driver, fetch it (only that file or folder) from the URL into the same path,
    so the unit reads the same bytes under the same name (source ids name it) as anywhere else."""
    if not path or os.path.exists(path):
        return
    for root, url in fetched.items():
        if path == root or path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root):].strip("/")
            _fetch(url.rstrip("/") + ("/" + rel if rel else ""), Path(path))
            return


def _fetch(url: str, local_root: Path | None = None) -> str:
    store = OutDir(url)
    fs, root = store.fs, store.root
    local_root = local_root or inside(cache_dir(), redact(url).replace("://", "/").rstrip("/"), "input URL")
    _FETCHED[str(local_root)] = url
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
            with atomic_path(stamp, fsync=False) as tmp:  # like the file it vouches for
                tmp.write_text(tag)
    return str(local_root)
