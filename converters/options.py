"""The options every `gato-tokenize rl|captions|text` conversion shares, defined once.

Each kind's options dataclass (converters/rl/options.py, converters/captions/options.py,
converters/text.py) extends `ConvertOptions`; the command line is built from the fields
(tokenizer_kit.options), and the converter and the writer read the typed instance. Ranges and
choices live in the fields; what relates two options (a partition of K partitions) is `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tokenizer_kit.layout import PROFILES, VocabLayout
from tokenizer_kit.options import UsageError, check_all, opt
from tokenizer_kit.text import TextTokenizer

from .writer.engines import ENGINES
from .writer.shards import COMPRESSIONS

ON_ERROR = ("fail", "skip")


def text_tokenizer_opt(required: bool = False, when: str = "") -> Any:
    """--text-tokenizer, said once: captions and text need it; rl only for text fields (`when`)."""
    return opt(None, "SentencePiece .model used for all text (a path or URL)" + (f" ({when})" if when else ""),
               metavar="MODEL", required=required)


@dataclass
class ConvertOptions:
    """The options of every conversion (see `tokenizer_kit.options.opt`); a kind adds its own."""

    kind: ClassVar[str] = ""
    inputs_help: ClassVar[str | None] = None  # what INPUT may be, atop the kind's own options in --help

    inputs: list[str] = opt([], "input files or directories", cli="list", positional=True, metavar="INPUT")
    out: str = opt("", "shard directory to write (created if missing)", metavar="DIR", required=True)
    workers: int = opt(1, "worker processes (default 1)", lo=1, metavar="N")
    num_partitions: int = opt(1, "split the work units into K disjoint partitions (with --partition)", lo=1,
                              metavar="K")
    partition: int | None = opt(None, "convert only partition I of K (its units' shards go straight into DIR); "
                                      "then `gato-tokenize finalize DIR` or the command without it writes the "
                                      "manifest", metavar="I")
    on_error: str = opt("fail", "bad record: stop with exit 1 (fail, default) or skip it and list it in the "
                                "manifest", choices=ON_ERROR)
    text_tokenizer: str | None = text_tokenizer_opt()
    layout_profile: str = opt("gato", "vocab layout profile (default gato)", choices=PROFILES)
    shard_size: int = opt(256 * 10**6, "largest shard file on disk, after compression, e.g. 64MB, 1GiB (default "
                                       "256MB; a single row larger than it gets a shard of its own)", size=True,
                          lo=1, metavar="BYTES")
    engine: str = opt("local", "run the work units in local processes (default) or as Ray tasks; INPUT and DIR "
                               "may be fsspec URLs (s3://bucket/prefix, gs://, file://) with either",
                      choices=ENGINES)
    ray_address: str | None = opt(None, "with --engine ray: the cluster to join (default: start a local Ray)",
                                  metavar="ADDR")
    test_share: float = opt(0.0, "hold out this share of episodes/documents/pairs (chosen by a hash of their "
                                 "source id: the same ones on every run) as the test split, in shards of their "
                                 "own that the manifest marks test; gato-train reports eval loss on them "
                                 "(default 0)", lo=0, hi=1, hi_open=True, metavar="SHARE")
    compression: str = opt("default", "Arrow IPC buffer compression of the shards (default: zstd where rows hold "
                                      "images, else none)", choices=("default", *COMPRESSIONS))
    task: str | None = opt(None, "task name of every row (default: what the converter finds, else the kind)",
                           metavar="NAME")
    progress: bool = opt(True, "no progress bar", cli="flag")

    def check(self) -> "ConvertOptions":
        """Each option against its field (as the command line checks it, for options made in
        Python), then what relates two options."""
        check_all(self)
        if self.num_partitions > 1 and self.partition is None:
            raise UsageError("--num-partitions needs --partition I")
        if self.partition is not None and not 0 <= self.partition < self.num_partitions:
            raise UsageError(f"--partition must be in [0, {self.num_partitions})")
        return self

    def vocab_layout(self, tokenizer: "TextTokenizer | None") -> VocabLayout:
        """The layout every id follows: the tokenizer's, with --layout-profile."""
        if tokenizer is None:
            raise UsageError(f"{self.kind or 'this conversion'} needs --text-tokenizer MODEL")
        return tokenizer.layout(self.layout_profile)

    def tokenizer_and_layout(self) -> "tuple[TextTokenizer | None, VocabLayout]":
        """Loaded from --text-tokenizer (a local path by now) when the convert command has not."""
        tok = TextTokenizer(self.text_tokenizer) if self.text_tokenizer else None
        return tok, self.vocab_layout(tok)
