"""Caption converter: real inputs in every supported format, checked row by row through the inverse."""

from __future__ import annotations

import argparse
import csv
import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from converters.base import SourceError
from converters.captions.converter import CaptionConverter, make_converter
from converters.captions.options import CaptionOptions
from tokenizer_kit.argtypes import image_size_or_native as parse_image_size
from tokenizer_kit.options import parse
from tokenizer_kit.images import MAX_PIXELS, fit_image, patch_positions
from tokenizer_kit.layout import IMAGE, TEXT
from tokenizer_kit.text_rows import decode_caption

SIZE = (32, 48)  # H, W: 2x3 patches keeps tests fast


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth synthetic photo (gradients + a disc), so JPEG round trips stay close."""
    y, x = np.mgrid[0:h, 0:w]
    r = np.random.default_rng(seed)
    cy, cx, rad = r.integers(0, h), r.integers(0, w), r.integers(5, 20)
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, r.integers(0, 255))], -1)
    img[(y - cy) ** 2 + (x - cx) ** 2 < rad ** 2] = r.integers(0, 255, 3)
    return img.astype(np.uint8)


def encode(img: np.ndarray, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, fmt, **kw)
    return b.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (its pixel data is absent)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def expected_resized(data: bytes, size=SIZE) -> np.ndarray:
    return fit_image(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), "resize", size)


def conv(inputs, tok, **kw) -> CaptionConverter:
    kw.setdefault("image_size", SIZE)
    return CaptionConverter([str(p) for p in inputs], tok, tok.layout(), **kw)


def run_all(c: CaptionConverter):
    return [r for u in c.work_units() for r in c.convert_unit(u)]


def check_row(rec, tok, caption: str, image: np.ndarray | None, size=SIZE):
    """Row = patches of `size` then caption + eos; loss on the caption only; inverse gives the input."""
    assert rec.skip_reason is None and rec.row is not None
    row, layout = rec.row, tok.layout()
    n = (size[0] // 16) * (size[1] // 16)
    assert (row.tokens[:n] == -1).all() and (row.modality[:n] == IMAGE).all() and (row.loss_mask[:n] == 0).all()
    assert (row.modality[n:] == TEXT).all() and (row.loss_mask[n:] == 1).all() and row.tokens[-1] == layout.eos_id
    assert np.array_equal(row.patch_pos, patch_positions(*size))
    images, text = decode_caption(row, layout, tok)
    assert text == caption
    assert len(images) == 1 and images[0].shape == size + (3,)
    if image is not None:
        assert np.array_equal(images[0], image)
    return images[0]


def write_tar(path, samples):
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return path


# --- good inputs -------------------------------------------------------------------------------

def test_tar_png_jpeg_webp_txt_and_json_captions(tmp_path, text_tokenizer):
    imgs = [photo(40 + 8 * i, 60, i) for i in range(4)]
    pngs = [encode(im, "PNG") for im in imgs]
    jpg, webp = encode(imgs[2], "JPEG", quality=95), encode(imgs[3], "WEBP", lossless=True)
    tar = write_tar(tmp_path / "00000.tar", [
        {"__key__": "k0", "png": pngs[0], "txt": "the robot arm grasps a cube\n"},
        {"__key__": "k1", "png": pngs[1], "json": json.dumps({"caption": "a red ball", "url": "x"}).encode()},
        {"__key__": "k2", "jpg": jpg, "txt": "coffee on a table"},
        {"__key__": "k3", "webp": webp, "txt": "the cat is very small"}])
    c = conv([tar], text_tokenizer)
    assert [u.key for u in c.work_units()] == ["00000.tar"]
    recs = run_all(c)
    assert [r.source_id for r in recs] == ["00000.tar/k0", "00000.tar/k1", "00000.tar/k2", "00000.tar/k3"]
    check_row(recs[0], text_tokenizer, "the robot arm grasps a cube", expected_resized(pngs[0]))
    check_row(recs[1], text_tokenizer, "a red ball", expected_resized(pngs[1]))
    got = check_row(recs[2], text_tokenizer, "coffee on a table", None)
    assert np.abs(got.astype(int) - expected_resized(jpg).astype(int)).mean() < 4  # JPEG: close, not equal
    check_row(recs[3], text_tokenizer, "the cat is very small", expected_resized(webp))


def test_jpeg_draft_decodes_large_images_at_reduced_scale_close_to_full_decode(tmp_path, text_tokenizer):
    big = np.asarray(Image.fromarray(photo(64, 64, 7)).resize((512, 512), Image.BILINEAR))
    jpg = encode(big, "JPEG", quality=95)
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "big", "jpg": jpg, "txt": "a large image"}])
    got = check_row(run_all(conv([tar], text_tokenizer))[0], text_tokenizer, "a large image", None)
    full = expected_resized(jpg)
    assert np.abs(got.astype(int) - full.astype(int)).mean() < 6


def test_jpeg_decodes_at_dct_scale_for_exact_fit_and_falls_back_to_pillow(tmp_path, text_tokenizer):
    """64x96 -> 32x48 is libjpeg-turbo's 1/2 scale (no resize), 64x64 -> 48x48 its 3/4: both close
    to a Lanczos reference of the full decode; grey and CMYK JPEGs (CMYK goes through Pillow) too."""
    from converters.captions import decode as captions
    if captions.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    base = np.asarray(Image.fromarray(photo(16, 24, 4)).resize((96, 64), Image.BICUBIC))
    square = np.asarray(Image.fromarray(photo(16, 16, 5)).resize((64, 64), Image.BICUBIC))
    grey = np.asarray(Image.fromarray(base).convert("L"))
    b = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(b, "JPEG", quality=95)
    samples = {"rgb": encode(base, "JPEG", quality=95), "grey": encode(grey, "JPEG", quality=95),
               "cmyk": b.getvalue()}
    tar = write_tar(tmp_path / "a.tar", [{"__key__": k, "jpg": v, "txt": k} for k, v in samples.items()])
    recs = run_all(conv([tar], text_tokenizer))
    for rec, (key, data) in zip(recs, samples.items()):
        got = check_row(rec, text_tokenizer, key, None)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((48, 32), Image.LANCZOS)).astype(int)
        assert np.abs(got.astype(int) - ref).mean() < 4, key
        if key == "grey":
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    sq = encode(square, "JPEG", quality=95)
    tar2 = write_tar(tmp_path / "b.tar", [{"__key__": "sq", "jpg": sq, "txt": "square"}])
    got = check_row(run_all(conv([tar2], text_tokenizer, image_size=(48, 48)))[0], text_tokenizer, "square", None,
                    (48, 48))
    assert np.array_equal(got, captions.simplejpeg.decode_jpeg(sq, "RGB", min_height=48, min_width=48))  # 3/4 scale
    ref = np.asarray(Image.open(io.BytesIO(sq)).convert("RGB").resize((48, 48), Image.LANCZOS)).astype(int)
    assert np.abs(got.astype(int) - ref).mean() < 3


def test_caption_ids_outside_the_layout_name_the_record(tmp_path, text_tokenizer):
    from tokenizer_kit.layout import VocabLayout
    ids = text_tokenizer.encode("zebra quartz")
    small = VocabLayout(int(ids.max()), eos_id=text_tokenizer.eos_id)  # the largest id no longer fits
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "ok", "png": encode(photo(32, 48, 1), "PNG"), "txt": "a"},
                                         {"__key__": "big", "png": encode(photo(32, 48, 2), "PNG"),
                                          "txt": "zebra quartz"}])
    recs = run_all(CaptionConverter([str(tar)], text_tokenizer, small, image_size=SIZE))
    assert recs[0].row is not None
    assert recs[1].skip_reason == f"{tar}: record 'big': field 'txt': text id outside [0, {int(ids.max())})"


def test_fit_pad_keeps_aspect_and_zero_pads_bottom_right(tmp_path, text_tokenizer):
    img = photo(16, 48, 1)  # half the height of 32x48: no scaling, 16 rows of padding
    small = photo(8, 12, 2)  # scaled x4 to 32x48: no padding
    pngs = [encode(img, "PNG"), encode(small, "PNG")]
    tar = write_tar(tmp_path / "a.tar", [{"__key__": f"k{i}", "png": p, "txt": "pad me"} for i, p in enumerate(pngs)])
    recs = run_all(conv([tar], text_tokenizer, fit="pad"))
    want = np.zeros(SIZE + (3,), np.uint8)
    want[:16] = img
    check_row(recs[0], text_tokenizer, "pad me", want)
    check_row(recs[1], text_tokenizer, "pad me", expected_resized(pngs[1]))
    wide = photo(20, 60, 3)  # scaled by 0.8 to 16x48, then padded
    tar2 = write_tar(tmp_path / "b.tar", [{"__key__": "w", "png": encode(wide, "PNG"), "txt": "wide"}])
    got = check_row(run_all(conv([tar2], text_tokenizer, fit="pad"))[0], text_tokenizer, "wide", None)
    assert (got[16:] == 0).all() and np.array_equal(got[:16], fit_image(wide, "resize", (16, 48)))


def test_native_size_keeps_each_image_fitted_to_16s(tmp_path, text_tokenizer):
    img = photo(50, 70, 4)
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "n", "png": encode(img, "PNG"), "txt": "native"}])
    check_row(run_all(conv([tar], text_tokenizer, image_size=None))[0], text_tokenizer, "native",
              fit_image(img, "resize"), size=(48, 64))


def test_folder_with_csv_and_jsonl_in_record_ranges(tmp_path, text_tokenizer):
    (tmp_path / "imgs").mkdir()
    pngs = []
    for i in range(5):
        pngs.append(encode(photo(24, 40, 10 + i), "PNG"))
        (tmp_path / "imgs" / f"{i}.png").write_bytes(pngs[-1])
    caps = [f"image shows digit {w}" for w in ("zero", "one", "two", "three", "four")]
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        w.writerows([[f"imgs/{i}.png", caps[i]] for i in range(5)])
    with open(tmp_path / "caps.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"picture": f"imgs/{i}.png", "words": caps[i]}) + "\n")
    c = conv([tmp_path / "caps.csv"], text_tokenizer, records_per_unit=2)
    assert [(u.key, u.start, u.stop) for u in c.work_units()] == [
        ("caps.csv[0:2]", 0, 2), ("caps.csv[2:4]", 2, 4), ("caps.csv[4:5]", 4, 5)]
    recs = run_all(c)
    assert [r.source_id for r in recs] == [f"caps.csv/{i}" for i in range(5)]
    for r, p, cap in zip(recs, pngs, caps):
        check_row(r, text_tokenizer, cap, expected_resized(p))
    with pytest.raises(SourceError, match="no image column"):
        run_all(conv([tmp_path / "caps.jsonl"], text_tokenizer))
    recs = run_all(conv([tmp_path / "caps.jsonl"], text_tokenizer, image_field="picture", caption_field="words"))
    for r, p, cap in zip(recs, pngs, caps):
        check_row(r, text_tokenizer, cap, expected_resized(p))


def test_coco_captions_all_and_first(tmp_path, text_tokenizer):
    (tmp_path / "train").mkdir()
    pngs = {}
    for im_id in (7, 9):
        pngs[im_id] = encode(photo(30, 30, im_id), "PNG")
        (tmp_path / "train" / f"{im_id:012d}.png").write_bytes(pngs[im_id])
    coco = {"images": [{"id": 7, "file_name": f"{7:012d}.png"}, {"id": 9, "file_name": f"{9:012d}.png"}],
            "annotations": [{"id": 1, "image_id": 9, "caption": "a dog with a ball"},
                            {"id": 2, "image_id": 7, "caption": "a cat in a box"},
                            {"id": 3, "image_id": 9, "caption": "the dog is large"}]}
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "captions.json").write_text(json.dumps(coco))
    root = str(tmp_path / "train")
    recs = run_all(conv([tmp_path / "ann" / "captions.json"], text_tokenizer, image_root=root))
    assert [r.source_id for r in recs] == ["captions.json/1", "captions.json/2", "captions.json/3"]
    for r, (im_id, cap) in zip(recs, [(9, "a dog with a ball"), (7, "a cat in a box"), (9, "the dog is large")]):
        check_row(r, text_tokenizer, cap, expected_resized(pngs[im_id]))
    recs = run_all(conv([tmp_path / "ann" / "captions.json"], text_tokenizer, image_root=root, coco_captions="first"))
    assert [r.source_id for r in recs] == ["captions.json/7", "captions.json/9"]
    check_row(recs[0], text_tokenizer, "a cat in a box", expected_resized(pngs[7]))
    check_row(recs[1], text_tokenizer, "a dog with a ball", expected_resized(pngs[9]))


def test_parquet_bytes_and_struct_columns_in_row_group_ranges(tmp_path, text_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pngs = [encode(photo(20, 20, 20 + i), "PNG") for i in range(7)]
    caps = [f"robot {i} opens the door" for i in range(7)]
    pq.write_table(pa.table({"jpg": pngs, "caption": caps}), tmp_path / "a.parquet", row_group_size=3)
    c = conv([tmp_path / "a.parquet"], text_tokenizer, records_per_unit=4)
    assert [(u.start, u.stop) for u in c.work_units()] == [(0, 6), (6, 7)]  # on row-group boundaries
    recs = run_all(c)
    assert [r.source_id for r in recs] == [f"a.parquet/{i}" for i in range(7)]
    for r, p, cap in zip(recs, pngs, caps):
        check_row(r, text_tokenizer, cap, expected_resized(p))
    structs = pa.array([{"bytes": p, "path": None} for p in pngs[:2]])
    pq.write_table(pa.table({"img": structs, "txt": caps[:2]}), tmp_path / "b.parquet")
    recs = run_all(conv([tmp_path / "b.parquet"], text_tokenizer))  # struct with "bytes": found by type
    for r, p, cap in zip(recs, pngs, caps):
        check_row(r, text_tokenizer, cap, expected_resized(p))


def test_hf_datasets_directory_with_image_feature(tmp_path, text_tokenizer):
    import datasets
    imgs = [photo(24, 24, 30 + i) for i in range(3)]
    caps = ["a blue key", "the green door opens", "an astronaut"]
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in imgs], "text": caps},
                                    features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    c = conv([tmp_path / "ds"], text_tokenizer, records_per_unit=2)
    assert [u.key for u in c.work_units()] == ["ds[0:2]", "ds[2:3]"]
    recs = run_all(c)
    assert [r.source_id for r in recs] == ["ds/0", "ds/1", "ds/2"]
    for r, im, cap in zip(recs, imgs, caps):
        check_row(r, text_tokenizer, cap, expected_resized(encode(im, "PNG")))


def test_directory_of_tars_in_sorted_order(tmp_path, text_tokenizer):
    d = tmp_path / "shards"
    d.mkdir()
    for n in (1, 0):
        write_tar(d / f"{n:05d}.tar", [{"__key__": f"{n}a", "png": encode(photo(16, 16, n), "PNG"), "txt": "x"}])
    (d / "00000.parquet").write_bytes(b"img2dataset stats, ignored next to tars")
    c = conv([d], text_tokenizer)
    assert [u.key for u in c.work_units()] == ["00000.tar", "00001.tar"]
    assert [r.source_id for r in run_all(c)] == ["00000.tar/0a", "00001.tar/1a"]


def test_make_converter_from_command_line_options(tmp_path, sp_model_path, text_tokenizer):
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "k", "png": encode(photo(40, 40, 0), "PNG"), "txt": "hi"}])
    c = make_converter(parse(CaptionOptions, [tar, "--out", tmp_path / "o", "--text-tokenizer", sp_model_path,
                                              "--image-size", "16x32", "--fit", "pad"]))
    assert c.name == "captions" and c.rl is False
    assert c.options()["image_size"] == [16, 32] and c.options()["fit"] == "pad"
    check_row(run_all(c)[0], text_tokenizer, "hi", None, size=(16, 32))
    assert parse_image_size("192") == (192, 192) and parse_image_size("native") is None
    for bad in ("100", "0", "16x", "abc"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_image_size(bad)


# --- bad inputs --------------------------------------------------------------------------------

def skips(tmp_path, tok, samples, **kw):
    """{key: skip_reason} of a tar made of `samples` (good records map to None)."""
    tar = write_tar(tmp_path / "bad.tar", samples)
    return {r.source_id.split("/", 1)[1]: r.skip_reason for r in run_all(conv([tar], tok, **kw))}


def test_corrupt_and_truncated_images_are_named(tmp_path, text_tokenizer):
    jpg, png = encode(photo(64, 64, 1), "JPEG"), encode(photo(64, 64, 2), "PNG")
    noisy = encode(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8), "JPEG")
    broken = bytearray(png)
    broken[len(png) // 2] ^= 0xFF
    got = skips(tmp_path, text_tokenizer, [
        {"__key__": "good", "jpg": jpg, "txt": "fine"},
        {"__key__": "garbage", "jpg": b"not an image at all" * 10, "txt": "x"},
        {"__key__": "tjpg", "jpg": noisy[: len(noisy) // 2], "txt": "x"},
        {"__key__": "tjpghead", "jpg": jpg[:300], "txt": "x"},
        {"__key__": "tpng", "png": png[: len(png) // 2], "txt": "x"},
        {"__key__": "crc", "png": bytes(broken), "txt": "x"},
        {"__key__": "empty", "png": b"", "txt": "x"}])
    path = str(tmp_path / "bad.tar")
    assert got["good"] is None
    assert got["garbage"] == f"{path}: record 'garbage': field 'jpg': not a readable image (unknown format or corrupt header)"
    assert got["tjpg"].startswith(f"{path}: record 'tjpg': field 'jpg': cannot decode JPEG data: image file is truncated")
    assert got["tjpghead"].startswith(f"{path}: record 'tjpghead': field 'jpg': corrupt image header")
    assert got["tpng"].startswith(f"{path}: record 'tpng': field 'png': cannot decode PNG data")
    assert got["crc"].startswith(f"{path}: record 'crc': field 'png': ")
    assert got["empty"] == f"{path}: record 'empty': field 'png': image is empty (0 bytes)"
    assert all("\n" not in r for r in got.values() if r)


def test_zero_pixel_and_decompression_bomb_images_refused_before_decoding(tmp_path, text_tokenizer):
    assert 9000 * 9000 > MAX_PIXELS
    t0 = time.perf_counter()
    got = skips(tmp_path, text_tokenizer, [
        {"__key__": "zero", "png": png_header_only(0, 5), "txt": "x"},
        {"__key__": "bomb", "png": png_header_only(50000, 50000), "txt": "x"},
        {"__key__": "big", "png": png_header_only(9000, 9000), "txt": "x"}])
    assert time.perf_counter() - t0 < 5  # 81M pixels were never decoded
    assert got["zero"].endswith("field 'png': image has 0 pixels (0x5)")
    assert "record 'bomb': field 'png': refused before decoding" in got["bomb"]
    assert got["big"].endswith(f"field 'png': image of 9000x9000 pixels exceeds the limit of {MAX_PIXELS} "
                               "(decompression bomb?); refused before decoding")


def test_missing_and_non_utf8_captions(tmp_path, text_tokenizer):
    png = encode(photo(16, 16, 0), "PNG")
    got = skips(tmp_path, text_tokenizer, [
        {"__key__": "a", "png": png, "txt": b"caf\xe9 au lait"},
        {"__key__": "b", "png": png},
        {"__key__": "c", "png": png, "txt": "   \n"},
        {"__key__": "d", "png": png, "json": b'{"url": "http://x"}'},
        {"__key__": "e", "png": png, "json": b'{"caption": "caf\xe9"}'},
        {"__key__": "f", "txt": "no image here"},
        {"__key__": "g", "png": png, "txt": "fine"}])
    assert got["a"].endswith("record 'a': field 'txt': caption is not UTF-8 (byte 0xe9 at offset 3)")
    assert got["b"].endswith("record 'b': field 'txt': missing caption (no .txt member, no .json)")
    assert got["c"].endswith("record 'c': field 'txt': missing caption (empty text)")
    assert got["d"].endswith("record 'd': field 'json.caption': missing caption")
    assert got["e"].endswith("record 'e': field 'json': not UTF-8")
    assert got["f"].endswith("record 'f': field 'jpg|jpeg|png|webp': no image member (.jpg/.jpeg/.png/.webp)")
    assert got["g"] is None


def test_csv_bad_records_name_row_and_column(tmp_path, text_tokenizer):
    (tmp_path / "0.png").write_bytes(encode(photo(16, 16, 0), "PNG"))
    (tmp_path / "caps.csv").write_bytes(b"image,text\n0.png,caf\xe9\n0.png,\nmissing.png,a cat\n0.png,a dog\n")
    recs = run_all(conv([tmp_path / "caps.csv"], text_tokenizer))
    path = str(tmp_path / "caps.csv")
    assert [r.skip_reason for r in recs[:3]] == [
        f"{path}: record '0': field 'text': caption is not UTF-8 (undecodable byte at character 3)",
        f"{path}: record '1': field 'text': missing caption",
        f"{path}: record '2': field 'image': image file not found: {tmp_path / 'missing.png'}"]
    check_row(recs[3], text_tokenizer, "a dog", None)


def test_truncated_tar_is_refused(tmp_path, text_tokenizer):
    samples = [{"__key__": f"{i:03d}", "png": encode(photo(32, 32, i), "PNG"), "txt": f"cap {i}"} for i in range(4)]
    data = write_tar(tmp_path / "full.tar", samples).read_bytes()
    for name, cut in (("mid", len(data) // 3), ("boundary", 512 * 6), ("no_end", len(data) - 10240)):
        bad = tmp_path / f"{name}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(SourceError, match=rf"^{bad}: truncated"):
            run_all(conv([bad], text_tokenizer))
    assert len(run_all(conv([tmp_path / "full.tar"], text_tokenizer))) == 4


def test_tar_members_not_grouped_by_key_are_refused(tmp_path, text_tokenizer):
    png = encode(photo(16, 16, 0), "PNG")
    tar = tmp_path / "ungrouped.tar"
    with wds.TarWriter(str(tar)) as w:  # every image first, then every caption
        for k in ("a", "b"):
            w.write({"__key__": k, "png": png})
        for k in ("a", "b"):
            w.write({"__key__": k, "txt": "late caption"})
    with pytest.raises(SourceError) as e:
        run_all(conv([tar], text_tokenizer))
    assert str(e.value) == (f"{tar}: record 'a': field 'a.txt': tar members not grouped by key "
                            "('a' appears again after 'b')")


def test_unknown_inputs_are_one_line_errors(tmp_path, text_tokenizer):
    (tmp_path / "x.bin").write_bytes(b"?")
    with pytest.raises(SourceError, match="unknown input format"):
        conv([tmp_path / "x.bin"], text_tokenizer)
    with pytest.raises(FileNotFoundError):
        conv([tmp_path / "nope.tar"], text_tokenizer)
    (tmp_path / "c.json").write_text('{"images": []}')
    with pytest.raises(SourceError, match="not a COCO caption file"):
        run_all(conv([tmp_path / "c.json"], text_tokenizer))


# --- end to end: gato-tokenize captions ... --out DIR -------------------------------------------

def tokenize(argv, capsys) -> tuple[int, str]:
    from converters.cli import main
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


def shard_rows(out: Path):
    from schemas.shard import open_shard, row_from_table
    rows = []
    for shard in sorted(out.glob("shard-*.arrow")):
        t = open_shard(shard)
        rows += [(t.column("source_id")[i].as_py(), t.column("task")[i].as_py(), row_from_table(t, i))
                 for i in range(t.num_rows)]
    return rows


def test_cli_converts_tar_and_csv_into_verified_shards(tmp_path, sp_model_path, text_tokenizer, capsys):
    pngs = [encode(photo(24 + 8 * i, 40, 40 + i), "PNG") for i in range(3)]
    caps = ["the robot arm grasps a cube", "a red ball in a box", "coffee"]
    tar = write_tar(tmp_path / "00000.tar", [{"__key__": f"k{i}", "png": p, "txt": c}
                                             for i, (p, c) in enumerate(zip(pngs, caps))])
    (tmp_path / "extra.png").write_bytes(pngs[0])
    (tmp_path / "caps.csv").write_text("file,caption\nextra.png,the dog is large\n")
    out = tmp_path / "out"
    code, err = tokenize(["captions", str(tar), str(tmp_path / "caps.csv"), "--out", str(out), "--no-progress",
                          "--text-tokenizer", sp_model_path, "--image-size", "32x48", "--task", "toy"], capsys)
    assert code == 0, err
    assert tokenize(["verify", str(out)], capsys)[0] == 0
    rows = shard_rows(out)
    assert [(s, t) for s, t, _ in rows] == [("00000.tar/k0", "toy"), ("00000.tar/k1", "toy"),
                                            ("00000.tar/k2", "toy"), ("caps.csv/0", "toy")]
    for (_, _, row), p, c in zip(rows, pngs + [pngs[0]], caps + ["the dog is large"]):
        images, text = decode_caption(row, text_tokenizer.layout(), text_tokenizer)
        assert text == c and np.array_equal(images[0], expected_resized(p))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["converter"] == "captions"
    assert manifest["options"]["image_size"] == [32, 48] and manifest["options"]["fit"] == "resize"


def test_cli_bad_record_fails_with_one_line_or_is_skipped_and_listed(tmp_path, sp_model_path, capsys):
    png = encode(photo(16, 16, 0), "PNG")
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "good", "png": png, "txt": "fine"},
                                         {"__key__": "bad", "png": png[:40], "txt": "x"}])
    base = ["captions", str(tar), "--text-tokenizer", sp_model_path, "--no-progress", "--image-size", "16"]
    code, err = tokenize(base + ["--out", str(tmp_path / "fail")], capsys)
    assert code == 1
    lines = err.strip().splitlines()  # the program name is sys.argv[0]: pytest's under test
    assert len(lines) == 1 and lines[0].split(": error: ", 1)[1] == (
        f"{tar}: record 'bad': field 'png': not a readable image (unknown format or corrupt header)")
    assert not (tmp_path / "fail" / "manifest.json").exists() and not list((tmp_path / "fail").glob("shard-*"))
    code, err = tokenize(base + ["--out", str(tmp_path / "skip"), "--on-error", "skip"], capsys)
    assert code == 0, err
    assert [s for s, _, _ in shard_rows(tmp_path / "skip")] == ["a.tar/good"]
    skipped = json.loads((tmp_path / "skip" / "manifest.json").read_text())["skipped"]
    assert [s["source"] for s in skipped] == ["a.tar/bad"] and "record 'bad': field 'png'" in skipped[0]["reason"]


def test_cli_truncated_tar_exits_1_and_usage_errors_exit_2(tmp_path, sp_model_path, capsys):
    png = encode(photo(16, 16, 0), "PNG")
    data = write_tar(tmp_path / "a.tar", [{"__key__": "k", "png": png, "txt": "x"}]).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1024])
    code, err = tokenize(["captions", str(tmp_path / "cut.tar"), "--out", str(tmp_path / "o"), "--no-progress",
                          "--text-tokenizer", sp_model_path], capsys)
    assert code == 1 and err.strip().split(": error: ", 1)[1] == (
        f"{tmp_path / 'cut.tar'}: truncated tar (1024 bytes, no end-of-archive blocks)")
    code, err = tokenize(["captions", str(tmp_path / "a.tar"), "--out", str(tmp_path / "o2"),
                          "--text-tokenizer", sp_model_path, "--image-size", "100"], capsys)
    assert code == 2 and "multiples of the 16-pixel patch" in err
    code, err = tokenize(["captions", str(tmp_path / "a.tar"), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "--text-tokenizer" in err


def test_converter_pickles_for_worker_processes(tmp_path, text_tokenizer):
    import pickle
    (tmp_path / "0.png").write_bytes(encode(photo(16, 16, 0), "PNG"))
    (tmp_path / "c.jsonl").write_text('{"image": "0.png", "caption": "a cat"}\n{"image": "0.png", "caption": "a dog"}\n')
    c = conv([tmp_path / "c.jsonl"], text_tokenizer, records_per_unit=1)
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.work_units() == c.work_units()
    a, b = run_all(c), run_all(c2)
    assert [r.source_id for r in a] == [r.source_id for r in b] == ["c.jsonl/0", "c.jsonl/1"]
    assert all(np.array_equal(x.row.tokens, y.row.tokens) and np.array_equal(x.row.patches, y.row.patches)
               for x, y in zip(a, b))


def test_unreadable_files_and_duplicate_tar_members_are_one_line_source_errors(tmp_path, text_tokenizer):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    c = conv([tmp_path / "bad.parquet"], text_tokenizer)
    assert [u.key for u in c.work_units()] == ["bad.parquet"]  # the unit fails (or is skipped) when converted
    with pytest.raises(SourceError, match=r"bad.parquet: not a readable Parquet file"):
        run_all(c)
    (tmp_path / "huge.csv").write_text("image,caption\nx.png," + "a" * 200_000 + "\n")  # over csv's field limit
    [rec] = run_all(conv([tmp_path / "huge.csv"], text_tokenizer))
    assert "huge.csv: record '0': field 'line 2': not a readable CSV record (field larger than" in rec.skip_reason
    png = encode(photo(16, 16, 0), "PNG")
    tar = tmp_path / "dup.tar"
    with wds.TarWriter(str(tar)) as w:
        w.write({"__key__": "a", "png": png, "txt": "one"})
        w.write({"__key__": "a", "png": png, "txt": "two"})
    with pytest.raises(SourceError) as e:
        run_all(conv([tar], text_tokenizer))
    assert str(e.value) == f"{tar}: member 'a.png' appears twice (duplicate key)"
