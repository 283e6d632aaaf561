"""The text loader side by side with LitData's TokensLoader and MosaicML Streaming, same run.

    .venv/bin/python -m benchmarks.bench_peers [--quick]

The same documents (random ids of a vocabulary of 8,000, 50 to 3,000 tokens each, end-of-text
closing each) are written three ways: gato-kit shards (schema version 2 text shards, uint16 ids,
as `gato-tokenize text` writes them), LitData's `optimize(..., item_loader=TokensLoader())` chunks, and Streaming's
MDSWriter with the documents concatenated into (L + 1)-token samples (what llm-foundry's
ConcatTokensDataset writes). Each is read in training order (shuffled) as batches of
32 x (L + 1 = 1025) tokens, with 0 and 2 DataLoader workers, the three interleaved in one run:

- tokens/s: real tokens of the batches after the first, over a fixed number of batches;
- first batch: seconds from constructing the loader to holding its first batch;
- tokens per epoch: tokens one epoch holds as training targets (gato-kit: every window's targets;
  the peers: samples x (L + 1)), over the corpus's tokens;
- bytes per token: the directory's bytes on disk over the corpus's tokens.

Each read runs in a fresh process of its own: Streaming's reader leaves threads behind that go on
preparing its epoch after the loader is dropped, and in a shared process they took up to 95% of the
next reader's tokens/s (gato-kit read right after Streaming: 12-24 Mtok/s; alone: 195-206).

Ratios are gato-kit over the best peer (bytes per token: the peers' best over ours). A peer that
cannot be imported is reported as such and left out of the ratio. `import streaming` imports
torchvision (PyPI's is a CUDA build that fails beside the CPU torch wheel), so the two Streaming
modules used are imported without running the package's __init__ (which imports only its
vision and text dataset zoo and the HF-based dataloader).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SEQ_LEN = 1024
BATCH = 32
VOCAB = 8000
EOS = 2


# --- the corpus --------------------------------------------------------------------------------------

def make_docs(tokens: int, seed: int = 0) -> list[np.ndarray]:
    """Documents of random ids (each closed by end-of-text) of about `tokens` tokens in all."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < tokens:
        n = int(rng.integers(50, 3000))
        d = np.append(rng.integers(3, VOCAB, size=n), EOS).astype(np.int32)
        docs.append(d)
        total += len(d)
    return docs


def dir_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- writers -------------------------------------------------------------------------------------------

def write_gato(out: Path, docs: list[np.ndarray]) -> str:
    from tests.support.loader_data import write_dir
    from schemas.shard import shard_schema
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.text_rows import build_text_row
    layout = VocabLayout(text_vocab_size=VOCAB, eos_id=EOS)
    rows = [build_text_row(d[:-1], layout) for d in docs]
    rows_per_shard = max(1, len(rows) // 4)
    return str(write_dir(out, rows, layout, "text", "text", rows_per_shard=rows_per_shard, batch_rows=1024,
                         schema=shard_schema(False, text=True, vocab_size=layout.vocab_size)))


def _litdata_doc(doc):
    import torch
    return torch.from_numpy(doc)


def write_litdata(out: Path, docs: list[np.ndarray]) -> str:
    from litdata import TokensLoader, optimize
    optimize(fn=_litdata_doc, inputs=docs, output_dir=str(out), chunk_bytes="64MB", item_loader=TokensLoader(),
             num_workers=1, verbose=False, start_method="fork")
    return str(out)


def streaming_modules():
    """streaming.base.dataset and its MDSWriter, without the package __init__ (see the docstring)."""
    spec = importlib.util.find_spec("streaming")
    if spec is None:
        raise ImportError("mosaicml-streaming is not installed")
    root = spec.submodule_search_locations[0]
    for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [path]
            m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            m.__spec__.submodule_search_locations = [path]
            sys.modules[name] = m
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter
    return StreamingDataset, MDSWriter


def write_streaming(out: Path, docs: list[np.ndarray]) -> str:
    _, MDSWriter = streaming_modules()
    flat = np.concatenate(docs).astype(np.uint16)
    L1 = SEQ_LEN + 1
    with MDSWriter(out=str(out), columns={"tokens": "bytes"}, size_limit="64mb") as w:
        for k in range(len(flat) // L1):  # ConcatTokensDataset: full samples, the rest dropped
            w.write({"tokens": flat[k * L1:(k + 1) * L1].tobytes()})
    return str(out)


# --- readers ---------------------------------------------------------------------------------------------

def _timed(make, n_batches: int, count) -> tuple[float, float]:
    """(first batch seconds, tokens/s over the next n_batches) of the iterable make() returns."""
    t = time.perf_counter()
    it = iter(make())
    first = next(it)
    t_first = time.perf_counter() - t
    count(first)
    tokens = 0
    t = time.perf_counter()
    for _ in range(n_batches):
        tokens += count(next(it))
    secs = time.perf_counter() - t
    del it
    return t_first, tokens / secs


def read_gato(path: str, workers: int, n_batches: int) -> tuple[float, float]:
    from trainer.data import build_loader
    return _timed(lambda: build_loader([path], seq_len=SEQ_LEN, batch_size=BATCH, num_workers=workers, seed=0),
                  n_batches, lambda b: int(b.attention_mask.sum()) + BATCH)


def gato_epoch_tokens(path: str) -> int:
    """Training targets of one epoch: every window's targets (loss mask) in one evaluation pass."""
    from trainer.data import build_loader
    loader = build_loader([path], seq_len=SEQ_LEN, batch_size=BATCH, num_workers=0, training=False)
    return sum(int(b.loss_mask.sum()) for b in loader)


def read_litdata(path: str, workers: int, n_batches: int, cache: Path) -> tuple[float, float]:
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    def make():
        ds = StreamingDataset(path, item_loader=TokensLoader(block_size=SEQ_LEN + 1), shuffle=True, seed=0,
                              cache_dir=str(cache))
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers, drop_last=True)
    return _timed(make, n_batches, lambda b: int(b.numel()))


def litdata_epoch_tokens(path: str) -> int:
    from litdata import StreamingDataset, TokensLoader
    return len(StreamingDataset(path, item_loader=TokensLoader(block_size=SEQ_LEN + 1))) * (SEQ_LEN + 1)


def read_streaming(path: str, workers: int, n_batches: int) -> tuple[float, float]:
    import torch
    StreamingDataset, _ = streaming_modules()
    from streaming.base.util import clean_stale_shared_memory

    class Tokens(StreamingDataset):
        def __getitem__(self, i):
            return torch.from_numpy(np.frombuffer(super().__getitem__(i)["tokens"], np.uint16).astype(np.int64))

    def make():
        clean_stale_shared_memory()
        ds = Tokens(local=path, shuffle=True, shuffle_seed=0, batch_size=BATCH)
        return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=workers, drop_last=True)
    return _timed(make, n_batches, lambda b: int(b.numel()))


def streaming_epoch_tokens(path: str) -> int:
    StreamingDataset, _ = streaming_modules()
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    return StreamingDataset(local=path, shuffle=False, batch_size=BATCH).num_samples * (SEQ_LEN + 1)


def measure_in_child(name: str, path: str, workers: int, n_batches: int, cache: Path) -> tuple[float, float]:
    """One read in a fresh interpreter (see the docstring): (first batch seconds, tokens/s)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_peers", "--measure", name, path, str(workers), str(n_batches),
           str(cache)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {out.returncode}: {tail[:200]}")
    first, rate = out.stdout.strip().splitlines()[-1].split()
    return float(first), float(rate)


def measure(name: str, path: str, workers: int, n_batches: int, cache: str) -> tuple[float, float]:
    if name == "gato-kit":
        return read_gato(path, workers, n_batches)
    if name == "litdata":
        return read_litdata(path, workers, n_batches, Path(cache))
    return read_streaming(path, workers, n_batches)


# --- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller corpus, fewer batches")
    ap.add_argument("--measure", nargs=5, metavar=("NAME", "PATH", "WORKERS", "BATCHES", "CACHE"),
                    help="(internal) one read in this process; prints first-batch seconds and tokens/s")
    args = ap.parse_args(argv)
    if args.measure:
        name, path, workers, n, cache = args.measure
        first, rate = measure(name, path, int(workers), int(n), cache)
        print(first, rate)
        return []
    total = 3_000_000 if args.quick else 12_000_000
    # batches timed per read: fewer than one epoch holds (LitData's loader stops at the epoch's end),
    # and enough that the fastest reader runs for a tenth of a second or more
    n_batches = 60 if args.quick else 300
    docs = make_docs(total)
    corpus = int(sum(len(d) for d in docs))
    rows: list[dict] = []
    load = os.getloadavg()[0]
    print(f"corpus {corpus / 1e6:.1f} M tokens in {len(docs)} documents; batches {BATCH} x {SEQ_LEN + 1}; "
          f"load average {load:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        tmp = Path(tmp)
        paths, errors = {}, {}
        for name, write in (("gato-kit", write_gato), ("litdata", write_litdata), ("streaming", write_streaming)):
            try:
                paths[name] = write(tmp / name, docs)
            except Exception as e:  # a peer that does not install or import here is reported, not fatal
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                print(f"{name}: not measured ({errors[name]})")
        epoch = {"gato-kit": gato_epoch_tokens, "litdata": litdata_epoch_tokens, "streaming": streaming_epoch_tokens}
        results: dict[str, dict] = {n: {} for n in paths}
        for name, path in paths.items():
            results[name]["bytes_per_token"] = dir_bytes(path) / corpus
            try:
                results[name]["epoch_share"] = epoch[name](path) / corpus
            except Exception as e:
                errors[name] = f"epoch: {type(e).__name__}: {str(e)[:120]}"
        for workers in (0, 2):
            runs: dict[str, list[tuple[float, float]]] = {n: [] for n in paths}
            for _ in range(2 if args.quick else 3):  # interleaved: the peers share the machine's moods
                for name, path in paths.items():
                    if name in errors:
                        continue
                    try:
                        runs[name].append(measure_in_child(name, path, workers, n_batches, tmp / f"cache{workers}"))
                    except Exception as e:
                        errors[name] = f"{workers} workers: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            for name, rs in runs.items():
                if rs:
                    results[name][f"tok_s_{workers}"] = statistics.median(r[1] for r in rs)
                    results[name][f"first_{workers}"] = statistics.median(r[0] for r in rs)
        for name, r in results.items():
            print(f"{name:10s} " + "  ".join(f"{k} {v:,.4g}" for k, v in r.items())
                  + (f"  ({errors[name]})" if name in errors else ""))
        peers = {n: r for n, r in results.items() if n != "gato-kit" and n not in errors}
        ours = results.get("gato-kit", {})
        for key, unit, higher, target in (("tok_s_0", "tok/s", True, 1.0), ("tok_s_2", "tok/s", True, 1.0),
                                          ("epoch_share", "share", True, 0.99), ("bytes_per_token", "B/token",
                                                                                 False, None),
                                          ("first_0", "s", False, None), ("first_2", "s", False, None)):
            vals = {n: r[key] for n, r in peers.items() if key in r}
            best_name = (max(vals, key=vals.get) if higher else min(vals, key=vals.get)) if vals else None
            fig = ours.get(key)
            base = vals.get(best_name) if best_name else None
            ratio = None
            if fig is not None and base:
                ratio = fig / base if higher else base / fig
            row = {"name": f"peers_{key}", "figure": fig, "unit": unit, "baseline": base,
                   "baseline_name": f"({best_name})" if best_name else "", "ratio": ratio,
                   "load": load, "peers": {n: r.get(key) for n, r in results.items()}, "errors": errors}
            if key.startswith("tok_s"):
                row["target"] = target
            elif key == "epoch_share":
                row.update(target=target, target_on="figure")
            elif key == "bytes_per_token":  # uint16 ids: 2 bytes, plus offsets and framing
                row.update(target=None, target_max=2.1)
            elif key == "first_0":
                row.update(target=None, target_max=0.05)
            else:
                row.update(target=None)
            rows.append(row)
    return rows


if __name__ == "__main__":
    for r in main(sys.argv[1:]):
        print(r["name"], r["figure"], r["baseline"], r["baseline_name"], r["ratio"])
