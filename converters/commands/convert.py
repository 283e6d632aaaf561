"""`gato-tokenize rl|captions|text INPUT... --out DIR`: raw data -> shard directory.

Each kind K has an options dataclass (a `converters.options.ConvertOptions` with its own fields)
and `make_converter(options, layout, tokenizer) -> Converter` (KINDS). The subcommand's parser is
built from the options' fields; this command loads the tokenizer from `--text-tokenizer` (fetched
when it is a URL) and the `VocabLayout` every id must follow (from the tokenizer, or for RL without
text from `--text-vocab-size`), with `--layout-profile` applied.

The writer (converters/writer/) then owns engines, workers, partitions, resume, `--on-error`,
the output store and the manifest. Kind modules are imported only when their subcommand runs, so one
command does not pay for the others' imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizer_kit.options import UsageError, add_options, from_namespace
from tokenizer_kit.text import TextTokenizer

from converters.inputs import localize_inputs
from converters.options import ConvertOptions
from converters.writer import convert


@dataclass(frozen=True)
class Kind:
    help: str
    options: str  # module:class of its options dataclass
    make_converter: str  # module:function (options, layout, tokenizer) -> Converter


KINDS = {
    "rl": Kind("RL episodes (Minari datasets, D4RL-style HDF5, Parquet / HF datasets episode tables) "
               "-> one row per episode", "converters.rl.options:RLOptions", "converters.rl.plan:make_converter"),
    "captions": Kind("image-caption pairs (WebDataset tars, CSV / JSONL / COCO + images, Parquet, HF datasets) "
                     "-> one row per pair", "converters.captions.options:CaptionOptions",
                     "converters.captions.converter:make_converter"),
    "text": Kind("text (.txt, .jsonl, Parquet, HF datasets) -> one row per document", "converters.text:TextOptions",
                 "converters.text:make_converter"),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def options_class(kind: str) -> type[ConvertOptions]:
    return _load(KINDS[kind].options)


def make_converter(options, layout=None, tokenizer=None):
    """The converter of `options`' kind (layout and tokenizer from the options when not given)."""
    return _load(KINDS[options.kind].make_converter)(options, layout, tokenizer)


class _LazyKindParser(argparse.ArgumentParser):
    """Adds the kind's options only when the subcommand is parsed or its help shown (lazy import),
    and leaves the typed options on the namespace as `options`."""

    kind: str = ""
    _kind_loaded = False

    def _load_kind(self) -> type[ConvertOptions]:
        cls = options_class(self.kind)
        if not self._kind_loaded:
            self._kind_loaded = True
            common = [f.name for f in dataclasses.fields(ConvertOptions)]
            own = tuple(f.name for f in dataclasses.fields(cls) if f.name not in common)
            add_options(self, cls, skip=own)
            add_options(self.add_argument_group(self.kind, cls.inputs_help), cls, skip=tuple(common))
        return cls

    def parse_known_args(self, args=None, namespace=None):
        cls = self._load_kind()
        ns, rest = super().parse_known_args(args, namespace)
        ns.options = from_namespace(cls, ns)
        return ns, rest

    def format_help(self):
        self._load_kind()
        return super().format_help()


def register(subparsers) -> None:
    for kind, k in KINDS.items():
        p = subparsers.add_parser(kind, help=k.help, description=f"Convert {k.help}.", allow_abbrev=False)
        p.__class__ = _LazyKindParser  # add_parser has no parser_class; the subclass only adds laziness
        p.kind = kind
        p.set_defaults(func=run, _parser=p)


def _check_out(out: str) -> None:
    """--out (or a folder it would be made in) that is a file is bad usage, found before any work."""
    for p in (Path(out), *Path(out).parents):
        if p.exists():
            if not p.is_dir():
                raise UsageError(f"--out {out}: {p} exists and is not a directory")
            return


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    try:
        return convert_command(args.options)
    except UsageError as e:
        parser.error(str(e))


def convert_command(opts) -> int:
    """The conversion `opts` asks for (a kind's options dataclass), written; UsageError for bad usage."""

    opts.check()
    _check_out(opts.out)
    if opts.text_tokenizer:  # a model at a URL is fetched like an input (cached by ETag)
        opts.text_tokenizer = localize_inputs([opts.text_tokenizer])[0]
    tokenizer = TextTokenizer(opts.text_tokenizer) if opts.text_tokenizer else None
    layout = opts.vocab_layout(tokenizer)
    opts.inputs = localize_inputs(opts.inputs)
    converter = make_converter(opts, layout, tokenizer)
    result = convert(converter, opts.out, layout=layout, tokenizer_path=opts.text_tokenizer,
                     workers=opts.workers, on_error=opts.on_error, shard_size=opts.shard_size,
                     num_partitions=opts.num_partitions, partition=opts.partition, task=opts.task,
                     progress=opts.progress, engine=opts.engine, ray_address=opts.ray_address,
                     compression=default_compression(opts.kind, converter) if opts.compression == "default"
                     else opts.compression, test_share=opts.test_share)
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


def default_compression(kind: str, converter) -> str:
    """zstd where rows hold image patches (Atari frames: ~170x smaller, converted faster since less
    is written); none otherwise (state RL and text shrink only 3-5x, and uncompressed shards are
    memory-mapped by the loader with no decoding). Measured in benchmarks/bench_compression.py."""
    if kind == "captions":
        return "zstd"
    spec = converter.options().get("episode_spec") or {}
    return "zstd" if any(f.get("kind") == "image" for f in spec.get("observations", [])) else "none"
