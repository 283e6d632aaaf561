"""Checkpoints: written atomically, read without unpickling arbitrary objects, checked before use.

A checkpoint holds only tensors and plain types (dicts, lists, tuples, str, int, float, bool, None),
so `torch.load(weights_only=True)` can read it. `RUN/checkpoint.pt` is always the latest one.

Reading checks, in order, before anything is built from it: the zip container's CRC32 of every
member (a flipped byte anywhere is found before unpickling), the sha256 of the contents that the
writer stored in the checkpoint itself (`sha256`: tensors byte for byte and every plain value), and
the model config (types, ranges, the shapes of the weights it implies against those in the file,
and the memory they take), so a tampered `d_model` never allocates gigabytes first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import zipfile
from pathlib import Path

import torch

from tokenizer_kit.errors import LONG_LINE, first_line
from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import VocabLayout

from .model import GatoConfig, GatoModel

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
DIGEST_KEY = "sha256"
# Ranges a config value may take; beyond them a checkpoint is refused as damaged or foreign.
CONFIG_RANGES = {"n_layer": (1, 1024), "d_model": (2, 1 << 16), "n_head": (1, 1024), "d_ff": (1, 1 << 18),
                 "patch_channels": (1, 4096), "patch_groups": (1, 4096), "seq_len": (1, 1 << 24)}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged or of an unknown version."""


def checkpoint_path(run_dir_or_ckpt: str | os.PathLike) -> Path:
    path = Path(run_dir_or_ckpt)
    return path / CHECKPOINT_NAME if path.is_dir() else path


# --- contents digest ---------------------------------------------------------------------------

def _update(h, value) -> None:
    """Feed a checkpoint value to the hash: type tags keep `[1]` and `(1,)` or `"1"` and `1` apart."""
    if isinstance(value, torch.Tensor):
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            # an expanded view (stride 0): a small file whose contiguous copy would take gigabytes
            raise CheckpointError(f"a tensor of shape {tuple(value.shape)} is backed by only "
                                  f"{value.untyped_storage().nbytes()} bytes (overlapping memory)")
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _update(h, k)
            _update(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for v in value:
            _update(h, v)
    else:
        h.update(f"V{type(value).__name__}:{value!r};".encode())


def contents_digest(state: dict) -> str:
    """sha256 of everything in a checkpoint but the digest itself."""
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save (with the contents' sha256) under a temporary name beside `path`, fsync, rename."""
    path = Path(path)
    state = {**state, DIGEST_KEY: contents_digest(state)}
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as e:  # torch's writer turns a full disk (ENOSPC) into RuntimeError
        raise CheckpointError(f"{path}: cannot write the checkpoint ({first_line(e, LONG_LINE)})") from None
    return path


# --- reading -----------------------------------------------------------------------------------

def _check_container(path: Path) -> None:
    """Every member's CRC32 (torch writes a zip): damage is found before anything is unpickled."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({first_line(e, LONG_LINE)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint (member {bad!r} fails its CRC32 check)")


def _load_refusal(path: Path, e: BaseException) -> CheckpointError:
    """torch's message without its advice to load with weights_only=False (which runs any code)."""
    text = str(e)
    if "Weights only load failed" in text or "weights_only" in text:
        detail = next((ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in text.splitlines()
                       if "WeightsUnpickler error:" in ln), "")
        return CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values, which "
                               f"could run code when loaded{f' ({detail[:160]})' if detail else ''}")
    return CheckpointError(f"{path}: unreadable checkpoint ({first_line(e, LONG_LINE)})")


def read_checkpoint(run_dir_or_ckpt: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check a checkpoint's contents (weights_only=True: no arbitrary unpickling)."""
    path = checkpoint_path(run_dir_or_ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint (0 bytes)")
    _check_container(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated, foreign or tampered file: one line, no traceback
        raise _load_refusal(path, e) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not a gato-kit checkpoint of version {CHECKPOINT_VERSION}")
    stored = state.get(DIGEST_KEY)
    try:
        digest = contents_digest(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: refused: {e}") from None
    if stored is not None and stored != digest:
        raise CheckpointError(f"{path}: damaged checkpoint (its contents do not match their sha256)")
    if "config" in state:
        check_config(state["config"], state.get("model"), path)
    return state


# --- the model config --------------------------------------------------------------------------

def check_config(config, weights: dict | None, path: str | os.PathLike = "checkpoint") -> None:
    """Types and ranges of a saved model config, then (with `weights`) the shapes the config implies
    against those saved, on the meta device: nothing is allocated for a config that does not fit."""

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: field 'config' is {type(config).__name__}, expected a dict")
    fields = {f.name: f for f in dataclasses.fields(GatoConfig)}
    for name, value in config.items():
        f = fields.get(name)
        if f is None:
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        want = {"int": int, "float": float, "str": str, "dict": dict}.get(type_name, object)
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise CheckpointError(f"{path}: config field {name!r} is {value!r}, expected {want.__name__}")
        lo, hi = CONFIG_RANGES.get(name, (None, None))
        if lo is not None and not lo <= value <= hi:
            raise CheckpointError(f"{path}: config field {name!r} is {value}, outside [{lo}, {hi}]")
    try:
        cfg = GatoConfig.from_dict(config)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in GatoModel(cfg).state_dict().items()}
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # RuntimeError: torch refusing a value
        raise CheckpointError(f"{path}: bad model config ({first_line(e, LONG_LINE)})") from None
    if weights is None:
        return
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: field 'model' is {type(weights).__name__}, expected a state dict")
    for name, shape in shapes.items():
        have = weights.get(name)
        if not isinstance(have, torch.Tensor) or tuple(have.shape) != shape:
            found = tuple(have.shape) if isinstance(have, torch.Tensor) else "missing"
            raise CheckpointError(f"{path}: config does not match the weights: {name!r} is {found} in the file, "
                                  f"the config makes {shape}")
    params = sum(math.prod(s) for s in shapes.values())
    limit = _memory_bytes()
    if limit and params * 4 > limit:  # fp32 weights alone (training needs about 4x that)
        raise CheckpointError(f"{path}: the model has {params:,} parameters, {params * 4 / 2**30:.1f} GiB of "
                              f"weights, more than this machine's {limit / 2**30:.1f} GiB of memory")


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def load_model(run_dir_or_ckpt: str | os.PathLike, map_location="cpu"):
    """(model in eval mode, its VocabLayout, its GatoConfig) from a run directory or checkpoint file."""

    # tiny weights and activations turn denormal on CPU, and denormal arithmetic can run ~10x slower
    torch.set_flush_denormal(True)
    state = read_checkpoint(run_dir_or_ckpt, map_location)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint_path(run_dir_or_ckpt)}: checkpoint has no model config or weights")
    config = GatoConfig.from_dict(state["config"])
    model = GatoModel(config)
    model.load_state_dict(state["model"])
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    layout: VocabLayout = config.vocab_layout
    return model, layout, config


# --- the checkpoints of a run: the latest, step copies, the best ------------------------------------

STEP_DIR = "checkpoints"
BEST_NAME = "best.pt"


def step_copy_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / STEP_DIR / f"step-{step:08d}.pt"


def step_copies(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of RUN/checkpoints/step-N.pt, oldest first (names not of that form are ignored)."""
    found = []
    for p in (Path(run_dir) / STEP_DIR).glob("step-*.pt"):
        digits = p.name[5:-3]
        if digits.isdigit():
            found.append((int(digits), p))
    return sorted(found)


def link_or_copy(src: Path, dest: Path) -> Path:
    """`dest` names the bytes of `src` (a hard link: no second copy on disk; a copy where links are not
    possible), replacing any earlier `dest` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, fsync=False) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
                    shutil.copyfile(src, tmp)
    return dest


def keep_step_copy(run_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Add the step copy of RUN/checkpoint.pt, then remove all but the newest `keep_last` (0: keep all)."""
    path = link_or_copy(Path(run_dir) / CHECKPOINT_NAME, step_copy_path(run_dir, step))
    if keep_last:
        for _, old in step_copies(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The checkpoint a resume continues from: RUN/checkpoint.pt (written before its step copy, so never
    older than one), else, when it is missing or fails its checks, the newest step copy that reads back
    whole (the reason for passing over each is printed). None for a new run; when nothing reads, the
    first error is raised."""

    run_dir = Path(run_dir)
    paths = [run_dir / CHECKPOINT_NAME] + [p for _, p in reversed(step_copies(run_dir))]
    paths = [p for p in paths if p.is_file()]
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            state = read_checkpoint(path)
        except CheckpointError as e:
            errors.append(e)
            continue
        for err in errors:
            print(f"gato-train: passing over {err}; resuming from {path}", file=sys.stderr)
        return path, state
    if errors:
        raise errors[0]
    return None
