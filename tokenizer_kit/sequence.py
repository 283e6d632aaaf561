"""Episode rows of the shard contract: the field specs, the Row, building an episode, and the
geometry of a built row (patch spans, step lengths, the longest unit).

An episode is assembled without per-token Python: every field becomes a flat id array with a
per-step count, and one vectorised scatter places all fields into the row at once. Text and
image-caption rows are in text_rows.py; episode rows back to values in episode_decode.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import TokenizeError
from .frames import FrameStack
from .images import FIT_POLICIES, fit_grey_frames, image_to_patches, patch_grid, patch_positions, patchify_grey
from .layout import CONTINUOUS, DISCRETE, IMAGE, NO_POSITION, PATCH_BYTES, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout
from .values import continuous_to_tokens, discrete_to_tokens, to_unit_range

KINDS = ("text", "image", "discrete", "continuous")
_GROUP = {"text": 0, "image": 1, "discrete": 2, "continuous": 2}  # text, then images, then tensors
_MODALITY = {"text": TEXT, "image": IMAGE, "discrete": DISCRETE, "continuous": CONTINUOUS}


@dataclass(frozen=True)
class FieldSpec:
    """How one observation or action field is tokenised.

    shape: per-step shape of a tensor field, or (H, W) an image is fitted to (None: each image
    keeps its own fitted size). mu_law: compand a continuous field (observations; not actions).
    frame_stack: an image field whose steps are stacks of grey frames; a row holds one or all of
    each step's frames (tokenizer_kit.frames). loss: text observations are targets unless off.
    repeat_loss: a text observation equal to the previous step's (a BabyAI mission, repeated every
    step) is a target too; by default only its first occurrence is, so a row does not train mostly
    on copying one sentence.
    bounds: a continuous action's declared (low, high) per value (or one pair for all): values are
    rescaled from them to [-1, 1] before binning, and decoded back to them.
    """

    name: str
    kind: str
    shape: tuple[int, ...] | None = None
    mu_law: bool = True
    fit: str = "resize"
    frame_stack: FrameStack | None = None
    loss: bool = True
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # declared (low, high) of an action
    repeat_loss: bool = False  # a text observation repeating the previous step's stays a target

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TokenizeError(f"field {self.name!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.fit not in FIT_POLICIES:
            raise TokenizeError(f"field {self.name!r}: unknown image fit policy {self.fit!r}; "
                                f"expected one of {', '.join(FIT_POLICIES)}")
        if self.shape is not None:
            shape = tuple(int(s) for s in self.shape)
            if any(s < 0 for s in shape) or (self.kind == "image" and (len(shape) != 2 or 0 in shape)):
                what = "an image size (H, W)" if self.kind == "image" else "a shape"
                raise TokenizeError(f"field {self.name!r}: {shape} is not {what}")
            object.__setattr__(self, "shape", shape)
        if self.frame_stack is not None and self.kind != "image":
            raise TokenizeError(f"field {self.name!r}: only image fields hold frame stacks")
        if self.bounds is not None:
            if self.kind != "continuous":
                raise TokenizeError(f"field {self.name!r}: only continuous fields have bounds")
            low, high = (tuple(float(v) for v in np.ravel(b)) for b in self.bounds)
            if len(low) != len(high) or len(low) not in (1, self.size):
                raise TokenizeError(f"field {self.name!r}: bounds of {len(low)} and {len(high)} values for "
                                    f"{self.size} per step")
            object.__setattr__(self, "bounds", (low, high))

    @property
    def size(self) -> int:
        """Tokens per step of a tensor field."""
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def image_size(self) -> tuple[int, int] | None:
        """An image field's (H, W) (two numbers, checked on init); None: each image keeps its size."""
        return (self.shape[0], self.shape[1]) if self.shape else None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind,
                             "shape": list(self.shape) if self.shape is not None else None,
                             "mu_law": self.mu_law, "fit": self.fit}
        if self.frame_stack is not None:  # keys only where used: older manifests read the same
            d["frame_stack"] = self.frame_stack.to_dict()
        if not self.loss:
            d["loss"] = False
        if self.repeat_loss:
            d["repeat_loss"] = True
        if self.bounds is not None:
            d["bounds"] = {"low": list(self.bounds[0]), "high": list(self.bounds[1])}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FieldSpec":
        stack, bounds = d.get("frame_stack"), d.get("bounds")
        return cls(d["name"], d["kind"], tuple(d["shape"]) if d.get("shape") is not None else None,
                   bool(d.get("mu_law", True)), d.get("fit", "resize"),
                   FrameStack.from_dict(stack) if stack is not None else None, bool(d.get("loss", True)),
                   (tuple(bounds["low"]), tuple(bounds["high"])) if bounds is not None else None,
                   bool(d.get("repeat_loss", False)))


def _ordered(fields: Sequence[FieldSpec]) -> tuple[FieldSpec, ...]:
    return tuple(sorted(fields, key=lambda f: (_GROUP[f.kind], f.name)))


@dataclass(frozen=True)
class EpisodeSpec:
    """The observation and action fields of a task, kept in token order (SPEC 4)."""

    observations: tuple[FieldSpec, ...]
    actions: tuple[FieldSpec, ...]
    action_local_pos: bool = False  # give every action token one shared local position

    def __post_init__(self):
        object.__setattr__(self, "observations", _ordered(self.observations))
        object.__setattr__(self, "actions", _ordered(self.actions))
        if any(f.kind == "image" for f in self.actions):
            raise TokenizeError("image actions are not supported")
        stacked = [f.name for f in self.observations if f.frame_stack is not None]
        if len(stacked) > 1:
            raise TokenizeError(f"fields {stacked[0]!r} and {stacked[1]!r} both hold frame stacks: a row could "
                                "not tell their frames apart")
        for group in (self.observations, self.actions):
            names = [f.name for f in group]
            if len(set(names)) != len(names):
                raise TokenizeError(f"duplicate field names in {names}")

    def to_dict(self) -> dict:
        return {"observations": [f.to_dict() for f in self.observations],
                "actions": [f.to_dict() for f in self.actions], "action_local_pos": self.action_local_pos}

    @classmethod
    def from_dict(cls, d: Mapping) -> "EpisodeSpec":
        return cls(tuple(FieldSpec.from_dict(f) for f in d["observations"]),
                   tuple(FieldSpec.from_dict(f) for f in d["actions"]), bool(d.get("action_local_pos", False)))


@dataclass
class Row:
    """One shard row as numpy arrays (SPEC 7 columns, without the per-row scalars)."""

    tokens: np.ndarray  # int32; PATCH_SLOT where an image patch goes
    loss_mask: np.ndarray  # uint8
    local_pos: np.ndarray  # int16
    modality: np.ndarray  # uint8
    step_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32
    patches: np.ndarray = field(default_factory=lambda: np.zeros((0, PATCH_BYTES), np.uint8))  # (N, 768) uint8
    patch_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.uint8))  # (N, 4) uint8

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class _Block:
    counts: np.ndarray  # tokens of this block in each step, int64 (T,)
    ids: np.ndarray  # flat ids, int32
    modality: int
    loss: int | np.ndarray  # one flag for the block, or one per step (uint8, (T,))
    observation: bool
    patches: np.ndarray | None = None  # (N, 768); None for an image block kept as `grid`
    patch_pos: np.ndarray | None = None  # (N, 4); set for every image block
    grid: np.ndarray | None = None  # (T, gh, gw, p, p, 3) view of the images (images.patch_grid)

    def flat_patches(self) -> np.ndarray:
        if self.patches is None:
            assert self.grid is not None  # a block has patches or a grid
            self.patches = np.ascontiguousarray(self.grid).reshape(-1, int(np.prod(self.grid.shape[3:])))
        return self.patches


def _text_block(f: FieldSpec, values, tok, layout: VocabLayout, observation: bool) -> _Block:
    """Text with its end-of-text; a loss target (observation or action) unless the field's loss is off."""
    if tok is None:
        raise TokenizeError(f"field {f.name!r}: text fields need a SentencePiece model (--text-tokenizer)")
    if tok.eos_id != layout.eos_id or tok.vocab_size > layout.text_vocab_size:
        raise TokenizeError(f"field {f.name!r}: the SentencePiece model (vocab {tok.vocab_size}, eos {tok.eos_id}) "
                            f"does not match the layout (T={layout.text_vocab_size}, eos {layout.eos_id})")
    texts = []
    for t, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise TokenizeError(f"field {f.name!r}: step {t} is not UTF-8 text") from None
        if not isinstance(v, str):
            raise TokenizeError(f"field {f.name!r}: step {t} is {type(v).__name__}, expected text")
        texts.append(v)
    ids = tok.encode_batch(texts, add_eos=True)  # eos closes each field: rows decode without side data
    counts = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    loss: int | np.ndarray = int(f.loss)
    if observation and f.loss and not f.repeat_loss and len(texts) > 1:
        # a step whose text repeats the previous step's is context, not a target: the first teaches
        loss = np.fromiter((t == 0 or texts[t] != texts[t - 1] for t in range(len(texts))), np.uint8, len(texts))
    return _Block(counts, flat.astype(np.int32, copy=False), TEXT, loss, observation)


def _frames_block(f: FieldSpec, frames, layout: VocabLayout) -> _Block:
    """(T, k, H, W) grey frames of a stacked field (tokenizer_kit.frames.episode_frames) -> k images a step."""
    x = np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise TokenizeError(f"field {f.name!r}: expected (steps, frames, H, W) uint8 grey frames, got "
                            f"{x.dtype} {x.shape}")
    steps, k = x.shape[:2]
    grey = fit_grey_frames(x.reshape(steps * k, *x.shape[2:]), f.fit, f.image_size, layout.patch_size)
    patches = patchify_grey(grey, layout.patch_size)  # (T*k, N, 768)
    n = patches.shape[1]
    pos = np.broadcast_to(patch_positions(grey.shape[1], grey.shape[2], layout.patch_size, layout.position_bins),
                          (steps * k, n, 4))
    counts = np.full(steps, k * n, dtype=np.int64)
    return _Block(counts, np.full(steps * k * n, PATCH_SLOT, np.int32), IMAGE, 0, True,
                  patches.reshape(-1, patches.shape[-1]), pos.reshape(-1, 4))


def _image_block(f: FieldSpec, values, layout: VocabLayout) -> _Block:
    if f.frame_stack is not None:
        return _frames_block(f, values, layout)
    p = layout.patch_size
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3 and f.shape in (
            None, tuple(arr.shape[1:3])) and arr.shape[1] % p == 0 and arr.shape[2] % p == 0:
        grid = patch_grid(arr, p)  # all steps at once, a view: copied once, into the row
        n = grid.shape[1] * grid.shape[2]
        pos = np.broadcast_to(patch_positions(arr.shape[1], arr.shape[2], p, layout.position_bins),
                              (arr.shape[0], n, 4))
        counts = np.full(arr.shape[0], n, dtype=np.int64)
        return _Block(counts, np.full(int(counts.sum()), PATCH_SLOT, np.int32), IMAGE, 0, True,
                      None, pos.reshape(-1, 4), grid)
    plist, qlist = [], []
    for t, img in enumerate(values):
        try:
            pa, qa = image_to_patches(img, f.fit, f.image_size, p, layout.position_bins, f.name)
        except TokenizeError as e:
            raise TokenizeError(f"step {t}: {e}") from None
        plist.append(pa)
        qlist.append(qa)
    counts = np.fromiter((len(x) for x in plist), dtype=np.int64, count=len(plist))
    return _Block(counts, np.full(int(counts.sum()), PATCH_SLOT, np.int32), IMAGE, 0, True,
                  np.concatenate(plist) if plist else np.zeros((0, layout.patch_values), np.uint8),
                  np.concatenate(qlist) if qlist else np.zeros((0, 4), np.uint8))


def _tensor_block(f: FieldSpec, values, layout: VocabLayout, observation: bool, steps: int) -> _Block:
    try:
        arr = np.asarray(values)
    except ValueError:  # numpy refuses ragged nested lists
        arr = None
    if arr is None or arr.dtype == object:
        raise TokenizeError(f"field {f.name!r}: ragged or non-numeric values")
    arr = arr.reshape(steps, -1) if arr.size or steps == 0 else arr.reshape(steps, 0)
    if f.shape is not None and arr.shape[1] != f.size:
        raise TokenizeError(f"field {f.name!r}: {arr.shape[1]} values per step, expected {f.size} (shape {f.shape})")
    if f.kind == "discrete":
        ids = discrete_to_tokens(arr, layout, f.name)
    else:
        if f.bounds is not None:
            arr = to_unit_range(arr, *f.bounds, field=f.name)
        ids = continuous_to_tokens(arr, layout, f.mu_law and observation, f.name)
    counts = np.full(steps, arr.shape[1], dtype=np.int64)
    return _Block(counts, ids.reshape(-1), _MODALITY[f.kind], 0 if observation else 1, observation)


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), dtype=np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


def build_episode(observations: Mapping, actions: Mapping | None, spec: EpisodeSpec, layout: VocabLayout,
                  text_tokenizer=None) -> Row:
    """Tokenise T steps (each field: an array or list with T entries) into one row.

    `actions=None` builds observations and separators only, as an acting agent needs.
    """
    if not isinstance(observations, Mapping):
        raise TokenizeError(f"observation must be a dict of fields, got {type(observations).__name__}")
    if actions is not None and not isinstance(actions, Mapping):
        raise TokenizeError(f"action must be a dict of fields, got {type(actions).__name__}")
    groups = [(spec.observations, observations, True)]
    if actions is not None:
        groups.append((spec.actions, actions, False))
    steps = None
    for specs, values, is_obs in groups:
        what = "observation" if is_obs else "action"
        missing = [f.name for f in specs if f.name not in values]
        if missing:
            raise TokenizeError(f"{what} field {missing[0]!r} is missing (has {sorted(values)})")
        for f in specs:
            try:
                n = len(values[f.name])
            except TypeError:
                raise TokenizeError(f"{what} field {f.name!r}: expected one entry per step, got "
                                    f"{type(values[f.name]).__name__}") from None
            if steps is None:
                steps = n
            elif n != steps:
                raise TokenizeError(f"episode arrays disagree in length: {what} {f.name!r} has {n} steps, "
                                    f"expected {steps}")
    if not steps:
        raise TokenizeError("empty episode (0 steps)")

    blocks: list[_Block] = []
    for f in spec.observations:
        v = observations[f.name]
        if f.kind == "text":
            blocks.append(_text_block(f, v, text_tokenizer, layout, True))
        elif f.kind == "image":
            blocks.append(_image_block(f, v, layout))
        else:
            blocks.append(_tensor_block(f, v, layout, True, steps))
    blocks.append(_Block(np.ones(steps, np.int64), np.full(steps, layout.separator_id, np.int32), SEPARATOR, 0, False))
    if actions is not None:
        for f in spec.actions:
            v = actions[f.name]
            if f.kind == "text":
                blocks.append(_text_block(f, v, text_tokenizer, layout, False))
            else:
                blocks.append(_tensor_block(f, v, layout, False, steps))
    if all((b.counts == b.counts[0]).all() for b in blocks):
        return _assemble_uniform(blocks, steps, layout, spec.action_local_pos)
    return _assemble(blocks, steps, layout, spec.action_local_pos)


def _assemble_uniform(blocks: list[_Block], steps: int, layout: VocabLayout, action_local_pos: bool) -> Row:
    """Same row as `_assemble` when every block has one token count in all steps (tensor fields,
    same-size images: the usual RL episode). The row is then a (steps, step_len) grid that each
    block fills with one slice assignment, several times faster than scattering by index."""
    widths = [int(b.counts[0]) for b in blocks]
    step_len = sum(widths)
    obs_len = sum(w for b, w in zip(blocks, widths) if b.observation)
    limit = layout.local_positions - (1 if action_local_pos else 0)
    if obs_len > limit:
        raise TokenizeError(f"observation of step 0 has {obs_len} tokens, more than the {limit} local positions")
    tokens = np.empty((steps, step_len), np.int32)
    loss = np.empty((steps, step_len), np.uint8)
    modality = np.empty((steps, step_len), np.uint8)
    local_pos = np.full((steps, step_len), NO_POSITION, np.int16)
    off = 0
    image_blocks = []
    for b, w in zip(blocks, widths):
        cols = slice(off, off + w)
        tokens[:, cols] = b.ids.reshape(steps, w)
        loss[:, cols] = b.loss[:, None] if isinstance(b.loss, np.ndarray) else b.loss
        modality[:, cols] = b.modality
        if b.observation:  # observation blocks come first: their offset in the step is their position
            local_pos[:, cols] = np.arange(off, off + w, dtype=np.int16)
        elif action_local_pos and b.modality != SEPARATOR:
            local_pos[:, cols] = layout.local_positions - 1
        if b.patch_pos is not None:
            image_blocks.append((b, w))
        off += w
    row = Row(tokens.reshape(-1), loss.reshape(-1), local_pos.reshape(-1), modality.reshape(-1),
              np.arange(steps, dtype=np.int32) * np.int32(step_len))
    if image_blocks:  # slot order: step by step, blocks in field order within a step
        patches = np.empty((steps, sum(w for _, w in image_blocks), layout.patch_values), np.uint8)
        at = 0
        for b, w in image_blocks:
            dest = patches[:, at:at + w]
            if b.patches is None:  # patchified straight from the images into the row
                assert b.grid is not None
                into = dest.reshape(b.grid.shape)
                if into.size and not np.shares_memory(into, patches):
                    raise AssertionError("patch destination is not a view")
                into[...] = b.grid
            else:
                dest[...] = b.patches.reshape(steps, w, -1)
            at += w
        row.patches = patches.reshape(-1, layout.patch_values)
        positions = [b.patch_pos.reshape(steps, w, 4) for b, w in image_blocks if b.patch_pos is not None]
        assert len(positions) == len(image_blocks)  # set for every image block
        row.patch_pos = np.concatenate(positions, axis=1).reshape(-1, 4)
    return row


def _assemble(blocks: list[_Block], steps: int, layout: VocabLayout, action_local_pos: bool) -> Row:
    step_len = np.sum([b.counts for b in blocks], axis=0)
    step_starts = _excl_cumsum(step_len)
    total = int(step_len.sum())
    tokens = np.empty(total, np.int32)
    loss = np.empty(total, np.uint8)
    modality = np.empty(total, np.uint8)
    local_pos = np.full(total, NO_POSITION, np.int16)
    obs_len = np.sum([b.counts for b in blocks if b.observation], axis=0) if any(b.observation for b in blocks) else 0
    limit = layout.local_positions - (1 if action_local_pos else 0)
    if np.max(obs_len) > limit:
        t = int(np.argmax(obs_len))
        raise TokenizeError(f"observation of step {t} has {int(np.max(obs_len))} tokens, more than the "
                            f"{limit} local positions")
    offset = np.zeros(steps, np.int64)
    patch_dest, patches, patch_pos = [], [], []
    for b in blocks:
        n = int(b.counts.sum())
        base = np.repeat(step_starts + offset, b.counts)
        within = np.arange(n, dtype=np.int64) - np.repeat(_excl_cumsum(b.counts), b.counts)
        dest = base + within
        tokens[dest] = b.ids
        loss[dest] = np.repeat(b.loss, b.counts) if isinstance(b.loss, np.ndarray) else b.loss
        modality[dest] = b.modality
        if b.observation:
            local_pos[dest] = (np.repeat(offset, b.counts) + within).astype(np.int16)
        elif action_local_pos and b.modality != SEPARATOR:
            local_pos[dest] = layout.local_positions - 1
        if b.patch_pos is not None:
            patch_dest.append(dest)
            patches.append(b.flat_patches())
            patch_pos.append(b.patch_pos)
        offset += b.counts
    row = Row(tokens, loss, local_pos, modality, step_starts.astype(np.int32))
    if patches:
        order = np.argsort(np.concatenate(patch_dest), kind="stable")  # slot order of the row
        row.patches = np.concatenate(patches)[order]
        row.patch_pos = np.concatenate(patch_pos)[order]
    return row


def patch_span(tokens: np.ndarray, start: int, stop: int, num_patches: int | None = None,
               slot: int = PATCH_SLOT) -> tuple[int, int]:
    """[first, last) indices into a row's patches of the image slots among tokens [start, stop).

    Slots before `start` are counted from the shorter side of the row when the row's patch count
    is known (a window near a long row's end costs its tail, not its head). `slot`: the id that
    marks a slot in `tokens` (a lean shard's stored uint16 ids mark it 65535)."""
    tokens = np.asarray(tokens)
    if num_patches == 0:
        return 0, 0
    if num_patches is not None and start > len(tokens) - start:
        first = num_patches - int(np.count_nonzero(tokens[start:] == slot))
    else:
        first = int(np.count_nonzero(tokens[:start] == slot))
    return first, first + int(np.count_nonzero(tokens[start:stop] == slot))


def default_prompt_len(seq_len: int) -> int:
    """Tokens of the demonstration prompt an RL sequence of `seq_len` tokens gets when none is
    asked for: a quarter of it. Training (trainer.sampling), acting and `gato-tokenize inspect`
    (which sequences hold a timestep whole) all ask this, so they agree."""
    return seq_len // 4

