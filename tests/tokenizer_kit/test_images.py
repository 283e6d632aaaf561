"""Images (SPEC 3): any mode and size to uint8 16x16 patches in raster order with quantised positions."""

import numpy as np
import pytest
from PIL import Image

from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.images import (eval_positions, fit_image, fitted_size, image_grids, image_to_patches,
                                  normalize_patches, patch_positions, patchify, to_rgb_array, unpatchify)


def gradient(h: int, w: int) -> np.ndarray:
    """An RGB image whose every pixel tells where it is: R = row % 256, G = col % 256, B = 7."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows % 256, cols % 256, np.full_like(rows, 7)], -1).astype(np.uint8)


def test_patch_order_is_raster_for_a_non_square_image():
    img = gradient(32, 48)  # 2 rows x 3 columns of patches
    patches, pos = image_to_patches(img)
    assert patches.shape == (6, 768) and patches.dtype == np.uint8
    for k in range(6):
        r, c = divmod(k, 3)
        p = patches[k].reshape(16, 16, 3)
        assert p[0, 0, 0] == 16 * r and p[0, 0, 1] == 16 * c  # top-left pixel of patch (r, c)
        assert np.array_equal(p, img[16 * r:16 * r + 16, 16 * c:16 * c + 16])
    assert pos.tolist() == [[0, 64, 0, 42], [0, 64, 42, 85], [0, 64, 85, 128],
                            [64, 128, 0, 42], [64, 128, 42, 85], [64, 128, 85, 128]]


def test_positions_are_floor_of_normalised_edges_times_128():
    for h, w in [(16, 16), (32, 48), (48, 16), (16, 160), (208, 96), (16 * 300, 32)]:
        pos = patch_positions(h, w).astype(np.int64)
        gh, gw = h // 16, w // 16
        assert pos.shape == (gh * gw, 4) and pos.dtype == np.int64
        assert pos.min() >= 0 and pos.max() <= 128
        assert (pos[:, 1] > pos[:, 0]).all() and (pos[:, 3] > pos[:, 2]).all()  # each spans >= 1 bin
        r, c = np.divmod(np.arange(gh * gw), gw)
        if gh <= 128:  # no clamping needed: exactly floor(v * 128)
            assert (pos[:, 0] == np.floor(r * 16 / h * 128)).all()
            assert (pos[:, 1] == np.floor((r + 1) * 16 / h * 128)).all()
        if gw <= 128:
            assert (pos[:, 2] == np.floor(c * 16 / w * 128)).all()
            assert (pos[:, 3] == np.floor((c + 1) * 16 / w * 128)).all()
        assert (pos[r == gh - 1, 1] == 128).all() and (pos[c == gw - 1, 3] == 128).all()


def test_more_patches_than_bins_still_span_one_bin_each():
    pos = patch_positions(16 * 300, 16).astype(np.int64)
    assert ((pos[:, 1] - pos[:, 0]) >= 1).all() and pos[:, 1].max() == 128 and pos[:, 0].max() == 127


G = gradient(20, 30)
ALPHA = np.dstack([G, np.full((20, 30), 9, np.uint8)])


@pytest.mark.parametrize("image, expected", [
    (Image.fromarray(G[..., 0], "L"), np.repeat(G[..., :1], 3, 2)),
    (Image.fromarray(G, "RGB"), G),
    (Image.fromarray(ALPHA, "RGBA"), G),
    (G[..., 0], np.repeat(G[..., :1], 3, 2)),
    (G[..., :1], np.repeat(G[..., :1], 3, 2)),
    (G, G),
    (ALPHA, G),
    (G.astype(np.int64), G),
    (G.astype(np.uint16), G),
])
def test_grey_rgb_rgba_pil_and_arrays_become_rgb(image, expected):
    rgb = to_rgb_array(image)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, expected)


def test_palette_images_are_converted():
    rgb = to_rgb_array(Image.fromarray(G).convert("P"))
    assert rgb.shape == (20, 30, 3) and np.abs(rgb.astype(int) - G).max() < 60  # palette quantisation


def test_bool_masks_are_black_and_white():
    rgb = to_rgb_array(np.eye(4, dtype=bool))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("image, reason", [
    (np.zeros((4, 4), np.float32), "float pixels"),
    (np.full((4, 4), 300, np.int32), "outside"),
    (np.zeros((4, 4, 2), np.uint8), "expected an image"),
    (np.zeros((0, 4, 3), np.uint8), "0 pixels"),
    (Image.fromarray(np.full((8, 8), 2.0, np.float32)), "float pixels must lie in"),
])
def test_bad_images_are_one_line_errors_naming_the_field(image, reason):
    with pytest.raises(TokenizeError, match=reason) as e:
        to_rgb_array(image, field="obs/camera")
    assert "'obs/camera'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("h, w, resize, pad", [(16, 16, (16, 16), (16, 16)), (20, 30, (16, 32), (32, 32)),
                                               (24, 40, (32, 48), (32, 48)), (5, 7, (16, 16), (16, 16)),
                                               (100, 200, (96, 208), (112, 208))])
def test_fitted_sizes(h, w, resize, pad):
    assert fitted_size(h, w, "resize") == resize
    assert fitted_size(h, w, "pad") == pad


def test_resize_and_pad_policies():
    img = gradient(20, 30)
    resized = fit_image(img, "resize")
    assert resized.shape == (16, 32, 3)
    padded = fit_image(img, "pad")
    assert padded.shape == (32, 32, 3)
    assert np.array_equal(padded[:20, :30], img) and not padded[20:].any() and not padded[:, 30:].any()
    assert fit_image(gradient(32, 16), "resize") is not None and fit_image(gradient(32, 16)).shape == (32, 16, 3)


def test_forced_size_resizes_or_pads_keeping_aspect():
    img = gradient(20, 30)
    assert fit_image(img, "resize", size=(64, 64)).shape == (64, 64, 3)
    small = fit_image(img, "pad", size=(32, 48))
    assert np.array_equal(small[:20, :30], img) and not small[20:].any()
    big = fit_image(gradient(64, 32), "pad", size=(32, 32))  # too big: scaled to 32x16, then padded
    assert big.shape == (32, 32, 3) and big[:, :16].any() and not big[:, 16:].any()
    with pytest.raises(TokenizeError, match="multiple of the patch size"):
        fit_image(img, size=(20, 32))
    with pytest.raises(TokenizeError, match="unknown image fit policy 'crop'"):
        fit_image(img, "crop")


def test_patchify_is_inverted_by_unpatchify_and_refuses_unfitted_images():
    img = gradient(48, 80)
    assert np.array_equal(unpatchify(patchify(img), (3, 5)), img)
    batch = np.stack([img, img[::-1]])
    assert np.array_equal(patchify(batch)[1], patchify(img[::-1]))  # leading axes are kept
    with pytest.raises(TokenizeError, match="not a multiple"):
        patchify(gradient(20, 32))


def test_image_grids_split_a_row_of_several_images():
    sizes = [(32, 48), (16, 16), (48, 16), (16 * 200, 32), (32, 16 * 140)]
    pos = np.concatenate([patch_positions(h, w) for h, w in sizes])
    grids = image_grids(pos)
    starts = np.cumsum([0] + [(h // 16) * (w // 16) for h, w in sizes])[:-1]
    assert grids == [(int(s), h // 16, w // 16) for s, (h, w) in zip(starts, sizes)]
    assert image_grids(np.zeros((0, 4), np.uint8)) == []


def test_normalisation_is_to_plus_minus_a_quarter():
    p = np.array([0, 255, 51], np.uint8)
    v = normalize_patches(p)
    assert v.dtype == np.float32
    assert np.allclose(v, (p / 255 * 2 - 1) / 4)
    assert v.min() == -0.25 and v.max() == 0.25


def test_eval_positions_are_inside_the_interval():
    lo = np.array([0, 0, 10, 127])
    hi = np.array([1, 128, 12, 128])
    mid = eval_positions(lo, hi)
    assert mid.tolist() == [0, 64, 11, 127]
    assert ((mid >= lo) & (mid < hi)).all()


def test_16_bit_32_bit_and_float_grey_images_are_scaled_by_their_range():
    from tokenizer_kit.images import to_rgb_array
    v = np.array([[0, 1, 128, 129, 257, 32767, 32768, 65535]], np.uint16)
    out = to_rgb_array(Image.fromarray(v))
    assert out.shape == (1, 8, 3)
    assert out[0, :, 0].tolist() == [round(x * 255 / 65535) for x in v[0].tolist()] == [0, 0, 0, 1, 1, 127, 128, 255]
    i32 = Image.fromarray(v.astype(np.int32))
    assert i32.mode == "I" and np.array_equal(to_rgb_array(i32), out)
    f = np.array([[0.0, 0.5, 1.0, 0.25]], np.float32)
    assert to_rgb_array(Image.fromarray(f))[0, :, 1].tolist() == [0, 128, 255, 64]
    with pytest.raises(TokenizeError, match="outside \\[0, 65535\\]"):
        to_rgb_array(Image.fromarray(np.array([[-1, 70000]], np.int32)))
    with pytest.raises(TokenizeError, match="non-finite"):
        to_rgb_array(Image.fromarray(np.array([[np.nan, 0.5]], np.float32)))
