"""Reading each caption input format into (record key, image bytes | BadField, image field,
caption value, caption field) items; the reading half of the caption converter.

  tar      WebDataset / img2dataset shards: `KEY.jpg|jpeg|png|webp` + `KEY.txt` or a caption field of
           `KEY.json`; read with webdataset's tar iteration and key grouping.
  csv      a captions CSV next to an image folder (columns file/image and caption/text).
  jsonl    the same as JSON lines.
  coco     COCO caption JSON (`images` id/file_name, `annotations` image_id/caption) + image folder.
  parquet  Parquet with an image column (bytes, {"bytes", "path"} struct or a path) and a text column.
  hf       a `datasets` directory written by `save_to_disk` (an `Image` feature or the same columns).

Annotations name image files, and annotation files travel between people: a path is read only
if it resolves inside the image root (`--image-root`, else the annotation file's folder), only
if it is a regular file (never a device or a FIFO), and only up to a size limit. Anything else is
a bad record naming file, record and field. A CSV row with an unterminated quote is a bad record
of its own: reading starts again at the next line, so it never swallows the rows after it.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tokenizer_kit.errors import first_line

from ..base import SourceError
from .decode import BadField
from ..hf_datasets import hf_kind, load_dataset

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # tar member suffixes, in order of preference
IMAGE_COLUMNS = ("image", "file", "file_name", "filename", "image_path", "img", "jpg", "png", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")
MAX_IMAGE_BYTES = 64 * 2**20  # an image file larger than this is a bad record
BOM = "\ufeff"
_EXT_FORMAT = {".tar": "tar", ".csv": "csv", ".jsonl": "jsonl", ".json": "coco", ".parquet": "parquet"}


# --- image files named by annotations ----------------------------------------------------------

@dataclass(frozen=True)
class ImageFiles:
    """Reads the image files that annotations name, keeping them inside `root`."""

    root: str
    allow_outside: bool = False
    max_bytes: int = MAX_IMAGE_BYTES

    def read(self, rel, field: str) -> bytes:
        if not isinstance(rel, str) or not rel:
            raise BadField(field, "missing image path" if rel is None or rel == "" else
                           f"image path is {type(rel).__name__}, expected text")
        if "\x00" in rel:
            raise BadField(field, f"image path {rel!r} holds a NUL character")
        path = os.path.join(self.root, rel)  # an absolute `rel` replaces the root
        if not self.allow_outside:
            if os.path.isabs(rel):
                raise BadField(field, f"absolute image path {rel!r} is outside the image root {self.root} "
                                      "(--allow-outside-root reads it)")
            real, base = os.path.realpath(path), os.path.realpath(self.root)
            if os.path.commonpath([real, base]) != base:
                raise BadField(field, f"image path {rel!r} resolves to {real}, outside the image root "
                                      f"{self.root} (--allow-outside-root reads it)")
        try:  # non-blocking, so a FIFO cannot hang the open; it is refused below
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise BadField(field, f"image file not found: {path}") from None
        except OSError as e:
            raise BadField(field, f"cannot read image file {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadField(field, f"{path} is not a regular file")
            if st.st_size > self.max_bytes:
                raise BadField(field, f"image file {path} has {st.st_size} bytes, over the limit of "
                                      f"{self.max_bytes} (--max-image-bytes)")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as e:
            raise BadField(field, f"cannot read image file {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise BadField(field, f"image file {path} grew over the limit of {self.max_bytes} bytes while read")
        return data

    def read_or_bad(self, rel, field: str):
        try:
            return self.read(rel, field)
        except BadField as e:
            return e


def _loads(text, field: str):
    """json.loads whose failures (bad syntax, nesting too deep for the parser) are BadFields."""
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        return BadField(field, "not UTF-8")
    except json.JSONDecodeError as e:
        return BadField(field, f"not valid JSON ({e.msg})")
    except RecursionError:
        return BadField(field, "JSON nested too deeply to read")


# --- tars --------------------------------------------------------------------------------------

def _check_tar_end(path: str) -> None:
    """A complete tar ends with two zero blocks; tarfile's stream reader stops silently without them."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(0, size - 1024))
            tail = f.read(1024)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    if size % 512 or len(tail) < 1024 or tail.count(0) != 1024:
        raise SourceError(f"{path}: truncated tar ({size} bytes, no end-of-archive blocks)")


def tar_records(path: str, caption_field: str | None):
    from webdataset.tariterators import group_by_keys, tar_file_expander  # noqa: PLC0415 - imports torch: 1.3 s

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
        meta = _loads(s["json"], "json")
        if isinstance(meta, BadField):
            return key, image, ext or "image", meta, "json"
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


# --- CSV and JSON lines ------------------------------------------------------------------------

def _swallowed(lines: list[str], width: int) -> bool:
    """Whether lines that a quoted field ran over are rows of their own (the quote was unterminated)."""
    for line in lines:
        try:
            rec = next(csv.reader([line]), [])
        except csv.Error:
            continue
        if len(rec) == width and rec[0].strip():
            return True
    return False


def _csv_rows(lines: list[str], path: str) -> tuple[list, list]:
    """(column names, rows) of CSV lines; a record that cannot be read (an unterminated quote, a
    stray quote) is a BadField, and reading starts again at the line after its first one."""
    header: list[str] | None = None
    rows: list = []
    i, n = 0, len(lines)
    while i < n:
        reader = csv.reader((lines[j] for j in range(i, n)), strict=True)
        start = i
        try:
            for rec in reader:
                first, i = i, start + reader.line_num
                if header is None:
                    header = rec
                    continue
                if not rec:
                    continue  # a blank line
                if i - first > 1 and _swallowed(lines[first + 1:i], len(header)):
                    rows.append(BadField(f"line {first + 1}", "unterminated quote (the field runs over the "
                                                              "next rows)"))
                    i = first + 1
                    break
                rows.append(dict(zip(header, rec)))
            else:
                break
        except csv.Error as e:
            if header is None:
                raise SourceError(f"{path}: line {i + 1}: not a readable CSV header ({e})") from None
            rows.append(BadField(f"line {i + 1}", f"not a readable CSV record ({e})"))
            i += 1
    return header or [], rows


@functools.lru_cache(maxsize=2)
def table_file(path: str, fmt: str) -> tuple[list, list]:
    """(column names, rows) of a CSV or JSONL file; bytes that are not UTF-8 survive as surrogates so
    the record and field that hold them can be named. Cached: each work unit is a range of it."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="" if fmt == "csv" else None) as f:
            lines = list(f)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    if lines and lines[0].startswith(BOM):  # a UTF-8 byte-order mark is not part of the first name
        lines[0] = lines[0][1:]
    if fmt == "csv":
        return _csv_rows(lines, path)
    rows, cols = [], {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        obj = _loads(line, f"line {i + 1}")
        if isinstance(obj, dict):
            cols.update(dict.fromkeys(obj))
        elif not isinstance(obj, BadField):
            obj = BadField(f"line {i + 1}", f"expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return list(cols), rows


def table_records(path: str, fmt: str, start: int, stop: int, image_field, caption_field, files: ImageFiles):
    cols, rows = table_file(path, fmt)
    img_col = _pick(cols, image_field, IMAGE_COLUMNS, path, "image")
    cap_col = _pick(cols, caption_field, CAPTION_COLUMNS, path, "caption")
    for i in range(start, min(stop, len(rows))):
        r = rows[i]
        if isinstance(r, BadField):
            yield str(i), r, r.field, None, cap_col
            continue
        yield str(i), files.read_or_bad(r.get(img_col), img_col), img_col, r.get(cap_col) or None, cap_col


# --- COCO --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def coco_index(path: str, mode: str) -> list[tuple]:
    """[(record key, file_name, caption)] of a COCO caption file, in file order."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:  # -sig: a byte-order mark is no JSON
            d = json.load(f)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise SourceError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
        raise SourceError(f"{path}: not a COCO caption file (needs 'images' and 'annotations' lists)")
    files = {_hashable(im.get("id")): im.get("file_name") for im in d["images"] if isinstance(im, dict)}
    anns = [a for a in d["annotations"] if isinstance(a, dict)]
    if mode == "all":
        return [(str(a.get("id", i)), files.get(_hashable(a.get("image_id")), BadField("image_id", f"unknown image id "
                 f"{a.get('image_id')!r}")), a.get("caption")) for i, a in enumerate(anns)]
    first: dict[object, object] = {}
    for a in anns:
        first.setdefault(_hashable(a.get("image_id")), a.get("caption"))
    return [(str(im_id), fn, first.get(im_id)) for im_id, fn in files.items()]


def _hashable(value):
    """An id as a dict key: lists and objects (which a hostile file may hold) by their JSON text."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value, sort_keys=True)


def coco_records(path: str, mode: str, start: int, stop: int, files: ImageFiles):
    for key, fn, cap in coco_index(path, mode)[start:stop]:
        image = fn if isinstance(fn, BadField) else files.read_or_bad(fn, "file_name")
        yield key, image, "file_name", cap, "caption"


# --- Parquet and datasets directories ----------------------------------------------------------

def _pylist(column) -> list:
    """Values of an Arrow column; a string column whose bytes are not UTF-8 (a damaged file) comes
    back as bytes, so the record that holds them is named rather than the whole read failing."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()).to_pylist()


def arrow_records(table, start: int, image_col: str, caption_col: str, files: ImageFiles):
    """Rows of an Arrow table: images as bytes, {"bytes", "path"} structs (datasets Image) or paths."""
    images = _pylist(table.column(image_col))
    captions = _pylist(table.column(caption_col))
    for j, (img, cap) in enumerate(zip(images, captions)):
        if isinstance(img, dict):
            img = img.get("bytes") or (files.read_or_bad(img.get("path"), image_col) if img.get("path") else None)
        elif isinstance(img, str):
            img = files.read_or_bad(img, image_col)
        if img is None:
            img = BadField(image_col, "missing image (null)")
        elif not isinstance(img, (bytes, BadField)):
            img = BadField(image_col, f"image is {type(img).__name__} (column type "
                                      f"{table.schema.field(image_col).type}), expected encoded bytes or a path")
        yield str(start + j), img, image_col, cap, caption_col


def arrow_columns(schema, image_field, caption_field, path: str) -> tuple[str, str]:
    names = schema.names
    img = image_field
    if img is None:  # a datasets Image feature is a struct with a "bytes" field
        img = next((f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0),
                   None)
    return (_pick(names, img, IMAGE_COLUMNS, path, "image"),
            _pick(names, caption_field, CAPTION_COLUMNS, path, "caption"))


def parquet_file(path: str):
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad files
        raise SourceError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


@functools.lru_cache(maxsize=2)
def hf_dataset(path: str):
    return load_dataset(path).with_format("arrow")


# --- inputs ------------------------------------------------------------------------------------

def detect_format(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        if hf_kind(p) is not None:
            return "hf"
        raise SourceError(f"{path}: a directory that is not a datasets directory")
    fmt = _EXT_FORMAT.get(p.suffix.lower())
    if fmt is None:
        raise SourceError(f"{path}: unknown input format (extension {p.suffix or 'none'}); pass --input-format")
    return fmt


def expand_inputs(inputs: Sequence[str], fmt: str) -> list[tuple[str, str]]:
    """(path, format) of every input; a plain directory stands for its tars (else parquet files)."""
    out = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(f"input not found: {raw}")
        if p.is_dir() and fmt in ("auto", "tar", "parquet") and hf_kind(p) is None:
            for ext, f in ((".tar", "tar"), (".parquet", "parquet")):
                files = sorted(str(x) for x in p.iterdir() if x.suffix == ext and x.is_file())
                if files and fmt in ("auto", f):
                    out += [(x, f) for x in files]
                    break
            else:
                raise SourceError(f"{raw}: no .tar or .parquet files and not a datasets directory")
            continue
        out.append((str(p), detect_format(str(p)) if fmt == "auto" else fmt))
    if not out:
        raise SourceError("no inputs")
    return out


