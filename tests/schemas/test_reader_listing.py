"""A reader of a remote directory whose manifest names its shards makes no list request: every rank
of a big job would otherwise page through the whole prefix. Counted on the real S3 client's own
request events, against moto's server."""

from __future__ import annotations

import pytest

from tests.support.s3 import make_bucket, upload_dir

from tests.support.shards import make_text_shard_dir
from schemas.cache import ShardCache
from schemas.reader import ShardDir
from schemas.storage import remote_fs


@pytest.fixture
def counted(s3_server):
    """{operation: calls} made by this process's S3 client from now on."""
    fs, _ = remote_fs("s3://any")
    calls: dict[str, int] = {}

    def count(event_name, **_):
        op = event_name.rsplit(".", 1)[-1]
        calls[op] = calls.get(op, 0) + 1

    fs.connect()
    fs.s3.meta.events.register("before-call.s3", count)
    yield calls
    fs.s3.meta.events.unregister("before-call.s3", count)


def test_opening_and_reading_a_remote_directory_lists_nothing(sp_model_path, corpus_path, tmp_path, counted):
    local = make_text_shard_dir(tmp_path / "text", sp_model_path, corpus_path, docs=8)
    url = upload_dir(local, make_bucket("nolist") + "/text")
    counted.clear()
    sd = ShardDir.open(url, cache=ShardCache(tmp_path / "cache"))
    tables = [sd.table(i).num_rows for i in range(len(sd.shards))]
    assert sum(tables) == sd.num_rows and len(sd.shards) >= 2
    assert counted.get("GetObject", 0) >= 1 + len(sd.shards)  # the counter sees this client's requests
    assert not {op for op in counted if op.startswith("List")}, counted
    # verify and inspect still list, to report shards missing from the store or not in the manifest
    __import__("s3fs").S3FileSystem(skip_instance_cache=True).rm_file(f"nolist/text/{sd.shards[1].name}")
    listed = ShardDir.open(url, listing=True)
    assert listed.missing == [sd.shards[1].name] and any(op.startswith("List") for op in counted)
