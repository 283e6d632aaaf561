"""A reader of a remote directory whose manifest names its shards makes no list request: every rank
of a big job would otherwise page through the whole prefix. Counted on the wire, in a proxy on
127.0.0.1 in front of moto's server, so every S3 client of the process is seen (s3fs for manifests,
pyarrow's for shard downloads)."""

from __future__ import annotations

import re

import pytest

from tests.support.faulty_proxy import FaultyProxy
from tests.support.s3 import make_bucket, upload_dir
from tests.support.shards import make_text_shard_dir
from schemas.cache import ShardCache
from schemas.reader import ShardDir


@pytest.fixture
def wire(s3_server, monkeypatch):
    """A pass-through proxy that every client of this process goes through from now on."""
    host, port = s3_server.rsplit("/", 1)[-1].split(":")
    with FaultyProxy((host, int(port))) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


def _lists(proxy: FaultyProxy) -> int:
    return len(re.findall(rb"(?:^|\r\n)GET [^ \r\n]*list-type=", bytes(proxy.sent)))


def test_opening_and_reading_a_remote_directory_lists_nothing(sp_model_path, corpus_path, tmp_path, wire):
    local = make_text_shard_dir(tmp_path / "text", sp_model_path, corpus_path, docs=8)
    url = upload_dir(local, make_bucket("nolist") + "/text")
    wire.sent.clear()
    sd = ShardDir.open(url, cache=ShardCache(tmp_path / "cache"))
    tables = [sd.table(i).num_rows for i in range(len(sd.shards))]
    assert sum(tables) == sd.num_rows and len(sd.shards) >= 2
    for s in sd.shards:  # the wire sees every client's requests: each shard was fetched
        assert wire.requests("GET", f"/nolist/text/{s.name}"), s.name
    assert _lists(wire) == 0, bytes(wire.sent)[:2000]
    # verify and inspect still list, to report shards missing from the store or not in the manifest
    __import__("s3fs").S3FileSystem(skip_instance_cache=True).rm_file(f"nolist/text/{sd.shards[1].name}")
    listed = ShardDir.open(url, listing=True)
    assert listed.missing == [sd.shards[1].name] and _lists(wire) > 0
