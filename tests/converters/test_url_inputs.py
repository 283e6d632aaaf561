"""Inputs at URLs beyond a plain file or prefix: a glob pattern the shell cannot expand, and the
text tokenizer itself in the bucket."""

from __future__ import annotations

import os

import s3fs

from tests.support.s3 import make_bucket
from test_writer import all_rows, make_inputs


def test_a_url_glob_and_a_tokenizer_in_the_bucket(text_tokenizer, s3_server, tmp_path, monkeypatch, capsys):
    from converters.cli import main
    inputs = make_inputs(tmp_path / "in", files=4)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    make_bucket("urlinputs")
    for p in inputs:
        fs.put_file(p, f"urlinputs/raw/{os.path.basename(p)}")
    fs.put_file(p, "urlinputs/raw/notes.md")  # not matched by the pattern
    fs.put_file(str(text_tokenizer.path), "urlinputs/models/tok.model")
    monkeypatch.setenv("GATO_KIT_INPUT_CACHE", str(tmp_path / "cache"))
    common = ["--split", "blank-line", "--unit-size", "2000", "--shard-size", "5000", "--no-progress"]
    assert main(["text", "s3://urlinputs/raw/part[0-2].txt", "--text-tokenizer", "s3://urlinputs/models/tok.model",
                 "--out", str(tmp_path / "remote"), *common]) == 0
    assert main(["text", *inputs[:3], "--text-tokenizer", str(text_tokenizer.path), "--out", str(tmp_path / "local"),
                 *common]) == 0
    got, want = all_rows(tmp_path / "remote"), all_rows(tmp_path / "local")
    assert got.num_rows == want.num_rows and got.drop(["source_id"]).equals(want.drop(["source_id"]))
    assert (tmp_path / "remote" / "tokenizer.model").read_bytes() == open(text_tokenizer.path, "rb").read()
    capsys.readouterr()
    assert main(["text", "s3://urlinputs/raw/*.parquet", "--text-tokenizer", str(text_tokenizer.path),
                 "--out", str(tmp_path / "none"), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://urlinputs/raw/*.parquet: matches no input" in err
