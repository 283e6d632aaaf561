"""`gato-tokenize finalize DIR`: write the manifest once every partition has converted its units."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tokenizer_kit.options import add_command, opt

from converters.writer import finalize


@dataclass
class FinalizeOptions:
    """The options of `gato-tokenize finalize`."""

    dir: str = opt("", "shard directory (path or fsspec URL)", positional=True)


def run(args: FinalizeOptions) -> int:
    m = finalize(args.dir)  # a locked or unreachable OUT: converters.errors makes it one line
    print(f"{args.dir}: {m.total_rows} rows, {m.total_tokens} tokens in {len(m.shards)} shards", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    add_command(subparsers, "finalize", FinalizeOptions, run,
                help="write the manifest of a directory converted by partitions", description=__doc__.splitlines()[0])
