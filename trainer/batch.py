"""The training batch: the one contract between the streaming loader and the model."""

from __future__ import annotations

from dataclasses import dataclass, fields

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
