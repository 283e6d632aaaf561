"""One rank of 800 starting on a 200,000-shard directory in object storage (moto's S3 server on
127.0.0.1, in its own process): time and memory to open the directory and find its own shards, and
the list requests it makes, for the compact manifest (JSON head + shards.arrow) and, as the peer
measured in the same run, the same manifest as plain JSON (what every rank parsed before).

    .venv/bin/python -m benchmarks.bench_ranks [--quick]

Each rank runs in a fresh process (imports done before the clock starts). Targets: under 1 s and
50 MB per rank, 0 list calls; ratios are bound / figure (>= 1 meets it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARDS, WORLD = 200_000, 800
SECONDS, MEGABYTES = 1.0, 50.0

RANK = r"""
import json, sys, time
from schemas.reader import ShardDir
from schemas.split import reader_shards
from schemas.storage import remote_fs
import pyarrow.compute  # an import, as the others: trainer.source (every training rank) imports it at module level
fs, _ = remote_fs({url!r}); fs.connect()
calls = {{}}
def count(event_name, **_):
    op = event_name.rsplit(".", 1)[-1]; calls[op] = calls.get(op, 0) + 1
fs.s3.meta.events.register("before-call.s3", count)
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts here: imports are not the rank's cost
before, t0 = status("VmRSS"), time.perf_counter()
sd = ShardDir.open({url!r})
rows = sd.rows_per_shard
mine = [sd.shards[int(i)] for i in reader_shards(rows, {rank}, {world}, 0, 0, seed=0)[0]]
took = time.perf_counter() - t0
print("@@" + json.dumps({{"seconds": took, "mb": (status("VmHWM") - before) / 1e6,
                          "lists": sum(v for k, v in calls.items() if k.startswith("List")),
                          "shards": len(mine), "rows": int(sum(s.info.rows for s in mine))}}))
"""


def synthetic_manifest(n: int):
    import numpy as np

    from schemas.manifest import Manifest, ShardInfo
    from tokenizer_kit.layout import VocabLayout
    rng = np.random.default_rng(0)
    infos = [ShardInfo(f"shard-{i // 4:05d}-{i % 4:03d}.arrow", int(r), int(r) * 700, int(r) * 2900,
                       hashlib.sha256(i.to_bytes(8, "little")).hexdigest()) for i, r in enumerate(rng.integers(1, 5000, n))]
    return Manifest(layout=VocabLayout(text_vocab_size=32000).to_dict(), converter="text", shards=infos)


def one_rank(url: str, rank: int) -> dict:
    out = subprocess.run([sys.executable, "-c", RANK.format(url=url, rank=rank, world=WORLD)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("@@"))[2:])


def main(argv: list[str] | None = None) -> list[dict]:
    import s3fs

    import schemas.manifest as manifest_module
    from benchmarks.bench_stream import start_server
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    ranks = [0, WORLD - 1] if args.quick else [0, WORLD // 2, WORLD - 1]
    server, _ = start_server()
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("ranks")
        m = synthetic_manifest(SHARDS)
        with tempfile.TemporaryDirectory() as tmp:
            for kind, compact in (("compact", 10_000), ("json", SHARDS + 1)):
                manifest_module.COMPACT_SHARDS = compact
                d = Path(tmp, kind)
                d.mkdir()
                m.write(d)
                for f in d.iterdir():
                    fs.put_file(str(f), f"ranks/{kind}/{f.name}")
        results = {kind: [one_rank(f"s3://ranks/{kind}", r) for r in ranks] for kind in ("compact", "json")}
    finally:
        server.kill()
        server.wait()
    c, j = results["compact"], results["json"]
    secs, mb = max(r["seconds"] for r in c), max(r["mb"] for r in c)
    lists = max(r["lists"] for r in c)
    return [
        {"name": f"rank start-up, {SHARDS:,} shards, {WORLD} ranks (S3)", "figure": round(secs, 3), "unit": "s",
         "baseline": SECONDS, "baseline_name": "bound", "ratio": round(SECONDS / secs, 3), "target": 1.0},
        {"name": f"rank memory, {SHARDS:,} shards", "figure": round(mb, 1), "unit": "MB", "baseline": MEGABYTES,
         "baseline_name": "bound", "ratio": round(MEGABYTES / max(mb, 0.1), 3), "target": 1.0},
        {"name": "list calls per rank (manifest names the shards)", "figure": lists, "unit": "calls",
         "baseline": 0, "baseline_name": "bound", "ratio": 1.0 if lists == 0 else 0.0, "target": 1.0},
        {"name": "rank start-up, same manifest as JSON (before; peer)", "figure": round(max(r["seconds"] for r in j), 3),
         "unit": "s", "baseline": round(secs, 3), "baseline_name": "compact",
         "ratio": round(max(r["seconds"] for r in j) / secs, 3), "target": None},
        {"name": "rank memory, same manifest as JSON (before; peer)", "figure": round(max(r["mb"] for r in j), 1),
         "unit": "MB", "baseline": round(mb, 1), "baseline_name": "compact",
         "ratio": round(max(r["mb"] for r in j) / max(mb, 0.1), 3), "target": None},
    ]


if __name__ == "__main__":
    for row in main(sys.argv[1:]):
        print(row)
