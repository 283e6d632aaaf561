"""Argument types for every command line of the toolkit: a bad number is a usage error (exit 2)
with one line that says what was expected, the same wording in gato-tokenize and gato-train."""

from __future__ import annotations

import argparse


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_int(text: str) -> int:
    n = _number(text, int, "an integer")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def nonnegative_int(text: str) -> int:
    n = _number(text, int, "an integer")
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n


def positive_float(text: str) -> float:
    x = _number(text, float, "a number")
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return x


def nonnegative_float(text: str) -> float:
    x = _number(text, float, "a number")
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return x


def probability(text: str) -> float:
    x = _number(text, float, "a number")
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return x
