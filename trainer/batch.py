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


def collate(samples: "list[Sample]", seq_len: int, training: bool = True,
            rng: "np.random.Generator | None" = None) -> Batch:
    """Pad samples to L positions, shift targets, normalise patches, pick patch positions.

    Training samples each patch's row/column uniformly inside its interval; evaluation takes
    the rounded mean (SPEC 3). Vectorised over the whole batch.
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
    return Batch(
        tokens=torch.from_numpy(tokens[:, :L]),
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
