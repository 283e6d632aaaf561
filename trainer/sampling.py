"""How a training sequence is cut from rows: RL windows and prompts, text windows, image-caption
pairs (SPEC 5). Pure functions of a row source and a random generator.

A sample is a list of Parts (token ranges of rows); `assemble` concatenates them, patches
travelling with their slots, so choosing what to read and reading it stay apart.

What an epoch is made of (`EpochUnits`), so that one epoch visits every token:
- text: the directory's token stream (each shard's rows back to back, every document closed by
  end-of-text) cut into windows of L + 1 tokens that overlap by one token, window j of a shard
  holding tokens [j*L, j*L + L + 1). Every token of a shard but its first is a target exactly
  once per epoch, and every token but its last an input exactly once (LitData's TokensLoader and
  llm-foundry's concatenation do the same; a document's cut-off rest opens the next window).
- RL: a row of n tokens gives k = ceil(n / (L + 1)) windows per epoch, each starting on a
  timestep boundary among those a window may start on (up to the first one that reaches the
  row's end). With k = 1 the start is drawn uniformly from all of them; with k > 1 the first
  window starts the row, the last one ends it (its first boundary that reaches the end), and the
  j-th in between starts on a boundary drawn uniformly from the j-th of k equal groups. So every
  epoch holds each row's first and last steps, every start boundary of a short row (k <= 2: all
  but the row's ends) can be drawn, and the windows hold at least n tokens when no prompt shares
  their sequences; middle tokens of long rows are covered in expectation, not surely.
- captions: one unit per row (up to 5 pairs are packed after it, as before).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from schemas.split import epoch_tokens, row_windows, text_windows
from tokenizer_kit.sequence import default_prompt_len, patch_span

from .batch import Sample
from .source import RowView, ShardSource

MAX_PAIRS = 5  # image-caption pairs concatenated into one sequence [paper]


class Uniform(Protocol):
    """What the sampling rules draw from: a numpy Generator, or a stream's pre-drawn uniforms."""

    def random(self) -> float: ...


@dataclass
class Part:
    """Tokens [start, stop) of a row; `loss=False` zeroes its loss mask (prompts)."""

    row: int
    start: int
    stop: int
    loss: bool = True
    role: str = "window"  # window | doc | pair | prompt-goal | prompt-window


def randint(rng: Uniform, n: int) -> int:
    """Uniform integer in [0, n): one double draw (Generator.integers costs 30x more per call)."""
    return min(int(rng.random() * n), n - 1)


def other_row_same_task(src: ShardSource, r: int, rng: Uniform) -> int:
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
    return patch_span(view.tokens, a, b, len(view.patches), view.slot)


def assemble(src: ShardSource, parts: list[Part], task_id: int) -> Sample:
    """Concatenate row slices into one Sample; patches travel with their slots."""
    if len(parts) == 1 and parts[0].loss:  # one window (most RL samples): views of the row, no copy
        p = parts[0]
        v = src.row(p.row)
        p0, p1 = _patch_range(v, p.start, p.stop) if len(v.patches) else (0, 0)
        return Sample(v.ids(p.start, p.stop), v.loss_mask[p.start:p.stop], v.local_pos[p.start:p.stop],
                      v.patches[p0:p1], v.patch_pos[p0:p1], task_id)
    toks, masks, lpos, patches, ppos = [], [], [], [], []
    for p in parts:
        v = src.row(p.row)
        toks.append(v.ids(p.start, p.stop))
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


def window_start(step_starts: np.ndarray, n: int, length: int, rng: Uniform,
                 group: tuple[int, int] = (0, 1)) -> int:
    """A uniformly drawn timestep boundary for a window of `length` tokens of an n-token episode.

    Candidates are the boundaries up to the first one at or after n - length, so the episode's end
    can be reached; a shorter episode starts at 0. `group` (j, k): draw from the j-th of k equal
    consecutive groups of the candidates (an epoch's k windows of a row, spread over it).
    """
    if n <= length or len(step_starts) == 0:
        return 0
    c = min(int(np.searchsorted(step_starts, n - length, side="left")), len(step_starts) - 1) + 1
    j, k = group
    if k > 1 and j in (0, k - 1):  # an epoch's first window opens the row, its last one closes it
        return int(step_starts[0 if j == 0 else c - 1])
    lo, hi = (j * c) // k, ((j + 1) * c) // k
    if hi <= lo:  # more groups than candidates: this group is one candidate
        lo, hi = min(lo, c - 1), min(lo, c - 1) + 1
    return int(step_starts[lo + randint(rng, hi - lo)])


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
        return self.prompt_len if self.prompt_len is not None else default_prompt_len(self.seq_len)


def rl_parts(src: ShardSource, r: int, rng: Uniform, cfg: SampleConfig,
             group: tuple[int, int] = (0, 1)) -> list[Part]:
    """A window starting on a timestep boundary (in group j of k of the candidate boundaries,
    `group` = (j, k)), after a prompt from another episode of the task for `prompt_prob` of
    sequences (half the episode's end, half a uniform window)."""
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
    a = window_start(v.step_starts, n, budget, rng, group)
    parts.append(Part(r, a, min(n, a + budget)))
    return parts


def text_parts(src: ShardSource, unit: int, units: "EpochUnits", seq_len: int) -> list[Part]:
    """Window `unit` of a text directory as row parts (documents back to back, each closed by
    end-of-text): what the fast path (ShardSource.window) slices, spelled out row by row."""
    s, j, _ = units.locate(unit)
    return [Part(r, a, b, role="doc") for r, a, b in src.window_rows(s, j * seq_len, j * seq_len + seq_len + 1)]


def caption_parts(src: ShardSource, first: int, take, rng: Uniform, cfg: SampleConfig) -> list[Part]:
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


# --- what one epoch of a directory is made of ---------------------------------------------------------

@dataclass
class EpochUnits:
    """The units an epoch of one directory is split into (schemas.split deals them to readers).

    kind "window": text windows, numbered shard-major; `cum` = first window of each shard (S + 1).
    kind "row-windows": k[r] windows of RL row r; `cum` = first unit of each row (R + 1).
    kind "row": one unit per row.
    """

    kind: str
    per_shard: list[int]
    cum: np.ndarray
    k: np.ndarray | None = None
    tokens: int = 0  # tokens an epoch's units deliver (window lengths summed)

    def __post_init__(self):
        self._cum_list = self.cum.tolist()

    @property
    def total(self) -> int:
        return int(sum(self.per_shard))

    def locate(self, g: int) -> tuple[int, int, int]:
        """Unit g -> (shard, window, 0) for text windows, (row, j, k) for RL row windows, (row, 0, 1)."""
        if self.kind == "row":
            return g, 0, 1
        i = bisect.bisect_right(self._cum_list, g) - 1
        if self.kind == "window":
            return i, g - self._cum_list[i], 0
        assert self.k is not None  # set for row windows
        return i, g - self._cum_list[i], int(self.k[i])

    def shards_of(self, units: np.ndarray, row_starts: Sequence[int] | np.ndarray) -> np.ndarray:
        """Shard of each unit (for a remote reader's download plan)."""
        units = np.asarray(units, np.int64)
        if self.kind == "window":
            return np.searchsorted(self.cum, units, side="right") - 1
        rows = units if self.kind == "row" else np.searchsorted(self.cum, units, side="right") - 1
        return np.searchsorted(np.asarray(row_starts), rows, side="right") - 1


def epoch_units(src: ShardSource, cfg: SampleConfig) -> EpochUnits:
    """The units of one epoch of `src` for sequences of cfg.seq_len (see the module docstring;
    the counts are schemas.split's rule, which `inspect` reports too)."""
    L = cfg.seq_len
    if src.kind == "text":
        per = text_windows(src.tokens_per_shard, L)
        return EpochUnits("window", per.tolist(), np.concatenate([[0], np.cumsum(per)]).astype(np.int64),
                          tokens=epoch_tokens("text", src.tokens_per_shard, None, L)["tokens"])
    lens = src.row_lengths()
    held = epoch_tokens(src.kind, src.tokens_per_shard, lens, L)["tokens"]
    if src.kind == "rl":
        k = row_windows(lens, L)
        cum = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
        bounds = np.asarray(src.row_starts, np.int64)
        per = (cum[bounds[1:]] - cum[bounds[:-1]]).tolist()
        return EpochUnits("row-windows", per, cum, k, tokens=held)
    return EpochUnits("row", list(src.rows_per_shard), np.zeros(1, np.int64), tokens=held)
