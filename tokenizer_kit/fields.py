"""How nested observations and actions are named as flat fields: `obs/KEY`, `obs/KEY/SUB`, `obs/0`.

One rule for the converters that read Dict/Tuple spaces from datasets and for the agent that reads
them from a live environment, so a field the data calls `obs/image` is the one the agent fills.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

OBS = "obs"  # the root of every observation field of a nested (Dict/Tuple) space
ACTION = "action"  # the root of every action field
SEP = "/"


def field_name(prefix: str, key: Any) -> str:
    """The name of member `key` (a Dict key or Tuple index) of the field `prefix`."""
    return f"{prefix}{SEP}{key}"


def field_key(name: str) -> tuple[str, str]:
    """The inverse of `field_name` on a root: `obs/image` -> ("obs", "image"), `action/arm/0` ->
    ("action", "arm/0"), `obs` -> ("obs", ""); a name under neither root (a table's column) ->
    ("", name), so a caller can tell a root's member from a plain column."""
    root, sep, key = name.partition(SEP)
    if root in (OBS, ACTION):
        return root, key
    return "", name


def field_keys(name: str, prefix: str) -> tuple[str, ...] | None:
    """The member keys of field `name` under `prefix` (`action/arm/0` -> ("arm", "0")), or None
    when `name` is not a member of `prefix`: the inverse of nested `field_name` calls."""
    head, sep, rest = name.partition(SEP)
    return tuple(rest.split(SEP)) if head == prefix and sep and rest else None


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
