"""`gato-tokenize rl|captions|text INPUT... --out DIR`: raw data -> shard directory.

Each kind K lives in `converters.K` and exposes `add_arguments(parser)` (its own options) and
`make_converter(args) -> Converter`. Before `make_converter` runs, this command puts on `args`:

* `args.tokenizer`: a `tokenizer_kit.text.TextTokenizer` loaded from `--text-tokenizer` (or None);
* `args.layout`: the `VocabLayout` every id must follow (from the tokenizer, or for RL without
  text from `--text-vocab-size`), with `--layout-profile` applied.

The writer (converters/writer/) then owns engines, workers, partitions, resume, `--on-error`,
the output store and the manifest. Kind modules are imported only when their subcommand runs, so one
command does not pay for the others' imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

KINDS = {
    "rl": "RL episodes (Minari datasets, D4RL-style HDF5, Parquet / HF datasets episode tables) "
          "-> one row per episode",
    "captions": "image-caption pairs (WebDataset tars, CSV / JSONL / COCO + images, Parquet, HF datasets) "
                "-> one row per pair",
    "text": "text (.txt, .jsonl, Parquet, HF datasets) -> one row per document",
}
NEEDS_TEXT_TOKENIZER = {"text", "captions"}


def _kind_module(kind: str):
    return importlib.import_module(f"converters.{kind}")


def add_common_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    from tokenizer_kit.argtypes import byte_size
    from tokenizer_kit.argtypes import positive_int as positive

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="shard directory to write (created if missing)")
    p.add_argument("--workers", type=positive, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--num-partitions", type=positive, default=1, metavar="K",
                   help="split the work units into K disjoint partitions (with --partition)")
    p.add_argument("--partition", type=int, default=None, metavar="I",
                   help="convert only partition I of K (its units' shards go straight into DIR); "
                        "then `gato-tokenize finalize DIR` or the command without it writes the manifest")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad record: stop with exit 1 (fail, default) or skip it and list it in the manifest")
    required = kind in NEEDS_TEXT_TOKENIZER
    p.add_argument("--text-tokenizer", required=required, default=None, metavar="MODEL",
                   help="SentencePiece .model used for all text (a path or URL)" + ("" if required else
                                                                     " (needed when episodes have text fields)"))
    if not required:
        p.add_argument("--text-vocab-size", type=positive, default=32000, metavar="T",
                       help="text vocab size of the layout when no --text-tokenizer is given (default 32000)")
    p.add_argument("--layout-profile", choices=("gato", "disjoint"), default="gato",
                   help="vocab layout profile (default gato)")
    p.add_argument("--shard-size", type=byte_size, default=256 * 10**6, metavar="BYTES",
                   help="largest shard file on disk, after compression, e.g. 64MB, 1GiB (default 256MB; "
                        "a single row larger than it gets a shard of its own)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="run the work units in local processes (default) or as Ray tasks; INPUT and DIR "
                        "may be fsspec URLs (s3://bucket/prefix, gs://, file://) with either")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: the cluster to join (default: start a local Ray)")
    p.add_argument("--test-share", type=_test_share, default=0.0, metavar="SHARE",
                   help="hold out this share of episodes/documents/pairs (chosen by a hash of their source id: "
                        "the same ones on every run) as the test split, in shards of their own that the "
                        "manifest marks test; gato-train reports eval loss on them (default 0)")
    p.add_argument("--compression", choices=("default", "none", "lz4", "zstd"), default="default",
                   help="Arrow IPC buffer compression of the shards (default: zstd where rows hold images, else none)")
    p.add_argument("--task", default=None, metavar="NAME",
                   help=f"task name of every row (default: what the converter finds, else {kind!r})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _LazyKindParser(argparse.ArgumentParser):
    """Adds the kind's own options only when the subcommand is parsed or its help shown (lazy import)."""

    kind: str = ""
    _kind_loaded = False

    def _load_kind(self) -> None:
        if not self._kind_loaded:
            self._kind_loaded = True
            _kind_module(self.kind).add_arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._load_kind()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._load_kind()
        return super().format_help()


def register(subparsers) -> None:
    for kind, help_text in KINDS.items():
        p = subparsers.add_parser(kind, help=help_text, description=f"Convert {help_text}.")
        p.__class__ = _LazyKindParser  # add_parser has no parser_class; the subclass only adds laziness
        p.kind = kind
        add_common_arguments(p, kind)
        p.set_defaults(func=run, kind=kind, _parser=p)


def _check_out(parser: argparse.ArgumentParser, out: str) -> None:
    """--out (or a folder it would be made in) that is a file is bad usage, found before any work."""
    from pathlib import Path
    for p in (Path(out), *Path(out).parents):
        if p.exists():
            if not p.is_dir():
                parser.error(f"--out {out}: {p} exists and is not a directory")
            return


def run(args) -> int:
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.text import TextTokenizer
    from converters.inputs import localize_inputs
    from converters.writer import UsageError, convert

    parser: argparse.ArgumentParser = args._parser
    if args.num_partitions > 1 and args.partition is None:
        parser.error("--num-partitions needs --partition I")
    if args.partition is not None and not 0 <= args.partition < args.num_partitions:
        parser.error(f"--partition must be in [0, {args.num_partitions})")

    _check_out(parser, args.out)
    if args.text_tokenizer:  # a model at a URL is fetched like an input (cached by ETag)
        args.text_tokenizer = localize_inputs([args.text_tokenizer])[0]
    args.tokenizer = TextTokenizer(args.text_tokenizer) if args.text_tokenizer else None
    if args.tokenizer is not None:
        args.layout = args.tokenizer.layout(args.layout_profile)
    else:
        args.layout = VocabLayout(text_vocab_size=args.text_vocab_size, profile=args.layout_profile)
    try:
        args.inputs = localize_inputs(args.inputs)
        converter = _kind_module(args.kind).make_converter(args)
        result = convert(converter, args.out, layout=args.layout, tokenizer_path=args.text_tokenizer,
                         workers=args.workers, on_error=args.on_error, shard_size=args.shard_size,
                         num_partitions=args.num_partitions, partition=args.partition, task=args.task,
                         progress=not args.no_progress, engine=args.engine, ray_address=args.ray_address,
                         compression=default_compression(args.kind, converter) if args.compression == "default"
                         else args.compression, test_share=args.test_share)
    except UsageError as e:
        parser.error(str(e))
    print(summary(result), file=sys.stderr)
    notes = getattr(converter, "notes", None)  # warnings the converter reads off the finished manifest
    for line in notes(result.manifest) if notes is not None and result.manifest is not None else ():
        print(line, file=sys.stderr)
    return 0


def summary(result) -> str:
    """The one line a finished (or partition) run prints: what it wrote and how fast."""
    if result.manifest is None:
        return (f"{result.units_converted} units converted into {result.out} ({result.units_total} in all) in "
                f"{result.seconds:.1f}s; once every partition is done: gato-tokenize finalize {result.out}")
    m = result.manifest
    mb = sum(s.bytes for s in m.shards) / 1e6
    rate = m.total_tokens / max(result.seconds, 1e-9) / 1e6
    head = "up to date: " if result.up_to_date else ""
    filtered = m.typed_stats.filtered
    filtered = f", {filtered} filtered out" if filtered else ""
    speed = "" if result.up_to_date else f", {result.seconds:.1f}s ({rate:.2f}M tok/s)"  # nothing was converted
    return (f"{head}{m.converter}: {m.total_rows} rows, {m.total_tokens} tokens in {len(m.shards)} shards "
            f"({mb:.1f} MB), {len(m.skipped)} skipped{filtered}{speed} -> {result.out}")


def _test_share(text: str) -> float:
    from tokenizer_kit.argtypes import probability
    x = probability(text)
    if x >= 1.0:
        raise argparse.ArgumentTypeError(f"must be below 1 (some rows must stay for training), got {text}")
    return x


def default_compression(kind: str, converter) -> str:
    """zstd where rows hold image patches (Atari frames: ~170x smaller, converted faster since less
    is written); none otherwise (state RL and text shrink only 3-5x, and uncompressed shards are
    memory-mapped by the loader with no decoding). Measured in benchmarks/bench_compression.py."""
    if kind == "captions":
        return "zstd"
    spec = converter.options().get("episode_spec") or {}
    return "zstd" if any(f.get("kind") == "image" for f in spec.get("observations", [])) else "none"
