"""SentencePiece text: load, train, encode in batches, decode. The text vocab size sets the layout."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from .errors import TokenizeError, first_line
from .files import atomic_path, file_sha256, remove_stale_temporaries
from .layout import VocabLayout


class TextTokenizer:
    """A SentencePiece model with the batch API and the id of end-of-text."""

    def __init__(self, model_path: str | os.PathLike, num_threads: int = 1):
        path = Path(model_path)
        if not path.is_file():
            raise TokenizeError(f"SentencePiece model not found: {path}")
        self.path = path
        self.num_threads = num_threads
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise TokenizeError(f"not a SentencePiece model: {path} ({first_line(e)})") from None
        self.sha256 = file_sha256(path)
        if self.sp.eos_id() < 0:
            raise TokenizeError(f"SentencePiece model {path} has no end-of-text piece (train it with eos_id >= 0)")

    @property
    def vocab_size(self) -> int:
        return int(self.sp.GetPieceSize())

    @property
    def eos_id(self) -> int:
        return int(self.sp.eos_id())

    def layout(self, profile: str = "gato") -> VocabLayout:
        return VocabLayout(text_vocab_size=self.vocab_size, profile=profile, eos_id=self.eos_id)

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[np.ndarray]:
        """int32 ids of each text; SentencePiece's threaded batch API does the work, once per distinct
        text (a robot episode repeats its task string at every step)."""
        distinct = list(dict.fromkeys(texts))
        ids = self.sp.Encode(distinct, out_type=int, add_eos=add_eos, num_threads=self.num_threads)
        if len(distinct) == len(texts):
            return [np.asarray(x, dtype=np.int32) for x in ids]
        arrays = {t: np.asarray(x, dtype=np.int32) for t, x in zip(distinct, ids)}
        return [arrays[t].copy() for t in texts]  # an array of its own each, as before

    def encode(self, text: str, add_eos: bool = False) -> np.ndarray:
        return self.encode_batch([text], add_eos)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (end-of-text dropped); ids outside the model are refused."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, batch: Sequence[Iterable[int]]) -> list[str]:
        """Texts of several id sequences at once (end-of-text dropped)."""
        lists = []
        for ids in batch:
            a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64).reshape(-1)
            if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
                raise TokenizeError(f"text id outside [0, {self.vocab_size}) of SentencePiece model {self.path}")
            lists.append(a[a != self.eos_id].tolist())
        return self.sp.Decode(lists, num_threads=self.num_threads)

    def __getstate__(self):  # picklable for worker processes: reload from the file
        return {"path": str(self.path), "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(state["path"], state["num_threads"])


MODEL_TYPES = ("bpe", "unigram", "char", "word")


def _spm_reason(e: Exception) -> str:
    """SentencePiece's `INTERNAL: file.cc(467) [check] message` as one readable line."""
    line = first_line(e)
    m = re.match(r"^\w+: \S+\(\d+\) \[(.*?)\]\s*(.*)$", line)
    if not m:
        return line
    if m.group(1) == "!sentences_.empty()":
        return "the input holds no text"
    return m.group(2) or m.group(1)


def train_tokenizer(inputs: Sequence[str | os.PathLike], vocab_size: int, out: str | os.PathLike,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    max_sentences: int = 2_000_000, num_threads: int = 2) -> Path:
    """Train a SentencePiece model on text files (one sentence per line); writes OUT (.model).

    The model gets unk=0, bos=1, eos=2, pad=-1, byte fallback so any text encodes losslessly.
    Written under a temporary name and renamed, so OUT never exists half-written.
    """
    out = Path(out)
    if model_type not in MODEL_TYPES:
        raise TokenizeError(f"unknown SentencePiece model type {model_type!r}; "
                            f"expected one of {', '.join(MODEL_TYPES)}")
    if vocab_size < 16:
        raise TokenizeError(f"vocab size {vocab_size} is too small for SentencePiece")
    if not inputs:
        raise TokenizeError("no text files to train the tokenizer on")
    for p in inputs:
        if not Path(p).is_file():
            raise TokenizeError(f"text file not found: {p}")
    failure: list[TokenizeError] = []  # SentencePiece turns iterator errors into RuntimeError: keep ours

    def sentences():
        for p in inputs:
            with open(p, encoding="utf-8", errors="strict") as f:
                try:
                    for line in f:
                        line = line.strip()
                        if line:
                            yield line
                except UnicodeDecodeError as e:
                    failure.append(TokenizeError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})"))
                    raise failure[-1] from None

    model_io = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=sentences(), model_writer=model_io, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=max_sentences,
            shuffle_input_sentence=True, num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        if failure:
            raise failure[0] from None
        raise TokenizeError(f"SentencePiece training failed: {_spm_reason(e)}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(model_io.getvalue())
    remove_stale_temporaries(out)
    return out
