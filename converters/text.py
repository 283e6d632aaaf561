"""Text -> one row per document: SentencePiece ids + end-of-text, loss on all of it (SPEC 4).

Inputs: `.txt` (one document per file, or per blank-line block with `--split blank-line`),
`.jsonl` (a string field, `--text-field`), Parquet files and HF `datasets` directories saved with
`save_to_disk` (a string column). Directories of such files are searched recursively (hidden ones
skipped). With `--split file` a document is a whole file, read at once; use `blank-line` (or .jsonl)
for corpora in big files.

Everything is read lazily: text files line by line, Parquet by record batches, HF datasets
memory-mapped. Big inputs are cut into work units of about `--unit-size` bytes (byte ranges on
document boundaries for text files, row-group ranges for Parquet, row ranges for datasets), so
several workers can share one big file. Row `source_id`s say where each document came from:
`file` (whole file), `file@BYTE` (byte offset of the document or line), `file#ROW` (row index).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Sequence, cast

import pyarrow as pa
import pyarrow.parquet as pq

from tokenizer_kit.errors import first_line
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.options import opt
from tokenizer_kit.text import TextTokenizer
from tokenizer_kit.text_rows import build_text_row

from .base import Record, SourceError, WorkUnit
from .hf_datasets import hf_kind, load_dataset, split_dirs
from .options import ConvertOptions, text_tokenizer_opt

TEXT_SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".parquet": "parquet"}
SPLITS = ("file", "blank-line")
ENCODE_DOCS = 256  # documents per SentencePiece batch call
ENCODE_CHARS = 1 << 20  # ... or this many characters, whichever comes first
ARROW_BATCH_ROWS = 1024
BOM, BOM_BYTES = "\ufeff", b"\xef\xbb\xbf"
# Default work units: the inputs cut into about this many, so that workers (processes or Ray tasks)
# stay busy to the end (3 units of 16 MiB on 2 workers left one idle a third of the time: 1.45x;
# 16 units: 1.8x and more); from the inputs' size only, so a conversion's plan never depends on
# the worker count and resumes with any. Clamped to [1 MiB, 16 MiB].
UNITS_PER_INPUT = 16
UNIT_SIZE_RANGE = (2**20, 16 * 2**20)  # a UTF-8 byte-order mark at the start of a file is not text


@dataclass
class TextOptions(ConvertOptions):
    """Every option of `gato-tokenize text` (the common ones are ConvertOptions')."""

    kind: ClassVar[str] = "text"

    text_tokenizer: str | None = text_tokenizer_opt(required=True)
    split: str = opt("file", ".txt files: one document per file (default) or per blank-line-separated block",
                     choices=SPLITS)
    text_field: str = opt("text", "field of .jsonl records / column of Parquet and HF datasets (default text)",
                          metavar="NAME")
    unit_size: int | None = opt(None, "cut inputs into work units of about this size so workers can share a file "
                                      f"(default: the inputs' bytes / {UNITS_PER_INPUT}, between 1MiB and 16MiB)",
                                size=True, lo=1, metavar="BYTES")


def make_converter(opts: TextOptions, layout: VocabLayout | None = None,
                   tokenizer: TextTokenizer | None = None) -> "TextConverter":
    """From the parsed options; the convert command passes the tokenizer and layout it loaded."""
    if layout is None or tokenizer is None:
        tokenizer, layout = opts.tokenizer_and_layout()
    # a missing tokenizer is refused by TextConverter itself, with the option to give
    return TextConverter(opts.inputs, cast(TextTokenizer, tokenizer), layout, split=opts.split,
                         text_field=opts.text_field, unit_size=opts.unit_size)


def auto_unit_size(files: list[tuple[str, str]]) -> int:
    """Work unit bytes for inputs of this size: their total / UNITS_PER_INPUT, clamped."""
    total = 0
    for path, _ in files:
        p = Path(path)
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    lo, hi = UNIT_SIZE_RANGE
    return int(min(hi, max(lo, total // UNITS_PER_INPUT)))


def _kind_of(path: Path) -> str | None:
    if path.is_dir():
        return {"dict": "hf-dict", "dataset": "hf", None: "dir"}[hf_kind(path)]
    return TEXT_SUFFIXES.get(path.suffix.lower())


def _line_of(path: str, offset: int) -> int:
    """1-based line number of a byte offset (only computed for error messages)."""
    count, pos = 1, 0
    with open(path, "rb") as f:
        while pos < offset:
            block = f.read(min(1 << 22, offset - pos))
            if not block:
                break
            count += block.count(b"\n")
            pos += len(block)
    return count


def _not_utf8(path: str, offset: int, e: UnicodeDecodeError) -> str:
    at = offset + e.start
    return f"{path}: line {_line_of(path, at)} (byte {at}): not UTF-8 text ({e.reason})"


@dataclass
class TextConverter:
    """Documents of text inputs as rows; see the module docstring for inputs and units."""

    inputs: Sequence[str]
    tokenizer: TextTokenizer
    layout: VocabLayout
    split: str = "file"
    text_field: str = "text"
    unit_size: int | None = None  # None: from the inputs' size (UNITS_PER_INPUT)

    name = "text"
    rl = False

    def __post_init__(self):
        if self.tokenizer is None:
            raise SourceError("text conversion needs a SentencePiece model (--text-tokenizer)")

    def options(self) -> dict:
        return {"split": self.split, "text_field": self.text_field, "unit_size": self.unit_size,
                "eos": True}

    # --- planning ------------------------------------------------------------------------------
    def _files(self) -> list[tuple[str, str]]:
        """(path, kind) of every input, directories expanded in sorted order."""
        found: list[tuple[str, str]] = []
        for raw in self.inputs:
            path = Path(raw)
            if not path.exists():
                raise FileNotFoundError(f"input not found: {raw}")
            kind = _kind_of(path)
            if kind == "dir":
                candidates = [sub for sub in sorted(path.rglob("*")) if not any(
                    part.startswith(".") for part in sub.relative_to(path).parts)]
                for sub in candidates:  # a *.txt that cannot be read as one is said, not skipped
                    if not sub.is_dir() and not sub.is_file() and TEXT_SUFFIXES.get(sub.suffix.lower()):
                        what = "a dangling symlink" if sub.is_symlink() and not sub.exists() else "not a regular file"
                        raise SourceError(f"{sub}: {what} (an input folder's {sub.suffix} entries must be files)")
                inside = [(str(sub), k) for sub in candidates
                          if sub.is_file() and (k := _kind_of(sub)) is not None and k != "dir"]
                if not inside:
                    raise SourceError(f"{raw}: no .txt, .jsonl or .parquet files in this directory")
                found.extend(inside)
            elif kind == "hf-dict":
                found.extend((str(d), "hf") for d in split_dirs(path))
            elif kind is None:
                raise SourceError(f"{raw}: unsupported text input (expected .txt, .jsonl, .parquet or a "
                                  f"datasets directory)")
            else:
                found.append((str(path), kind))
        return found

    def work_units(self) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        files = self._files()
        if self.unit_size is None:
            self.unit_size = auto_unit_size(files)
        for path, kind in files:
            try:
                units.extend(self._units_of(path, kind))
            except (SourceError, OSError):  # unreadable: one unit that fails (or is skipped) when converted
                units.append(WorkUnit(path, path))
        return units

    def _units_of(self, path: str, kind: str) -> list[WorkUnit]:
        if kind == "txt" and self.split == "file":
            return [WorkUnit(path, path)]
        if kind in ("txt", "jsonl"):
            bounds = self._byte_bounds(path, kind == "txt")
            return [WorkUnit(f"{path}@{a}", path, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        if kind == "parquet":
            return self._parquet_units(path)
        return self._dataset_units(path)

    def _unit_bytes(self) -> int:
        """unit_size, which work_units sets (from the inputs when not given) before it cuts a unit."""
        assert self.unit_size is not None, "work_units sets unit_size first"
        return self.unit_size

    def _byte_bounds(self, path: str, blank_line: bool) -> list[int]:
        """Unit boundaries of a text file: every ~unit_size bytes, moved forward to the next line
        start (jsonl) or the next document start after a blank line (txt)."""
        size, unit_size = os.path.getsize(path), self._unit_bytes()
        bounds = [0]
        with open(path, "rb") as f:
            nominal = unit_size
            while nominal < size:
                f.seek(nominal - 1)
                f.readline()  # to the first line start at or after nominal
                pos = f.tell()
                if blank_line:
                    seen_blank = False
                    while True:
                        line = f.readline()
                        if not line:
                            pos = size
                            break
                        if not line.strip():
                            seen_blank = True
                        elif seen_blank:
                            break
                        pos += len(line)
                if pos >= size:
                    break
                bounds.append(pos)
                nominal = pos + unit_size
        bounds.append(size)
        return bounds

    def _parquet_units(self, path: str) -> list[WorkUnit]:
        meta = _parquet_file(path).metadata
        units, first, size = [], 0, 0
        for g in range(meta.num_row_groups):
            size += meta.row_group(g).total_byte_size
            if size >= self.unit_size or g == meta.num_row_groups - 1:
                units.append(WorkUnit(f"{path}#rg{first}", path, first, g + 1))
                first, size = g + 1, 0
        return units

    def _dataset_units(self, path: str) -> list[WorkUnit]:
        ds = load_dataset(path)
        n = ds.num_rows
        per_row = max(1, ds.data.nbytes // max(n, 1))
        step = max(1, self.unit_size // per_row)
        return [WorkUnit(f"{path}#{a}", path, a, min(a + step, n)) for a in range(0, n, step)]

    # --- conversion ----------------------------------------------------------------------------
    def convert_unit(self, unit: WorkUnit) -> Iterator[Record]:
        try:
            yield from self._convert_unit(unit)
        except OSError as e:
            raise SourceError(f"{unit.path}: cannot read ({e.strerror or first_line(e)})") from None

    def _convert_unit(self, unit: WorkUnit) -> Iterator[Record]:
        kind = _kind_of(Path(unit.path))
        if kind == "txt":
            docs = self._whole_file(unit.path) if self.split == "file" else self._blocks(unit)
        elif kind == "jsonl":
            docs = self._jsonl(unit)
        elif kind == "parquet":
            docs = self._parquet(unit)
        else:
            docs = self._dataset(unit)
        yield from self._tokenize(docs)

    def _tokenize(self, docs: Iterator[tuple[str, str | None, str | None]]) -> Iterator[Record]:
        """(source_id, text, bad reason) -> Records, SentencePiece called once per batch of docs."""
        ids: list[str] = []
        texts: list[str] = []
        chars = 0

        def flush():
            encoded = self.tokenizer.encode_batch(texts, add_eos=True)
            for sid, tokens in zip(ids, encoded, strict=True):
                yield Record(sid, build_text_row(tokens, self.layout))
            ids.clear()
            texts.clear()

        for sid, text, bad in docs:
            if bad is not None:
                yield Record(sid, skip_reason=bad)
                continue
            assert text is not None  # a document comes with its text or with the reason it is bad
            if not text.strip():
                continue  # an empty document has nothing to learn from
            ids.append(sid)
            texts.append(text)
            chars += len(text)
            if len(texts) >= ENCODE_DOCS or chars >= ENCODE_CHARS:
                yield from flush()
                chars = 0
        if texts:
            yield from flush()

    def _whole_file(self, path: str):
        data = Path(path).read_bytes()
        try:
            yield path, data.decode("utf-8").removeprefix(BOM), None
        except UnicodeDecodeError as e:
            yield path, None, _not_utf8(path, 0, e)

    def _lines(self, unit: WorkUnit) -> Iterator[tuple[int, bytes]]:
        with open(unit.path, "rb") as f:
            f.seek(unit.start)
            pos = unit.start
            stop = unit.stop if unit.stop is not None else float("inf")
            for line in f:
                if pos >= stop:
                    break
                yield pos, line[3:] if pos == 0 and line.startswith(BOM_BYTES) else line
                pos += len(line)

    def _blocks(self, unit: WorkUnit):
        block: list[bytes] = []
        start = unit.start

        def emit():
            data = b"".join(block)
            sid = f"{unit.path}@{start}"
            try:
                return sid, data.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as e:
                return sid, None, _not_utf8(unit.path, start, e)

        for pos, line in self._lines(unit):
            if not line.strip():
                if block:
                    yield emit()
                    block = []
                continue
            if not block:
                start = pos
            block.append(line)
        if block:
            yield emit()

    def _jsonl(self, unit: WorkUnit):
        field = self.text_field
        for pos, line in self._lines(unit):
            sid = f"{unit.path}@{pos}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield sid, None, _not_utf8(unit.path, pos, e)
                continue
            except json.JSONDecodeError as e:
                yield sid, None, f"{unit.path}: line {_line_of(unit.path, pos)}: not JSON ({e.msg})"
                continue
            except RecursionError:
                yield sid, None, f"{unit.path}: line {_line_of(unit.path, pos)}: JSON nested too deeply to read"
                continue
            if not isinstance(obj, dict) or field not in obj:
                yield sid, None, f"{unit.path}: line {_line_of(unit.path, pos)}: field {field!r} is missing"
            elif not isinstance(obj[field], str):
                yield sid, None, (f"{unit.path}: line {_line_of(unit.path, pos)}: field {field!r} is "
                                  f"{type(obj[field]).__name__}, expected a string")
            else:
                yield sid, obj[field], None

    def _column_texts(self, path: str, column, first_row: int):
        """Rows of an Arrow string/binary column; nulls and non-UTF-8 bytes are bad records."""
        field = self.text_field
        binary = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
        try:
            values = column.to_pylist()
        except UnicodeDecodeError:  # a string column whose bytes are not UTF-8 (a damaged file): row by row
            large = pa.types.is_large_string(column.type)
            values, binary = column.cast(pa.large_binary() if large else pa.binary()).to_pylist(), True
        for i, value in enumerate(values):
            row = first_row + i
            sid = f"{path}#{row}"
            if value is None:
                yield sid, None, f"{path}: row {row}: field {field!r} is null"
            elif binary:
                try:
                    yield sid, value.decode("utf-8"), None
                except UnicodeDecodeError as e:
                    yield sid, None, f"{path}: row {row}: field {field!r} is not UTF-8 text ({e.reason})"
            else:
                yield sid, value, None

    def _check_type(self, path: str, schema) -> None:
        if self.text_field not in schema.names:
            raise SourceError(f"{path}: no column {self.text_field!r} (has {', '.join(schema.names)}); "
                              f"set --text-field")
        t = schema.field(self.text_field).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)):
            raise SourceError(f"{path}: column {self.text_field!r} is {t}, expected strings")

    def _parquet(self, unit: WorkUnit):
        pf = _parquet_file(unit.path)
        self._check_type(unit.path, pf.schema_arrow)
        row = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
        stop = pf.num_row_groups if unit.stop is None else unit.stop  # None: the whole file (a unit planned unread)
        for batch in pf.iter_batches(batch_size=ARROW_BATCH_ROWS, row_groups=list(range(unit.start, stop)),
                                     columns=[self.text_field]):
            yield from self._column_texts(unit.path, batch.column(0), row)
            row += batch.num_rows

    def _dataset(self, unit: WorkUnit):
        ds = load_dataset(unit.path)
        self._check_type(unit.path, ds.data.schema)
        table = ds.with_format("arrow")
        stop = len(ds) if unit.stop is None else unit.stop  # None: the whole dataset (a unit planned unread)
        for a in range(unit.start, stop, ARROW_BATCH_ROWS):
            part = table[a:min(a + ARROW_BATCH_ROWS, stop)]
            yield from self._column_texts(unit.path, part.column(self.text_field), a)


def _parquet_file(path: str):
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad files
        raise SourceError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
