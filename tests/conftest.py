"""Shared fixtures: small real data made on the spot (no hub, no network)."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from tokenizer_kit.layout import VocabLayout

_WORDS = ("the agent moves left right up down and picks a red green blue ball box key door opens "
          "closes robot arm grasps cube pole cart balances pendulum swings image shows digit zero one "
          "two three four five six seven eight nine cat dog astronaut coffee rocket a an in on of to "
          "with is was very small large quickly slowly Gato generalist transformer token").split()


def make_corpus(path, lines: int = 3000, seed: int = 0) -> str:
    """Deterministic pseudo-English text, one sentence per line."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            n = rng.randint(4, 16)
            f.write(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, corpus_path) -> str:
    """A small SentencePiece BPE model (vocab 512) trained on the corpus."""
    from tokenizer_kit.text import train_tokenizer
    out = tmp_path_factory.mktemp("spm") / "tiny.model"
    return str(train_tokenizer([corpus_path], 512, out))


@pytest.fixture(scope="session")
def text_tokenizer(sp_model_path):
    from tokenizer_kit.text import TextTokenizer
    return TextTokenizer(sp_model_path)


@pytest.fixture
def layout() -> VocabLayout:
    return VocabLayout(text_vocab_size=32000, eos_id=2)
