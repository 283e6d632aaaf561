"""`gato-tokenize`: convert raw data to shards, train a tokenizer, inspect and verify shards.

Each subcommand lives in its own module that exposes `register(subparsers)`; its options are one
dataclass (tokenizer_kit.options) that its parser is built from, and the parser sets `func` to the
function that runs it. Exit codes: 0 ok, 1 bad data (one-line reason), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from schemas.names import redact_std_streams

from .errors import run_reporting_errors

SUBCOMMAND_MODULES = (
    "converters.commands.convert",
    "converters.commands.finalize",
    "converters.commands.train_tokenizer",
    "converters.commands.inspect",
    "converters.commands.verify",
    "converters.commands.view",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gato-tokenize", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for p in sub.choices.values():  # `--log` must not silently become `--log-every`, in any subcommand
        p.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    redact_std_streams()  # credentials in a URL never reach a message
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_reporting_errors(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
