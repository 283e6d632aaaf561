"""Caption rows of fixed inputs in every format and fit, pinned by sha256 of every column.

The caption reader and decoder were split into modules; these hashes were taken before the split,
so any change in decoding, resizing, padding or row building shows up here.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
from tests.support.row_hash import converter_rows_digest, shard_rows_digest
import pytest
from PIL import Image

from converters.captions import CaptionConverter
from converters.cli import main

from test_captions import encode, photo, write_tar


def _inputs(tmp_path) -> list:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    samples = [{"__key__": "png", "png": encode(photo(50, 70, 1), "PNG"), "txt": "a png"},
               {"__key__": "jpg", "jpg": encode(photo(256, 256, 2), "JPEG", quality=90), "txt": "a jpeg"},
               {"__key__": "big", "jpg": encode(photo(700, 500, 3), "JPEG"), "txt": "a large jpeg"},
               {"__key__": "grey", "jpg": encode(photo(64, 80, 4)[..., 0], "JPEG"), "txt": "grey"},
               {"__key__": "webp", "webp": encode(photo(40, 30, 5), "WEBP"), "json": b'{"caption": "web p"}'},
               {"__key__": "rgba", "png": encode(np.dstack([photo(33, 17, 6), np.full((33, 17), 9, np.uint8)]),
                                                 "PNG"), "txt": "alpha"},
               {"__key__": "pal", "png": encode(np.asarray(Image.fromarray(photo(20, 60, 7)).convert("P")), "PNG"),
                "txt": "palette"}]
    cmyk = Image.fromarray(photo(48, 48, 8)).convert("CMYK")
    import io
    b = io.BytesIO()
    cmyk.save(b, "JPEG")
    samples.append({"__key__": "cmyk", "jpg": b.getvalue(), "txt": "cmyk"})
    tar = write_tar(tmp_path / "a.tar", samples)
    for i in range(3):
        (imgs / f"{i}.png").write_bytes(encode(photo(24 + 8 * i, 40, 10 + i), "PNG"))
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        w.writerows([[f"imgs/{i}.png", f"caption {i}"] for i in range(3)])
    with open(tmp_path / "caps.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"image": f"imgs/{i}.png", "text": f"line {i}"}) + "\n")
    coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(3)],
            "annotations": [{"id": 10 + i, "image_id": 2 - i, "caption": f"coco {i}"} for i in range(3)]}
    (imgs / "coco.json").write_text(json.dumps(coco))
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"jpg": [encode(photo(20, 36, 20 + i), "PNG") for i in range(3)],
                             "caption": [f"pq {i}" for i in range(3)]}), tmp_path / "a.parquet")
    return [tar, tmp_path / "caps.csv", tmp_path / "caps.jsonl", imgs / "coco.json", tmp_path / "a.parquet"]


def _rows_sha256(inputs, tok, **kw) -> str:
    return converter_rows_digest(CaptionConverter([str(p) for p in inputs], tok, tok.layout(), **kw))


PINNED = {
    "default": "083d849e4089201e2bbec501720bc164f2b2c49bc68f7772ce77eb71eb852852",
    "32x48": "97bbe8a69265c34124b8800f6bdd7da0a92fd008ed79b9c081dd00f1fff0c9d0",
    "native": "51023bee17e2024afd33f0a0bce4566205aaf964c6e56f463c1ace616b175e2d",
    "pad": "581bb858cf51aed4e78543d255e575dae25046c00694aeab9520a37e4000cbd8",
    "native-pad": "cef59269a76018fca3f8b1b0acf02e744b95d234646a53e73f5f35fbad5a0be6",
}
OPTIONS = {"default": {}, "32x48": {"image_size": (32, 48)}, "native": {"image_size": None},
           "pad": {"image_size": (64, 48), "fit": "pad"}, "native-pad": {"image_size": None, "fit": "pad"}}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_caption_rows_are_unchanged(tmp_path, text_tokenizer, name):
    digest = _rows_sha256(_inputs(tmp_path), text_tokenizer, **OPTIONS[name])
    assert digest == PINNED[name]


def test_caption_rows_read_back_from_shards_unchanged(tmp_path, text_tokenizer, sp_model_path):
    """Through the writer (version 2's caption form: uint16 ids, per-token columns derived) and back
    through the readers, every row is the converter's, byte for byte, in every column and dtype."""
    inputs = [str(p) for p in _inputs(tmp_path)]
    expected = converter_rows_digest(CaptionConverter(inputs, text_tokenizer, text_tokenizer.layout()))
    assert main(["captions", *inputs, "--text-tokenizer", sp_model_path, "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    shard = next((tmp_path / "out").glob("shard-*.arrow"))
    stored = pa.ipc.open_stream(pa.memory_map(str(shard))).schema
    assert stored.names == ["tokens", "patches", "patch_pos", "source_id", "task"]
    assert stored.field("tokens").type == pa.list_(pa.uint16())
    assert shard_rows_digest(tmp_path / "out") == expected
