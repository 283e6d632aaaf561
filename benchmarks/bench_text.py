"""Text conversion speed against raw SentencePiece, and against the usual `datasets.map` way.

Input: pseudo-English documents (Zipf-distributed words taken from the Python standard library's
sources, 1-30 sentences each), written as one .txt file of blank-line-separated documents; a BPE
SentencePiece model (vocab 8000) trained on part of it. Measured in the same run on the same
documents:

Baseline and conversion alternate `--repeats` times (3; quick 1) and the best of each counts,
in wall time and in CPU time (the CPU figure is the fairer one on a loaded machine).

* baseline: `SentencePieceProcessor.Encode(batch of 256 docs, num_threads=1)` over the documents
  already in memory (tokens incl. end-of-text) -- the floor conversion cannot beat on one core;
* figure: `gato-tokenize text FILE --split blank-line --workers 1` done in-process through the
  shard writer (read, tokenise, build rows, validate, write the record batches in unit order
  straight into the rolling shards, hashed as they go out, fsync, manifest);
  target >= 0.8x of the baseline's tokens/s;
  (measured after a tiny warm-up conversion: the first one in a process pays ~1 s of imports
  -- pyarrow pulls in pandas -- which is start-up, not throughput);
* comparison: `Dataset.from_dict({"text": docs}).map(encode, batched=True)` writing its Arrow cache,
  the way most people tokenise with HF datasets (no target; for orientation).

    .venv/bin/python -m benchmarks.bench_text [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TARGET = 0.8


def word_list(limit: int = 20000) -> tuple[list[str], np.ndarray]:
    """The standard library's most frequent words, with Zipf weights by rank."""
    counts: Counter = Counter()
    for p in sorted(Path(os.__file__).parent.glob("*.py"))[:200]:
        counts.update(re.findall(r"[a-z]{2,14}", p.read_text(errors="ignore").lower()))
    words = [w for w, _ in counts.most_common(limit)]
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    return words, weights / weights.sum()


def make_documents(megabytes: float, seed: int = 0) -> list[str]:
    """Documents of 1-30 sentences of 4-24 words, about `megabytes` MB in all; deterministic."""
    words, p = word_list()
    vocab = np.array(words, dtype=object)
    rng = np.random.default_rng(seed)
    docs, size = [], 0
    target = megabytes * 1e6
    while size < target:
        lengths = rng.integers(4, 25, rng.integers(1, 31))
        ids = rng.choice(len(words), int(lengths.sum()), p=p)
        cuts = np.cumsum(lengths)[:-1]
        doc = " ".join(" ".join(s).capitalize() + "." for s in np.split(vocab[ids], cuts))
        docs.append(doc)
        size += len(doc) + 2
    return docs


def write_corpus(docs: list[str], path: Path) -> Path:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def train_model(docs: list[str], directory: Path) -> Path:
    from tokenizer_kit.text import train_tokenizer
    sample = directory / "sample.txt"
    sample.write_text("\n".join(docs[: max(200, len(docs) // 4)]), encoding="utf-8")
    return train_tokenizer([sample], 8000, directory / "bench.model")


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def sentencepiece_run(model: Path, docs: list[str]) -> tuple[float, float, int]:
    """Raw batch encoding on one thread (with end-of-text, like the rows): (wall, cpu, tokens)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))

    def encode() -> int:
        return sum(sum(len(x) for x in sp.Encode(docs[i:i + 256], out_type=int, add_eos=True, num_threads=1))
                   for i in range(0, len(docs), 256))
    return _timed(encode)


def convert_run(model: Path, corpus: Path, out: Path, workers: int = 1,
                unit_size: int = 16 * 2**20) -> tuple[float, float, int]:
    """The whole text conversion, in-process for one worker: (wall, cpu, tokens)."""
    import shutil

    from converters.text import TextConverter
    from converters.writer import convert
    from tokenizer_kit.text import TextTokenizer
    shutil.rmtree(out, ignore_errors=True)
    tok = TextTokenizer(model)

    def run() -> int:
        conv = TextConverter([str(corpus)], tok, tok.layout(), split="blank-line", unit_size=unit_size)
        res = convert(conv, out, layout=tok.layout(), tokenizer_path=model, workers=workers, progress=False)
        return res.manifest.total_tokens
    return _timed(run)


def datasets_map_rate(model: Path, docs: list[str], cache: Path) -> tuple[float, int]:
    import datasets
    import sentencepiece as spm
    datasets.disable_progress_bars()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    ds = datasets.Dataset.from_dict({"text": docs})
    t0 = time.perf_counter()
    mapped = ds.map(lambda b: {"input_ids": sp.Encode(b["text"], out_type=int, add_eos=True, num_threads=1)},
                    batched=True, batch_size=1000, remove_columns=["text"], cache_file_name=str(cache / "map.arrow"))
    elapsed = time.perf_counter() - t0
    tokens = sum(len(x) for x in mapped.with_format("arrow")["input_ids"].to_pylist())
    return tokens / elapsed, tokens


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 4 MB of text instead of 25 MB, one repeat")
    ap.add_argument("--megabytes", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="alternating repeats; the best of each counts")
    args = ap.parse_args(argv)
    mb = args.megabytes or (4 if args.quick else 25)
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_text_") as tmp:
        tmp = Path(tmp)
        docs = make_documents(mb)
        corpus = write_corpus(docs, tmp / "corpus.txt")
        model = train_model(docs, tmp)
        convert_run(model, write_corpus(docs[:50], tmp / "warm.txt"), tmp / "warm")  # imports, once per process
        sp, conv = [], []
        for _ in range(repeats):  # alternate, so a burst of load on this shared machine hits both
            sp.append(sentencepiece_run(model, docs))
            conv.append(convert_run(model, corpus, tmp / "out"))
        tokens = sp[0][2]
        if conv[0][2] != tokens:
            raise SystemExit(f"token counts differ: conversion {conv[0][2]}, SentencePiece {tokens}")
        map_rate, _ = datasets_map_rate(model, docs, tmp)
    sp_wall, sp_cpu = min(x[0] for x in sp), min(x[1] for x in sp)
    cv_wall, cv_cpu = min(x[0] for x in conv), min(x[1] for x in conv)
    rows = [
        {"name": "text convert, 1 worker vs SentencePiece batch (1 thread)", "figure": tokens / cv_wall / 1e6,
         "unit": "Mtok/s", "baseline": tokens / sp_wall / 1e6, "baseline_name": "SentencePiece Encode",
         "ratio": sp_wall / cv_wall, "target": TARGET},
        {"name": "same, in CPU time (less sensitive to other load)", "figure": tokens / cv_cpu / 1e6,
         "unit": "Mtok/s CPU", "baseline": tokens / sp_cpu / 1e6, "baseline_name": "SentencePiece Encode",
         "ratio": sp_cpu / cv_cpu, "target": TARGET},
        {"name": "text convert, 1 worker vs datasets.map + SentencePiece", "figure": tokens / cv_wall / 1e6,
         "unit": "Mtok/s", "baseline": map_rate / 1e6, "baseline_name": "datasets.map",
         "ratio": map_rate and tokens / cv_wall / map_rate, "target": None},
    ]
    for r in rows:
        print(f"{r['name']}: {r['figure']:.2f} {r['unit']} vs {r['baseline']:.2f} -> ratio {r['ratio']:.2f}"
              f" (target {r['target']})  [{mb:g} MB, {tokens / 1e6:.1f}M tokens, best of {repeats}]")
    return rows


if __name__ == "__main__":
    main()
