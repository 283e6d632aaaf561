"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint holds only tensors and plain types (dicts, lists, tuples, str, int, float, bool, None),
so `torch.load(weights_only=True)` can read it. `RUN/checkpoint.pt` is always the latest one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import VocabLayout

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of an unknown version."""


def checkpoint_path(run_dir_or_ckpt: str | os.PathLike) -> Path:
    path = Path(run_dir_or_ckpt)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save under a temporary name in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def read_checkpoint(run_dir_or_ckpt: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint's contents with weights_only=True (no arbitrary unpickling)."""
    path = checkpoint_path(run_dir_or_ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated, foreign or tampered file: one line, no traceback
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not a gato-kit checkpoint of version {CHECKPOINT_VERSION}")
    return state


def load_model(run_dir_or_ckpt: str | os.PathLike, map_location="cpu"):
    """(model in eval mode, its VocabLayout, its GatoConfig) from a run directory or checkpoint file."""
    from .model import GatoConfig, GatoModel

    torch.set_flush_denormal(True)  # CPU inference with denormals can run 10x slower (FACTS.md)
    state = read_checkpoint(run_dir_or_ckpt, map_location)
    config = GatoConfig.from_dict(state["config"])
    model = GatoModel(config)
    model.load_state_dict(state["model"])
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    layout: VocabLayout = config.vocab_layout
    return model, layout, config
