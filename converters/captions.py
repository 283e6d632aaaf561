"""Image-caption pairs -> rows (issue 3; SPEC 3-4): image patches, then the caption + end-of-text.

Sources, picked by extension or `--input-format`:
  tar      WebDataset / img2dataset shards: `KEY.jpg|jpeg|png|webp` + `KEY.txt` or a caption field of
           `KEY.json`; read with webdataset's tar iteration and key grouping.
  csv      a captions CSV next to an image folder (columns file/image and caption/text).
  jsonl    the same as JSON lines.
  coco     COCO caption JSON (`images` id/file_name, `annotations` image_id/caption) + image folder.
  parquet  Parquet with an image column (bytes, {"bytes", "path"} struct or a path) and a text column.
  hf       a `datasets` directory written by `save_to_disk` (an `Image` feature or the same columns).
A directory that is not a `datasets` directory stands for its `*.tar` (else `*.parquet`) files.

Every image becomes the same grid (`--image-size`, default 192x192 = 144 patches, so the paper's
"up to 5 pairs" plus their captions fit one 1024-token sequence; 224 would not), by a bilinear
resize or an aspect-keeping resize + zero padding at the bottom/right (`--fit pad`). JPEGs are
decoded by libjpeg-turbo (simplejpeg) at the smallest of its M/8 DCT scales that still covers the
target, then resized bilinearly for the rest: a 256 px JPEG decodes straight to 192 px at 3/4
(about 2x faster than Pillow's decode + resize, and closer to a Lanczos reference); others go
through Pillow, with `Image.draft` (1/2, 1/4, 1/8) for large JPEGs.
Bad records are yielded with a one-line `skip_reason` naming file, record and field; a tar that is
truncated or whose members are not grouped by key is refused as a whole (SourceError).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import struct
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo's DCT scaling by M/8 (Pillow's draft offers only 1/2, 1/4, 1/8)
    import simplejpeg
except ImportError:  # pragma: no cover - Pillow alone still converts everything
    simplejpeg = None

from tokenizer_kit.images import FIT_POLICIES, MAX_PIXELS, fit_image, patch_positions, patchify
from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_SIZE, PATCH_SLOT, TEXT, VocabLayout
from tokenizer_kit.sequence import Row
from tokenizer_kit.text import TextTokenizer

from .base import Record, SourceError, WorkUnit

FORMATS = ("auto", "tar", "csv", "jsonl", "coco", "parquet", "hf")
DEFAULT_IMAGE_SIZE = 192
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # tar member suffixes, in order of preference
IMAGE_COLUMNS = ("image", "file", "file_name", "filename", "image_path", "img", "jpg", "png", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")
ENCODE_BATCH = 256  # records whose captions are tokenised in one SentencePiece call
_EXT_FORMAT = {".tar": "tar", ".csv": "csv", ".jsonl": "jsonl", ".json": "coco", ".parquet": "parquet"}


# --- command line ------------------------------------------------------------------------------

def parse_image_size(text: str) -> tuple[int, int] | None:
    """`N` (square), `HxW`, or `native` (each image keeps its own size, fitted to 16s)."""
    if text == "native":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x")) if "x" in text.lower() else (int(text),) * 2
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, HxW or native, got {text!r}") from None
    if h <= 0 or w <= 0 or h % PATCH_SIZE or w % PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"image size {h}x{w} must be positive multiples of the "
                                         f"{PATCH_SIZE}-pixel patch")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("captions")
    g.add_argument("--input-format", choices=FORMATS, default="auto",
                   help="source format (auto: by extension; a directory is a datasets dir or its tars)")
    g.add_argument("--image-size", type=parse_image_size, default=(DEFAULT_IMAGE_SIZE,) * 2, metavar="N|HxW|native",
                   help=f"size every image is fitted to (default {DEFAULT_IMAGE_SIZE}: 144 patches)")
    g.add_argument("--fit", choices=FIT_POLICIES, default="resize",
                   help="resize: stretch to the size; pad: keep the aspect ratio, zero-pad bottom/right")
    g.add_argument("--image-field", default=None,
                   help=f"image column (CSV/JSONL/Parquet/datasets); default the first of {', '.join(IMAGE_COLUMNS)}")
    g.add_argument("--caption-field", default=None,
                   help="caption column, or field of a tar's KEY.json; default the first of "
                        f"{', '.join(CAPTION_COLUMNS)} (tars: KEY.txt first)")
    g.add_argument("--image-root", default=None,
                   help="folder that relative image paths are under (default: the captions file's folder)")
    g.add_argument("--coco-captions", choices=("all", "first"), default="all",
                   help="COCO: one row per caption (all) or per image with its first caption (first)")
    g.add_argument("--records-per-unit", type=int, default=10000,
                   help="records per work unit of CSV/JSONL/COCO/Parquet/datasets inputs (tars: one each)")


def make_converter(args: argparse.Namespace) -> "CaptionConverter":
    """From parsed options; convert.py has put the loaded tokenizer and layout on `args`."""
    tok = getattr(args, "tokenizer", None)
    if tok is None:
        if not getattr(args, "text_tokenizer", None):
            raise SourceError("captions need a SentencePiece model: pass --text-tokenizer MODEL")
        tok = TextTokenizer(args.text_tokenizer)
    layout = getattr(args, "layout", None) or tok.layout(getattr(args, "layout_profile", None) or "gato")
    return CaptionConverter(
        args.inputs, tok, layout, input_format=args.input_format, image_size=args.image_size, fit=args.fit,
        image_field=args.image_field, caption_field=args.caption_field, image_root=args.image_root,
        coco_captions=args.coco_captions, records_per_unit=args.records_per_unit)


# --- images ------------------------------------------------------------------------------------

class BadField(Exception):
    """A record's field that cannot be converted; becomes `FILE: record KEY: field F: reason`."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) from a PNG header, to name a 0-pixel PNG that Pillow refuses to open."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


@dataclass(frozen=True)
class ImageFit:
    """Decode one encoded image and fit it to `size` (H, W) or, if None, to its own 16-multiple."""

    size: tuple[int, int] | None = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    fit: str = "resize"

    def _scaled(self, h: int, w: int) -> tuple[int, int]:
        """Size the image is resized to before padding (pad keeps the aspect ratio)."""
        th, tw = self.size
        if self.fit == "resize":
            return th, tw
        s = min(th / h, tw / w)
        return min(th, max(1, round(h * s))), min(tw, max(1, round(w * s)))

    def __call__(self, data: bytes, field: str = "image") -> np.ndarray:
        if not data:
            raise BadField(field, "image is empty (0 bytes)")
        if self.size is not None and data[:2] == b"\xff\xd8" and simplejpeg is not None:
            rgb = self._jpeg(data, field)
            if rgb is not None:
                return rgb
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadField(field, f"refused before decoding: {str(e).splitlines()[0]}") from None
        except UnidentifiedImageError:
            wh = _png_size(data)
            if wh is not None and 0 in wh:
                raise BadField(field, f"image has 0 pixels ({wh[0]}x{wh[1]})") from None
            raise BadField(field, "not a readable image (unknown format or corrupt header)") from None
        except Exception as e:  # Pillow raises many types on bad headers
            msg = str(e).splitlines()[0] if str(e) else ""
            raise BadField(field, f"corrupt image header ({type(e).__name__}: {msg})") from None
        w, h = im.size
        if w * h == 0:
            raise BadField(field, f"image has 0 pixels ({w}x{h})")
        if w * h > MAX_PIXELS:
            raise BadField(field, f"image of {w}x{h} pixels exceeds the limit of {MAX_PIXELS} "
                                  "(decompression bomb?); refused before decoding")
        scaled = self._scaled(h, w) if self.size is not None else None
        fmt = im.format or "image"
        try:
            if scaled is not None and im.format == "JPEG":
                im.draft("RGB" if im.mode == "RGB" else None, (scaled[1], scaled[0]))  # DCT scaling
            im.load()  # decodes
            if im.mode != "RGB":
                im = im.convert("RGB")
            if scaled is not None and im.size != (scaled[1], scaled[0]):
                im = im.resize((scaled[1], scaled[0]), Image.BILINEAR)
            rgb = np.frombuffer(im.tobytes(), np.uint8).reshape(im.height, im.width, 3)  # one copy, not two
        except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError, ...
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadField(field, f"cannot decode {fmt} data: {msg}") from None
        if self.size is None:
            return fit_image(rgb, self.fit)
        return self._pad(rgb)

    def _pad(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[:2] != self.size:  # pad: bottom/right zeros
            out = np.zeros(self.size + (3,), np.uint8)
            out[:rgb.shape[0], :rgb.shape[1]] = rgb
            rgb = out
        return rgb

    def _jpeg(self, data: bytes, field: str) -> np.ndarray | None:
        """A YCbCr or grey JPEG decoded by libjpeg-turbo at the smallest of its M/8 DCT scales that
        keeps the fitted size (3/4 takes 256 px straight to 192: no resize left, and closer to a
        Lanczos reference than decode + bilinear), then bilinear for what is left. None: let
        Pillow do it (CMYK, anything simplejpeg refuses; Pillow's messages name what is wrong)."""
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace not in ("YCbCr", "Gray") or not 0 < w * h <= MAX_PIXELS:
            return None
        sh, sw = self._scaled(h, w)
        try:
            rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=sh, min_width=sw)
        except ValueError:  # corrupt or truncated (strict): Pillow says which
            return None
        if rgb.shape[:2] != (sh, sw):
            rgb = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.BILINEAR))
        return self._pad(rgb)


# --- rows --------------------------------------------------------------------------------------

_NO_STEPS = np.zeros(0, np.int32)
_NO_STEPS.setflags(write=False)


@functools.lru_cache(maxsize=64)
def _positions(h: int, w: int, patch: int, bins: int) -> np.ndarray:
    """Patch positions of an image size: the same for every image of that size, so shared (read-only)."""
    pos = patch_positions(h, w, patch, bins)
    pos.setflags(write=False)
    return pos


def _caption_row(rgb: np.ndarray, ids: np.ndarray, layout: VocabLayout) -> Row:
    """`build_caption_row(rgb, ids, layout)` for a fitted image and checked ids, the same arrays
    (tests hold them equal) without its per-row position maths and concatenations: each column is
    written once into its final array."""
    patches = patchify(rgb, layout.patch_size)
    n = len(patches)
    eos = layout.eos_id >= 0 and (len(ids) == 0 or ids[-1] != layout.eos_id)
    total = n + len(ids) + eos
    tokens = np.empty(total, np.int32)
    tokens[:n] = PATCH_SLOT
    tokens[n:n + len(ids)] = ids
    if eos:
        tokens[-1] = layout.eos_id
    loss = np.zeros(total, np.uint8)
    loss[n:] = 1
    modality = np.full(total, TEXT, np.uint8)
    modality[:n] = IMAGE
    return Row(tokens, loss, np.full(total, NO_POSITION, np.int16), modality, _NO_STEPS, patches,
               _positions(rgb.shape[0], rgb.shape[1], layout.patch_size, layout.position_bins))


# --- captions ----------------------------------------------------------------------------------

def caption_text(value, field: str) -> str:
    """A caption as text: bytes must be UTF-8, str must not carry undecodable bytes (surrogates)."""
    if value is None:
        raise BadField(field, "missing caption")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadField(field, f"caption is not UTF-8 (byte 0x{value[e.start]:02x} at offset {e.start})") from None
    if not isinstance(value, str):
        raise BadField(field, f"caption is {type(value).__name__}, expected text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # read with surrogateescape: the file had bytes that are not UTF-8
        raise BadField(field, f"caption is not UTF-8 (undecodable byte at character {e.start})") from None
    value = value.strip()
    if not value:
        raise BadField(field, "missing caption (empty text)")
    return value


# --- sources: each yields (record key, image bytes | BadField, image field, caption value, caption field) ---

def _read_file(root: Path, rel, field: str) -> bytes:
    if not isinstance(rel, str) or not rel:
        raise BadField(field, "missing image path")
    p = root / rel
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise BadField(field, f"image file not found: {p}") from None
    except OSError as e:
        raise BadField(field, f"cannot read image file {p}: {e.strerror}") from None


def _check_tar_end(path: str) -> None:
    """A complete tar ends with two zero blocks; tarfile's stream reader stops silently without them."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 1024))
        tail = f.read(1024)
    if size % 512 or len(tail) < 1024 or tail.count(0) != 1024:
        raise SourceError(f"{path}: truncated tar ({size} bytes, no end-of-archive blocks)")


def _tar_records(path: str, caption_field: str | None):
    from webdataset.tariterators import group_by_keys, tar_file_expander

    _check_tar_end(path)
    seen: set[str] = set()
    incomplete = []  # yielded after the whole tar is read, so an ungrouped tar is reported as such
    prev = None
    with open(path, "rb") as f:
        try:
            for s in group_by_keys(tar_file_expander([{"url": path, "stream": f}])):
                key = s["__key__"]
                if key in seen:
                    members = ", ".join(f"{key}.{k}" for k in s if not k.startswith("__"))
                    raise SourceError(f"{path}: record {key!r}: field {members!r}: tar members not grouped by "
                                      f"key ({key!r} appears again after {prev!r})")
                seen.add(key)
                prev = key
                item = _tar_sample(s, caption_field)
                if isinstance(item[1], BadField) or isinstance(item[3], BadField):
                    k, image, ifield, caption, cfield = item  # keep the reason, not the bytes
                    incomplete.append((k, image if isinstance(image, BadField) else None, ifield,
                                       caption if isinstance(caption, BadField) else None, cfield))
                else:
                    yield item
        except (tarfile.TarError, EOFError, ValueError) as e:
            if isinstance(e, SourceError):
                raise
            msg = str(e.args[0] if e.args else e).split(" @ ")[0]
            if "duplicate file name" in msg:  # group_by_keys: KEY.ext twice in a row
                raise SourceError(f"{path}: member {msg.split(':')[0]!r} appears twice (duplicate key)") from None
            raise SourceError(f"{path}: truncated or corrupt tar after record {prev!r} ({msg})") from None
    yield from incomplete


def _tar_sample(s: dict, caption_field: str | None):
    key = s["__key__"]
    ext = next((e for e in IMAGE_EXTS if e in s), None)
    image = s[ext] if ext else BadField("|".join(IMAGE_EXTS), "no image member (.jpg/.jpeg/.png/.webp)")
    if "txt" in s:
        return key, image, ext or "image", s["txt"], "txt"
    if "json" in s:
        try:
            meta = json.loads(s["json"])
        except UnicodeDecodeError:
            return key, image, ext or "image", BadField("json", "not UTF-8"), "json"
        except json.JSONDecodeError as e:
            return key, image, ext or "image", BadField("json", f"not valid JSON ({e.msg})"), "json"
        names = (caption_field,) if caption_field else CAPTION_COLUMNS
        name = next((n for n in names if isinstance(meta, dict) and n in meta), names[0])
        value = meta.get(name) if isinstance(meta, dict) else None
        return key, image, ext or "image", value if value is not None else BadField(
            f"json.{name}", "missing caption"), f"json.{name}"
    return key, image, ext or "image", BadField("txt", "missing caption (no .txt member, no .json)"), "txt"


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], path: str, what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise SourceError(f"{path}: no {what} column {wanted!r} (has {', '.join(map(str, columns))})")
        return wanted
    for c in defaults:
        if c in columns:
            return c
    raise SourceError(f"{path}: no {what} column (looked for {', '.join(defaults)}; has "
                      f"{', '.join(map(str, columns))}; name it with --{what}-field)")


@functools.lru_cache(maxsize=2)
def _table_file(path: str, fmt: str) -> tuple[list, list]:
    """(column names, rows) of a CSV or JSONL file; bytes that are not UTF-8 survive as surrogates so
    the record and field that hold them can be named. Cached: each work unit is a range of it."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="" if fmt == "csv" else None) as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            rows = []
            try:
                for r in reader:
                    rows.append(r)
            except csv.Error as e:
                raise SourceError(f"{path}: record {len(rows)}: not a readable CSV file ({e})") from None
            return list(reader.fieldnames or []), rows
        rows, cols = [], {}
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                obj = BadField(f"line {i + 1}", f"not valid JSON ({e.msg})")
            if isinstance(obj, dict):
                cols.update(dict.fromkeys(obj))
            elif not isinstance(obj, BadField):
                obj = BadField(f"line {i + 1}", f"expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
        return list(cols), rows


def _table_records(path: str, fmt: str, start: int, stop: int, image_field, caption_field, root: Path):
    cols, rows = _table_file(path, fmt)
    img_col = _pick(cols, image_field, IMAGE_COLUMNS, path, "image")
    cap_col = _pick(cols, caption_field, CAPTION_COLUMNS, path, "caption")
    for i in range(start, min(stop, len(rows))):
        r = rows[i]
        if isinstance(r, BadField):
            yield str(i), r, r.field, None, cap_col
            continue
        try:
            image = _read_file(root, r.get(img_col), img_col)
        except BadField as e:
            image = e
        yield str(i), image, img_col, r.get(cap_col) or None, cap_col


@functools.lru_cache(maxsize=2)
def _coco_index(path: str, mode: str) -> list[tuple]:
    """[(record key, file_name, caption)] of a COCO caption file, in file order."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
        raise SourceError(f"{path}: not a COCO caption file (needs 'images' and 'annotations' lists)")
    files = {im.get("id"): im.get("file_name") for im in d["images"] if isinstance(im, dict)}
    anns = [a for a in d["annotations"] if isinstance(a, dict)]
    if mode == "all":
        return [(str(a.get("id", i)), files.get(a.get("image_id"), BadField("image_id", f"unknown image id "
                 f"{a.get('image_id')!r}")), a.get("caption")) for i, a in enumerate(anns)]
    first = {}
    for a in anns:
        first.setdefault(a.get("image_id"), a.get("caption"))
    return [(str(im_id), fn, first.get(im_id)) for im_id, fn in files.items()]


def _coco_records(path: str, mode: str, start: int, stop: int, root: Path):
    for key, fn, cap in _coco_index(path, mode)[start:stop]:
        try:
            image = fn if isinstance(fn, BadField) else _read_file(root, fn, "file_name")
        except BadField as e:
            image = e
        yield key, image, "file_name", cap, "caption"


def _arrow_records(table, start: int, image_col: str, caption_col: str, root: Path):
    """Rows of an Arrow table: images as bytes, {"bytes", "path"} structs (datasets Image) or paths."""
    images = table.column(image_col).to_pylist()
    captions = table.column(caption_col).to_pylist()
    for j, (img, cap) in enumerate(zip(images, captions)):
        if isinstance(img, dict):
            img = img.get("bytes") or (_safe_read(root, img.get("path"), image_col) if img.get("path") else None)
        elif isinstance(img, str):
            img = _safe_read(root, img, image_col)
        if img is None:
            img = BadField(image_col, "missing image (null)")
        yield str(start + j), img, image_col, cap, caption_col


def _safe_read(root: Path, rel, field: str):
    try:
        return _read_file(root, rel, field)
    except BadField as e:
        return e


def _arrow_columns(schema, image_field, caption_field, path: str) -> tuple[str, str]:
    import pyarrow as pa
    names = schema.names
    img = image_field
    if img is None:  # a datasets Image feature is a struct with a "bytes" field
        img = next((f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0), None)
    return _pick(names, img, IMAGE_COLUMNS, path, "image"), _pick(names, caption_field, CAPTION_COLUMNS, path, "caption")


def _parquet_file(path: str):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad files
        raise SourceError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


@functools.lru_cache(maxsize=2)
def _hf_dataset(path: str):
    import datasets
    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as e:
        raise SourceError(f"{path}: not a datasets directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise SourceError(f"{path}: a DatasetDict; pass one split's folder ({', '.join(ds)})")
    return ds.with_format("arrow")


# --- the converter -----------------------------------------------------------------------------

def _detect(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            return "hf"
        raise SourceError(f"{path}: a directory that is not a datasets directory")
    fmt = _EXT_FORMAT.get(p.suffix.lower())
    if fmt is None:
        raise SourceError(f"{path}: unknown input format (extension {p.suffix or 'none'}); pass --input-format")
    return fmt


def _expand(inputs: Sequence[str], fmt: str) -> list[tuple[str, str]]:
    """(path, format) of every input; a plain directory stands for its tars (else parquet files)."""
    out = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(f"input not found: {raw}")
        if p.is_dir() and fmt in ("auto", "tar", "parquet") and not (p / "state.json").exists() \
                and not (p / "dataset_dict.json").exists():
            for ext, f in ((".tar", "tar"), (".parquet", "parquet")):
                files = sorted(str(x) for x in p.iterdir() if x.suffix == ext and x.is_file())
                if files and fmt in ("auto", f):
                    out += [(x, f) for x in files]
                    break
            else:
                raise SourceError(f"{raw}: no .tar or .parquet files and not a datasets directory")
            continue
        out.append((str(p), _detect(str(p)) if fmt == "auto" else fmt))
    if not out:
        raise SourceError("no inputs")
    return out


class CaptionConverter:
    """Image-caption sources -> caption rows; one unit per tar, record ranges of the other formats."""

    name = "captions"
    rl = False

    def __init__(self, inputs: Sequence[str], text_tokenizer: TextTokenizer, layout: VocabLayout, *,
                 input_format: str = "auto", image_size: tuple[int, int] | None = (DEFAULT_IMAGE_SIZE,) * 2,
                 fit: str = "resize", image_field: str | None = None, caption_field: str | None = None,
                 image_root: str | None = None, coco_captions: str = "all", records_per_unit: int = 10000):
        if fit not in FIT_POLICIES:
            raise SourceError(f"unknown --fit {fit!r}; expected one of {', '.join(FIT_POLICIES)}")
        if records_per_unit <= 0:
            raise SourceError(f"--records-per-unit must be positive, got {records_per_unit}")
        self.tok, self.layout = text_tokenizer, layout
        self.image = ImageFit(tuple(image_size) if image_size is not None else None, fit)
        self.image_field, self.caption_field = image_field, caption_field
        self.image_root = image_root
        self.coco_captions, self.records_per_unit = coco_captions, records_per_unit
        self.input_format = input_format
        self.files = _expand(inputs, input_format)
        self.formats = dict(self.files)
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) or "/" for p, _ in self.files])
        self.names = {p: os.path.relpath(os.path.abspath(p), base) for p, _ in self.files}
        self._units: list[WorkUnit] | None = None

    # Work units ---------------------------------------------------------------------------------
    def _count(self, path: str, fmt: str) -> list[tuple[int, int]]:
        n = self.records_per_unit
        if fmt in ("csv", "jsonl"):
            total = len(_table_file(path, fmt)[1])
        elif fmt == "coco":
            total = len(_coco_index(path, self.coco_captions))
        elif fmt == "hf":
            total = len(_hf_dataset(path))
        else:  # parquet: ranges on row-group boundaries, so a unit reads only its own groups
            md = _parquet_file(path).metadata
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

    def work_units(self) -> list[WorkUnit]:
        if self._units is None:
            units = []
            for path, fmt in self.files:
                name = self.names[path]
                if fmt == "tar":
                    units.append(WorkUnit(name, path))
                    continue
                ranges = self._count(path, fmt)
                for a, b in ranges:
                    units.append(WorkUnit(name if len(ranges) == 1 else f"{name}[{a}:{b}]", path, a, b))
            self._units = units
        return self._units

    def options(self) -> dict:
        return {"input_format": self.input_format, "formats": sorted(set(self.formats.values())),
                "image_size": list(self.image.size) if self.image.size else "native", "fit": self.image.fit,
                "resample": "bilinear", "pad": "zeros bottom/right, aspect kept" if self.image.fit == "pad" else None,
                "jpeg_draft": True, "jpeg_dct_scale": simplejpeg is not None, "image_field": self.image_field, "caption_field": self.caption_field,
                "caption_strip": True, "coco_captions": self.coco_captions,
                "records_per_unit": self.records_per_unit}

    # Conversion ---------------------------------------------------------------------------------
    def _records(self, unit: WorkUnit):
        fmt = self.formats.get(unit.path) or _detect(unit.path)
        root = Path(self.image_root) if self.image_root else Path(unit.path).parent
        stop = unit.stop if unit.stop is not None else 1 << 62
        if fmt == "tar":
            return _tar_records(unit.path, self.caption_field)
        if fmt in ("csv", "jsonl"):
            return _table_records(unit.path, fmt, unit.start, stop, self.image_field, self.caption_field, root)
        if fmt == "coco":
            return _coco_records(unit.path, self.coco_captions, unit.start, stop, root)
        if fmt == "hf":
            ds = _hf_dataset(unit.path)
            table = ds[unit.start:min(stop, len(ds))]
            img, cap = _arrow_columns(table.schema, self.image_field, self.caption_field, unit.path)
            return _arrow_records(table, unit.start, img, cap, Path(self.image_root or unit.path))
        if fmt == "parquet":
            return self._parquet_records(unit, stop, root)
        raise SourceError(f"{unit.path}: unknown input format {fmt!r}")

    def _parquet_records(self, unit: WorkUnit, stop: int, root: Path):
        pf = _parquet_file(unit.path)
        img, cap = _arrow_columns(pf.schema_arrow, self.image_field, self.caption_field, unit.path)
        groups, first, pos = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos + n > unit.start and pos < stop:
                groups.append(g)
                first = pos if first is None else first
            pos += n
        if not groups:
            return iter(())
        table = pf.read_row_groups(groups, columns=[img, cap])
        table = table.slice(unit.start - first, min(stop, pos) - unit.start)
        return _arrow_records(table, unit.start, img, cap, root)

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
        if encoded:  # one range check for the chunk; per caption only if it fails
            flat = np.concatenate(encoded)
            if flat.size and (flat.min() < 0 or flat.max() >= vocab):
                encoded = [BadField("caption", f"text id outside [0, {vocab})")
                           if x.size and (x.min() < 0 or x.max() >= vocab) else x for x in encoded]
        ids = iter(encoded)
        for (key, image, image_field, _, caption_field), text in zip(items, texts):
            sid = f"{name}/{key}"
            try:
                if isinstance(text, BadField):
                    raise text
                caption_ids = next(ids)
                if isinstance(caption_ids, BadField):
                    raise BadField(caption_field, caption_ids.reason)
                row = _caption_row(self.image(image, image_field), caption_ids, self.layout)
            except BadField as e:
                yield Record(sid, skip_reason=f"{path}: record {key!r}: field {e.field!r}: {e.reason}")
                continue
            yield Record(sid, row)
