"""tokenizer_kit.options: one field per option, one check, the command line built from the fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from tokenizer_kit.argtypes import image_size_or_native
from tokenizer_kit.options import UsageError, add_options, check_value, from_namespace, opt, parse


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


@dataclass
class Toy:
    paths: list[str] = opt([], "inputs", cli="list", positional=True)
    count: int = opt(3, "how many", lo=1)
    share: float = opt(0.0, "a share", lo=0, hi=1, hi_open=True)
    size: int = opt(1000, "bytes", size=True, lo=1)
    mode: str = opt("a", "a mode", choices=("a", "b"))
    limit: int | None = opt(None, "at most", lo=0)
    pages: list[int] | None = opt(None, "pages", lo=0, cli="append")
    pairs: list[tuple[str, str]] = opt([], "pairs", cli="append", parse=_pair)
    image: tuple[int, int] | None = opt(None, "image size", parse=image_size_or_native)
    progress: bool = opt(True, "no bar", cli="flag")
    strict: bool = opt(False, "strict", cli="flag")


F = {f.name: f for f in fields(Toy)}


def test_defaults_come_from_the_fields_and_values_are_typed():
    assert parse(Toy, ["x"]) == Toy(paths=["x"])
    t = parse(Toy, ["x", "y", "--count", "5", "--share", "0.5", "--size", "2KB", "--mode", "b", "--pages", "2",
                    "--pages", "0", "--pairs", "a=1", "--image", "16x32", "--no-progress", "--strict"])
    assert t == Toy(["x", "y"], 5, 0.5, 2000, "b", None, [2, 0], [("a", "1")], (16, 32), False, True)


@pytest.mark.parametrize("argv", [["--count", "0"], ["--count", "1.5"], ["--share", "1"], ["--share", "nan"],
                                  ["--size", "lots"], ["--mode", "c"], ["--limit", "-1"], ["--pages", "-2"],
                                  ["--pairs", "novalue"], ["--image", "20x20"], ["--cou", "4"], []])
def test_a_bad_value_or_an_abbreviation_is_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(Toy, ["x"] + argv if argv else [])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_the_same_check_for_values_from_python():
    assert check_value(F["count"], 4) == 4 and check_value(F["share"], 0) == 0.0
    assert check_value(F["size"], "1KiB") == 1024 and check_value(F["image"], "native") is None
    assert check_value(F["pairs"], ["a=b"]) == [("a", "b")] and check_value(F["limit"], None) is None
    for name, bad, msg in (("count", 0, "--count must be at least 1, not 0"), ("count", True, "must be an integer"),
                           ("share", 1.0, r"--share must be in \[0, 1\), not 1.0"), ("mode", "z", "one of a, b"),
                           ("count", None, "must be given a value"), ("pages", [1, -1], "--pages must be at least 0")):
        with pytest.raises(UsageError, match=msg):
            check_value(F[name], bad)


def test_an_option_not_given_is_off_the_namespace():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_options(p, Toy)
    ns = p.parse_args(["x", "--count", "2"])
    assert vars(ns) == {"paths": ["x"], "count": 2}
    assert from_namespace(Toy, ns) == Toy(paths=["x"], count=2)

