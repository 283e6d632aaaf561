"""Bytes per token on disk of the lean forms (schema version 3) against every column (version 1's
layout), for RL state, RL pixel, image-caption and text rows, uncompressed and with zstd (the
converters' default where rows hold images), and uncompressed without the raw patch bytes (768 a
patch in every form: random pixels here, which zstd cannot shrink); and the loader's cost per
training sample over both, in the same run (the lean forms are read back as version-1 columns, so
the samples are the same). `make bench` reports, per kind, the lean form's bytes per token besides
pixels against version 1's, and its loader cost against version 1's (target: no slower, 1.0x with
the run-to-run noise of a shared machine left to the reader).

    .venv/bin/python -m benchmarks.bench_shard_bytes [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.bench_loader import BATCH, LAYOUT, make_rows
from schemas.shard import rows_to_batch, shard_schema
from tests.support.loader_data import write_dir

KINDS = ("rl_state", "rl_pixels", "captions", "text")


def _schemas(kind: str) -> dict[str, pa.Schema]:
    rl = kind.startswith("rl")
    return {"v1": shard_schema(rl).with_metadata({b"gato_kit_schema_version": b"1"}),
            "lean": shard_schema(rl, kind == "text", LAYOUT.vocab_size, kind == "captions")}


def shard_bytes(rows: list, schema: pa.Schema, compression: str | None) -> int:
    """Bytes of one Arrow IPC stream of the rows in batches of 256, as the writer frames them."""
    rl = "episode_return" in schema.names
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        for b in range(0, len(rows), 256):
            part = rows[b:b + 256]
            w.write_batch(rows_to_batch(part, [f"row{b + i}" for i in range(len(part))], "t",
                                        episode_returns=[0.0] * len(part) if rl else None, schema=schema))
    return sink.getvalue().size


def loader_cost(path: str, batches: int) -> float:
    """Microseconds per training sample of build_loader with 0 workers (after one warm-up batch)."""
    from trainer.data import build_loader
    it = iter(build_loader([path], 1024, BATCH, seed=0, num_workers=0))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / (batches * BATCH) * 1e6


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and batches")
    args = ap.parse_args(argv)
    tokens, batches = (300_000, 20) if args.quick else (2_000_000, 60)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            rows = make_rows(kind, tokens)
            n = sum(len(r) for r in rows)
            pixels = sum(len(r.patches) for r in rows) * 768  # raw patch bytes: the same in every form
            res: dict = {"tokens": n, "patch_share": round(sum(len(r.patches) for r in rows) / n, 3)}
            for form, schema in _schemas(kind).items():
                for comp in (None, "zstd"):
                    res[f"{form}_{comp or 'none'}_bytes_per_token"] = round(shard_bytes(rows, schema, comp) / n, 3)
                res[f"{form}_none_bytes_per_token_besides_pixels"] = round(
                    (shard_bytes(rows, schema, None) - pixels) / n, 3)
                if kind != "text":  # the text loader path is issue 26's other half, measured by bench_loader
                    d = write_dir(Path(tmp) / f"{kind}-{form}", rows, LAYOUT, "rl" if kind.startswith("rl") else kind,
                                  rows_per_shard=len(rows), batch_rows=256, schema=schema)
                    res[f"{form}_loader_us_per_sample"] = round(loader_cost(str(d), batches), 1)
            out[kind] = res
            print(kind, json.dumps(res), flush=True)
    return _rows(out)


def _rows(out: dict) -> list[dict]:
    """run_all's rows: per kind, bytes per token besides pixels and the loader's cost, lean over v1."""
    rows = []
    for kind, r in out.items():
        lean, v1 = r["lean_none_bytes_per_token_besides_pixels"], r["v1_none_bytes_per_token_besides_pixels"]
        rows.append({"name": f"shard bytes per token besides pixels, {kind}, lean form", "figure": lean,
                     "unit": "B/token", "baseline": v1, "baseline_name": "every column (version 1)",
                     "ratio": v1 / lean, "target": None})
        if "lean_loader_us_per_sample" in r:
            cost, was = r["lean_loader_us_per_sample"], r["v1_loader_us_per_sample"]
            rows.append({"name": f"loader us per sample, {kind}, lean form", "figure": cost, "unit": "us",
                         "baseline": was, "baseline_name": "every column (version 1)", "ratio": was / cost,
                         "target": None})
    return rows


if __name__ == "__main__":
    main()
