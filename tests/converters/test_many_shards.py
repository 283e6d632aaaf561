"""A conversion with more shards than the manifest keeps in JSON: the writer puts their records in
shards.arrow (before manifest.json), and every reader (loader, verify, inspect) reads it, locally
and from a bucket without listing it."""

from __future__ import annotations

import pytest

import schemas.manifest as manifest_module
from tests.support.s3 import make_bucket
from schemas.manifest import MANIFEST_NAME, Manifest
from schemas.reader import ShardDir
from schemas.shard_table import SHARD_TABLE_NAME, ShardTable
from test_writer import all_rows, make_inputs, text_converter
from test_writer_scaleout import run


@pytest.fixture
def compact(monkeypatch):
    monkeypatch.setattr(manifest_module, "COMPACT_SHARDS", 3)


def test_a_compact_manifest_is_written_and_read_locally_and_from_a_bucket(text_tokenizer, tmp_path, s3_server,
                                                                         compact, capsys):
    import s3fs

    from converters.cli import main
    inputs = make_inputs(tmp_path / "in", files=3)
    plain = tmp_path / "plain"
    run(text_converter(inputs, text_tokenizer), plain, text_tokenizer)  # one process: the reference
    m_plain = Manifest.read(plain)
    assert isinstance(m_plain.shards, ShardTable) and len(m_plain.shards) > 3 and (plain / SHARD_TABLE_NAME).exists()
    out = tmp_path / "out"
    res = run(text_converter(inputs, text_tokenizer), out, text_tokenizer, workers=2)
    assert (out / SHARD_TABLE_NAME).read_bytes() == (plain / SHARD_TABLE_NAME).read_bytes()
    assert run(text_converter(inputs, text_tokenizer), out, text_tokenizer).up_to_date  # the table is read back
    assert all_rows(out).num_rows == res.manifest.total_rows
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    make_bucket("compact")
    url = "s3://compact/out"
    run(text_converter(inputs, text_tokenizer), url, text_tokenizer)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.cat_file(f"compact/out/{SHARD_TABLE_NAME}") == (out / SHARD_TABLE_NAME).read_bytes()
    sd = ShardDir.open(url)
    assert sd.manifest.shards == Manifest.read(out).shards and sd.num_rows == res.manifest.total_rows
    assert sd.table(len(sd.shards) - 1).equals(ShardDir.open(out).table(len(sd.shards) - 1))
    assert main(["verify", url]) == 0
    fs.rm_file(f"compact/out/{SHARD_TABLE_NAME}")
    assert main(["inspect", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{SHARD_TABLE_NAME}: missing" in err
