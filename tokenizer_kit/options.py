"""One definition per option: a dataclass field made with `opt` holds an option's default, its range
or choices, its help and how the command line takes it, and every command line is built from those
fields (`add_options`), so gato-tokenize and gato-train say and check an option the same way.

The range check lives here only (`check_value`): argparse's types call it for text from the
command line, and a config file or a direct call goes through the same function. Abbreviations are
off on every parser made here (`--log` must not silently become `--log-every`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any, Callable

from .argtypes import byte_size

CLI_KINDS = ("value", "list", "flag", "append")


class UsageError(ValueError):
    """A value outside its option's type, range or choices, or options that contradict each other: exit 2."""


def opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: tuple | None = None, fixed: bool = False, metavar: str | None = None,
        cli: str = "value", size: bool = False, parse: Callable[[str], Any] | None = None,
        required: bool = False, positional: bool = False, exclusive: str | None = None) -> Any:
    """A field of an options dataclass: default, range [lo, hi] (an end excluded with lo_open /
    hi_open) or choices, help text, whether it defines a run (fixed: a resume must not change it)
    and how the command line takes it: cli is value, list (one or more values), flag (store_true;
    --no-NAME when the default is True) or append (repeatable); `positional`: bare values, not
    --NAME; `required`: must be given. `size`: a byte count (64MB, 1GiB); `parse`: the syntax of one
    value (str -> value, argparse.ArgumentTypeError when bad), before the range check; `exclusive`:
    fields with the same name are mutually exclusive on the command line."""
    if cli not in CLI_KINDS:
        raise ValueError(f"cli must be one of {CLI_KINDS}, not {cli!r}")
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "fixed": fixed, "metavar": metavar, "cli": cli, "size": size, "parse": parse, "required": required,
            "positional": positional, "exclusive": exclusive}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The long option of field `name`: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def type_name(f: dataclasses.Field) -> str:
    """The field's annotation as text (`int | None`, `list[str]`), with or without postponed annotations."""
    t = f.type
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # mypy: MISSING is not callable


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """`value` for the option of field `f`, converted to its type and checked against its range or
    choices; UsageError naming the option otherwise. Every way a value arrives comes here."""
    m, kind, name = f.metadata, type_name(f), flag(f.name)
    if value is None:
        if "None" in kind or f.default is None:
            return None
        raise UsageError(f"{name} must be given a value")
    if m.get("parse") is not None:
        value = [_parsed(f, v) for v in value] if isinstance(value, (list, tuple)) else _parsed(f, value)
    if kind.startswith("list"):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UsageError(f"{name} must be a list, not {value!r}")
        item = item_kind(kind)
        if item == "str":
            if not all(isinstance(v, (str, os.PathLike)) for v in value):
                raise UsageError(f"{name} must be a list of paths, not {value!r}")
            return [os.fspath(v) for v in value]
        return [_scalar(f, item, v) for v in value]
    return _scalar(f, kind, value)


def item_kind(kind: str) -> str:
    """`list[int] | None` -> `int`: the type of one item of a list option."""
    return kind[len("list["):].split("]")[0].strip() if kind.startswith("list[") else ""


def _scalar(f: dataclasses.Field, kind: str, value: Any) -> Any:
    m, name = f.metadata, flag(f.name)
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, not {value!r}")
        return value
    if kind.startswith("int"):
        if m.get("size") and isinstance(value, str):
            try:
                value = byte_size(value)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"{name}: {e}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{name} must be an integer, not {value!r}")
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, not {value!r}")
        value = float(value)
    elif kind.startswith("str"):
        if not isinstance(value, str):
            raise UsageError(f"{name} must be a string, not {value!r}")
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and (value <= lo if m["lo_open"] else value < lo):
        raise UsageError(f"{name} must be {'above' if m['lo_open'] else 'at least'} {lo}, not {value}")
    if hi is not None and (value >= hi if m["hi_open"] else value > hi):
        raise UsageError(f"{name} must be in [{lo}, {hi}{')' if m['hi_open'] else ']'}, not {value}")
    if m.get("choices") is not None and value not in m["choices"]:
        raise UsageError(f"{name} must be one of {', '.join(m['choices'])}, not {value!r}")
    return value


def _parsed(f: dataclasses.Field, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return f.metadata["parse"](value)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise UsageError(f"{flag(f.name)}: {e}") from None


def check_all(options: Any) -> Any:
    """Every field of an options dataclass instance through `check_value` (a direct call's values
    checked as the command line's are)."""
    for f in dataclasses.fields(options):
        if f.metadata.get("cli"):
            setattr(options, f.name, check_value(f, getattr(options, f.name)))
    return options


Check = Callable[[dataclasses.Field, Any], Any]


def arg_type(f: dataclasses.Field, check: Check = check_value) -> Callable[[str], Any]:
    """argparse's type of field `f`: the text as a number where the field is one, then `check`."""
    kind = type_name(f)
    scalar = item_kind(kind) or kind
    custom = f.metadata.get("parse") is not None or f.metadata.get("size")

    def parse(text: str) -> Any:
        value: Any = text
        if not custom and scalar.startswith("int"):
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        elif not custom and scalar.startswith("float"):
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            if kind.startswith("list"):  # one item of a list option
                return check(f, [value])[0]
            return check(f, value)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = f.name
    return parse


def add_options(parser: Any, cls: type, *, check: Check = check_value, skip: tuple[str, ...] = (),
                default_in_help: bool = True) -> None:
    """Add one argument per `opt` field of dataclass `cls` to `parser` (a parser or an argument group):
    default, choices, metavar and help from the field, values through `check`. Fields in `skip`
    (e.g. a base class's, added elsewhere) are left out."""
    groups: dict[str, Any] = {}
    none = argparse.SUPPRESS  # an option not given is absent: its default is the field's, not a copy here
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli") or f.name in skip:
            continue
        default = default_of(f)
        text = m["help"]
        if default_in_help and not (default in (None, [], "") or isinstance(default, bool) or "default" in text):
            text += f" (default {default})"
        target = parser
        if m["exclusive"]:
            if m["exclusive"] not in groups:
                groups[m["exclusive"]] = parser.add_mutually_exclusive_group()
            target = groups[m["exclusive"]]
        if m["positional"]:
            target.add_argument(f.name, metavar=m["metavar"], help=text, type=arg_type(f, check), default=none,
                                **({"nargs": "+"} if m["cli"] == "list" else {}))
            continue
        if m["cli"] == "flag":
            if default:
                target.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=text,
                                    default=none)
            else:
                target.add_argument(flag(f.name), action="store_true", help=text, default=none)
            continue
        kw: dict[str, Any] = {"nargs": "+"} if m["cli"] == "list" else {}
        if m["cli"] == "append":
            kw["action"] = "append"
        if m["choices"] is not None:
            kw["choices"] = m["choices"]
        else:
            kw["type"] = arg_type(f, check)
        if m["required"]:
            kw["required"] = True
        kind = type_name(f)
        metavar = m["metavar"] or (None if m["choices"] else "N" if kind.startswith("int") else
                                   "X" if kind.startswith("float") else "VALUE")
        target.add_argument(flag(f.name), metavar=metavar, help=text, default=none, **kw)


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """An instance of options dataclass `cls` from parsed arguments: the options given, the
    dataclass's defaults for the rest (add_options leaves an option not given off the namespace)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def parse(cls: type, argv: list[str], prog: str | None = None) -> Any:
    """An instance of `cls` from a command line of its options only (tests, scripts, benchmarks)."""
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    add_options(p, cls)
    return from_namespace(cls, p.parse_args([os.fspath(a) for a in argv]))


def add_command(subparsers: Any, name: str, cls: type, func: Callable[[Any], int],
                **kw: Any) -> argparse.ArgumentParser:
    """A subcommand whose options are dataclass `cls`: its parser built from the fields (no
    abbreviations), and `func` called with the typed instance; a UsageError it raises is argparse's
    one line and exit 2."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, allow_abbrev=False, **kw)
    add_options(p, cls)

    def run(args: argparse.Namespace) -> int:
        try:
            return func(from_namespace(cls, args))
        except UsageError as e:
            p.error(str(e))
    p.set_defaults(func=run)
    return p
