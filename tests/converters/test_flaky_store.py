"""A flaky object store: moto's S3 server behind a fault-injecting proxy on 127.0.0.1 (stalls, 503s,
dropped connections). Every request has a timeout and bounded, jittered retries; a dead store is
one line after the configured patience, never a silent hang."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.s3 import make_bucket
from tests.support.faulty_proxy import FaultyProxy
from test_writer import shard_bytes, text_converter
from test_writer_scaleout import bucket_shards, inputs, reference, run  # noqa: F401 (fixtures)


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The proxy in front of the server, as the endpoint every client in this process uses."""
    host, port = s3_server.rsplit("/", 1)[-1].split(":")
    with FaultyProxy((host, int(port))) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        monkeypatch.setenv("GATO_KIT_STORE_TIMEOUT", "1")
        monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "3")
        yield p


def test_a_stalled_store_is_one_line_after_the_timeout(inputs, text_tokenizer, proxy, monkeypatch, capsys):
    from converters.cli import main
    make_bucket("stalled")
    proxy.stall_all = True
    monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "2")
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line",
            "--out", "s3://stalled/out", "--no-progress"]
    t0 = time.monotonic()
    assert main(argv) == 1
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gato-tokenize: error: s3://stalled/out: cannot") and "GATO_KIT_STORE_TIMEOUT" in err[-1]
    assert any("retrying" in line for line in err[:-1])  # progress while it waits: never silent
    assert 2 <= took < 30, took  # 2 s of patience per layer's tries, not minutes
    assert proxy.seen.count("stall") >= 2


def test_503s_and_dropped_connections_are_retried_to_the_same_bytes(reference, inputs, text_tokenizer, proxy,
                                                                     capsys):
    import s3fs
    make_bucket("flaky")
    proxy.plan(["503", "drop", "503", "drop", "503"])
    res = run(text_converter(inputs, text_tokenizer), "s3://flaky/out", text_tokenizer, workers=1)
    assert res.complete
    assert all(f in proxy.seen for f in ("503", "drop"))
    assert "retrying" in capsys.readouterr().err
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert bucket_shards(fs, "flaky/out") == shard_bytes(reference)


def test_a_reader_downloads_through_dropped_connections(reference, text_tokenizer, proxy, tmp_path):
    from tests.support.s3 import upload_dir
    from schemas.cache import ShardCache
    from schemas.reader import ShardDir
    make_bucket("reads")
    url = upload_dir(reference, "s3://reads/shards")
    proxy.plan(["drop", "503", "drop", "drop", "503"])
    sd = ShardDir.open(url, cache=ShardCache(tmp_path / "cache"))
    got = {s.name: sd.file(i).read_bytes() for i, s in enumerate(sd.shards)}
    assert got == shard_bytes(reference)
    assert proxy.seen.count("drop") == 3


def test_a_reader_download_from_a_stalled_store_is_one_line_after_the_timeout(reference, proxy, tmp_path,
                                                                               monkeypatch):
    """Shard downloads go through pyarrow's S3 client (schemas.object_copy): the same timeout and
    attempts apply, and a stalled store is one line naming the knobs, not a hang."""
    from tests.support.s3 import upload_dir
    from schemas.cache import ShardCache
    from schemas.errors import ReaderError
    from schemas.reader import ShardDir
    make_bucket("stalledreads")
    url = upload_dir(reference, "s3://stalledreads/shards")
    monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "2")
    sd = ShardDir.open(url, cache=ShardCache(tmp_path / "cache"))  # the manifest, read before the stall
    proxy.stall_all = True
    t0 = time.monotonic()
    with pytest.raises(ReaderError) as e:
        sd.file(0)
    took = time.monotonic() - t0
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{url}/{sd.shards[0].name}: cannot read")
    assert "GATO_KIT_STORE_TIMEOUT" in str(e.value)
    assert 1 <= took < 20, took  # 2 tries of 1 s (and the SDK's backoff), not minutes
    assert proxy.seen.count("stall") >= 2


def test_malformed_store_settings_are_one_line(monkeypatch):
    from schemas.errors import ReaderError
    from schemas.store_settings import StoreSettings
    monkeypatch.setenv("GATO_KIT_STORE_TIMEOUT", "soon")
    with pytest.raises(ReaderError, match="GATO_KIT_STORE_TIMEOUT='soon'"):
        StoreSettings.from_env()
    monkeypatch.setenv("GATO_KIT_STORE_TIMEOUT", "2.5")
    monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "0")
    with pytest.raises(ReaderError, match="GATO_KIT_STORE_ATTEMPTS"):
        StoreSettings.from_env()
    monkeypatch.setenv("GATO_KIT_STORE_ATTEMPTS", "5")
    s = StoreSettings.from_env()
    assert (s.timeout, s.attempts) == (2.5, 5)
    opts = s.fsspec_options("s3")["config_kwargs"]
    assert opts["read_timeout"] == 2.5 and opts["retries"] == {"total_max_attempts": 5, "mode": "standard"}


def test_two_writers_on_one_prefix_exit_2_through_the_stores_conditional_create(inputs, text_tokenizer, s3_server,
                                                                                capsys):
    import json
    import socket
    import subprocess
    import sys

    import s3fs

    from converters.cli import main
    from converters.writer.lock import OutLock
    from schemas.storage import OutDir
    make_bucket("twowriters")
    url = "s3://twowriters/out"
    argv = ["text", *inputs, "--text-tokenizer", str(text_tokenizer.path), "--split", "blank-line", "--out", url,
            "--no-progress"]
    with OutLock(OutDir(url)):  # a live writer: this process
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is being written by process {os.getpid()}" in err
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert not fs.exists("twowriters/out/.lock") and not fs.exists("twowriters/out/manifest.json")
    with OutLock(OutDir(url)):  # another machine's writer: never taken over, whatever its pid
        fs.pipe_file("twowriters/out/.lock.partition-0", json.dumps({"pid": 1, "host": "elsewhere"}).encode())
        assert main([*argv, "--num-partitions", "2", "--partition", "0"]) == 2
        assert "process 1 on elsewhere" in capsys.readouterr().err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer of this host killed with -9: its lock is stale and taken over
    fs.pipe_file("twowriters/out/.lock", json.dumps({"pid": dead.pid, "host": socket.gethostname()}).encode())
    assert main(argv) == 0
    fs.invalidate_cache()
    assert fs.exists("twowriters/out/manifest.json") and not fs.exists("twowriters/out/.lock")


def test_partitions_read_only_their_own_markers_and_finalize_reads_each_once(inputs, text_tokenizer, proxy):
    """Requests counted on the wire (the proxy passes everything through here)."""
    make_bucket("markers")
    url = "s3://markers/out"
    conv = text_converter(inputs, text_tokenizer)
    n = len(conv.work_units())
    for i in range(2):
        run(conv, url, text_tokenizer, num_partitions=2, partition=i)
    mine = range(0, n, 2)

    def marker_gets(units) -> int:
        return sum(proxy.requests("GET", f"/markers/out/.work/unit-{u:05d}.json") for u in units)

    proxy.sent.clear()
    assert run(conv, url, text_tokenizer, num_partitions=2, partition=0).units_converted == 0
    assert marker_gets(mine) == len(mine) and marker_gets(range(1, n, 2)) == 0
    proxy.sent.clear()
    res = run(conv, url, text_tokenizer)  # skips every unit, then writes the manifest
    assert res.complete and res.units_converted == 0
    assert marker_gets(range(n)) == n
