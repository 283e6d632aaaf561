"""Training tokens/s of the `tiny` Gato model on CPU, against a plain nn.TransformerEncoder of the
same size (same embedding, tied head, causal mask, AdamW step) measured in the same run, and
bf16 autocast against fp32.

    .venv/bin/python -m benchmarks.bench_train [--quick]

Steps of the models are interleaved and the median step time is taken, so load from other
processes on the machine hits both sides alike. By default torch runs one thread and steps are
timed in that thread's CPU time, which other processes' load does not inflate (wall time on this
shared 2-core machine swings 5x); `--threads N` times wall clock with N threads instead.
Tokens counted: real (non-padding) input tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text_rows import build_caption_row, build_text_row
from trainer.batch import Sample, collate
from trainer.model import GatoConfig, GatoModel

TEXT_VOCAB = 8000


def make_batch(seq_len: int, batch_size: int, layout: VocabLayout, seed: int = 0):
    """Half text documents, half image-caption pairs (64x64 images: 16 patches), real collate."""
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(batch_size):
        if b % 2 == 0:
            row = build_text_row(rng.integers(3, TEXT_VOCAB, seq_len + 1), layout)
            samples.append(Sample(row.tokens[:seq_len + 1], row.loss_mask[:seq_len + 1],
                                  row.local_pos[:seq_len + 1], row.patches, row.patch_pos))
        else:
            parts = [build_caption_row(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                                       rng.integers(3, TEXT_VOCAB, 20), layout) for _ in range(5)]
            toks = np.concatenate([p.tokens for p in parts])[:seq_len + 1]
            n_p = int((toks == -1).sum())
            samples.append(Sample(toks, np.concatenate([p.loss_mask for p in parts])[:seq_len + 1],
                                  np.concatenate([p.local_pos for p in parts])[:seq_len + 1],
                                  np.concatenate([p.patches for p in parts])[:n_p],
                                  np.concatenate([p.patch_pos for p in parts])[:n_p]))
    return collate(samples, seq_len, training=True, rng=rng)


class PlainTransformer(nn.Module):
    """Baseline: nn.TransformerEncoder (pre-norm, GELU MLP), learned positions, tied head."""

    def __init__(self, vocab: int, d: int, heads: int, ff: int, layers: int, seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        for p in self.parameters():
            if p.ndim >= 2:
                nn.init.normal_(p, 0.0, 0.02)

    def loss(self, batch) -> torch.Tensor:
        L = batch.tokens.shape[1]
        x = self.embed(batch.tokens) + self.pos.weight[:L]
        mask = nn.Transformer.generate_square_subsequent_mask(L)
        x = self.enc(x, mask=mask, is_causal=True)
        logits = F.linear(self.norm(x), self.embed.weight)
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
        m = batch.loss_mask.flatten()
        return (ce * m).sum() / m.sum()


def _step_fn(model, opt, batch, bf16: bool):
    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter steps")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: time in thread CPU time)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    seq_len = args.seq_len or (128 if args.quick else 256)
    steps = args.steps or (3 if args.quick else 6)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    layout = VocabLayout(text_vocab_size=TEXT_VOCAB, eos_id=2)
    cfg = GatoConfig.from_preset("tiny", layout)
    batch = make_batch(seq_len, args.batch_size, layout)
    tokens = int(batch.attention_mask.sum())
    gato = GatoModel(cfg)
    base = PlainTransformer(layout.vocab_size, cfg.d_model, cfg.n_head, cfg.d_ff, cfg.n_layer, seq_len)
    def adamw(params):
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))

    runs = {
        "gato_fp32": _step_fn(gato, adamw(gato.param_groups(0.1)), batch, False),
        "gato_bf16": _step_fn(gato, adamw(gato.param_groups(0.1)), batch, True),
        "plain_fp32": _step_fn(base, adamw(base.parameters()), batch, False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(steps):
        for name, fn in runs.items():
            t = clock()
            fn()
            times[name].append(clock() - t)
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    rows = [
        {"name": "train_tiny_cpu_vs_transformer_encoder", "figure": tps["gato_fp32"], "unit": "tok/s",
         "baseline": tps["plain_fp32"], "ratio": tps["gato_fp32"] / tps["plain_fp32"], "target": 0.7},
        {"name": "train_tiny_cpu_bf16_vs_fp32", "figure": tps["gato_bf16"], "unit": "tok/s",
         "baseline": tps["gato_fp32"], "ratio": tps["gato_bf16"] / tps["gato_fp32"], "target": 1.0},
    ]
    print(f"tiny Gato ({gato.num_params() / 1e6:.2f}M params, vocab {layout.vocab_size}), batch "
          f"{args.batch_size}x{seq_len} ({tokens} real tokens, {int(batch.patches.shape[0])} patches), "
          f"{torch.get_num_threads()} thread(s), {'thread CPU' if clock is time.thread_time else 'wall'} time, "
          f"median of {steps} steps")
    for r in rows:
        print(f"{r['name']}: {r['figure']:,.0f} {r['unit']}  baseline {r['baseline']:,.0f}  "
              f"ratio {r['ratio']:.2f}  target >= {r['target']}")
    return rows


if __name__ == "__main__":
    main()
