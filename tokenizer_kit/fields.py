"""How nested observations and actions are named as flat fields: `obs/KEY`, `obs/KEY/SUB`, `obs/0`.

One rule for the converters that read Dict/Tuple spaces from datasets and for the agent that reads
them from a live environment, so a field the data calls `obs/image` is the one the agent fills.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def field_name(prefix: str, key: Any) -> str:
    """The name of member `key` (a Dict key or Tuple index) of the field `prefix`."""
    return f"{prefix}/{key}"


def flatten_value(value: Any, prefix: str) -> dict[str, Any]:
    """A nested observation or action (dicts and tuples) as {field name: leaf value}."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, tuple):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten_value(v, field_name(prefix, k)))
    return out
