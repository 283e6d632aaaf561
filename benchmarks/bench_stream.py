"""The loader streaming a shard directory from an S3 API server (moto's, on 127.0.0.1, in its own
process), against that server's own download bound and against the local loader, in one run.

    .venv/bin/python -m benchmarks.bench_stream [--quick]

Fetch path: the cache downloading, hashing and renaming every shard (what the loader's prefetch
threads do) against a plain s3fs `get` of the same shards. Cold: one evaluation pass (every row
once) of `build_loader([s3://...])` with an empty cache, so every shard is downloaded, checked and
mapped while batches are made, against the slower of the plain `get` and the same pass over the
local directory (a streaming pass can beat neither). Warm: the pass again, all shards cached,
against the local pass. Each pass is the median of three, interleaved. Busy: the fetch path and
the plain `get` of two shards (medians of three) while another thread runs Python without pause
(what a reader or a training loop does beside the downloads): s3fs's event-loop thread waits for
the GIL on every 64 KiB piece, the cache's S3 path (pyarrow's client, schemas/object_copy.py)
does not. Ratios are baseline time / our time (targets 0.8, 0.8, 0.9; none for busy).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tokenizer_kit.layout import VocabLayout

ROOT = Path(__file__).resolve().parents[1]

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)
SEQ_LEN, BATCH = 1024, 16
PASSES = 3  # local, cold and warm passes, each the median of this many


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a child process (so it does not share the loader's GIL)."""
    port = _free_port()
    code = ("from moto.server import ThreadedMotoServer; import time; "
            f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); time.sleep(1e9)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    return proc, endpoint


def one_pass(data: str, cache=None) -> float:
    """Seconds of one evaluation pass (every row once) of one in-process reader."""
    from trainer.data import build_loader
    t = time.perf_counter()
    for _ in build_loader([data], SEQ_LEN, BATCH, training=False, cache=cache):
        pass
    return time.perf_counter() - t


def beside_busy_thread(work) -> float:
    """Seconds of work() while another thread of this process runs Python without pause."""
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass
    t = threading.Thread(target=spin)
    t.start()
    try:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    finally:
        stop.set()
        t.join()


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="less data")
    args = ap.parse_args(argv)
    from tests.support.loader_data import make_text_dir

    import s3fs

    import trainer.data  # noqa: F401  (imported before any timing: torch takes seconds)
    from schemas.cache import ShardCache
    proc, _ = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
            tmp = Path(tmp)
            docs = 1500 if args.quick else 4000
            local = make_text_dir(tmp / "text", LAYOUT, docs=docs, length=(50, 3000), rows_per_shard=docs // 8)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench")
            for p in sorted(local.iterdir()):
                fs.put_file(str(p), f"bench/text/{p.name}")
            url = "s3://bench/text"
            size = sum(p.stat().st_size for p in local.glob("shard-*.arrow"))
            shards = sorted(f"bench/text/{p.name}" for p in local.glob("shard-*.arrow"))
            t = time.perf_counter()
            fs.get(shards, str(tmp / "plain") + "/")
            get_s = time.perf_counter() - t
            from schemas.manifest import MANIFEST_NAME, Manifest
            from schemas.object_copy import arrow_s3
            from schemas.storage import remote_fs
            remote_fs(url)[0].ls("bench")  # the loader's S3 clients made (and used) before timing, as the baseline's
            arrow_s3(url).get_file_info(f"bench/text/{MANIFEST_NAME}")
            fill = ShardCache(tmp / "fill")  # the loader's download path alone: fetch, hash, rename
            infos = Manifest.read(local).shards
            t = time.perf_counter()
            fill.prefetch([(f"{url}/{i.name}", i.name, i.sha256, i.bytes) for i in infos])  # sizes, as the loader
            for i in infos:
                fill.fetch(f"{url}/{i.name}", i.name, i.sha256, i.bytes)
            fill_s = time.perf_counter() - t
            busy = shards[:2]  # beside a thread busy in Python (a reader, a training loop): s3fs waits for the GIL
            get_busy, fill_busy = [], []
            for k in range(PASSES):
                get_busy.append(beside_busy_thread(lambda k=k: fs.get(busy, str(tmp / f"plain_busy{k}") + "/")))
                cache = ShardCache(tmp / f"fill_busy{k}")
                fill_busy.append(beside_busy_thread(lambda c=cache: [c.fetch(f"{url}/{i.name}", i.name, i.sha256,
                                                                             i.bytes) for i in infos[:2]]))
            get_busy_s, fill_busy_s = statistics.median(get_busy), statistics.median(fill_busy)
            busy_mb = sum(i.bytes for i in infos[:2]) / 1e6
            local_runs, cold_runs, warm_runs = [], [], []
            for k in range(PASSES):  # interleaved, medians: one pass is a fifth of a second
                local_runs.append(one_pass(str(local)))
                cache = ShardCache(tmp / f"cache{k}")
                cold_runs.append(one_pass(url, cache))
                assert len(cache.downloaded) == len(shards)
                warm_runs.append(one_pass(url, ShardCache(tmp / f"cache{k}")))
            local_s, cold_s, warm_s = (statistics.median(r) for r in (local_runs, cold_runs, warm_runs))
    finally:
        proc.terminate()
        proc.wait()
    mb = size / 1e6
    bound = max(get_s, local_s)  # a streaming pass can be no faster than its download or its compute
    print(f"{len(shards)} shards, {mb:.0f} MB: s3fs get {get_s:.2f} s ({mb / get_s:.0f} MB/s), the cache's fetch path "
          f"{fill_s:.2f} s (ratio {get_s / fill_s:.2f}); loader pass: local {local_s:.2f} s, cold cache {cold_s:.2f} s "
          f"(vs max(get, local pass) {bound / cold_s:.2f}, target >= 0.8), warm cache "
          f"{warm_s:.2f} s (vs local {local_s / warm_s:.2f}, target >= 0.9); beside a thread busy in Python, "
          f"{busy_mb:.0f} MB: s3fs get {get_busy_s:.2f} s, the cache's fetch path {fill_busy_s:.2f} s")
    return [
        {"name": "stream_fetch_path_vs_s3fs_get", "figure": mb / fill_s, "unit": "MB/s", "baseline": mb / get_s,
         "baseline_name": "(s3fs get)", "ratio": get_s / fill_s, "target": 0.8},
        {"name": "stream_fetch_beside_a_busy_thread_vs_s3fs_get", "figure": busy_mb / fill_busy_s, "unit": "MB/s",
         "baseline": busy_mb / get_busy_s, "baseline_name": "(s3fs get beside the same thread)",
         "ratio": get_busy_s / fill_busy_s, "target": None},
        {"name": "stream_cold_cache_pass_vs_bound", "figure": mb / cold_s, "unit": "MB/s", "baseline": mb / bound,
         "baseline_name": "(slower of s3fs get and the local pass)", "ratio": bound / cold_s, "target": 0.8},
        {"name": "stream_warm_cache_vs_local", "figure": mb / warm_s, "unit": "MB/s", "baseline": mb / local_s,
         "baseline_name": "(local loader)", "ratio": local_s / warm_s, "target": 0.9},
    ]


if __name__ == "__main__":
    main()
