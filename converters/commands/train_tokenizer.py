"""`gato-tokenize train-tokenizer TEXT... --vocab-size N --out MODEL`: train the SentencePiece model.

The model's vocab size T sets the layout of every shard tokenised with it (SPEC 1), so the same
file must be passed as `--text-tokenizer` to the converters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tokenizer_kit.options import add_command, opt
from tokenizer_kit.text import TextTokenizer, train_tokenizer


@dataclass
class TrainTokenizerOptions:
    """The options of `gato-tokenize train-tokenizer`."""

    inputs: list[str] = opt([], "UTF-8 text files, one sentence per line", cli="list", positional=True, metavar="TEXT")
    vocab_size: int = opt(None, "text vocab size T (paper: 32000)", metavar="N", required=True)  # required: never None
    out: str = opt("", "where to write the .model file", metavar="MODEL", required=True)
    model_type: str = opt("bpe", "SentencePiece algorithm (default: bpe, much faster to train)",
                          choices=("bpe", "unigram"))
    character_coverage: float = opt(0.9995, "share of characters kept as pieces; the rest fall back to bytes "
                                            "(default 0.9995)", metavar="F")
    max_sentences: int = opt(2_000_000, "sample at most N lines for training (default 2,000,000)", metavar="N")
    threads: int = opt(2, "training threads (default 2)", metavar="N")


def register(subparsers) -> None:
    add_command(subparsers, "train-tokenizer", TrainTokenizerOptions, run,
                help="train a SentencePiece model on text files", description=__doc__.splitlines()[0])


def run(args: TrainTokenizerOptions) -> int:
    out = train_tokenizer(args.inputs, args.vocab_size, args.out, model_type=args.model_type,
                          character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                          num_threads=args.threads)
    tok = TextTokenizer(out)
    print(f"wrote {out}: {tok.vocab_size} pieces, end-of-text id {tok.eos_id}, sha256 {tok.sha256[:12]}",
          file=sys.stderr)
    return 0
