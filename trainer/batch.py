"""The training batch: the one contract between the streaming loader and the model."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from tokenizer_kit.images import eval_positions, normalize_patches
from tokenizer_kit.layout import PATCH_BYTES, PATCH_SLOT


@dataclass
class Batch:
    """B sequences of L positions; targets are already shifted (position i predicts token i+1).

    Image patches are gathered for the whole batch: `patches[k]` goes to flat position
    `patch_index[k]` (= b * L + i) of `tokens`, whose id there is 0 and is ignored.
    """

    tokens: torch.Tensor  # (B, L) int64 input ids
    targets: torch.Tensor  # (B, L) int64 next ids (0 where there is none)
    loss_mask: torch.Tensor  # (B, L) float32: 1 where targets[b, i] is a training target
    attention_mask: torch.Tensor  # (B, L) bool: True for real tokens, False for padding
    local_pos: torch.Tensor  # (B, L) int64 local observation position, -1 for none
    patches: torch.Tensor  # (P, 768) float32, normalised (SPEC 3), HWC order of a 16x16x3 patch
    patch_index: torch.Tensor  # (P,) int64 flat index into B*L
    patch_row: torch.Tensor  # (P,) int64 row position bin in [0, 128)
    patch_col: torch.Tensor  # (P,) int64 column position bin in [0, 128)
    task_id: torch.Tensor  # (B,) int64 index into the loader's task list

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


@dataclass
class Sample:
    """One training sequence before padding: n <= L + 1 tokens (inputs are [:-1], targets [1:]).

    A text window leaves loss_mask and local_pos None: text's constants (loss on every token, no
    local position), never materialised per token."""

    tokens: "np.ndarray"  # (n,) int32 (or uint16), PATCH_SLOT (-1) where an image patch goes
    loss_mask: "np.ndarray | None"  # (n,) uint8; None: 1 on every token
    local_pos: "np.ndarray | None"  # (n,) int16, -1 for none; None: -1 on every token
    patches: "np.ndarray"  # (P,) x 768 uint8, in the order of the -1 slots
    patch_pos: "np.ndarray"  # (P, 4) uint8 row_from, row_to, col_from, col_to
    task_id: int = 0


@dataclass
class CompactBatch:
    """A batch as it crosses the DataLoader worker pipe: ids, masks and positions in their smallest
    types (2 to 5 bytes a position, 2 for text), patches as uint8. `expand` builds the model's
    Batch (int64 inputs and targets, float masks, normalised float patches) in the main process,
    so the 29 bytes a position of a Batch are never pickled."""

    tokens: "np.ndarray"  # (B, L + 1) uint16 or int32 ids, 0 at patch slots and padding
    lengths: "np.ndarray"  # (B,) int32 real tokens of each sequence
    loss_mask: "np.ndarray | None"  # (B, L + 1) uint8, 0 at patch slots; None: 1 on every real token
    local_pos: "np.ndarray | None"  # (B, L + 1) int16; None: -1 everywhere
    patches: "np.ndarray"  # (P, 768) uint8
    patch_index: "np.ndarray"  # (P,) int32 flat index into B * L
    patch_row: "np.ndarray"  # (P,) uint8 position bins drawn (training) or taken (evaluation)
    patch_col: "np.ndarray"  # (P,) uint8
    task_id: "np.ndarray"  # (B,) int32
    noise_index: "np.ndarray"  # (N,) int64 flat input positions replaced by action noise
    noise_value: "np.ndarray"  # (N,) int64 their replacement ids

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self) if getattr(self, f.name) is not None)


@dataclass(frozen=True)
class ActionInputNoise:
    """A share of the continuous action tokens among a batch's inputs, each replaced by another
    continuous action token of the same batch; the targets keep the true actions.

    Why: in a context that holds the past actions, a model learns to predict an action from the
    previous ones (right most of the time in smooth demonstrations) more than from the observation.
    Acting, its own slightly-off actions then lead it further off: the copycat failure of
    behaviour cloning. With some input actions untrustworthy, the observation is the evidence it
    must use. Continuous ids only: they are unambiguous in every layout, while discrete actions
    share ids with text in the gato profile.
    """

    share: float  # of the continuous action tokens among the inputs, in [0, 1)
    lo: int  # continuous value ids [lo, hi)
    hi: int

    def __post_init__(self):
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"action input noise must be in [0, 1), got {self.share}")

    def apply(self, inputs: "np.ndarray", is_target: "np.ndarray", rng: "np.random.Generator") -> "np.ndarray":
        """`inputs` (B, L) with the chosen action tokens replaced; `is_target` marks input tokens
        that are themselves training targets (actions and text, never observations)."""
        where = np.flatnonzero(is_target & (inputs >= self.lo) & (inputs < self.hi))
        if len(where) < 2:
            return inputs
        out = np.array(inputs)
        chosen = where[rng.random(len(where)) < self.share]
        out.flat[chosen] = out.flat[where[rng.integers(len(where), size=len(chosen))]]
        return out


def compact(samples: "list[Sample]", seq_len: int, training: bool = True,
            rng: "np.random.Generator | None" = None, action_noise: "ActionInputNoise | None" = None,
            id_dtype=np.int32) -> CompactBatch:
    """Pad samples to L + 1 positions in the smallest types, pick patch positions, apply action noise.

    Training samples each patch's row/column uniformly inside its interval; evaluation takes
    the rounded mean (SPEC 3); `action_noise` applies in training only. One copy of each sample's
    slices; everything else vectorised over the batch."""

    B, L = len(samples), seq_len
    tokens = np.zeros((B, L + 1), id_dtype)
    lengths = np.fromiter((len(s.tokens) for s in samples), np.int32, B)
    if B and int(lengths.max()) > L + 1:
        raise ValueError(f"sample of {int(lengths.max())} tokens is longer than seq_len + 1 = {L + 1}")
    general = [b for b, s in enumerate(samples) if s.loss_mask is not None or len(s.patches)]
    mask = np.zeros((B, L + 1), np.uint8) if general else None
    local = np.full((B, L + 1), -1, np.int16) if any(s.local_pos is not None for s in samples) else None
    patch_idx, patch_list, pos_list = [], [], []
    for b, s in enumerate(samples):
        tokens[b, :len(s.tokens)] = s.tokens
        if local is not None and s.local_pos is not None:
            local[b, :len(s.tokens)] = s.local_pos
    for b in general:
        assert mask is not None  # made whenever `general` has rows
        s, n = samples[b], int(lengths[b])
        mask[b, :n] = s.loss_mask if s.loss_mask is not None else 1
        if not len(s.patches):  # no patches: no slot may be left either (a min, not a search)
            if n and int(s.tokens.min()) < 0:
                n_slots = int(np.count_nonzero(s.tokens == PATCH_SLOT))
                raise ValueError(f"sample has {n_slots} patch slots but 0 patches")
            continue
        slots = np.flatnonzero(s.tokens == PATCH_SLOT)
        if len(slots) != len(s.patches):
            raise ValueError(f"sample has {len(slots)} patch slots but {len(s.patches)} patches")
        if len(slots):
            tokens[b, slots] = 0
            mask[b, slots] = 0
        keep = int(np.searchsorted(slots, L))  # a patch only in the last (target-only) position is never an input
        patch_idx.append(b * L + slots[:keep])
        patch_list.append(np.asarray(s.patches).reshape(-1, PATCH_BYTES)[:keep])  # a view: one copy below
        pos_list.append(np.asarray(s.patch_pos).reshape(-1, 4)[:keep])
    if mask is not None:  # rows of text windows among general ones: loss on every real token
        for b in set(range(B)) - set(general):
            mask[b, :int(lengths[b])] = 1
    pos = np.concatenate(pos_list).astype(np.int64) if pos_list else np.zeros((0, 4), np.int64)
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        row = pos[:, 0] + (rng.random(len(pos)) * (pos[:, 1] - pos[:, 0])).astype(np.int64) if len(pos) else pos[:, 0]
        col = pos[:, 2] + (rng.random(len(pos)) * (pos[:, 3] - pos[:, 2])).astype(np.int64) if len(pos) else pos[:, 2]
    else:
        row, col = eval_positions(pos[:, 0], pos[:, 1]), eval_positions(pos[:, 2], pos[:, 3])
    noise_index = noise_value = np.zeros(0, np.int64)
    if training and action_noise is not None and action_noise.share > 0 and mask is not None:
        inputs = tokens[:, :L].astype(np.int64)
        assert rng is not None  # drawn above for training
        noisy = action_noise.apply(inputs, mask[:, :L] > 0, rng)
        noise_index = np.flatnonzero(noisy != inputs)
        noise_value = noisy.reshape(-1)[noise_index]
    return CompactBatch(
        tokens=tokens, lengths=lengths, loss_mask=mask, local_pos=local,
        patches=np.concatenate(patch_list) if patch_list else np.zeros((0, PATCH_BYTES), np.uint8),
        patch_index=np.concatenate(patch_idx).astype(np.int32) if patch_idx else np.zeros(0, np.int32),
        patch_row=np.asarray(row, np.uint8), patch_col=np.asarray(col, np.uint8),
        task_id=np.fromiter((s.task_id for s in samples), np.int32, B),
        noise_index=noise_index, noise_value=noise_value)


def expand(cb: CompactBatch) -> Batch:
    """The model's Batch from a CompactBatch: int64 inputs and shifted targets, float loss mask,
    normalised float patches (in the main process: 29 bytes a position never cross a pipe).
    Inputs and targets are views of one int64 buffer; a text batch's local positions (and, for
    full windows, its masks) one broadcast value: the model reads them, nothing writes to them."""

    B, L = cb.tokens.shape[0], cb.tokens.shape[1] - 1
    full = torch.from_numpy(cb.tokens if cb.tokens.dtype == np.int64 else cb.tokens.astype(np.int64))
    full_rows = B > 0 and int(cb.lengths.min()) == L + 1
    if full_rows and cb.loss_mask is None:  # a batch of full text windows: every position counts,
        # one broadcast value each (read-only, as the model and the loop use them)
        attn = torch.ones((1, 1), dtype=torch.bool).expand(B, L)
        mask = torch.ones((1, 1), dtype=torch.float32).expand(B, L)
    else:  # (numpy: single-threaded and cheap at this size; torch's kernels are not, on a busy machine)
        real = (np.ones((B, L), bool) if full_rows else np.arange(L) < (cb.lengths.astype(np.int64) - 1)[:, None])
        m = real.astype(np.float32)
        if cb.loss_mask is not None:
            m *= cb.loss_mask[:, 1:]
        attn, mask = torch.from_numpy(real), torch.from_numpy(m)
    inputs, targets = full[:, :L], full[:, 1:]  # views of one (B, L + 1) buffer: no copy
    if len(cb.noise_index):
        inputs = inputs.clone()
        inputs.view(-1)[torch.from_numpy(cb.noise_index)] = torch.from_numpy(cb.noise_value)
    # text's "no local position" everywhere: one value broadcast (read-only, as the model uses it)
    local = (torch.full((1, 1), -1, dtype=torch.int64).expand(B, L) if cb.local_pos is None
             else torch.from_numpy(cb.local_pos[:, :L].astype(np.int64)))
    return Batch(
        tokens=inputs,
        targets=targets,
        loss_mask=mask,
        attention_mask=attn,
        local_pos=local,
        patches=torch.from_numpy(normalize_patches(cb.patches)),
        patch_index=torch.from_numpy(cb.patch_index.astype(np.int64)),
        patch_row=torch.from_numpy(cb.patch_row.astype(np.int64)),
        patch_col=torch.from_numpy(cb.patch_col.astype(np.int64)),
        task_id=torch.from_numpy(cb.task_id.astype(np.int64)),
    )


def collate(samples: "list[Sample]", seq_len: int, training: bool = True,
            rng: "np.random.Generator | None" = None, action_noise: "ActionInputNoise | None" = None) -> Batch:
    """Pad samples to L positions, shift targets, normalise patches, pick patch positions
    (compact then expand, in one process)."""
    return expand(compact(samples, seq_len, training, rng, action_noise))
