"""`gato-tokenize train-tokenizer`: exit 0 with a usable model, 1 for bad data, 2 for bad usage."""

import pytest

from converters.cli import main
from tokenizer_kit.text import TextTokenizer


def test_trains_a_model_the_layout_follows(tmp_path, corpus_path):
    out = tmp_path / "models" / "text.model"
    assert main(["train-tokenizer", corpus_path, "--vocab-size", "400", "--out", str(out)]) == 0
    tok = TextTokenizer(out)
    assert tok.vocab_size == 400
    assert tok.layout().text_vocab_size == 400
    assert tok.decode(tok.encode("the robot arm grasps a cube")) == "the robot arm grasps a cube"
    assert [p.name for p in out.parent.iterdir()] == ["text.model"]  # no temporary file left


def test_unigram_model_type(tmp_path, corpus_path):
    out = tmp_path / "uni.model"
    assert main(["train-tokenizer", corpus_path, "--vocab-size", "400", "--out", str(out),
                 "--model-type", "unigram"]) == 0
    assert TextTokenizer(out).sp.GetPieceSize() == 400


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    out = tmp_path / "m.model"
    assert main(["train-tokenizer", str(missing), "--vocab-size", "400", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.txt" in err and "Traceback" not in err
    assert not out.exists()


def test_vocab_too_large_for_the_text_is_a_one_line_error(tmp_path, corpus_path, capsys):
    assert main(["train-tokenizer", corpus_path, "--vocab-size", "100000", "--out", str(tmp_path / "m.model")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Vocabulary size too high" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["train-tokenizer", "x.txt", "--out", "m.model"],  # no --vocab-size
    ["train-tokenizer", "x.txt", "--vocab-size", "many", "--out", "m.model"],
    ["train-tokenizer", "x.txt", "--vocab-size", "400", "--out", "m.model", "--model-type", "wordpiece"],
    ["train-tokenizer", "--vocab-size", "400", "--out", "m.model"],  # no TEXT
])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage" in capsys.readouterr().err
