"""Episode rows back to values: a whole episode (inspect), a step's action ids (acting); and an
environment step's observation made into what `build_episode` takes, as the converter made it."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import TokenizeError
from .frames import detect, observation_frames
from .images import image_grids, patch_count, unpatchify
from .layout import PATCH_SLOT, VocabLayout
from .sequence import EpisodeSpec, FieldSpec, Row
from .values import from_unit_range, tokens_to_continuous, tokens_to_discrete


def _take_frames(f: FieldSpec, row: Row, pos: int, patch_i: int, layout: VocabLayout,
                 grids: dict[int, tuple[int, int]], frames: int):
    """`frames` grey frames of a stacked field -> ((frames, H, W) uint8, next pos, next patch)."""
    out = []
    for _ in range(frames):
        if patch_i not in grids:
            raise TokenizeError(f"field {f.name!r}: no frame starts at patch {patch_i}")
        gh, gw = grids[patch_i]
        n = gh * gw
        out.append(unpatchify(row.patches[patch_i:patch_i + n], (gh, gw), layout.patch_size)[..., 0])
        pos, patch_i = pos + n, patch_i + n
    return np.stack(out), pos, patch_i


def frames_in_step(spec: EpisodeSpec, field: FieldSpec, observation_patches: int, layout: VocabLayout) -> int:
    """How many frames of the stacked `field` a step with `observation_patches` patches holds:
    1 (`last`) or the stack's depth (`split`); the other image fields must have a fixed size."""
    per_frame = _patches_of(field, layout)
    others = 0
    for g in spec.observations:
        if g.kind == "image" and g is not field:
            if g.shape is None or g.frame_stack is not None:
                raise TokenizeError(f"field {field.name!r}: cannot tell its frames from those of {g.name!r}")
            others += _patches_of(g, layout)
    k, rest = divmod(observation_patches - others, per_frame)
    depth = field.frame_stack.depth if field.frame_stack is not None else 1
    if rest or k not in (1, depth):
        raise TokenizeError(f"field {field.name!r}: {observation_patches} patches in a step are neither 1 nor "
                            f"{depth} frames")
    return k


def _patches_of(f: FieldSpec, layout: VocabLayout) -> int:
    if f.shape is None:
        raise TokenizeError(f"field {f.name!r}: frames of no fixed size")
    return patch_count(f.shape[0], f.shape[1], layout.patch_size)


def _take_field(f: FieldSpec, row: Row, pos: int, patch_i: int, layout: VocabLayout, tok, is_obs: bool,
                grids: dict[int, tuple[int, int]], frames: int = 1):
    """Decode one field starting at token `pos`; return (value, next pos, next patch index).
    A stacked image field decodes to its `frames` grey frames, (frames, H, W)."""
    if f.kind == "text":
        ends = np.flatnonzero(row.tokens[pos:] == layout.eos_id) if layout.eos_id >= 0 else np.zeros(0, np.int64)
        if len(ends) == 0:
            raise TokenizeError(f"field {f.name!r}: no end-of-text after token {pos}")
        end = pos + int(ends[0])
        ids = row.tokens[pos:end]
        value = tok.decode(ids) if tok is not None else ids.copy()
        return value, end + 1, patch_i
    if f.kind == "image" and f.frame_stack is not None:
        return _take_frames(f, row, pos, patch_i, layout, grids, frames)
    if f.kind == "image":
        if patch_i not in grids:
            raise TokenizeError(f"field {f.name!r}: no image starts at patch {patch_i}")
        gh, gw = grids[patch_i]
        n = gh * gw
        return unpatchify(row.patches[patch_i:patch_i + n], (gh, gw), layout.patch_size), pos + n, patch_i + n
    n = f.size
    ids = row.tokens[pos:pos + n]
    if len(ids) != n:
        raise TokenizeError(f"field {f.name!r}: row ends inside the field (token {pos}, {n} expected)")
    try:
        if f.kind == "discrete":
            value = tokens_to_discrete(ids, layout)
        else:
            value = tokens_to_continuous(ids, layout, f.mu_law and is_obs)
            if f.bounds is not None:
                value = from_unit_range(value, *f.bounds)
    except TokenizeError as e:
        raise TokenizeError(f"field {f.name!r} at token {pos}: {e} (is this the row's episode spec?)") from None
    return value.reshape(f.shape or ()), pos + n, patch_i


def decode_episode(row: Row, spec: EpisodeSpec, layout: VocabLayout, text_tokenizer=None) -> list[tuple[dict, dict]]:
    """Row -> [(observation dict, action dict) per step]; values de-quantised to bin centres.

    The inverse of `build_episode` up to quantisation (for inspection and tests, not the hot path).
    A stacked image field decodes to the (k, H, W) grey frames the step holds (k = 1 or depth).
    Steps without action tokens (as built with `actions=None`) decode to an empty action dict.
    """
    grids = {s: (gh, gw) for s, gh, gw in image_grids(row.patch_pos, layout.position_bins)}
    stacked = [f for f in spec.observations if f.frame_stack is not None]
    if len(stacked) > 1:
        raise TokenizeError(f"fields {stacked[0].name!r} and {stacked[1].name!r} both hold frame stacks: a row "
                            "cannot tell their frames apart")
    steps = []
    patch_i = 0
    bounds = [int(b) for b in row.step_starts] + [len(row.tokens)]
    for t in range(len(row.step_starts)):
        pos = bounds[t]
        obs, act = {}, {}
        try:
            frames = 1
            if stacked:
                end = bounds[t + 1]
                seps = np.flatnonzero(row.tokens[pos:end] == layout.separator_id)
                obs_end = pos + int(seps[0]) if len(seps) else end
                frames = frames_in_step(spec, stacked[0], int(np.count_nonzero(row.tokens[pos:obs_end] == PATCH_SLOT)),
                                        layout)
            for f in spec.observations:
                obs[f.name], pos, patch_i = _take_field(f, row, pos, patch_i, layout, text_tokenizer, True, grids,
                                                        frames)
            if pos >= bounds[t + 1] or row.tokens[pos] != layout.separator_id:
                found = f"id {int(row.tokens[pos])}" if pos < len(row.tokens) else "the end of the row"
                raise TokenizeError(f"expected the separator at token {pos}, found {found}")
            pos += 1
            if pos < bounds[t + 1]:
                for f in spec.actions:
                    act[f.name], pos, patch_i = _take_field(f, row, pos, patch_i, layout, text_tokenizer, False,
                                                            grids)
        except TokenizeError as e:
            raise TokenizeError(f"step {t}: {e}") from None
        if pos != bounds[t + 1]:
            raise TokenizeError(f"step {t}: fields end at token {pos}, the step at {bounds[t + 1]}")
        steps.append((obs, act))
    return steps


def decode_actions(ids, spec: EpisodeSpec, layout: VocabLayout) -> dict[str, np.ndarray]:
    """One step's action ids (in token order) -> field values, in the units the source declared
    (rescaled actions mapped back from [-1, 1] to their bounds): what an environment takes."""
    ids = np.asarray(ids)
    out, pos = {}, 0
    for f in spec.actions:
        part = ids[pos:pos + f.size]
        pos += f.size
        if f.kind == "discrete":
            value = tokens_to_discrete(part, layout)
        elif f.kind == "continuous":
            value = tokens_to_continuous(part, layout, mu_law=False)  # actions are never companded (SPEC 2)
            if f.bounds is not None:
                value = from_unit_range(value, *f.bounds)
        else:
            raise TokenizeError(f"action field {f.name!r} of kind {f.kind!r} cannot be decoded from ids alone")
        out[f.name] = value.reshape(f.shape or ())
    return out


def _stack_as_given(obs: np.ndarray, recorded):
    """The recorded stack in the layout the environment gives it: data stacked channel-last (the
    jat-dataset's (84, 84, 4)) is acted on in gymnasium's channel-first (4, 84, 84) and back; the
    frames, and so the tokens, are the same."""

    found = detect(obs.shape, obs.dtype)
    same = found is not None and (found.depth, found.height, found.width) == \
        (recorded.depth, recorded.height, recorded.width)
    return found if same else recorded


def acting_observation(fields: Mapping, spec: EpisodeSpec, frame_modes: Mapping[str, str] | None = None) -> dict:
    """One environment step's observation fields (each with a leading step axis of 1) made into
    what `build_episode` takes, as the converter made them: a frame stack becomes the (1, k, H, W)
    grey frames of `frame_modes[field]` (`last` or `split`; default last, see frames.acting_mode),
    whichever side the environment stacks its frames on."""
    out = dict(fields)
    for f in spec.observations:
        if f.frame_stack is not None:
            mode = (frame_modes or {}).get(f.name, "last")
            obs = np.asarray(fields[f.name])[0]
            out[f.name] = observation_frames(obs, _stack_as_given(obs, f.frame_stack), mode, f.name)[None]
    return out
