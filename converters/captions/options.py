"""`gato-tokenize captions` options, defined once: each field's default, range or choices and help;
the command line is built from them and `make_converter` reads the typed instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokenizer_kit.argtypes import image_size_or_native
from tokenizer_kit.images import FIT_POLICIES
from tokenizer_kit.options import opt

from ..options import ConvertOptions, text_tokenizer_opt
from .decode import DEFAULT_IMAGE_SIZE
from .sources import CAPTION_COLUMNS, IMAGE_COLUMNS, MAX_IMAGE_BYTES

FORMATS = ("auto", "tar", "csv", "jsonl", "coco", "parquet", "hf")


@dataclass
class CaptionOptions(ConvertOptions):
    """Every option of `gato-tokenize captions` (the common ones are ConvertOptions')."""

    kind: ClassVar[str] = "captions"

    text_tokenizer: str | None = text_tokenizer_opt(required=True)
    input_format: str = opt("auto", "source format (auto: by extension; a directory is a datasets dir or its tars)",
                            choices=FORMATS)
    image_size: tuple[int, int] | None = opt((DEFAULT_IMAGE_SIZE,) * 2, f"size every image is fitted to (default "
                                             f"{DEFAULT_IMAGE_SIZE}: 144 patches; native: each image's own size "
                                             "fitted to 16s)", parse=image_size_or_native, metavar="N|HxW|native")
    fit: str = opt("resize", "resize: stretch to the size; pad: keep the aspect ratio, zero-pad bottom/right",
                   choices=FIT_POLICIES)
    image_field: str | None = opt(None, "image column (CSV/JSONL/Parquet/datasets); default the first of "
                                        f"{', '.join(IMAGE_COLUMNS)}")
    caption_field: str | None = opt(None, "caption column, or field of a tar's KEY.json; default the first of "
                                          f"{', '.join(CAPTION_COLUMNS)} (tars: KEY.txt first)")
    image_root: str | None = opt(None, "folder that relative image paths are under (default: the captions file's "
                                       "folder)")
    allow_outside_root: bool = opt(False, "read image paths that are absolute or lead outside the image root "
                                          "(default: bad record)", cli="flag")
    max_image_bytes: int = opt(MAX_IMAGE_BYTES, f"largest image file read from a path (default "
                                                f"{MAX_IMAGE_BYTES // 2**20}MiB)", size=True, lo=1, metavar="BYTES")
    coco_captions: str = opt("all", "COCO: one row per caption (all) or per image with its first caption (first)",
                             choices=("all", "first"))
    records_per_unit: int = opt(10000, "records per work unit of CSV/JSONL/COCO/Parquet/datasets inputs (tars: one "
                                       "each)", lo=1)
