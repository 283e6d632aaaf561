"""The shard cache as a bounded store shared by processes (issue 25), against moto's S3 server:
two real processes reading through one cache at the minimum --cache-limit never hold more shard
bytes on disk than the limit (copies and partial downloads, sampled while they run), leave no
lock or partial file, and a copy proven by one process is not hashed again by another."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from schemas.cache import PINS_PER_READER, ShardCache
from schemas.manifest import Manifest
from schemas.reader import ShardDir
from tests.support.loader_data import make_text_dir
from tests.support.s3 import make_bucket, upload_dir
from tokenizer_kit.layout import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)

# One reader process: every shard in its own order, as trainer/source.py reads a bounded cache (the
# table of the shard it reads alive while the next is opened, the next ones prefetched), each
# table's rows checked against the manifest; prints the shards it read.
READER = r"""
import sys
from schemas.cache import ShardCache
from schemas.manifest import Manifest
from schemas.reader import ShardDir
root, limit, url, seed, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cache = ShardCache(root, limit)
sd = ShardDir.open(url, cache=cache)
import random
rng = random.Random(seed)
order = [i for _ in range(rounds) for i in rng.sample(range(len(sd.shards)), len(sd.shards))]
held, read = None, 0
for k, i in enumerate(order):
    nxt = [sd.shards[j] for j in order[k + 1:k + 4]]
    cache.prefetch([(s.path, s.name, s.info.sha256, s.info.bytes) for s in nxt])
    t = sd.table(i, full=False)
    assert t.num_rows == sd.shards[i].info.rows, (i, t.num_rows)
    held = t  # the previous table goes only now: two copies pinned at once
    read += 1
print(read)
"""


def shard_bytes(root: Path) -> tuple[int, list[str]]:
    """Bytes of copies and partial downloads in a cache directory, and its lock files."""
    total, locks = 0, []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0, []
    for e in entries:
        if e.name.endswith(".lock"):
            locks.append(e.name)
        if e.name.endswith(".arrow") or e.name.endswith(".part"):
            try:
                total += e.stat().st_size
            except FileNotFoundError:
                pass
    return total, locks


class Sampler(threading.Thread):
    """Samples a cache directory's shard bytes every millisecond or so while processes use it."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.peak, self.samples, self.locks, self.stop = root, 0, 0, set(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            b, locks = shard_bytes(self.root)
            self.peak, self.samples = max(self.peak, b), self.samples + 1
            self.locks.update(locks)
            time.sleep(0.001)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return make_text_dir(tmp_path_factory.mktemp("bound") / "text", LAYOUT, docs=240, length=(50, 400),
                         rows_per_shard=20)


@pytest.fixture(scope="module")
def text_url(s3_server, text_dir):
    return upload_dir(text_dir, make_bucket("bound") + "/text")


def test_two_processes_at_the_minimum_limit_never_pass_it_on_disk(text_url, text_dir, tmp_path):
    shards = Manifest.read(text_dir).shards
    assert len(shards) >= 10
    largest = max(s.bytes for s in shards)
    limit = largest * PINS_PER_READER * 2  # the minimum for two readers
    ShardCache(tmp_path / "c", limit).check_room([s.bytes for s in shards], 2)  # accepted: it is the minimum
    with pytest.raises(ValueError, match=str(limit)):
        ShardCache(tmp_path / "c", limit - 1).check_room([s.bytes for s in shards], 2)
    root = tmp_path / "c"
    sampler = Sampler(root)
    sampler.start()
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(root), str(limit), text_url, str(seed), "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    sampler.stop.set()
    sampler.join()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split() == [str(3 * len(shards))]
    assert sampler.samples > 50
    assert 0 < sampler.peak <= limit, (sampler.peak, limit)
    print(f"peak {sampler.peak} of {limit} bytes over {sampler.samples} samples")
    # eviction happened (all shards do not fit), and nothing is left behind but copies and proofs
    names = sorted(p.name for p in root.iterdir() if p.is_file())  # (manifests/: the reader's manifest copy)
    assert sum(n.endswith(".arrow") for n in names) < len(shards)
    assert not sampler.locks and not [n for n in names if not n.endswith((".arrow", ".proof"))], names
    assert {n[1:-len(".proof")] for n in names if n.endswith(".proof")} == {n[:-len(".arrow")]
                                                                          for n in names if n.endswith(".arrow")}


def test_a_copy_proven_by_one_process_is_not_hashed_by_another(text_url, tmp_path, monkeypatch):
    import schemas.cache as cache_mod
    root = tmp_path / "c"
    r = subprocess.run([sys.executable, "-c", READER, str(root), str(1 << 40), text_url, "0", "1"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    calls = []
    real = cache_mod._fd_sha256
    monkeypatch.setattr(cache_mod, "_fd_sha256", lambda fd: calls.append(fd) or real(fd))
    sd = ShardDir.open(text_url, cache=ShardCache(root))
    for i in range(len(sd.shards)):
        assert sd.table(i, full=False).num_rows == sd.shards[i].info.rows
    assert calls == []  # every copy's proof (size, mtime, inode) matched: no second hash
    copy = root / f"{sd.shards[0].info.sha256}.arrow"
    data = bytearray(copy.read_bytes())
    data[-20] ^= 0xFF
    copy.write_bytes(bytes(data))  # edited in place: its mtime no longer matches the proof
    os.utime(copy, ns=(time.time_ns(), copy.stat().st_mtime_ns + 1))
    assert ShardDir.open(text_url, cache=ShardCache(root)).table(0, full=False).num_rows == sd.shards[0].info.rows
    assert len(calls) == 1  # the edited copy hashed (and refused); the fresh download was hashed on its way in


def test_a_partial_download_of_a_killed_process_is_reclaimed(text_url, text_dir, tmp_path):
    """A process killed mid-download leaves its partial file, reserved at the shard's size; its
    flock died with it, so the next process removes it instead of counting it forever."""
    shards = Manifest.read(text_dir).shards
    limit = max(s.bytes for s in shards) * PINS_PER_READER
    root = tmp_path / "c"
    code = (f"import os, fcntl; fd = os.open({str(root)!r} + '/.{shards[1].sha256}.{limit}.part', "
            "os.O_RDWR | os.O_CREAT, 0o644); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'x' * 1000); "
            "os.kill(os.getpid(), 9)")
    root.mkdir()
    subprocess.run([sys.executable, "-c", code], timeout=60, check=False)  # it kills itself
    assert shard_bytes(root)[0] == 1000
    cache = ShardCache(root, limit)
    assert cache.disk_bytes() == limit  # reserved at its full size while it may be live
    sd = ShardDir.open(text_url, cache=cache)
    assert sd.table(0, full=False).num_rows == shards[0].rows
    assert [p.name for p in root.iterdir() if p.name.endswith(".part")] == []


def test_without_a_limit_a_dead_process_partial_is_removed_too(text_url, text_dir, tmp_path):
    shards = Manifest.read(text_dir).shards
    root = tmp_path / "c"
    root.mkdir()
    code = (f"import os, fcntl; fd = os.open({str(root)!r} + '/.{shards[1].sha256}.{shards[1].bytes}.part', "
            "os.O_RDWR | os.O_CREAT, 0o644); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'x' * 1000); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], timeout=60, check=False)  # it kills itself
    assert ShardDir.open(text_url, cache=ShardCache(root)).table(0, full=False).num_rows == shards[0].rows
    assert [p.name for p in root.iterdir() if p.name.endswith(".part")] == []


def test_a_shard_larger_than_the_limit_is_refused_not_waited_for(text_url, text_dir, tmp_path):
    from schemas.errors import ReaderError
    shards = Manifest.read(text_dir).shards
    with pytest.raises(ReaderError, match=f"a shard of {shards[0].bytes} bytes cannot fit"):
        ShardDir.open(text_url, cache=ShardCache(tmp_path / "c", shards[0].bytes - 1)).table(0)


def test_a_reader_waits_for_room_a_pinned_copy_holds(text_url, text_dir, tmp_path):
    """At a limit of one shard, a second shard is downloaded only once the first one's mapping
    is gone (its pin is the mapping), never beside it."""
    import gc
    shards = Manifest.read(text_dir).shards
    limit = max(s.bytes for s in shards)
    cache = ShardCache(tmp_path / "c", limit)
    sd = ShardDir.open(text_url, cache=cache)
    t0 = sd.table(0, full=False)
    done = threading.Event()

    def second():
        sd.table(1, full=False)
        done.set()

    th = threading.Thread(target=second, daemon=True)
    th.start()
    assert not done.wait(1.0)  # waiting: shard 0 is mapped, so pinned, and there is no room beside it
    assert shard_bytes(tmp_path / "c")[0] <= limit
    del t0
    gc.collect()
    assert done.wait(60)
    th.join()
    assert shard_bytes(tmp_path / "c")[0] <= limit
    assert [p.name for p in (tmp_path / "c").glob("*.arrow")] == [f"{shards[1].sha256}.arrow"]


def test_the_loader_with_two_workers_at_the_minimum_reads_every_batch_within_the_limit(text_url, text_dir, tmp_path):
    """The real loader, two DataLoader worker processes, one pass over every row through a cache
    at the trainer's minimum (2 copies x (2 workers + the main process)): the same batches as
    through a cache without a limit, copies evicted on the way, never more shard bytes on disk than the limit."""
    from trainer.data import build_loader
    shards = Manifest.read(text_dir).shards
    limit = max(s.bytes for s in shards) * PINS_PER_READER * 3
    root = tmp_path / "c"
    cache = ShardCache(root, limit)
    cache.check_room([s.bytes for s in shards], 3)

    def batches(data, cache=None):
        return [b.tokens.numpy().copy() for b in build_loader([data], 64, 4, training=False, num_workers=2,
                                                               cache=cache)]

    sampler = Sampler(root)
    sampler.start()
    got = batches(text_url, cache)
    sampler.stop.set()
    sampler.join()
    want = batches(text_url, ShardCache(tmp_path / "unbounded"))  # (a local directory is split by rows instead)
    assert len(got) == len(want) > 0
    assert sorted(g.tobytes() for g in got) == sorted(w.tobytes() for w in want)
    assert 0 < sampler.peak <= limit, (sampler.peak, limit)
    left = [p.name for p in root.iterdir() if p.is_file()]
    assert 0 < sum(n.endswith(".arrow") for n in left) < len(shards)  # evicted on the way
    assert not sampler.locks and all(n.endswith((".arrow", ".proof")) for n in left), left


def test_a_stray_partial_name_counts_its_bytes_only(tmp_path):
    """A `.x.y.part` the cache did not write (no size in its name) is counted as what it holds,
    not read as a reservation, and does not stop the bookkeeping."""
    cache = ShardCache(tmp_path)
    (tmp_path / ".not.a-size.part").write_bytes(b"abc")
    (tmp_path / f".{'a' * 64}.100.part").write_bytes(b"")
    assert cache.disk_bytes() == 103
