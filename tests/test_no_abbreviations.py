"""Both command lines refuse an abbreviated option (exit 2): argparse's prefix matching would
otherwise read `--episodes 2` as `--episodes-per-unit 2`, or `--log` as `--log-every`."""

from __future__ import annotations

import pytest

from converters.cli import main as tokenize_main
from trainer.cli import main as train_main


@pytest.mark.parametrize("argv, whole", [
    (["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--text-f", "body"], "--text-field"),
    (["rl", "x.hdf5", "--out", "o", "--episodes", "2"], "--episodes-per-unit"),
    (["captions", "x.tar", "--out", "o", "--text-tokenizer", "m.model", "--records", "5"], "--records-per-unit"),
    (["verify", "d", "--simulate", "2"], "--simulate-ranks"),
    (["inspect", "d", "--source", "a/b"], "--source-id"),
    (["view", "d", "--out", "v", "--page-s", "5"], "--page-size"),
    (["train-tokenizer", "a.txt", "--out", "m", "--vocab-size", "100", "--max", "5"], "--max-sentences"),
])
def test_gato_tokenize_refuses_an_abbreviation(argv, whole, capsys):
    with pytest.raises(SystemExit) as e:
        tokenize_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and argv[-2] in err, err
    assert whole not in err.splitlines()[-1]


@pytest.mark.parametrize("abbrev", ["--batch", "--save", "--log-e"])
def test_gato_train_refuses_an_abbreviation(abbrev, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), abbrev, "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and abbrev in err, err
    assert not (tmp_path / "run").exists()
