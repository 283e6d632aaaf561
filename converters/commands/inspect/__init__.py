"""`gato-tokenize inspect DIR [--row N | --source-id ID] [--png FILE] [--json]`.

Without a row: what the directory holds (layout, tokenizer, converter, shards, tokens per modality,
tasks, returns, the quantisation error of each field). With a row: the row decoded back through
tokenizer_kit (text as text, values de-quantised next to their ids, one line per timestep) and,
with --png, its images and a strip of its tokens. Works while a converter is still writing: only
complete shards are read.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from schemas.reader import ShardDir
from tokenizer_kit.options import add_command, opt

from ...render import render_row
from .rows import _row_header, row_view
from .summary import format_summary, summary


@dataclass
class InspectOptions:
    """The options of `gato-tokenize inspect`."""

    dir: str = opt("", "shard directory, a path or a URL (s3://...); may still be being written", positional=True)
    row: int | None = opt(None, "decode row N (counting over the shards in order)", metavar="N", exclusive="which")
    source_id: str | None = opt(None, "decode the row whose source_id is ID", metavar="ID", exclusive="which")
    png: str | None = opt(None, "with --row: write the row's images and token strip to FILE", metavar="FILE")
    json: bool = opt(False, "print JSON instead of a table", cli="flag")
    seq_len: int = opt(1024, "sequence length the tokens-per-epoch line counts with (gato-train's --seq-len; "
                             "default 1024)", lo=1, metavar="N")


def run(args: InspectOptions) -> int:
    sd = ShardDir.open(args.dir, listing=True)
    if args.source_id is not None:
        shard, index = sd.find_source(args.source_id)
    elif args.row is not None:
        shard, index = sd.locate(args.row)
    else:
        if args.png:
            print("gato-tokenize inspect: --png needs --row or --source-id", file=sys.stderr)
            return 2
        s = summary(sd, args.seq_len)
        _print(json.dumps(s, indent=1) if args.json else format_summary(s))
        return 0
    row, scalars, lines, images = row_view(sd, shard, index)
    header = _row_header(sd, shard, index, row, scalars)
    if args.png:  # before the listing: a reader that stops early (`| head`) must not lose the picture
        caption = [line for line in lines if line.startswith("caption: ")]
        title = f"{sd.name}: {header.split(';')[0]}" + "".join(f"\n{c}" for c in caption)
        render_row(args.png, row, images, title)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.json:
        _print(json.dumps({"header": header, **scalars, "lines": lines, "tokens": row.tokens.tolist(),
                           "loss_mask": row.loss_mask.tolist(), "modality": row.modality.tolist(),
                           "local_pos": row.local_pos.tolist(), "step_starts": row.step_starts.tolist()}))
    else:
        _print(header + "\n" + "\n".join(lines))
    return 0


def _print(text: str) -> None:
    """Print; a reader that closed the pipe (`| head`) ends the listing quietly, not with a traceback."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again


def register(subparsers) -> None:
    add_command(subparsers, "inspect", InspectOptions, run, help="summarise a shard directory, or decode one row back",
                description=__doc__.splitlines()[0])
