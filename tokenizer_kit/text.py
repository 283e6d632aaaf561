"""SentencePiece text: load, train, encode in batches, decode. The text vocab size sets the layout."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from .errors import TokenizeError
from .layout import VocabLayout


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
            raise TokenizeError(f"not a SentencePiece model: {path} ({str(e).splitlines()[0]})") from None
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
        """int32 ids of each text; SentencePiece's threaded batch API does the work."""
        ids = self.sp.Encode(list(texts), out_type=int, add_eos=add_eos, num_threads=self.num_threads)
        return [np.asarray(x, dtype=np.int32) for x in ids]

    def encode(self, text: str, add_eos: bool = False) -> np.ndarray:
        return self.encode_batch([text], add_eos)[0]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos_id]
        return self.sp.Decode(ids)

    def __getstate__(self):  # picklable for worker processes: reload from the file
        return {"path": str(self.path), "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(state["path"], state["num_threads"])


def train_tokenizer(inputs: Sequence[str | os.PathLike], vocab_size: int, out: str | os.PathLike,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    max_sentences: int = 2_000_000, num_threads: int = 2) -> Path:
    """Train a SentencePiece model on text files (one sentence per line); writes OUT (.model).

    The model gets unk=0, bos=1, eos=2, pad=-1, byte fallback so any text encodes losslessly.
    Written under a temporary prefix and renamed, so OUT never exists half-written.
    """
    out = Path(out)
    if vocab_size < 16:
        raise TokenizeError(f"vocab size {vocab_size} is too small for SentencePiece")
    for p in inputs:
        if not Path(p).is_file():
            raise TokenizeError(f"text file not found: {p}")
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = out.parent / f".{out.stem}.tmp{os.getpid()}"
    model_io = io.BytesIO()

    def sentences():
        for p in inputs:
            with open(p, encoding="utf-8", errors="strict") as f:
                try:
                    for line in f:
                        line = line.strip()
                        if line:
                            yield line
                except UnicodeDecodeError as e:
                    raise TokenizeError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=sentences(), model_writer=model_io, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=max_sentences,
            shuffle_input_sentence=True, num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        raise TokenizeError(f"SentencePiece training failed: {str(e).splitlines()[0]}") from None
    tmp = prefix.with_suffix(".model")
    tmp.write_bytes(model_io.getvalue())
    os.replace(tmp, out)
    return out
