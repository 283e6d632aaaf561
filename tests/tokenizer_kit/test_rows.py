"""Row pieces: slices carry exactly their patches, and the vectorised step lengths match the per-row rule."""

from __future__ import annotations

import numpy as np

from tokenizer_kit.layout import IMAGE, VocabLayout
from tokenizer_kit.rows import concat_rows, empty_row, slice_tokens, step_lengths, step_lengths_of_rows, unit_tokens
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from tokenizer_kit.text_rows import build_caption_row, build_text_row, caption_context, text_token_row

LAYOUT = VocabLayout(text_vocab_size=100, eos_id=2)


def _episode(steps: int):
    spec = EpisodeSpec([FieldSpec("obs", "image", (32, 16)), FieldSpec("obs/x", "continuous", (2,))],
                       [FieldSpec("action", "discrete", (1,))])
    rng = np.random.default_rng(steps)
    obs = {"obs": rng.integers(0, 255, (steps, 32, 16, 3), dtype=np.uint8),
           "obs/x": rng.normal(size=(steps, 2)).astype(np.float32)}
    return build_episode(obs, {"action": rng.integers(0, 5, (steps, 1))}, spec, LAYOUT)


def test_a_slice_holds_the_patches_of_its_slots_and_slices_join_back():
    row = _episode(3)
    cuts = [0, 1, 5, int(row.step_starts[1]) + 1, len(row) - 2, len(row)]
    parts = [slice_tokens(row, a, b) for a, b in zip(cuts, cuts[1:])]
    for p in parts:
        assert len(p.patches) == int(np.count_nonzero(p.tokens < 0)) == len(p.patch_pos)
    joined = concat_rows(parts)
    for name in ("tokens", "loss_mask", "local_pos", "modality", "patches", "patch_pos"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(row, name))
    assert len(concat_rows([])) == 0 == len(empty_row()) and len(slice_tokens(row, 4, 4).patches) == 0


def test_text_token_row_is_the_text_row_without_its_end_of_text():
    row = build_text_row([5, 6, 7], LAYOUT)
    bare = text_token_row([5, 6, 7])
    np.testing.assert_array_equal(row.tokens, np.append(bare.tokens, 2))
    for name in ("loss_mask", "local_pos", "modality"):
        np.testing.assert_array_equal(getattr(row, name)[:3], getattr(bare, name))


def test_step_lengths_of_many_rows_are_each_rows_own():
    rows = [_episode(n) for n in (1, 4, 2)] + [text_token_row([1, 2, 3])]  # a text row has no steps
    want = np.concatenate([step_lengths(r.step_starts, len(r)) for r in rows])
    got = step_lengths_of_rows(np.concatenate([r.step_starts for r in rows]), [len(r.step_starts) for r in rows],
                               [len(r) for r in rows])
    np.testing.assert_array_equal(got, want)
    assert got.sum() == sum(len(r) for r in rows[:3]) and (got > 0).all()
    assert len(step_lengths_of_rows(np.zeros(0, np.int32), [0, 0], [3, 4])) == 0


def test_unit_tokens_is_a_step_a_pair_or_nothing():
    row = _episode(2)
    assert unit_tokens(row) == int(max(row.step_starts[1], len(row) - row.step_starts[1]))
    pair = build_caption_row(np.zeros((16, 32, 3), np.uint8), [5, 6], LAYOUT)
    assert unit_tokens(pair) == len(pair) and unit_tokens(build_text_row([5], LAYOUT)) == 0


def test_a_caption_context_is_the_caption_row_up_to_its_caption():
    image = np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8)
    pair = build_caption_row(image, [5, 6], LAYOUT, "pad")
    ctx = caption_context(image, LAYOUT, "pad")
    n = len(pair.patches)
    assert len(ctx) == n == 6 and (ctx.modality == IMAGE).all() and len(pair) == n + 3  # 2 ids + end-of-text
    for name in ("tokens", "loss_mask", "local_pos", "modality"):
        np.testing.assert_array_equal(getattr(ctx, name), getattr(pair, name)[:n])
    np.testing.assert_array_equal(ctx.patches, pair.patches)
    np.testing.assert_array_equal(ctx.patch_pos, pair.patch_pos)
