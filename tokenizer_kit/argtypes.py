"""Values with a syntax of their own, for every command line of the toolkit (option fields take
them as `parse`, tokenizer_kit.options): byte sizes and image sizes. A bad one is a usage error
(exit 2) with one line that says what was expected, the same wording in gato-tokenize and gato-train."""

from __future__ import annotations

import argparse

from .images import MAX_PIXELS
from .layout import PATCH_SIZE

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(text: str | int) -> int:
    """A size in bytes: '256MB' -> 256_000_000; '64MiB' or '64M' -> 67_108_864; '1000' -> 1000.
    (--shard-size, --cache-limit, --max-image-bytes and every other byte count.)"""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = float(num) * _SIZE_UNITS[s[len(num):]]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1000, 64MB, 1GiB)") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte: {text!r}")
    return int(value)


def image_size_or_native(text: str) -> tuple[int, int] | None:
    """`N` (square), `HxW`, or `native` (each image keeps its own size, fitted to 16s): the one
    --image-size syntax of every command (converters, `gato-train caption`, acting)."""
    if text.strip().lower() == "native":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x")) if "x" in text.lower() else (int(text),) * 2
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, HxW or native, got {text!r}") from None
    if h <= 0 or w <= 0 or h % PATCH_SIZE or w % PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"image size {h}x{w} must be positive multiples of the "
                                         f"{PATCH_SIZE}-pixel patch")
    if h * w > MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"image size {h}x{w} is over the limit of {MAX_PIXELS} pixels")
    return h, w
