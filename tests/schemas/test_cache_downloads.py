"""How many downloads a shard cache runs at once (schemas.cache.ShardCache._waited), against moto's
S3 server: one, in the order asked, while the reader keeps up; more, up to PREFETCH_THREADS, once
a reader has waited for a prefetch a second time (a store slower than the reader)."""

from __future__ import annotations

import os
import threading

import pytest

from schemas.cache import PREFETCH_THREADS, ShardCache
from tests.support.s3 import make_bucket

SIZE = 3 << 20


@pytest.fixture
def objects(s3_server):
    """Six objects of SIZE random bytes: (url, name, sha256, size) each."""
    import hashlib

    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    make_bucket("downloads")
    items = []
    for i in range(6):
        data = os.urandom(SIZE)
        fs.pipe_file(f"downloads/s{i}.arrow", data)
        items.append((f"s3://downloads/s{i}.arrow", f"s{i}.arrow", hashlib.sha256(data).hexdigest(), SIZE))
    return items


@pytest.fixture
def watched(monkeypatch):
    """Downloads under way at once, at most, and the order they started in (observed, not changed)."""
    seen = {"now": 0, "most": 0, "order": []}
    lock = threading.Lock()
    real = ShardCache._download

    def download(self, url, name, *args, **kwargs):
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
            seen["order"].append(name)
        try:
            return real(self, url, name, *args, **kwargs)
        finally:
            with lock:
                seen["now"] -= 1
    monkeypatch.setattr(ShardCache, "_download", download)
    return seen


def test_prefetches_run_one_at_a_time_in_order(objects, watched, tmp_path):
    cache = ShardCache(tmp_path / "c")
    cache.prefetch(objects)
    cache.fetch(*objects[-1])  # one wait (the cold start): behind the five before it
    for o in objects:  # all there: no more waiting
        assert cache.fetch(*o).stat().st_size == SIZE
    assert watched["most"] == 1 and cache.download_threads == 1
    assert watched["order"][:len(objects)] == [o[1] for o in objects]


def test_a_reader_that_waits_again_gets_more_downloads_at_once(objects, watched, tmp_path):
    cache = ShardCache(tmp_path / "c")
    first, rest = objects[:2], objects[2:]
    cache.prefetch(first)
    cache.fetch(*first[1])  # waits (behind s0): the cold start, nothing more
    assert cache.download_threads == 1
    cache.prefetch(rest)
    cache.fetch(*rest[-1])  # waits again, behind three more: the store is slower than the reader
    assert cache.download_threads == 2 <= PREFETCH_THREADS
    assert watched["most"] == 2
    for o in objects:
        assert cache.fetch(*o).stat().st_size == SIZE
