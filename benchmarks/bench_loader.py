"""Streaming loader speed per worker (batches/s, tokens/s) on RL, text and image-caption shard
directories, against raw memory-mapped reads of the same shards in the same run; and peak memory
of the loader on 1x and 10x the data, each in a fresh child process.

    .venv/bin/python -m benchmarks.bench_loader [--quick]

Loader: `build_loader(..., num_workers=0)` (one reader in-process: what each DataLoader worker
does), seq_len 1024, full training batches (windows, prompts, packing, collate with normalised
patches). Raw baseline: the same number of sequences read as plain slices of the mapped `tokens`,
`loss_mask` and `local_pos` buffers of random rows into a preallocated array (no sampling logic,
no collate): the ceiling of what a loader over these files can do. Tokens counted: real
(non-padding) input tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text_rows import build_caption_row, build_text_row

ROOT = Path(__file__).resolve().parents[1]

LAYOUT = VocabLayout(text_vocab_size=32000, eos_id=2)
SEQ_LEN = 1024
BATCH = 16
TARGET_TOK_S = 2_000_000


# --- data ---------------------------------------------------------------------------------------------

def make_rows(kind: str, tokens: int, seed: int = 0) -> list:
    """Rows of about `tokens` tokens in all: state RL (10 tokens/step), pixel RL (32x32 frames:
    4 patches + 6 tokens/step), text documents, or 64x64 image-caption pairs (16 patches)."""
    from tests.support.loader_data import pixel_episode, state_episode
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    while total < tokens:
        if kind == "rl_state":
            row = state_episode(rng, int(rng.integers(100, 1000)), LAYOUT)
        elif kind == "rl_pixels":
            row = pixel_episode(rng, int(rng.integers(50, 300)), LAYOUT)
        elif kind == "text":
            row = build_text_row(rng.integers(3, 32000, size=int(rng.integers(50, 3000))), LAYOUT)
        else:
            row = build_caption_row(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                                    rng.integers(3, 32000, size=int(rng.integers(8, 30))), LAYOUT)
        rows.append(row)
        total += len(row)
    return rows


def write(out: Path, kind: str, rows: list, rows_per_shard: int) -> str:
    from tests.support.loader_data import write_dir
    converter = "rl" if kind.startswith("rl") else kind
    return str(write_dir(out, rows, LAYOUT, converter, kind, rows_per_shard=rows_per_shard, batch_rows=256))


# --- the raw baseline ------------------------------------------------------------------------------------

def raw_reads(path: str, n_seq: int, seed: int = 0) -> tuple[float, int]:
    """Seconds and tokens to copy n_seq random (row, offset) slices of L+1 tokens out of the mapped
    shards with plain numpy (tokens, loss_mask, local_pos and the slice's share of the patches),
    the work any reader must do."""
    from schemas.manifest import Manifest
    m = Manifest.read(path)
    chunks = []
    for s in m.shards:
        with pa.memory_map(f"{path}/{s.name}", "r") as src:
            for b in pa.ipc.open_stream(src):
                pv = b.column("patches").values
                patches = np.frombuffer(pv.buffers()[1], np.uint8, count=len(pv) * 768).reshape(-1, 768)
                chunks.append((b.column("tokens").offsets.to_numpy(), b.column("patches").offsets.to_numpy())
                              + tuple(b.column(c).values.to_numpy() for c in ("tokens", "loss_mask", "local_pos"))
                              + (patches,))
    rng = np.random.default_rng(seed)
    L1 = SEQ_LEN + 1
    out = (np.zeros((BATCH, L1), np.int64), np.zeros((BATCH, L1), np.float32), np.zeros((BATCH, L1), np.int64),
           np.zeros((L1, 768), np.uint8))
    picks = [(int(rng.integers(len(chunks))), rng.random(), rng.random()) for _ in range(n_seq)]
    total = 0
    t = time.perf_counter()
    for k, (c, u, v) in enumerate(picks):
        off, poff, tok, mask, lpos, patches = chunks[c]
        r = int(u * (len(off) - 1))
        a0, b0 = int(off[r]), int(off[r + 1])
        a = a0 + int(v * max(0, b0 - a0 - L1))
        b = min(b0, a + L1)
        i = k % BATCH
        out[0][i, :b - a] = tok[a:b]
        out[1][i, :b - a] = mask[a:b]
        out[2][i, :b - a] = lpos[a:b]
        p0, p1 = int(poff[r]), int(poff[r + 1])
        if p1 > p0:  # the slice's share of the row's patches, as raw bytes
            n_p = min(L1, (p1 - p0) * (b - a) // (b0 - a0))
            out[3][:n_p] = patches[p0:p0 + n_p]
        total += b - a - 1
    return time.perf_counter() - t, total


def loader_reads(data: list[str], n_batches: int, seed: int = 0, num_workers: int = 0) -> tuple[float, int, int]:
    """Seconds, real input tokens and patches of n_batches training batches of one reader
    (in-process, or one DataLoader worker process handing batches over shared memory)."""
    from trainer.data import build_loader
    loader = build_loader(data, SEQ_LEN, BATCH, seed=seed, num_workers=num_workers)
    it = iter(loader)
    next(it)  # warm-up: first touches of the mapped pages and the epoch order
    tokens = patches = 0
    t = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
        tokens += int(b.attention_mask.sum())
        patches += int(b.patches.shape[0])
    return time.perf_counter() - t, tokens, patches


# --- memory in child processes -------------------------------------------------------------------------

def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(data: list[str], n_batches: int) -> dict:
    """Memory of one reader making n_batches: anonymous (process-owned) RSS sampled after every
    batch, and the peak total RSS, which also counts the mapped shard pages the batches touched
    (page cache, not a copy of the data; the loader unmaps them past trainer.stream.MAPPED_BUDGET_MB)."""
    import torch  # noqa: F401  (imported before the first measurement, as the trainer has it)
    from trainer.data import build_loader
    before = _status_mb("RssAnon")
    loader = build_loader(data, SEQ_LEN, BATCH, seed=0, num_workers=0)
    anon = _status_mb("RssAnon")
    for _, _ in zip(range(n_batches), loader, strict=False):  # loader is infinite
        anon = max(anon, _status_mb("RssAnon"))
    return {"anon_before_mb": before, "anon_peak_mb": anon, "anon_growth_mb": anon - before,
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (big) parent
            "rss_peak_mb": _status_mb("VmHWM"),
            "file_mb": _status_mb("RssFile")}


def measure_memory(data: list[str], n_batches: int) -> dict:
    code = ("import json; import benchmarks.bench_loader as b; "
            "print('@@MEM@@' + json.dumps(b.child_memory(%r, %d)))" % (data, n_batches))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("@@MEM@@"):
            return json.loads(line[7:])
    raise RuntimeError(f"memory child failed: {out.stderr.strip().splitlines()[-1:]}")


# --- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="less data, fewer batches")
    ap.add_argument("--batches", type=int)
    args = ap.parse_args(argv)
    n_batches = args.batches or (15 if args.quick else 60)
    scale = 1_000_000  # tokens per directory at 1x (image dirs: a quarter); 1x must exceed the mapped budget
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        base_rows = {}
        dirs = {}
        for kind in ("rl_state", "rl_pixels", "text", "captions"):
            base_rows[kind] = make_rows(kind, scale // (4 if kind in ("rl_pixels", "captions") else 1))
            dirs[kind] = write(tmp / kind, kind, base_rows[kind], max(1, len(base_rows[kind]) // 4))
        print(f"one reader (num_workers=0), batch {BATCH} x seq_len {SEQ_LEN}, {n_batches} batches each")
        for kind, path in dirs.items():
            secs, tokens, patches = loader_reads([path], n_batches)
            rsecs, rtokens = raw_reads(path, n_batches * BATCH)
            tps, raw_tps = tokens / secs, rtokens / rsecs
            target = TARGET_TOK_S if kind in ("rl_state", "text") else None
            rows_out.append({"name": f"loader_{kind}_tok_per_s", "figure": tps, "unit": "tok/s", "baseline": raw_tps,
                             "ratio": tps / raw_tps, "target": target, "target_on": "figure",
                             "batches_per_s": n_batches / secs, "patches_per_batch": patches / n_batches})
            print(f"{kind:10s} loader {tps / 1e6:6.2f} Mtok/s ({n_batches / secs:6.1f} batches/s, "
                  f"{patches / n_batches:6.0f} patches/batch)  raw mmap reads {raw_tps / 1e6:7.2f} Mtok/s  "
                  f"ratio {tps / raw_tps:.3f}  target {'>= 2 Mtok/s' if target else '-'}")
        for kind in ("rl_state", "text"):  # the same reader as a DataLoader worker process
            secs, tokens, _ = loader_reads([dirs[kind]], n_batches, num_workers=1)
            rows_out.append({"name": f"loader_{kind}_one_dataloader_worker_tok_per_s", "figure": tokens / secs,
                             "unit": "tok/s", "baseline": None, "ratio": None, "target": TARGET_TOK_S,
                             "target_on": "figure", "batches_per_s": n_batches / secs})
            print(f"{kind:10s} through one DataLoader worker: {tokens / secs / 1e6:6.2f} Mtok/s "
                  f"({n_batches / secs:6.1f} batches/s)  target >= 2 Mtok/s")
        # memory: the same mixture over 1x and 10x the rows, each in a fresh process
        mixture = [f"{dirs['rl_state']}:1", f"{dirs['text']}:1", f"{dirs['captions']}:0.5", f"{dirs['rl_pixels']}:0.5"]
        big = []
        for k, w in zip(("rl_state", "text", "captions", "rl_pixels"), mixture, strict=True):
            path = write(tmp / ("big_" + k), k, base_rows[k] * 10, max(1, len(base_rows[k]) // 4))
            big.append(f"{path}:{w.rsplit(':', 1)[1]}")
        disk = {name: sum(f.stat().st_size for d in ds for f in Path(d.rsplit(':', 1)[0]).iterdir()) / 2**20
                for name, ds in (("1x", mixture), ("10x", big))}
        mem1, mem10 = measure_memory(mixture, n_batches), measure_memory(big, n_batches)
        flat = mem1["anon_peak_mb"] / mem10["anon_peak_mb"]
        rows_out.append({"name": "loader_peak_anon_rss_1x_over_10x_data", "figure": mem10["anon_peak_mb"],
                         "unit": "MB", "baseline": mem1["anon_peak_mb"], "ratio": flat, "target": 0.9,
                         "rss_peak_mb_1x": mem1["rss_peak_mb"], "rss_peak_mb_10x": mem10["rss_peak_mb"],
                         "disk_mb_1x": disk["1x"], "disk_mb_10x": disk["10x"]})
        rows_out.append({"name": "loader_peak_total_rss_1x_over_10x_data", "figure": mem10["rss_peak_mb"],
                         "unit": "MB", "baseline": mem1["rss_peak_mb"],
                         "ratio": mem1["rss_peak_mb"] / mem10["rss_peak_mb"], "target": 0.9})
        for name, m in (("1x", mem1), ("10x", mem10)):
            print(f"{name:>3s} data ({disk[name]:4.0f} MB of shards, 4-directory mixture, {n_batches} batches): peak "
                  f"anonymous RSS {m['anon_peak_mb']:.0f} MB (+{m['anon_growth_mb']:.0f} MB over imports), peak "
                  f"total RSS {m['rss_peak_mb']:.0f} MB (file-backed: libraries and touched shard pages "
                  f"{m['file_mb']:.0f} MB)")
        print(f"peak anonymous RSS 1x / 10x = {flat:.2f}, peak total RSS 1x / 10x = "
              f"{mem1['rss_peak_mb'] / mem10['rss_peak_mb']:.2f}  target >= 0.9 (flat)")
    return rows_out


if __name__ == "__main__":
    main()
