"""Formatting shared by the commands' long listings (sizes, head and tail of a list)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def head_and_tail(items: list, keep: int, up_to: int | None = None) -> list:
    """All items if there are at most `up_to` (2*keep by default), else the first and last `keep`
    with a None between (where a listing says how many it left out): long listings stay short."""
    return items if len(items) <= (up_to or 2 * keep) else items[:keep] + [None] + items[-keep:]
