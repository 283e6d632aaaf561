"""Hostile caption inputs: paths out of the image root, devices, FIFOs, pixel bombs, deep pixels,
broken CSV quoting, deep JSON and wrongly typed columns are bad records naming file, record, field."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from test_captions import conv, encode, photo, png_header_only, run_all, write_tar
from tokenizer_kit.text_rows import decode_caption


def _folder(tmp_path, rows: list[str], name: str = "caps.csv", header: str = "file,caption"):
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "root" / "ok.png").write_bytes(encode(photo(16, 16, 0), "PNG"))
    p = tmp_path / "root" / name
    p.write_text("\n".join([header] + rows) + "\n")
    return p


@pytest.fixture
def outside(tmp_path):
    p = tmp_path / "secret.png"
    p.write_bytes(encode(photo(16, 16, 1), "PNG"))
    return p


def test_absolute_dotdot_and_symlinked_paths_out_of_the_root_are_bad_records(tmp_path, text_tokenizer, outside):
    os.symlink(outside, tmp_path / "root_link.png")
    (tmp_path / "root").mkdir()
    os.symlink(outside, tmp_path / "root" / "link.png")
    csv_path = _folder(tmp_path, [f"{outside},absolute", "../secret.png,dotdot", "link.png,symlink", "ok.png,fine"])
    recs = run_all(conv([csv_path], text_tokenizer))
    assert [r.skip_reason is None for r in recs] == [False, False, False, True]
    for r in recs[:3]:
        assert r.skip_reason.startswith(f"{csv_path}: record ") and "field 'file'" in r.skip_reason
        assert "outside the image root" in r.skip_reason and "\n" not in r.skip_reason
    assert "absolute image path" in recs[0].skip_reason
    recs = run_all(conv([csv_path], text_tokenizer, allow_outside_root=True))
    assert all(r.skip_reason is None for r in recs)


def test_jsonl_coco_and_parquet_paths_follow_the_same_policy(tmp_path, text_tokenizer, outside):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.png").write_bytes(encode(photo(16, 16, 0), "PNG"))
    (root / "a.jsonl").write_text(json.dumps({"image": "../secret.png", "text": "x"}) + "\n"
                                  + json.dumps({"image": "ok.png\u0000.txt", "text": "nul"}) + "\n")
    coco = {"images": [{"id": 1, "file_name": str(outside)}], "annotations": [{"id": 5, "image_id": 1, "caption": "c"}]}
    (root / "c.json").write_text(json.dumps(coco))
    pq.write_table(pa.table({"image": ["../secret.png", "ok.png"], "caption": ["p", "q"]}), root / "p.parquet")
    for path in ("a.jsonl", "c.json", "p.parquet"):
        recs = run_all(conv([root / path], text_tokenizer))
        assert "outside the image root" in recs[0].skip_reason, path
    assert run_all(conv([root / "p.parquet"], text_tokenizer))[1].skip_reason is None
    assert "holds a NUL character" in run_all(conv([root / "a.jsonl"], text_tokenizer))[1].skip_reason


def test_devices_and_fifos_are_never_read_and_files_have_a_size_limit(tmp_path, text_tokenizer):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    (root / "big.png").write_bytes(encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), "PNG"))
    csv_path = _folder(tmp_path, ["/dev/zero,zeros", "pipe.png,fifo", "big.png,big", "ok.png,fine"])
    recs = run_all(conv([csv_path], text_tokenizer, allow_outside_root=True, max_image_bytes=2000))
    assert "/dev/zero is not a regular file" in recs[0].skip_reason
    assert "pipe.png is not a regular file" in recs[1].skip_reason
    assert "over the limit of 2000 (--max-image-bytes)" in recs[2].skip_reason
    assert recs[3].skip_reason is None


def test_native_size_refuses_what_the_fitted_image_would_allocate(tmp_path, text_tokenizer):
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "wide", "png": png_header_only(60_000_000, 1), "txt": "x"}])
    [rec] = run_all(conv([tar], text_tokenizer, image_size=None))
    assert "fitted to 60000000x16" in rec.skip_reason and "refused before decoding" in rec.skip_reason


def _grey_row(tmp_path, tok, data: bytes, key: str):
    tar = write_tar(tmp_path / f"{key}.tar", [{"__key__": key, "png": data, "txt": "deep"}])
    [rec] = run_all(conv([tar], tok, image_size=(32, 32)))
    return rec


def test_16_bit_pngs_are_scaled_by_65535_exactly(tmp_path, text_tokenizer):
    v = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0..65472
    rec = _grey_row(tmp_path, text_tokenizer, encode(v, "PNG"), "sixteen")
    [img], _ = decode_caption(rec.row, text_tokenizer.layout(), text_tokenizer)
    expected = np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(img[..., 0], expected) and np.array_equal(img[..., 2], expected)
    assert 120 < img.mean() < 135  # not clipped to white


def test_float_tiffs_in_0_1_are_scaled_and_others_refused(tmp_path, text_tokenizer):
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    b = io.BytesIO()
    Image.fromarray(f).save(b, "TIFF")
    rec = _grey_row(tmp_path, text_tokenizer, b.getvalue(), "float")
    [img], _ = decode_caption(rec.row, text_tokenizer.layout(), text_tokenizer)
    assert np.array_equal(img[..., 1], np.rint(f.astype(np.float64) * 255).astype(np.uint8))
    b = io.BytesIO()
    Image.fromarray(f * 1000).save(b, "TIFF")
    rec = _grey_row(tmp_path, text_tokenizer, b.getvalue(), "hot")
    assert "float pixels must lie in [0, 1]" in rec.skip_reason and "max 1000" in rec.skip_reason


def test_unterminated_csv_quote_is_one_bad_record_and_the_rows_after_it_survive(tmp_path, text_tokenizer):
    csv_path = _folder(tmp_path, ['ok.png,"never closed', "ok.png,second", "ok.png,third", 'ok.png,"quoted, fine"'])
    recs = run_all(conv([csv_path], text_tokenizer))
    assert len(recs) == 4
    assert "field 'line 2'" in recs[0].skip_reason and "quote" in recs[0].skip_reason
    tok = text_tokenizer
    texts = [decode_caption(r.row, tok.layout(), tok)[1] for r in recs[1:]]
    assert texts == ["second", "third", "quoted, fine"]


def test_a_balanced_quote_that_swallows_rows_is_caught_too(tmp_path, text_tokenizer):
    csv_path = _folder(tmp_path, ['ok.png,"oops', "ok.png,b", 'ok.png,c"', "ok.png,d"])
    recs = run_all(conv([csv_path], text_tokenizer))
    assert "quote" in recs[0].skip_reason
    assert [decode_caption(r.row, text_tokenizer.layout(), text_tokenizer)[1] for r in recs[1:]] == ["b", 'c"', "d"]
    multi = _folder(tmp_path, ['ok.png,"a caption\nover two lines"'], name="multi.csv")
    [rec] = run_all(conv([multi], text_tokenizer))
    # one record over two lines (SentencePiece reads the newline as a space)
    assert decode_caption(rec.row, text_tokenizer.layout(), text_tokenizer)[1] == "a caption over two lines"


def test_csv_with_a_utf8_bom_header_is_read(tmp_path, text_tokenizer):
    p = _folder(tmp_path, ["ok.png,bom"])
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    [rec] = run_all(conv([p], text_tokenizer))
    assert rec.skip_reason is None


def test_deeply_nested_json_is_a_bad_record(tmp_path, text_tokenizer):
    deep = "[" * 100_000 + "]" * 100_000
    p = _folder(tmp_path, [deep, json.dumps({"image": "ok.png", "text": "fine"})], name="d.jsonl", header="")
    recs = run_all(conv([p], text_tokenizer))
    assert "JSON nested too deeply" in recs[0].skip_reason and recs[1].skip_reason is None
    tar = write_tar(tmp_path / "d.tar", [{"__key__": "k", "png": encode(photo(16, 16, 0), "PNG"), "json": deep}])
    [rec] = run_all(conv([tar], text_tokenizer))
    assert "record 'k': field 'json': JSON nested too deeply" in rec.skip_reason
    (tmp_path / "root" / "c.json").write_text(deep)
    from converters.base import SourceError
    with pytest.raises(SourceError, match="c.json: JSON nested too deeply"):
        run_all(conv([tmp_path / "root" / "c.json"], text_tokenizer))


def test_an_int64_image_column_is_a_bad_record_naming_the_column(tmp_path, text_tokenizer):
    pq.write_table(pa.table({"image": [1, 2], "caption": ["a", "b"]}), tmp_path / "i.parquet")
    recs = run_all(conv([tmp_path / "i.parquet"], text_tokenizer))
    assert len(recs) == 2
    assert recs[0].skip_reason == (f"{tmp_path / 'i.parquet'}: record '0': field 'image': image is int "
                                   "(column type int64), expected encoded bytes or a path")


def test_an_image_size_over_the_pixel_limit_is_bad_usage():
    import argparse
    from tokenizer_kit.argtypes import image_size_or_native as parse_image_size
    with pytest.raises(argparse.ArgumentTypeError, match="over the limit"):
        parse_image_size("16384x16384")
    assert parse_image_size("4096x4096") == (4096, 4096)


def test_a_caption_column_with_bytes_that_are_not_utf8_names_the_record(tmp_path, text_tokenizer):
    caps = pa.array([b"fine", b"bad \xff bytes"], pa.binary()).view(pa.string())
    png = encode(photo(16, 16, 0), "PNG")
    pq.write_table(pa.table({"jpg": [png, png], "caption": caps}), tmp_path / "u.parquet")
    recs = run_all(conv([tmp_path / "u.parquet"], text_tokenizer))
    assert recs[0].skip_reason is None
    assert "record '1': field 'caption': caption is not UTF-8 (byte 0xff at offset 4)" in recs[1].skip_reason
