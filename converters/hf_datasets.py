"""A HF `datasets` directory (what `save_to_disk` writes): recognised and opened in one place for
every converter, so captions, text and RL agree on what counts as one and say the same when it is
damaged."""

from __future__ import annotations

import os
from pathlib import Path

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
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged directory
        raise SourceError(f"{path}: not a readable datasets directory "
                          f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(ds, datasets.Dataset):
        raise SourceError(f"{path}: a DatasetDict; pass one split's directory ({', '.join(ds)})")
    return ds
