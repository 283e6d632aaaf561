"""The shard cache proves every copy before use (issue 20), against moto's S3 server through s3fs:
a copy edited in place or cut to 0 bytes is fetched again, a manifest's sha256 never becomes a
path unless it is 64 hex digits, and a --cache-limit below what the workers pin at once is refused
up front naming the minimum (at the minimum, two workers train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.s3 import make_bucket, upload_dir
from tests.support.hostile_run import check_one_line, run, snapshot
from tests.support.loader_data import make_rl_dir

from schemas.cache import ShardCache
from schemas.manifest import Manifest, ManifestError
from schemas.names import UnsafeNameError
from schemas.reader import ShardDir
from tokenizer_kit.layout import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory):
    return make_rl_dir(tmp_path_factory.mktemp("proof") / "rl", LAYOUT, episodes=12, steps=(3, 12), rows_per_shard=4)


@pytest.fixture(scope="module")
def rl_url(s3_server, rl_dir):
    return upload_dir(rl_dir, make_bucket("proof") + "/rl")


def test_a_copy_edited_in_place_is_fetched_again(rl_url, rl_dir, tmp_path, capsys):
    info = Manifest.read(rl_dir).shards[0]
    good = (rl_dir / info.name).read_bytes()
    first = ShardCache(tmp_path / "c")
    path = ShardDir.open(rl_url, cache=first).file(0)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    # the same process sees its mtime changed; another process (a fresh cache object) hashes once
    for cache in (first, ShardCache(tmp_path / "c")):
        again = ShardDir.open(rl_url, cache=cache).file(0)
        assert again.read_bytes() == good
        path.write_bytes(bytes(data))
    assert capsys.readouterr().err.count("refused") == 2


def test_a_zero_byte_copy_is_fetched_again_not_failed_forever(rl_url, rl_dir, tmp_path, capsys):
    info = Manifest.read(rl_dir).shards[1]
    cache = ShardCache(tmp_path / "c")
    path = ShardDir.open(rl_url, cache=cache).file(1)
    path.write_bytes(b"")
    sd = ShardDir.open(rl_url, cache=ShardCache(tmp_path / "c"))
    assert sd.table(1).num_rows == info.rows
    assert path.stat().st_size == info.bytes
    assert f"has 0 bytes, the manifest says {info.bytes}" in capsys.readouterr().err


def test_a_proven_copy_is_not_hashed_twice_in_one_process(rl_url, tmp_path, monkeypatch):
    import schemas.cache as cache_mod
    cache = ShardCache(tmp_path / "c")
    sd = ShardDir.open(rl_url, cache=cache)
    sd.file(0)
    calls = []
    monkeypatch.setattr(cache_mod, "_fd_sha256", lambda *a: calls.append(a) or "x")
    sd.file(0)
    sd.file(0)
    assert calls == []  # unchanged size, mtime and inode: proven already


@pytest.mark.parametrize("sha", ["../../victim/x", "/tmp/abs", "A" * 64, "0" * 63, "0" * 64 + "/.."])
def test_a_sha256_that_is_not_64_hex_digits_never_becomes_a_path(sha, tmp_path):
    with pytest.raises(UnsafeNameError):
        ShardCache(tmp_path / "c").fetch("s3://b/x/shard-00000.arrow", "shard-00000.arrow", sha)
    assert not (tmp_path / "c").exists()


def _hostile_copy(rl_dir: Path, dst: Path, edit) -> Path:
    import shutil
    shutil.copytree(rl_dir, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("case", ["sha-traversal", "sha-absolute", "listed-twice"])
def test_gato_train_refuses_a_hostile_remote_manifest(case, s3_server, rl_dir, tmp_path):
    """Through the real CLI in a child process capped at 4 GiB: exit 1, one line, and no file
    (lock, copy, touch) outside the sandbox's cache."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.arrow").write_bytes((rl_dir / Manifest.read(rl_dir).shards[0].name).read_bytes())

    def edit(m):
        if case == "sha-traversal":
            m["shards"][0]["sha256"] = f"../../../../../../../../{victim}/secret"
        elif case == "sha-absolute":
            m["shards"][0]["sha256"] = str(victim / "secret")
        else:
            m["shards"][1] = dict(m["shards"][0])
    hostile = _hostile_copy(rl_dir, tmp_path / "hostile", edit)
    url = upload_dir(hostile, make_bucket("hostile-manifest") + f"/{case}")
    before = snapshot(victim)
    sandbox = tmp_path / "box"
    r = run("trainer.cli", ["--data", url, "--out", "run", "--preset", "tiny", "--steps", "2", "--batch-size", "2",
                            "--seq-len", "32", "--no-progress"], sandbox, mem=4 << 30)
    line = check_one_line(r, 1, "manifest.json")
    assert ("listed twice" in line) if case == "listed-twice" else ("not 64 hex digits" in line)
    assert snapshot(victim) == before
    assert not list(tmp_path.glob("*.lock")) and not list(victim.glob(".*"))


def test_a_manifest_listing_a_shard_twice_is_refused_by_the_reader(rl_dir, tmp_path):
    hostile = _hostile_copy(rl_dir, tmp_path / "twice", lambda m: m["shards"].append(dict(m["shards"][0])))
    with pytest.raises(ManifestError, match="listed twice"):
        ShardDir.open(hostile)


def _train(url, sandbox, *extra):
    return run("trainer.cli", ["--data", url, "--out", "run", "--preset", "tiny", "--steps", "6", "--batch-size", "2",
                               "--seq-len", "32", "--no-progress", "--num-workers", "2", "--log-every", "1",
                               "--cache-dir", str(sandbox / "c"), *extra], sandbox, mem=6 << 30, timeout=300)


def test_cache_limit_below_what_two_workers_pin_is_refused_naming_the_minimum(rl_url, rl_dir, tmp_path):
    largest = max(s.bytes for s in Manifest.read(rl_dir).shards)
    r = _train(rl_url, tmp_path / "box", "--cache-limit", str(largest + 10))
    line = check_one_line(r, 2, "--cache-limit", str(6 * largest))
    assert "3 reader(s)" in line  # one per worker and the main process's evaluation, 2 copies each
    assert not (tmp_path / "box" / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_cache_limit_at_the_minimum_trains_with_two_workers(rl_url, rl_dir, tmp_path):
    from test_cache_bound import Sampler
    largest = max(s.bytes for s in Manifest.read(rl_dir).shards)
    sampler = Sampler(tmp_path / "box" / "c" / "shards")  # on-disk shard bytes, partial downloads included
    sampler.start()
    r = _train(rl_url, tmp_path / "box", "--cache-limit", str(6 * largest))
    sampler.stop.set()
    sampler.join()
    assert r.code == 0, str(r)
    assert sampler.samples > 10 and 0 < sampler.peak <= 6 * largest and not sampler.locks
    assert "unreadable" not in r.err and "Traceback" not in r.err
    steps = [json.loads(x)["step"] for x in (tmp_path / "box" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    cached = sum(p.stat().st_size for p in (tmp_path / "box" / "c" / "shards").glob("*.arrow"))
    assert cached <= 6 * largest
