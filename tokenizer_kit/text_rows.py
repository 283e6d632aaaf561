"""Rows of text documents and image-caption pairs (patches, then the caption), and a caption row
back to its images and text."""

from __future__ import annotations

import functools

import numpy as np

from .errors import TokenizeError
from .images import fit_image, image_grids, patch_positions, patchify, to_rgb_array, unpatchify
from .layout import IMAGE, NO_POSITION, PATCH_SLOT, TEXT, VocabLayout
from .rows import slice_tokens
from .sequence import Row


def text_token_row(ids) -> Row:
    """Text ids as row tokens: loss on all, no local position (as text and caption rows hold them)."""
    ids = np.asarray(ids, dtype=np.int32)
    n = len(ids)
    return Row(ids, np.ones(n, np.uint8), np.full(n, NO_POSITION, np.int16), np.full(n, TEXT, np.uint8))


def build_text_row(ids, layout: VocabLayout) -> Row:
    """A document's ids (+ end-of-text when missing); loss on all of it."""
    ids = np.asarray(ids, dtype=np.int32)
    if layout.eos_id >= 0 and (len(ids) == 0 or ids[-1] != layout.eos_id):
        ids = np.append(ids, np.int32(layout.eos_id))
    _check_text_ids(ids, layout)
    return text_token_row(ids)


@functools.lru_cache(maxsize=64)
def _shared_positions(height: int, width: int, patch: int, bins: int) -> np.ndarray:
    """Patch positions of an image size: the same for every image of that size, so made once (read-only)."""
    pos = patch_positions(height, width, patch, bins)
    pos.setflags(write=False)
    return pos


def build_caption_row(image, caption_ids, layout: VocabLayout, policy: str = "resize",
                      size: tuple[int, int] | None = None) -> Row:
    """Image patches, then the caption (+ end-of-text); loss on the caption only.

    Converters call this once per pair, so each column is written once into its final array and
    the patch positions of an image size are shared between rows (read-only)."""
    rgb = fit_image(to_rgb_array(image), policy, size, layout.patch_size)
    patches = patchify(rgb, layout.patch_size)
    ids = np.asarray(caption_ids, dtype=np.int32)
    eos = layout.eos_id >= 0 and (len(ids) == 0 or ids[-1] != layout.eos_id)
    n = len(patches)
    total = n + len(ids) + eos
    tokens = np.empty(total, np.int32)
    tokens[:n] = PATCH_SLOT
    tokens[n:n + len(ids)] = ids
    if eos:
        tokens[-1] = layout.eos_id
    _check_text_ids(tokens[n:], layout)
    loss = np.zeros(total, np.uint8)
    loss[n:] = 1
    modality = np.full(total, TEXT, np.uint8)
    modality[:n] = IMAGE
    return Row(tokens, loss, np.full(total, NO_POSITION, np.int16), modality, patches=patches,
               patch_pos=_shared_positions(rgb.shape[0], rgb.shape[1], layout.patch_size, layout.position_bins))


def caption_context(image, layout: VocabLayout, policy: str = "resize", size: tuple[int, int] | None = None) -> Row:
    """The image part of an image-caption row as the captions converter writes it (the caption
    left off): the context a model captions from."""
    row = build_caption_row(image, np.zeros(0, np.int32), layout, policy, size)
    return slice_tokens(row, 0, len(row.patches))


def _check_text_ids(ids: np.ndarray, layout: VocabLayout) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= layout.text_vocab_size):
        raise TokenizeError(f"text id outside [0, {layout.text_vocab_size})")


def decode_caption(row: Row, layout: VocabLayout, text_tokenizer=None) -> tuple[list[np.ndarray], object]:
    """Row of an image-caption pair -> (images, caption text or ids)."""
    images = [unpatchify(row.patches[s:s + gh * gw], (gh, gw), layout.patch_size)
              for s, gh, gw in image_grids(row.patch_pos, layout.position_bins)]
    ids = row.tokens[row.tokens >= 0]
    ids = ids[ids != layout.eos_id]
    return images, (text_tokenizer.decode(ids) if text_tokenizer is not None else ids)
