"""How a training sequence is cut from rows: RL windows and prompts, text crops and packing,
image-caption pairs (SPEC 5). Pure functions of a row source and a random generator.

A sample is a list of Parts (token ranges of rows); `assemble` concatenates them, patches
travelling with their slots, so choosing what to read and reading it stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenizer_kit.sequence import patch_span

from .batch import Sample
from .source import RowView, ShardSource

MAX_PAIRS = 5  # image-caption pairs concatenated into one sequence [paper]


@dataclass
class Part:
    """Tokens [start, stop) of a row; `loss=False` zeroes its loss mask (prompts)."""

    row: int
    start: int
    stop: int
    loss: bool = True
    role: str = "window"  # window | doc | pair | prompt-goal | prompt-window


def randint(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n): one double draw (Generator.integers costs 30x more per call)."""
    return min(int(rng.random() * n), n - 1)


def other_row_same_task(src: ShardSource, r: int, rng: np.random.Generator) -> int:
    """A uniformly drawn other episode of row r's task (r itself when it is the only one)."""
    rows = src.same_task_rows(r)
    m = len(rows)
    if m <= 1:
        return r
    j = randint(rng, m - 1)
    if j >= int(np.searchsorted(rows, r)):
        j += 1
    return int(rows[j])


def _patch_range(view: RowView, a: int, b: int) -> tuple[int, int]:
    """Patches of the slots in tokens [a, b) (tokenizer_kit's one rule for a span's patches)."""
    return patch_span(view.tokens, a, b, len(view.patches))


def assemble(src: ShardSource, parts: list[Part], task_id: int) -> Sample:
    """Concatenate row slices into one Sample; patches travel with their slots."""
    toks, masks, lpos, patches, ppos = [], [], [], [], []
    for p in parts:
        v = src.row(p.row)
        toks.append(v.tokens[p.start:p.stop])
        m = v.loss_mask[p.start:p.stop]
        masks.append(m if p.loss else np.zeros(len(m), np.uint8))
        lpos.append(v.local_pos[p.start:p.stop])
        p0, p1 = _patch_range(v, p.start, p.stop)
        patches.append(v.patches[p0:p1])
        ppos.append(v.patch_pos[p0:p1])
    if len(parts) == 1:
        return Sample(toks[0], masks[0], lpos[0], patches[0], ppos[0], task_id)
    return Sample(np.concatenate(toks), np.concatenate(masks), np.concatenate(lpos),
                  np.concatenate(patches), np.concatenate(ppos), task_id)


def window_start(step_starts: np.ndarray, n: int, length: int, rng: np.random.Generator) -> int:
    """A uniformly drawn timestep boundary for a window of `length` tokens of an n-token episode.

    Candidates are the boundaries up to the first one at or after n - length, so the episode's end
    can be reached; a shorter episode starts at 0.
    """
    if n <= length or len(step_starts) == 0:
        return 0
    k_max = min(int(np.searchsorted(step_starts, n - length, side="left")), len(step_starts) - 1)
    return int(step_starts[randint(rng, k_max + 1)])


def goal_start(step_starts: np.ndarray, n: int, length: int) -> int:
    """Start of the episode's end: the first boundary leaving at most `length` tokens."""
    if n <= length:
        return 0
    k = int(np.searchsorted(step_starts, n - length, side="left"))
    return int(step_starts[k]) if k < len(step_starts) else n - length


@dataclass
class SampleConfig:
    seq_len: int
    prompt_prob: float = 0.25
    prompt_len: int | None = None

    @property
    def sample_len(self) -> int:
        return self.seq_len + 1  # collate shifts: L inputs, L targets

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_len if self.prompt_len is not None else self.seq_len // 4


def rl_parts(src: ShardSource, r: int, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """A window starting on a timestep boundary, after a prompt from another episode of the task
    for `prompt_prob` of sequences (half the episode's end, half a uniform window)."""
    budget = cfg.sample_len
    parts: list[Part] = []
    if cfg.prompt_prob > 0 and rng.random() < cfg.prompt_prob:
        pr = other_row_same_task(src, r, rng)
        pv = src.row(pr)
        n, P = len(pv.tokens), min(cfg.prompt_tokens, cfg.seq_len)
        if rng.random() < 0.5:
            a, role = goal_start(pv.step_starts, n, P), "prompt-goal"
        else:
            a, role = window_start(pv.step_starts, n, P, rng), "prompt-window"
        b = min(n, a + P)
        parts.append(Part(pr, a, b, loss=False, role=role))
        budget -= b - a
    v = src.row(r)
    n = len(v.tokens)
    a = window_start(v.step_starts, n, budget, rng)
    parts.append(Part(r, a, min(n, a + budget)))
    return parts


def text_parts(src: ShardSource, first: int, take, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """A random crop of a long document, or short documents packed (each ends with end-of-text)."""
    L1 = cfg.sample_len
    n = len(src.row(first).tokens)
    if n >= L1:
        a = randint(rng, n - L1 + 1)
        return [Part(first, a, a + L1, role="doc")]
    parts, total = [Part(first, 0, n, role="doc")], n
    while total < L1:
        r = take()
        if r is None:
            break
        n = len(src.row(r).tokens)
        k = min(n, L1 - total)
        parts.append(Part(r, 0, k, role="doc"))
        total += k
    return parts


def caption_parts(src: ShardSource, first: int, take, rng: np.random.Generator, cfg: SampleConfig) -> list[Part]:
    """Up to 5 image-caption pairs, then randomly cropped to L + 1 tokens when longer (else padded)."""
    L1 = cfg.sample_len
    lens = [len(src.row(first).tokens)]
    rows = [first]
    while len(rows) < MAX_PAIRS and sum(lens) < L1:
        r = take()
        if r is None:
            break
        rows.append(r)
        lens.append(len(src.row(r).tokens))
    total = sum(lens)
    crop = randint(rng, total - L1 + 1) if total > L1 else 0
    end = crop + min(total, L1)
    parts, at = [], 0
    for r, n in zip(rows, lens, strict=True):
        a, b = max(crop - at, 0), min(end - at, n)
        if a < b:
            parts.append(Part(r, a, b, role="pair"))
        at += n
    return parts
