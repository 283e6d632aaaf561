"""Image-caption pairs -> rows (SPEC 3-4): image patches, then the caption + end-of-text.

Sources (tar, csv, jsonl, coco, parquet, hf; see converters/captions/sources.py) are picked by
extension or `--input-format`. A directory that is not a `datasets` directory stands for its
`*.tar` (else `*.parquet`) files. Decoding and fitting images is converters/captions/decode.py,
the options converters/captions/options.py; this module holds the work units and the batching
of captions into SentencePiece.

Bad records are yielded with a one-line `skip_reason` naming file, record and field; a tar that is
truncated or whose members are not grouped by key is refused as a whole (SourceError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence, cast

import numpy as np

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text import TextTokenizer

from ..base import Record, SourceError, WorkUnit
from .decode import DEFAULT_IMAGE_SIZE, BadField, ImageFit, caption_row, caption_text, simplejpeg
from .options import CaptionOptions
from .sources import (MAX_IMAGE_BYTES, ImageFiles, arrow_columns, arrow_records, coco_index, coco_records,
                      detect_format, expand_inputs, hf_dataset, parquet_file, table_file, table_records, tar_records)

__all__ = ["CaptionConverter", "make_converter", "caption_text", "BadField", "ImageFit"]

ENCODE_BATCH = 256  # records whose captions are tokenised in one SentencePiece call


def make_converter(opts: CaptionOptions, layout: VocabLayout | None = None,
                   tokenizer: TextTokenizer | None = None) -> "CaptionConverter":
    """From the parsed options; the convert command passes the tokenizer and layout it loaded."""
    if layout is None or tokenizer is None:
        tokenizer, layout = opts.tokenizer_and_layout()
    # not None: CaptionOptions.vocab_layout refused a missing --text-tokenizer (UsageError)
    return CaptionConverter(
        opts.inputs, cast(TextTokenizer, tokenizer), layout, input_format=opts.input_format,
        image_size=opts.image_size, fit=opts.fit,
        image_field=opts.image_field, caption_field=opts.caption_field, image_root=opts.image_root,
        coco_captions=opts.coco_captions, records_per_unit=opts.records_per_unit,
        allow_outside_root=opts.allow_outside_root, max_image_bytes=opts.max_image_bytes)


class CaptionConverter:
    """Image-caption sources -> caption rows; one unit per tar, record ranges of the other formats."""

    name = "captions"
    rl = False

    def __init__(self, inputs: Sequence[str], text_tokenizer: TextTokenizer, layout: VocabLayout, *,
                 input_format: str = "auto", image_size: tuple[int, int] | None = (DEFAULT_IMAGE_SIZE,) * 2,
                 fit: str = "resize", image_field: str | None = None, caption_field: str | None = None,
                 image_root: str | None = None, coco_captions: str = "all", records_per_unit: int = 10000,
                 allow_outside_root: bool = False, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.tok, self.layout = text_tokenizer, layout
        self.image = ImageFit(cast("tuple[int, int]", tuple(image_size)) if image_size is not None else None, fit)
        self.image_field, self.caption_field = image_field, caption_field
        self.image_root = image_root
        self.allow_outside_root, self.max_image_bytes = allow_outside_root, max_image_bytes
        self.coco_captions, self.records_per_unit = coco_captions, records_per_unit
        self.input_format = input_format
        self.files = expand_inputs(inputs, input_format)
        self.formats = dict(self.files)
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) or "/" for p, _ in self.files])
        self.names = {p: os.path.relpath(os.path.abspath(p), base) for p, _ in self.files}
        self._units: list[WorkUnit] | None = None

    # Work units ---------------------------------------------------------------------------------
    def _count(self, path: str, fmt: str) -> list[tuple[int, int]]:
        n = self.records_per_unit
        if fmt in ("csv", "jsonl"):
            total = len(table_file(path, fmt)[1])
        elif fmt == "coco":
            total = len(coco_index(path, self.coco_captions))
        elif fmt == "hf":
            total = len(hf_dataset(path))
        else:  # parquet: ranges on row-group boundaries, so a unit reads only its own groups
            md = parquet_file(path).metadata
            ranges, start, end = [], 0, 0
            for g in range(md.num_row_groups):
                end += md.row_group(g).num_rows
                if end - start >= n:
                    ranges.append((start, end))
                    start = end
            if end > start or not ranges:
                ranges.append((start, end))
            return ranges
        return [(a, min(a + n, total)) for a in range(0, total, n)] or [(0, 0)]

    def _image_files(self, root: str) -> ImageFiles:
        return ImageFiles(root, self.allow_outside_root, self.max_image_bytes)

    def work_units(self) -> list[WorkUnit]:
        if self._units is None:
            units = []
            for path, fmt in self.files:
                name = self.names[path]
                if fmt == "tar":
                    units.append(WorkUnit(name, path))
                    continue
                try:
                    ranges = self._count(path, fmt)
                except SourceError:  # unreadable: one unit that fails (or is skipped) when converted
                    units.append(WorkUnit(name, path))
                    continue
                for a, b in ranges:
                    units.append(WorkUnit(name if len(ranges) == 1 else f"{name}[{a}:{b}]", path, a, b))
            self._units = units
        return self._units

    def options(self) -> dict:
        return {"input_format": self.input_format, "formats": sorted(set(self.formats.values())),
                "image_size": list(self.image.size) if self.image.size else "native", "fit": self.image.fit,
                "resample": "bilinear", "pad": "zeros bottom/right, aspect kept" if self.image.fit == "pad" else None,
                "jpeg_draft": True, "jpeg_dct_scale": simplejpeg is not None, "image_field": self.image_field,
                "caption_field": self.caption_field,
                "caption_strip": True, "coco_captions": self.coco_captions,
                "records_per_unit": self.records_per_unit}

    # Conversion ---------------------------------------------------------------------------------
    def _records(self, unit: WorkUnit):
        fmt = self.formats.get(unit.path) or detect_format(unit.path)
        # relative image paths live under --image-root, else the annotation file's folder (a datasets folder itself)
        root = self.image_root or (unit.path if fmt == "hf" else os.path.dirname(unit.path) or ".")
        files = self._image_files(root)
        stop = unit.stop if unit.stop is not None else 1 << 62
        if fmt == "tar":
            return tar_records(unit.path, self.caption_field)
        if fmt in ("csv", "jsonl"):
            return table_records(unit.path, fmt, unit.start, stop, self.image_field, self.caption_field, files)
        if fmt == "coco":
            return coco_records(unit.path, self.coco_captions, unit.start, stop, files)
        if fmt == "hf":
            ds = hf_dataset(unit.path)
            table = ds[unit.start:min(stop, len(ds))]
            img, cap = arrow_columns(table.schema, self.image_field, self.caption_field, unit.path)
            return arrow_records(table, unit.start, img, cap, files)
        if fmt == "parquet":
            return self._parquet_records(unit, stop, files)
        raise SourceError(f"{unit.path}: unknown input format {fmt!r}")

    def _parquet_records(self, unit: WorkUnit, stop: int, files: ImageFiles):
        pf = parquet_file(unit.path)
        img, cap = arrow_columns(pf.schema_arrow, self.image_field, self.caption_field, unit.path)
        groups, first, pos = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos + n > unit.start and pos < stop:
                groups.append(g)
                first = pos if first is None else first
            pos += n
        if not groups or first is None:  # first is set with the first group
            return iter(())
        table = pf.read_row_groups(groups, columns=[img, cap])
        table = table.slice(unit.start - first, min(stop, pos) - unit.start)
        return arrow_records(table, unit.start, img, cap, files)

    def convert_unit(self, unit: WorkUnit) -> Iterator[Record]:
        name = self.names.get(unit.path, Path(unit.path).name)
        chunk = []
        for item in self._records(unit):
            chunk.append(item)
            if len(chunk) == ENCODE_BATCH:
                yield from self._convert_chunk(unit.path, name, chunk)
                chunk = []
        yield from self._convert_chunk(unit.path, name, chunk)

    def _convert_chunk(self, path: str, name: str, items: list) -> Iterator[Record]:
        """Captions of a chunk are tokenised in one batch call (a call per caption costs ~5 ms)."""
        texts: list[str | BadField] = []
        for _, image, _, caption, caption_field in items:
            try:
                if isinstance(caption, BadField):
                    raise caption
                if isinstance(image, BadField):
                    raise image
                texts.append(caption_text(caption, caption_field))
            except BadField as e:
                texts.append(e)
        good = [t for t in texts if isinstance(t, str)]
        encoded = self.tok.encode_batch(good) if good else []
        vocab = self.layout.text_vocab_size
        checked: list[np.ndarray | BadField] = list(encoded)
        if encoded:  # one range check for the chunk; per caption only if it fails
            flat = np.concatenate(encoded)
            if flat.size and (flat.min() < 0 or flat.max() >= vocab):
                checked = [BadField("caption", f"text id outside [0, {vocab})")
                           if x.size and (x.min() < 0 or x.max() >= vocab) else x for x in encoded]
        ids = iter(checked)
        for (key, image, image_field, _, caption_field), text in zip(items, texts):
            sid = f"{name}/{key}"
            try:
                if isinstance(text, BadField):
                    raise text
                caption_ids = next(ids)
                if isinstance(caption_ids, BadField):
                    raise BadField(caption_field, caption_ids.reason)
                row = caption_row(self.image(image, image_field), caption_ids, self.layout)
            except BadField as e:
                yield Record(sid, skip_reason=f"{path}: record {key!r}: field {e.field!r}: {e.reason}")
                continue
            yield Record(sid, row)
