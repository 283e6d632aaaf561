"""A HF `datasets` directory (what `save_to_disk` writes): recognised and opened in one place for
every converter, so captions, text and RL agree on what counts as one and say the same when it is
damaged. Its `state.json` comes from a hub: every file it names must be a plain name inside the
directory (schemas.names), checked before `datasets` opens any of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from schemas.names import UnsafeNameError, inside
from tokenizer_kit.errors import first_line

from .base import SourceError


def hf_kind(path: str | os.PathLike) -> str | None:
    """'dataset' (a saved Dataset), 'dict' (a saved DatasetDict), or None (not a datasets directory)."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "dataset_dict.json").is_file():
        return "dict"
    if (p / "state.json").is_file() or (p / "dataset_info.json").is_file():
        return "dataset"
    return None


def load_dataset(path: str | os.PathLike):
    """The saved Dataset at `path`; a damaged directory or a DatasetDict is a SourceError naming it."""
    import datasets  # noqa: PLC0415 - start-up time: `datasets` takes about a second to import
    _check_names(Path(path))
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged directory
        raise SourceError(f"{path}: not a readable datasets directory "
                          f"({first_line(e)})") from None
    if not isinstance(ds, datasets.Dataset):
        raise SourceError(f"{path}: a DatasetDict; pass one split's directory ({', '.join(ds)})")
    return ds


def _check_names(p: Path) -> None:
    """Refuse a DatasetDict before its splits are opened, and a `state.json` naming a file that is
    not a plain name inside `p` (an absolute path or `../` would convert any Arrow file)."""
    if (p / "dataset_dict.json").is_file():
        try:
            splits = json.loads((p / "dataset_dict.json").read_text()).get("splits") or []
        except (OSError, ValueError, AttributeError):
            splits = []
        names = ", ".join(str(x) for x in splits if isinstance(x, str)) if isinstance(splits, list) else ""
        raise SourceError(f"{p}: a DatasetDict; pass one split's directory ({names})")
    state = p / "state.json"
    if not state.is_file():
        return
    try:
        files = json.loads(state.read_text()).get("_data_files", [])
    except (OSError, ValueError, AttributeError) as e:
        raise SourceError(f"{state}: unreadable state.json ({first_line(e)})") \
            from None
    if not isinstance(files, list):
        raise SourceError(f"{state}: _data_files is not a list")
    for i, entry in enumerate(files):
        _entry_of(p, entry.get("filename") if isinstance(entry, dict) else None,
                  f"{state}: _data_files[{i}].filename", "file")


def split_dirs(p: Path) -> list[Path]:
    """The split directories of a saved DatasetDict at `p`, in the dict's order; each split name
    from `dataset_dict.json` must be a plain name of a directory inside `p`."""
    meta = p / "dataset_dict.json"
    try:
        splits = json.loads(meta.read_text()).get("splits", [])
    except (OSError, ValueError, AttributeError) as e:
        raise SourceError(f"{meta}: unreadable ({first_line(e)})") from None
    if not isinstance(splits, list):
        raise SourceError(f"{meta}: splits is not a list")
    out = []
    for i, name in enumerate(splits):
        _entry_of(p, name, f"{meta}: splits[{i}]", "directory")
        out.append(p / name)
    return out


def _entry_of(p: Path, name, where: str, what: str) -> Path:
    """A name a folder's metadata gives for one of its entries: a plain name directly inside `p`
    (schemas.names.inside), else one line naming the metadata field."""
    try:
        target = inside(p, name, where)
    except UnsafeNameError as e:
        raise SourceError(str(e)) from None
    if target.parent != p.resolve():
        raise SourceError(f"{where}: {name!r} is not a {what} directly in {p}")
    return target
