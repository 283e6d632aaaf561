"""Decoding: next-token logits for growing contexts, with a key/value cache, and sampling from them.

Acting, text generation and captioning all grow a context a few tokens at a time. `Decoder` keeps
the model's key/value cache across those steps, so each new chunk (an observation, one action token,
one word piece) costs one forward pass over the chunk alone. `Decoder(model, cache=False)` computes
the same logits by running the whole context every time: the reference the cache is tested and
benchmarked against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tokenizer_kit.layout import NO_POSITION, TEXT, VocabLayout
from tokenizer_kit.rows import concat_rows
from tokenizer_kit.sequence import Row
from tokenizer_kit.text_rows import text_token_row

from ..batch import Batch, Sample, collate
from ..model import KVCache


# --- rows as contexts --------------------------------------------------------------------------------

def rows_batch(rows: Sequence[Row]) -> Batch:
    """Rows right-padded into one evaluation batch whose inputs are the rows' tokens."""
    samples = [Sample(np.append(r.tokens, 0).astype(np.int32), np.append(r.loss_mask, 0),
                      np.append(r.local_pos, NO_POSITION).astype(np.int16), r.patches, r.patch_pos)
               for r in rows]  # one dummy token at the end: collate's inputs are tokens[:-1]
    return collate(samples, max(1, max(len(r) for r in rows)), training=False)


# --- logits ------------------------------------------------------------------------------------------

@torch.inference_mode()
def next_token_logits(model, contexts: Sequence[Row]) -> torch.Tensor:
    """Logits (B, vocab) for the token after each context, in one padded forward pass, no cache."""
    lens = [len(r) for r in contexts]
    device = next(model.parameters()).device
    logits = model(rows_batch(contexts).to(device))
    return logits[torch.arange(len(contexts), device=device), torch.tensor(lens, device=device) - 1]


class Decoder:
    """Next-token logits for B contexts that grow chunk by chunk.

    `start(contexts)` begins (or rebuilds) every row; `extend(chunks)` appends a chunk to each row;
    both return the logits after each row's last token. `keep(rows)` drops finished rows. With
    `cache=True` the model's key/value cache makes a chunk cost a forward pass over that chunk only;
    with `cache=False` every call runs the whole context (same logits, for tests and benchmarks).
    """

    def __init__(self, model, cache: bool = True):
        self.model, self.cache = model, cache and hasattr(model, "extend")
        self.device = next(model.parameters()).device
        self.kv: KVCache | None = None
        self.last: torch.Tensor | None = None
        self.contexts: list[Row] = []
        self.lengths: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def start(self, contexts: Sequence[Row]) -> torch.Tensor:
        self.lengths = [len(c) for c in contexts]
        if self.cache:
            self.kv = self.model.new_cache(len(contexts))
            self.last = self.model.extend(rows_batch(contexts).to(self.device), self.kv)
            return self.last
        self.contexts = list(contexts)
        return next_token_logits(self.model, self.contexts)

    def extend(self, chunks: Sequence[Row]) -> torch.Tensor:
        self.lengths = [n + len(c) for n, c in zip(self.lengths, chunks, strict=True)]
        if self.cache:
            assert self.kv is not None and self.last is not None, "start() comes first"
            logits = self.model.extend(rows_batch(chunks).to(self.device), self.kv)
            empty = torch.tensor([len(c) == 0 for c in chunks], device=logits.device)
            self.last = torch.where(empty[:, None], self.last, logits)  # an empty chunk: the row's last logits
            return self.last
        self.contexts = [concat_rows([c, k]) for c, k in zip(self.contexts, chunks)]
        return next_token_logits(self.model, self.contexts)

    def keep(self, rows: Sequence[int]) -> None:
        rows = list(rows)
        if rows == list(range(self.rows)):
            return
        self.lengths = [self.lengths[i] for i in rows]
        if self.cache:
            assert self.kv is not None and self.last is not None, "start() comes first"
            self.kv = self.kv.select(rows)
            self.last = self.last[rows]
        else:
            self.contexts = [self.contexts[i] for i in rows]


# --- sampling ----------------------------------------------------------------------------------------

def sample_logits(logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None,
                  top_k: int = 0) -> torch.Tensor:
    """(B, V) logits (-inf where illegal) -> (B,) ids: argmax at temperature 0, else a draw from the
    softmax at that temperature over the `top_k` most likely ids (0: all)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def sample_in_ranges(logits: torch.Tensor, ranges: Sequence[tuple[int, int]], temperature: float = 0.0,
                     generator: torch.Generator | None = None, top_k: int = 0) -> np.ndarray:
    """One id per row, drawn only from that row's legal half-open range [lo, hi)."""
    lo = torch.tensor([r[0] for r in ranges], device=logits.device)
    hi = torch.tensor([r[1] for r in ranges], device=logits.device)
    ids = torch.arange(logits.shape[-1], device=logits.device)
    legal = (ids[None] >= lo[:, None]) & (ids[None] < hi[:, None])
    masked = logits.float().masked_fill(~legal, float("-inf"))
    return sample_logits(masked, temperature, generator, top_k).cpu().numpy()


@torch.inference_mode()
def generate_text(model, layout: VocabLayout, contexts: Sequence[Row], max_new_tokens: int = 16,
                  temperature: float = 0.0, seed: int = 0, top_k: int = 0, cache: bool = True) -> list[np.ndarray]:
    """Continue each context with text ids (restricted to the text range) until end-of-text."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = layout.id_range(TEXT)
    out: list[list[int]] = [[] for _ in contexts]
    if not contexts:
        return []
    decoder = Decoder(model, cache)
    logits = decoder.start(contexts)
    live = list(range(len(contexts)))
    for _ in range(max_new_tokens):
        ids = sample_in_ranges(logits, [(lo, hi)] * len(live), temperature, g, top_k)
        keep = [j for j, t in enumerate(ids) if int(t) != layout.eos_id]
        for j in keep:
            out[live[j]].append(int(ids[j]))
        if not keep or len(out[live[keep[0]]]) >= max_new_tokens:
            break
        decoder.keep(keep)
        live = [live[j] for j in keep]
        logits = decoder.extend([text_token_row(ids[j:j + 1]) for j in keep])
    return [np.asarray(o, np.int32) for o in out]
