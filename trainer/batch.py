"""The training batch: the one contract between the streaming loader and the model."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


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

    @property
    def num_target_tokens(self) -> int:
        return int(self.loss_mask.sum().item())


@dataclass
class Sample:
    """One training sequence before padding: n <= L + 1 tokens (inputs are [:-1], targets [1:])."""

    tokens: "np.ndarray"  # (n,) int32, PATCH_SLOT (-1) where an image patch goes
    loss_mask: "np.ndarray"  # (n,) uint8
    local_pos: "np.ndarray"  # (n,) int16, -1 for none
    patches: "np.ndarray"  # (P,) x 768 uint8, in the order of the -1 slots
    patch_pos: "np.ndarray"  # (P, 4) uint8 row_from, row_to, col_from, col_to
    task_id: int = 0


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


def collate(samples: "list[Sample]", seq_len: int, training: bool = True,
            rng: "np.random.Generator | None" = None, action_noise: "ActionInputNoise | None" = None) -> Batch:
    """Pad samples to L positions, shift targets, normalise patches, pick patch positions.

    Training samples each patch's row/column uniformly inside its interval; evaluation takes
    the rounded mean (SPEC 3); `action_noise` applies in training only. Vectorised over the whole batch.
    """
    from tokenizer_kit.images import eval_positions, normalize_patches
    from tokenizer_kit.layout import PATCH_BYTES, PATCH_SLOT

    B, L = len(samples), seq_len
    tokens = np.zeros((B, L + 1), np.int64)
    mask = np.zeros((B, L + 1), np.float32)
    local = np.full((B, L + 1), -1, np.int64)
    attn = np.zeros((B, L), bool)
    patch_idx, patch_list, pos_list = [], [], []
    for b, s in enumerate(samples):
        n = len(s.tokens)
        if n > L + 1:
            raise ValueError(f"sample of {n} tokens is longer than seq_len + 1 = {L + 1}")
        tokens[b, :n] = s.tokens
        mask[b, :n] = s.loss_mask
        local[b, :n] = s.local_pos
        attn[b, :max(n - 1, 0)] = True
        slots = np.flatnonzero(s.tokens == PATCH_SLOT)
        if len(slots) != len(s.patches):
            raise ValueError(f"sample has {len(slots)} patch slots but {len(s.patches)} patches")
        keep = int(np.searchsorted(slots, L))  # a patch only in the last (target-only) position is never an input
        patch_idx.append(b * L + slots[:keep])
        patch_list.append(np.asarray(s.patches).reshape(-1, PATCH_BYTES)[:keep])  # a view: one copy below
        pos_list.append(np.asarray(s.patch_pos).reshape(-1, 4)[:keep])
    slot = tokens == PATCH_SLOT
    mask[slot] = 0.0
    tokens[slot] = 0
    pos = np.concatenate(pos_list).astype(np.int64) if pos_list else np.zeros((0, 4), np.int64)
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        row = pos[:, 0] + (rng.random(len(pos)) * (pos[:, 1] - pos[:, 0])).astype(np.int64)
        col = pos[:, 2] + (rng.random(len(pos)) * (pos[:, 3] - pos[:, 2])).astype(np.int64)
    else:
        row, col = eval_positions(pos[:, 0], pos[:, 1]), eval_positions(pos[:, 2], pos[:, 3])
    patches = np.concatenate(patch_list) if patch_list else np.zeros((0, PATCH_BYTES), np.uint8)
    inputs = tokens[:, :L]
    if training and action_noise is not None and action_noise.share > 0:
        inputs = action_noise.apply(inputs, mask[:, :L] > 0, rng)
    return Batch(
        tokens=torch.from_numpy(inputs),
        targets=torch.from_numpy(tokens[:, 1:]),
        loss_mask=torch.from_numpy(mask[:, 1:] * attn),
        attention_mask=torch.from_numpy(attn),
        local_pos=torch.from_numpy(local[:, :L]),
        patches=torch.from_numpy(normalize_patches(patches)),
        patch_index=torch.from_numpy(np.concatenate(patch_idx).astype(np.int64) if patch_idx else np.zeros(0, np.int64)),
        patch_row=torch.from_numpy(row.astype(np.int64)),
        patch_col=torch.from_numpy(col.astype(np.int64)),
        task_id=torch.tensor([s.task_id for s in samples], dtype=torch.int64),
    )
