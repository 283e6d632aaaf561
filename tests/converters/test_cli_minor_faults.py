"""Small CLI faults: each is one line with the right exit code, or names the right file."""

from __future__ import annotations

import os

from test_inspect import run
from test_captions import tokenize


def test_inspect_png_without_suffix_writes_the_name_it_prints(tmp_path, caption_shard_dir, capsys):
    target = tmp_path / "rowimg"
    code, _, err = run(["inspect", str(caption_shard_dir), "--row", "0", "--png", str(target)], capsys)
    assert code == 0 and f"wrote {target}" in err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "rowimg.png").exists()


def test_out_inside_a_file_is_bad_usage_in_one_line(tmp_path, sp_model_path, capsys):
    (tmp_path / "f").write_text("x")
    (tmp_path / "a.txt").write_text("some words\n")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        code, err = tokenize(["text", str(tmp_path / "a.txt"), "--text-tokenizer", sp_model_path, "--out", str(out),
                              "--no-progress"], capsys)
        assert code == 2 and "exists and is not a directory" in err and "Traceback" not in err


def test_a_killed_tokenizer_write_leaves_nothing_after_the_next_run(tmp_path, corpus_path, sp_model_path, capsys):
    from converters.cli import main
    out = tmp_path / "tok.model"
    (tmp_path / ".tok.model.tmp999999").write_bytes(b"half a model")  # a run killed while writing
    assert main(["train-tokenizer", corpus_path, "--vocab-size", "512", "--out", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["tok.model"]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / ".tokenizer.model.tmp4242").write_bytes(b"partial copy")
    (tmp_path / "a.txt").write_text("some words\n")
    code, err = tokenize(["text", str(tmp_path / "a.txt"), "--text-tokenizer", sp_model_path, "--out", str(shards),
                          "--no-progress"], capsys)
    assert code == 0, err
    assert not [p for p in os.listdir(shards) if ".tmp" in p]
