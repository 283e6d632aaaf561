"""SentencePiece text (tokenizer_kit.text): train, load, encode/decode in batches, clear errors.

(Named test_text_tokenizer.py: tests/ has no __init__.py files, so basenames must be unique and
tests/converters/test_text.py exists.)
"""

import pickle

import numpy as np
import pytest

from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text import TextTokenizer, file_sha256, train_tokenizer

TEXTS = ["the robot arm grasps a cube", "", "Gato is a generalist transformer.", "émoji 🤖 and ünïcode"]


def test_trained_model_has_the_fixed_special_ids(text_tokenizer):
    assert text_tokenizer.vocab_size == 512
    assert text_tokenizer.eos_id == 2
    assert text_tokenizer.sp.unk_id() == 0 and text_tokenizer.sp.bos_id() == 1
    assert text_tokenizer.layout() == VocabLayout(512, eos_id=2)
    assert text_tokenizer.layout("disjoint").profile == "disjoint"


def test_batch_encode_decode_round_trip_including_unseen_characters(text_tokenizer):
    ids = text_tokenizer.encode_batch(TEXTS, add_eos=True)
    assert [a.dtype for a in ids] == [np.int32] * len(TEXTS)
    assert all(a[-1] == 2 for a in ids) and ids[1].tolist() == [2]
    assert all(a.min() >= 0 and a.max() < 512 for a in ids)
    assert text_tokenizer.decode_batch(ids) == TEXTS  # byte fallback: nothing is lost
    assert text_tokenizer.encode(TEXTS[0]).tolist() == ids[0][:-1].tolist()
    assert text_tokenizer.decode(ids[2]) == TEXTS[2]


def test_threaded_batch_encoding_gives_the_same_ids(sp_model_path):
    one, two = TextTokenizer(sp_model_path, 1), TextTokenizer(sp_model_path, 2)
    texts = TEXTS * 50
    assert all(np.array_equal(a, b) for a, b in zip(one.encode_batch(texts), two.encode_batch(texts)))


def test_decode_refuses_ids_outside_the_model(text_tokenizer):
    with pytest.raises(TokenizeError, match=r"outside \[0, 512\)"):
        text_tokenizer.decode([5, 512])
    with pytest.raises(TokenizeError, match="outside"):
        text_tokenizer.decode_batch([[1], [-1]])


def test_tokenizer_pickles_for_worker_processes(text_tokenizer):
    copy = pickle.loads(pickle.dumps(text_tokenizer))
    assert copy.sha256 == text_tokenizer.sha256 == file_sha256(text_tokenizer.path)
    assert copy.encode(TEXTS[0]).tolist() == text_tokenizer.encode(TEXTS[0]).tolist()


def test_bad_sentencepiece_path_is_one_line_error(tmp_path):
    with pytest.raises(TokenizeError) as e:
        TextTokenizer(tmp_path / "missing.model")
    assert str(e.value) == f"SentencePiece model not found: {tmp_path / 'missing.model'}"
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizeError, match="not a SentencePiece model") as e:
        TextTokenizer(junk)
    assert "\n" not in str(e.value) and "junk.model" in str(e.value)


def test_train_unigram_and_atomic_output(tmp_path, corpus_path):
    out = tmp_path / "uni.model"
    assert train_tokenizer([corpus_path], 400, out, model_type="unigram") == out
    tok = TextTokenizer(out)
    assert tok.vocab_size == 400 and tok.decode(tok.encode("a red ball")) == "a red ball"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uni.model"]


@pytest.mark.parametrize("setup, kwargs, reason", [
    (lambda d: [str(d / "nope.txt")], {}, "text file not found"),
    (lambda d: [str(d / "empty.txt")], {}, "the input holds no text"),
    (lambda d: [str(d / "latin1.txt")], {}, "latin1.txt: not UTF-8 text"),
    (lambda d: [str(d / "ok.txt")], {"vocab_size": 8}, "too small"),
    (lambda d: [str(d / "ok.txt")], {"vocab_size": 100}, "Vocabulary size is smaller than required_chars"),
    (lambda d: [str(d / "ok.txt")], {"model_type": "wordpiece"}, "unknown SentencePiece model type"),
    (lambda d: [], {}, "no text files"),
])
def test_training_failures_are_one_line_errors_and_write_nothing(tmp_path, setup, kwargs, reason):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    (tmp_path / "ok.txt").write_text("hello world\n" * 20 + "abcdefghijklmnopqrstuvwxyz\n")
    out = tmp_path / "out" / "m.model"
    args = {"vocab_size": 300, "model_type": "bpe"} | kwargs
    with pytest.raises(TokenizeError, match=reason) as e:
        train_tokenizer(setup(tmp_path), args["vocab_size"], out, model_type=args["model_type"])
    assert "\n" not in str(e.value)
    assert not out.exists()
