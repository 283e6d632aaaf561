"""The one shard-directory reader: local and s3:// (moto's S3 server through s3fs) read the same rows;
compressed shards read; the cache checks every copy's sha256 and stays within its limit."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.support.s3 import make_bucket, upload_dir
from tests.support.loader_data import make_rl_dir, make_text_dir

from schemas.cache import ShardCache
from schemas.errors import ReaderError
from schemas.manifest import Manifest
from schemas.reader import ShardDir, batch_view, check_batch
from schemas.shard import row_from_table
from tokenizer_kit.layout import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)


@pytest.fixture(scope="module")
def local_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    return {"rl": make_rl_dir(root / "rl", LAYOUT, episodes=12, steps=(3, 12), rows_per_shard=4),
            "text": make_text_dir(root / "text", LAYOUT, docs=20, rows_per_shard=6)}


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in
               ("tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos"))


def test_remote_directory_reads_the_same_rows(s3_server, local_dirs, tmp_path):
    url = upload_dir(local_dirs["rl"], make_bucket("reader-same") + "/rl")
    here, there = ShardDir.open(local_dirs["rl"]), ShardDir.open(url, cache=ShardCache(tmp_path / "c"))
    assert there.remote and not here.remote and there.manifest == here.manifest
    assert [s.name for s in there.shards] == [s.name for s in here.shards] and not there.missing
    for row in range(here.num_rows):
        (i, r), (j, q) = here.locate(row), there.locate(row)
        assert _same(row_from_table(here.table(i), r), row_from_table(there.table(j), q))
    assert sorted(there.cache.downloaded) == [s.name for s in here.shards]  # each shard fetched once


def test_views_of_a_batch_are_the_rows(local_dirs):
    sd = ShardDir.open(local_dirs["rl"])
    batch = sd.table(0).to_batches()[0]
    view = batch_view(batch)
    for i in range(batch.num_rows):
        v, row = view.row(i), row_from_table(batch, i)
        assert np.array_equal(v.tokens, row.tokens) and np.array_equal(v.step_starts, row.step_starts)
    assert check_batch(batch, LAYOUT) is None


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_shards_read_like_plain_ones(local_dirs, tmp_path, codec):
    """Shards written with Arrow IPC buffer compression: rows come back identical."""
    src = Path(local_dirs["text"])
    dst = Path(shutil.copytree(src, tmp_path / codec))
    m = Manifest.read(src)
    for info in m.shards:
        table = ShardDir.open(src).table([s.name for s in m.shards].index(info.name))
        opts = pa.ipc.IpcWriteOptions(compression=codec)
        with pa.OSFile(str(dst / info.name), "wb") as f, pa.ipc.new_stream(f, table.schema, options=opts) as w:
            for b in table.to_batches():
                w.write_batch(b)
        data = (dst / info.name).read_bytes()
        info.bytes, info.sha256 = len(data), hashlib.sha256(data).hexdigest()
    m.write(dst)
    plain, packed = ShardDir.open(src), ShardDir.open(dst)
    assert (dst / m.shards[0].name).stat().st_size != (src / m.shards[0].name).stat().st_size
    for row in range(plain.num_rows):
        (i, r), (j, q) = plain.locate(row), packed.locate(row)
        assert _same(row_from_table(plain.table(i), r), row_from_table(packed.table(j), q))


def test_a_corrupt_object_is_refused_naming_shard_and_hash(s3_server, local_dirs, tmp_path, capsys):
    import s3fs
    url = upload_dir(local_dirs["text"], make_bucket("reader-corrupt") + "/text")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    name = Manifest.read(local_dirs["text"]).shards[1].name
    data = bytearray(fs.cat_file(f"reader-corrupt/text/{name}"))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(f"reader-corrupt/text/{name}", bytes(data))
    sd = ShardDir.open(url, cache=ShardCache(tmp_path / "cache"))
    sd.table(0)  # a good shard reads
    with pytest.raises(ReaderError, match=f"{name} has sha256 {hashlib.sha256(data).hexdigest()}, the manifest says"):
        sd.table(1)
    err = capsys.readouterr().err
    assert err.count(f"refused {name}") == 1 and "downloading it again" in err  # fetched twice, then refused
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".arrow") == \
        [f"{Manifest.read(local_dirs['text']).shards[0].sha256}.arrow"]  # nothing bad kept


def test_cache_keeps_within_its_limit_least_recently_used_first(s3_server, local_dirs, tmp_path):
    url = upload_dir(local_dirs["text"], make_bucket("reader-lru") + "/text")
    m = Manifest.read(local_dirs["text"])
    sizes = sorted(s.bytes for s in m.shards[:3])
    limit = sizes[1] + sizes[2]  # room for any two of the three
    cache = ShardCache(tmp_path / "cache", limit=limit)
    sd = ShardDir.open(url, cache=cache)
    sd.file(0), sd.file(1), sd.file(0), sd.file(2)  # shard 1 is now the least recently used
    kept = {p.stem for p in (tmp_path / "cache").glob("*.arrow")}
    assert kept == {m.shards[0].sha256, m.shards[2].sha256}
    assert sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.arrow")) <= limit
    assert cache.downloaded == [m.shards[0].name, m.shards[1].name, m.shards[2].name]


def test_prefetch_downloads_in_the_background(s3_server, local_dirs, tmp_path):
    url = upload_dir(local_dirs["text"], make_bucket("reader-prefetch") + "/text")
    m = Manifest.read(local_dirs["text"])
    cache = ShardCache(tmp_path / "cache")
    cache.prefetch([(f"{url}/{s.name}", s.name, s.sha256) for s in m.shards[:2]])
    sd = ShardDir.open(url, cache=cache)
    assert sd.file(1).is_file() and sd.file(0).is_file()
    assert sorted(cache.downloaded) == [m.shards[0].name, m.shards[1].name]


def test_a_row_of_a_missing_shard_is_an_error_not_another_row(local_dirs, tmp_path):
    d = Path(shutil.copytree(local_dirs["text"], tmp_path / "t"))
    m = Manifest.read(d)
    (d / m.shards[1].name).unlink()
    sd = ShardDir.open(d)
    assert sd.missing == [m.shards[1].name]
    first_of_2 = m.shards[0].rows + m.shards[1].rows
    assert sd.locate(first_of_2) == (1, 0)  # shard-00002 is shards[1] now, and its row 0 is row 12
    with pytest.raises(ReaderError, match=f"row {m.shards[0].rows} is in {m.shards[1].name}.*missing"):
        sd.locate(m.shards[0].rows)


def test_unreachable_store_is_one_line(tmp_path, monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(ReaderError, match="cannot read from the store") as e:
            ShardDir.open("s3://nowhere/dir")
        assert "\n" not in str(e.value)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_bad_copy_is_downloaded_once_more(s3_server, local_dirs, tmp_path, capsys):
    """The first copy is corrupt, the store is repaired before the second: the second is used."""
    import s3fs
    url = upload_dir(local_dirs["text"], make_bucket("reader-retry") + "/text")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    info = Manifest.read(local_dirs["text"]).shards[0]
    key = f"reader-retry/text/{info.name}"
    good = fs.cat_file(key)
    fs.pipe_file(key, good[:-10])  # truncated

    class RepairedAfterFirst(ShardCache):
        def _get(self, url, part, size):  # one download into the partial file
            got = super()._get(url, part, size)
            fs.pipe_file(key, good)
            return got

    cache = RepairedAfterFirst(tmp_path / "cache")
    path = ShardDir.open(url, cache=cache).file(0)
    assert path.read_bytes() == good and cache.downloaded == [info.name]
    assert capsys.readouterr().err.count(f"refused {info.name}") == 1
