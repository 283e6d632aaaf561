"""Training streamed from object storage (moto's S3 server through s3fs), and the loader's contract
checks on what it maps."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.support.s3 import make_bucket, upload_dir
from tests.support.loader_data import batch_targets, expected_targets, make_rl_dir, write_dir
from schemas.cache import ShardCache
from schemas.manifest import Manifest
from schemas.shard import open_shard
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text_rows import build_text_row
from trainer.cli import main
from trainer.data import build_loader
from trainer.source import ShardSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)
REPO = Path(__file__).resolve().parents[2]


def tagged_text_dir(out, docs: int = 40, rows_per_shard: int = 5):
    """Document i is the id 10+i repeated (then end-of-text), so every token names its row."""
    rng = np.random.default_rng(3)
    rows = [build_text_row(np.full(int(rng.integers(4, 30)), 10 + i), LAYOUT) for i in range(docs)]
    return write_dir(out, rows, LAYOUT, "text", "tagged", rows_per_shard=rows_per_shard, batch_rows=3)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {"rl": make_rl_dir(root / "rl", LAYOUT, episodes=24, steps=(3, 20), tasks=("reach", "push"),
                              rows_per_shard=4),
            "tagged": tagged_text_dir(root / "tagged")}


@pytest.fixture(scope="module")
def bucket(s3_server, local):
    url = make_bucket("stream")
    return {k: upload_dir(v, f"{url}/{k}") for k, v in local.items()}


def _s3_text(url: str) -> str:
    import s3fs
    return s3fs.S3FileSystem(skip_instance_cache=True).cat_file(url.removeprefix("s3://")).decode()


# --- the remote source --------------------------------------------------------------------------------

def test_remote_rows_are_the_local_rows(bucket, local, tmp_path):
    here = ShardSource(str(local["rl"]))
    there = ShardSource(bucket["rl"], cache=ShardCache(tmp_path / "c"))
    assert (there.split, here.split) == ("shards", "rows") and there.kind == here.kind == "rl"
    assert there.task_names == here.task_names and there.total_rows == here.total_rows
    for r in range(here.total_rows):
        a, b = here.row(r), there.row(r)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.step_starts, b.step_starts)
        assert here.row_task(r) == there.row_task(r)


def test_a_reader_downloads_only_its_own_shards(bucket, local, tmp_path):
    """Two ranks, one epoch each: disjoint downloads, every token once, nothing else fetched."""
    got, fetched = Counter(), []
    for rank in range(2):
        cache = ShardCache(tmp_path / f"node{rank}")
        loader = build_loader([bucket["tagged"]], 64, 2, seed=5, rank=rank, world_size=2, training=False,
                              cache=cache)
        got += batch_targets(list(loader))
        fetched.append(set(cache.downloaded))
    assert fetched[0] and fetched[1] and not fetched[0] & fetched[1]
    assert len(fetched[0] | fetched[1]) == len(Manifest.read(local["tagged"]).shards)
    assert got == expected_targets(local["tagged"])  # every token once over the two ranks


def test_a_warm_start_makes_no_request(bucket, local, tmp_path, monkeypatch):
    """Once a node's cache holds a directory's manifest and shards, a new loader over it starts
    without asking the store anything, and reads the same batches."""
    import schemas.reader as reader
    import schemas.storage as storage
    cache = ShardCache(tmp_path / "node")
    cold = build_loader([bucket["rl"], bucket["tagged"]], 32, 2, seed=5, training=False, cache=cache)
    first = list(cold)  # one pass: every shard downloaded
    calls = []
    for mod, name in ((reader, "list_names"), (reader, "read_bytes"), (storage, "remote_fs")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    warm = build_loader([bucket["rl"], bucket["tagged"]], 32, 2, seed=5, training=False,
                        cache=ShardCache(tmp_path / "node"))
    again = list(warm)
    assert calls == [] and warm.sources[0].dir.cache.downloaded == []
    assert len(again) == len(first) and all(torch.equal(a.tokens, b.tokens) for a, b in zip(first, again, strict=True))


# --- gato-train from s3:// ------------------------------------------------------------------------------

def _args(bucket, out, cache, *extra):
    return ["--data", bucket["rl"], bucket["tagged"] + ":0.5", "--out", out, "--cache-dir", str(cache),
            "--preset", "tiny", "--batch-size", "2", "--seq-len", "32", "--no-progress", "--steps", "20",
            "--log-every", "1", "--save-every", "5", "--warmup", "2", "--num-workers", "2", *extra]


def test_train_from_s3_then_resume_exactly(bucket, tmp_path, sigterm_at_step):
    runs = make_bucket("runs")
    assert main(_args(bucket, f"{runs}/straight", tmp_path / "cache-a")) == 0
    straight = [json.loads(x) for x in _s3_text(f"{runs}/straight/metrics.jsonl").splitlines()]
    assert [r["step"] for r in straight] == list(range(1, 21))
    cached = list((tmp_path / "cache-a" / "shards").glob("*.arrow"))
    assert cached  # shards came through the cache

    sigterm_at_step(11)
    assert main(_args(bucket, f"{runs}/stopped", tmp_path / "cache-b")) == 0
    sigterm_at_step(None)
    # resumed on "another machine": an empty cache, the checkpoint read back from the bucket
    assert main(_args(bucket, f"{runs}/stopped", tmp_path / "cache-c", "--cache-limit", "1M")) == 0
    resumed = [json.loads(x) for x in _s3_text(f"{runs}/stopped/metrics.jsonl").splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 21))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_corrupt_object_stops_training_with_one_line(bucket, local, tmp_path, capsys):
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    src = bucket["tagged"].removeprefix("s3://")
    dst = "stream/corrupt"
    for name in fs.ls(src, detail=False):
        fs.copy(name, f"{dst}/{name.rsplit('/', 1)[-1]}")
    shard = Manifest.read(local["tagged"]).shards[0]
    data = bytearray(fs.cat_file(f"{dst}/{shard.name}"))
    data[-100] ^= 0x55
    fs.pipe_file(f"{dst}/{shard.name}", bytes(data))
    code = main(["--data", f"s3://{dst}", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"),
                 "--preset", "tiny", "--batch-size", "2", "--seq-len", "32", "--steps", "40", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("gato-train: error: ") and shard.name in last and shard.sha256 in last
    assert hashlib.sha256(data).hexdigest() in last and "Traceback" not in err


def test_unreachable_endpoint_is_one_line_exit_1(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(REPO),
               GATO_KIT_STORE_ATTEMPTS="1")  # one try: no "retrying" progress lines before the error
    p = subprocess.run([sys.executable, "-m", "trainer.cli", "--data", "s3://nowhere/data", "--out",
                        str(tmp_path / "run"), "--steps", "1"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "s3://nowhere/data" in p.stderr and "Traceback" not in p.stderr


# --- contract checks on what the loader maps -------------------------------------------------------------

def _damage(src: Path, dst: Path, column: str, change) -> Path:
    """Copy a directory, rewrite one column of shard 0's first record batch, and update the
    manifest's sha256 and size to match (so only the contract check can notice)."""
    d = Path(shutil.copytree(src, dst))
    m = Manifest.read(d)
    info = m.shards[0]
    table = open_shard(d / info.name)
    batches = table.to_batches()
    b = batches[0]
    batches[0] = pa.RecordBatch.from_arrays([change(b.column(i)) if f.name == column else b.column(i)
                                             for i, f in enumerate(b.schema)], schema=b.schema)
    with pa.OSFile(str(d / (info.name + ".new")), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        for x in batches:
            w.write_batch(x)
    os.replace(d / (info.name + ".new"), d / info.name)
    data = (d / info.name).read_bytes()
    info.sha256, info.bytes = hashlib.sha256(data).hexdigest(), len(data)
    m.write(d)
    return d


def _train_one_line(data: Path, tmp_path, capsys, *extra) -> str:
    code = main(["--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--batch-size", "4",
                 "--seq-len", "32", "--steps", "30", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def _token_999999(col: pa.ListArray) -> pa.ListArray:
    values = col.values.to_numpy().copy()
    values[col.offsets.to_numpy()[1] + 1] = 999999  # row 1 of the batch, its second token
    return pa.ListArray.from_arrays(col.offsets, pa.array(values, pa.int32()))


def test_token_id_out_of_range_stops_naming_shard_row_column(local, tmp_path, capsys):
    d = _damage(local["rl"], tmp_path / "bad", "tokens", _token_999999)
    line = _train_one_line(d, tmp_path, capsys)
    assert "shard-00000.arrow: row 1" in line and "column tokens" in line and "999999" in line


def test_token_id_out_of_range_in_a_worker_stops_the_same_way(local, tmp_path, capsys):
    d = _damage(local["rl"], tmp_path / "bad", "tokens", _token_999999)
    line = _train_one_line(d, tmp_path, capsys, "--num-workers", "2")
    assert "shard-00000.arrow: row 1" in line and "column tokens" in line


def test_loss_mask_of_the_wrong_length_stops(local, tmp_path, capsys):
    def shorter(col: pa.ListArray) -> pa.ListArray:
        off = col.offsets.to_numpy().copy()
        values = col.values.to_numpy()
        keep = np.ones(len(values), bool)
        keep[off[1]] = False  # row 1 loses its first value
        off[2:] -= 1
        return pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(values[keep], pa.uint8()))
    d = _damage(local["rl"], tmp_path / "bad", "loss_mask", shorter)
    line = _train_one_line(d, tmp_path, capsys)
    assert "shard-00000.arrow: row 1" in line and "column loss_mask" in line and "length" in line


def test_bad_list_offsets_stop(local, tmp_path, capsys):
    def crossed(col: pa.ListArray) -> pa.ListArray:
        off = col.offsets.to_numpy().copy()
        off[1], off[2] = off[2], off[1]  # not monotonic
        buf = pa.py_buffer(off.astype(np.int32).tobytes())
        return pa.ListArray.from_buffers(col.type, len(col), [None, buf], children=[col.values])
    d = _damage(local["rl"], tmp_path / "bad", "local_pos", crossed)
    line = _train_one_line(d, tmp_path, capsys)
    assert "shard-00000.arrow" in line and "local_pos" in line and "rows 0.." in line


# --- two torchrun nodes -------------------------------------------------------------------------------

_NODE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import trainer.data as data
    from trainer import train
    rank, out = int(os.environ["RANK"]), sys.argv[1]
    build, seen, caches = data.build_loader, [], []
    class Spy:
        def __init__(self, loader):
            self.loader = loader
        def __getattr__(self, name):
            return getattr(self.loader, name)
        def __iter__(self):
            for b in self.loader:
                ids = b.tokens[b.attention_mask.bool()].tolist()
                seen.append(sorted({i - 10 for i in ids if 10 <= i < 50}))
                yield b
    def spy_build(*a, **k):
        loader = build(*a, **k)
        caches.append(k["cache"])
        return Spy(loader) if k.get("training", True) else loader
    data.build_loader = train.build_loader = spy_build  # train.py holds its own reference
    from trainer.cli import main
    code = main(sys.argv[2:])
    with open(os.path.join(out, f"node{rank}.json"), "w") as f:
        json.dump({"docs": seen}, f)
    sys.exit(code)
""")


@pytest.mark.slow
def test_two_torchrun_nodes_download_disjoint_shards(bucket, local, tmp_path):
    """`torchrun --nnodes 2 --nproc-per-node 1` twice (gloo, rendezvous on 127.0.0.1), separate caches."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "node.py"
    script.write_text(_NODE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{REPO}", OMP_NUM_THREADS="1")
    run = make_bucket("nodes") + "/run"
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "gato-test", str(script), str(tmp_path),
               "--data", bucket["tagged"], "--out", run, "--cache-dir", str(tmp_path / f"cache{node}"),
               "--preset", "tiny", "--batch-size", "2", "--seq-len", "24", "--steps", "4", "--no-progress",
               "--save-every", "4"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    m = Manifest.read(local["tagged"])
    by_sha = {s.sha256: s.name for s in m.shards}
    cached = [{by_sha[p.stem] for p in (tmp_path / f"cache{n}" / "shards").glob("*.arrow")} for n in range(2)]
    assert cached[0] and cached[1] and not cached[0] & cached[1], cached
    docs = [{d for batch in json.loads((tmp_path / f"node{n}.json").read_text())["docs"] for d in batch}
            for n in range(2)]
    # a document may open one window and close the next, but never on both nodes
    assert docs[0] and docs[1] and not docs[0] & docs[1], "a row was read by both nodes in one epoch"
    # each node read only rows of the shards it downloaded
    starts = np.cumsum([0] + [s.rows for s in m.shards])
    for n in range(2):
        mine = json.loads((tmp_path / f"node{n}.json").read_text())["docs"]
        shards = {m.shards[int(np.searchsorted(starts, d, side="right") - 1)].name for b in mine for d in b}
        assert shards <= cached[n]


def test_convert_into_a_bucket_verify_and_train_from_it(s3_server, corpus_path, sp_model_path, tmp_path, capsys):
    """The whole path through the bucket: gato-tokenize writes zstd-compressed shards to s3://,
    verify reads them back by URL, gato-train streams them through its cache."""
    from converters.cli import main as tokenize
    url = make_bucket("convert") + "/text"
    lines = Path(corpus_path).read_text().splitlines()
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(" ".join(lines[i:i + 5]) for i in range(0, 1500, 5)) + "\n")
    assert tokenize(["text", str(docs), "--text-tokenizer", sp_model_path, "--out", url, "--compression", "zstd",
                     "--split", "blank-line", "--unit-size", "8000", "--shard-size", "8000", "--no-progress"]) == 0
    capsys.readouterr()
    assert tokenize(["verify", url, "--simulate-ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {url}") and "exactly once" in out
    m = Manifest.parse(_s3_text(f"{url}/manifest.json"), url)
    assert len(m.shards) > 2
    assert main(["--data", url, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--preset", "tiny", "--batch-size", "2", "--seq-len", "32", "--steps", "20", "--log-every", "5",
                 "--no-progress"]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    assert {p.stem for p in (tmp_path / "cache" / "shards").glob("*.arrow")} <= {s.sha256 for s in m.shards}
