"""Stacked grey frames (Atari's frame stacks) as the grey images a row holds.

An RL image observation with several grey frames in one array is a frame stack: channel-last
(H, W, C) with C not 1 or 3 (the jat-dataset's 84x84x4 RGBA PNGs), or channel-first (C, H, W)
(gymnasium's `FrameStackObservation`, oldest frame first). A row stores either every frame of
every step (`split`, oldest first) or only each step's newest frame (`last`, a quarter of the
tokens for 4 frames). `last` loses nothing exactly when each stack is the previous one shifted by
one frame and the first stack's older frames are padding (zeros, or copies of the first frame);
`auto` checks that per episode. The old frames are never kept without the newest.

A grey frame becomes an RGB image with the grey value in all three channels, so a patch stays
16x16x3 bytes: the shard schema, the patch embedding and every model are unchanged, and a frame
decodes back exactly (any channel of the patch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TokenizeError
from .layout import PATCH_SIZE

MODES = ("auto", "last", "split")
AXES = ("first", "last")  # where the frames are in a step's array: (C, H, W) or (H, W, C)
MIN_SIDE = PATCH_SIZE  # a frame or array smaller than one patch is not an image
MAX_FRAMES = 16


@dataclass(frozen=True)
class FrameStack:
    """How one field stacks its frames: `depth` frames of (height, width) along `axis`."""

    depth: int
    axis: str
    height: int
    width: int

    def __post_init__(self):
        if self.axis not in AXES:
            raise TokenizeError(f"frame stack axis {self.axis!r}: expected one of {', '.join(AXES)}")
        if not 2 <= self.depth <= MAX_FRAMES:
            raise TokenizeError(f"frame stack of {self.depth} frames: expected 2 to {MAX_FRAMES}")

    def to_dict(self) -> dict:
        return {"depth": self.depth, "axis": self.axis, "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameStack":
        return cls(int(d["depth"]), str(d["axis"]), int(d["height"]), int(d["width"]))


def detect(shape: tuple[int, ...] | None, dtype) -> FrameStack | None:
    """The frame stack an integer image observation of this per-step shape is, else None.

    (H, W, C) with C not 1 or 3 and both sides at least a patch; (C, H, W) with C at most
    MAX_FRAMES and smaller than both sides. RGB (H, W, 3) and grey (H, W[, 1]) are plain images.
    """
    if shape is None or len(shape) != 3 or np.dtype(dtype).kind not in "ui":
        return None
    a, b, c = (int(s) for s in shape)
    if c not in (1, 3) and 2 <= c <= MAX_FRAMES and min(a, b) >= MIN_SIDE:
        return FrameStack(c, "last", a, b)
    if 2 <= a <= MAX_FRAMES and a < min(b, c) and min(b, c) >= MIN_SIDE:
        return FrameStack(a, "first", b, c)
    return None


def _steps(values, stack: FrameStack, field: str) -> np.ndarray:
    """A field's T steps as one (T, depth, H, W) uint8 array, oldest frame first."""
    try:
        x = np.asarray(values)
    except ValueError:
        raise TokenizeError(f"field {field!r}: frame stacks of different shapes") from None
    want = (stack.depth, stack.height, stack.width) if stack.axis == "first" else (
        stack.height, stack.width, stack.depth)
    if x.ndim != 4 or x.shape[1:] != want:
        raise TokenizeError(f"field {field!r}: expected frame stacks of shape {want} per step, got "
                            f"{x.shape[1:] if x.ndim else x.shape}")
    if x.dtype != np.uint8:
        if x.dtype.kind not in "ui":
            raise TokenizeError(f"field {field!r}: frame pixels must be integers, got {x.dtype}")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise TokenizeError(f"field {field!r}: frame pixels outside [0, 255]")
        x = x.astype(np.uint8)
    return x if stack.axis == "first" else np.moveaxis(x, 3, 1)


def holds_last(frames: np.ndarray) -> bool:
    """True when the newest frames alone carry every frame of the episode: each stack is the
    previous one shifted by a frame, and the first stack's older frames are padding (all zero,
    or all equal to its newest frame, as gymnasium pads on reset). `frames`: (T, depth, H, W)."""
    first_old = frames[0, :-1]
    padding = not first_old.any() or (first_old == frames[0, -1]).all()
    return bool(padding and np.array_equal(frames[1:, :-1], frames[:-1, 1:]))


def choose(frames: np.ndarray, mode: str) -> str:
    """`last` or `split` for one episode's (T, depth, H, W) frames under `mode`."""
    if mode not in MODES:
        raise TokenizeError(f"unknown frame-stack mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "auto":
        return "last" if holds_last(frames) else "split"
    return mode


def episode_frames(values, stack: FrameStack, mode: str, field: str = "image") -> tuple[np.ndarray, str]:
    """An episode's stacked observations -> ((T, k, H, W) grey frames, the mode taken): k = 1
    (`last`: the newest frame) or depth (`split`: every frame, oldest first)."""
    frames = _steps(values, stack, field)
    taken = choose(frames, mode)
    return (frames[:, -1:] if taken == "last" else frames), taken


def observation_frames(observation, stack: FrameStack, mode: str, field: str = "image") -> np.ndarray:
    """One environment observation (a single stack) -> (k, H, W) grey frames, as a row of an
    episode converted with `mode` (`last` or `split`) holds them for that step."""
    if mode not in ("last", "split"):
        raise TokenizeError(f"acting needs mode last or split, not {mode!r}")
    frames = _steps(np.asarray(observation)[None], stack, field)[0]
    return frames[-1:] if mode == "last" else frames


def acting_mode(taken: dict[str, int]) -> str:
    """The mode an agent should build observations with: the one most training episodes took
    (`taken`: episodes per mode, as recorded in the manifest)."""
    return "split" if taken.get("split", 0) > taken.get("last", 0) else "last"


def grey_to_rgb(frames: np.ndarray) -> np.ndarray:
    """(..., H, W) grey -> (..., H, W, 3): the grey value in every channel."""
    return np.repeat(np.asarray(frames, np.uint8)[..., None], 3, axis=-1)
