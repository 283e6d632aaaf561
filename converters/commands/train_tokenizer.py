"""`gato-tokenize train-tokenizer TEXT... --vocab-size N --out MODEL`: train the SentencePiece model.

The model's vocab size T sets the layout of every shard tokenised with it (SPEC 1), so the same
file must be passed as `--text-tokenizer` to the converters.
"""

from __future__ import annotations

import argparse
import sys

from tokenizer_kit.text import TextTokenizer, train_tokenizer


def register(subparsers) -> None:
    p = subparsers.add_parser("train-tokenizer", help="train a SentencePiece model on text files",
                              description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="TEXT", help="UTF-8 text files, one sentence per line")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N", help="text vocab size T (paper: 32000)")
    p.add_argument("--out", required=True, metavar="MODEL", help="where to write the .model file")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                   help="SentencePiece algorithm (default: bpe, much faster to train)")
    p.add_argument("--character-coverage", type=float, default=0.9995, metavar="F",
                   help="share of characters kept as pieces; the rest fall back to bytes (default 0.9995)")
    p.add_argument("--max-sentences", type=int, default=2_000_000, metavar="N",
                   help="sample at most N lines for training (default 2,000,000)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="training threads (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = train_tokenizer(args.inputs, args.vocab_size, args.out, model_type=args.model_type,
                          character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                          num_threads=args.threads)
    tok = TextTokenizer(out)
    print(f"wrote {out}: {tok.vocab_size} pieces, end-of-text id {tok.eos_id}, sha256 {tok.sha256[:12]}",
          file=sys.stderr)
    return 0
