"""Episode tables: Parquet files or HF `datasets` directories with one row per episode.

Each list column holds one entry per step. Roles come from column names: `rewards` (or `reward`)
are the rewards, columns whose name contains `action` are actions, every other list column is an
observation; scalar columns (episode ids, seeds) are ignored, except `episode_id` (or `id`), which
names the episode. Kinds come from a name prefix (`continuous_`, `discrete_`, `image_`, `text_`)
or else from the values (float, integer, uint8 (H,W[,3]), string; HF `Image` features and encoded
image bytes are images). Parquet is read row group by row group, HF directories from their
memory-mapped Arrow files, in small record batches.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from converters.base import SourceError
from converters.hf_datasets import load_dataset
from tokenizer_kit.errors import first_line
from tokenizer_kit.images import MAX_PIXELS

from . import FieldInfo, NoRecordedEnv, RawEpisode, guess_kind, task_name

BATCH_ROWS = 16  # episodes per record batch: episodes can be large (images)
KIND_PREFIXES = ("continuous_", "discrete_", "image_", "text_")
REWARD_COLUMNS = ("rewards", "reward")
ID_COLUMNS = ("episode_id", "id")


_CURSOR: list = [None]  # (source, row group, columns, batch rows), next row, pending batch, batch iterator


class Ragged(ValueError):
    """Steps of unequal shape: the column has to be converted row by row."""


def _decode_images(blobs: list) -> np.ndarray | list:
    out = []
    for step, b in enumerate(blobs):
        if b is None:
            raise Ragged("missing image")
        try:  # a damaged or oversized image is its episode's error, found before decoding where it can be
            im = Image.open(io.BytesIO(b))
            if im.width * im.height > MAX_PIXELS:
                raise Ragged(f"image of step {step} has {im.width}x{im.height} pixels, over {MAX_PIXELS}")
            out.append(np.asarray(im))
        except Ragged:
            raise
        except Exception as e:  # Pillow raises many types for bad data
            raise Ragged(f"image of step {step} is not readable ({first_line(e)})") from None
    if out and all(x.shape == out[0].shape and x.dtype == out[0].dtype for x in out):
        return np.stack(out)
    return out


def steps_to_numpy(arr: pa.Array) -> np.ndarray | list:
    """An Arrow array with one entry per step -> (N, *shape) numpy array, or a list for text.

    Nested lists become dimensions (vectorised: flatten, then reshape); raises `Ragged` when
    the steps' shapes differ.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr.type, pa.ExtensionType):  # HF Array2D/3D...
        arr = arr.storage
    if arr.null_count:
        raise Ragged("missing values")
    t = arr.type
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:  # HF Image feature
        return _decode_images(arr.field("bytes").to_pylist())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _decode_images(arr.to_pylist())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return arr.to_pylist()
        except UnicodeDecodeError as e:  # a damaged file: the episode (read row by row) names it
            raise Ragged(f"text that is not UTF-8 ({e.reason})") from None
    if pa.types.is_fixed_size_list(t):
        inner = steps_to_numpy(arr.flatten())
        return np.asarray(inner).reshape(len(arr), t.list_size, *np.shape(inner)[1:])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise Ragged("steps of different lengths")
        inner = steps_to_numpy(arr.flatten())
        if isinstance(inner, list):
            raise Ragged("nested text")
        return inner.reshape(len(arr), int(lengths[0]) if len(lengths) else 0, *inner.shape[1:])
    if pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_dictionary(t):
        raise SourceError(f"unsupported column type {t}")
    return arr.to_numpy(zero_copy_only=False)


def _column_rows(col: pa.Array) -> list:
    """A list column of a batch -> one per-step array (or error string) per row.

    The batch's steps become one numpy array (zero-copy for numbers: the list values' buffer,
    reshaped when the steps are fixed-size lists) and each row is a view of it cut at the list
    offsets: one conversion per batch, none per episode.
    """
    if isinstance(col.type, pa.ExtensionType):
        col = col.storage
    if col.null_count == 0 and pa.types.is_fixed_size_list(col.type):  # e.g. HF Sequence(length=T)
        offsets, valid = np.arange(len(col) + 1) * col.type.list_size, None
    elif col.null_count == 0:
        offsets = col.offsets.to_numpy()  # relative to a slice's first row; offsets[0] may be > 0
        offsets, valid = offsets - offsets[0], None
    else:
        lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        valid = col.is_valid().to_numpy(zero_copy_only=False)
    try:
        steps = steps_to_numpy(col.flatten())
        # a row's steps, why they are bad (ragged), or None (a null row)
        rows: list[np.ndarray | list | str | None] = [steps[offsets[i]:offsets[i + 1]] for i in range(len(col))]
    except Ragged:
        rows = []
        for i in range(len(col)):
            try:
                rows.append(steps_to_numpy(col[i].values) if valid is None or valid[i] else None)
            except Ragged as e:
                rows.append(f"ragged values ({e})")
    if valid is None:
        return rows
    return [r if valid[i] else "missing (null)" for i, r in enumerate(rows)]


def _is_list(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        return True
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _check_numeric_steps(path: str, column: str, t: pa.DataType) -> None:
    """A per-step column that must hold numbers (rewards): a list of ints or floats."""
    t = t.storage_type if isinstance(t, pa.ExtensionType) else t
    value = t.value_type if _is_list(t) else t
    if not _is_list(t):  # one number per episode: the steps' rewards are not there
        raise SourceError(f"{path}: column {column!r} is {t} (one value per episode), expected a list of numbers "
                          f"per episode (one per step)")
    if not (pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value)):
        raise SourceError(f"{path}: column {column!r} is {t}, expected a list of numbers per episode")


SPLIT_NAMES = ("train", "test", "validation", "valid", "eval")


def hf_task_name(p: Path) -> str:
    """A saved HF dataset's task: the config it was loaded as (the jat-dataset's `atari-pong`),
    else its dataset name, else its folder (the folder above a split folder `train`/`test`)."""
    try:
        info = json.loads((p / "dataset_info.json").read_text())
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    for key in ("config_name", "dataset_name"):
        name = info.get(key)
        if isinstance(name, str) and name and name != "default" and "/" not in name and name not in (".", ".."):
            return name
    return p.parent.name if p.name in SPLIT_NAMES and p.parent.name else p.name


class TableSource(NoRecordedEnv):  # the format records no environment: --env-spec gives it
    """A Parquet file or HF datasets directory; episode positions are row numbers."""

    def __init__(self, path: str):
        self.input = self.path = str(path)
        p = Path(path)
        self._hf = p.is_dir()
        self.name = hf_task_name(p) if self._hf else task_name(p)
        schema = self._schema()
        names = schema.names
        rewards = next((c for c in REWARD_COLUMNS if c in names), None)
        if rewards is None:
            raise SourceError(f"{self.path}: no 'rewards' column (columns: {', '.join(names)})")
        self._rewards: str = rewards
        _check_numeric_steps(self.path, self._rewards, schema.field(self._rewards).type)
        self._id = next((c for c in ID_COLUMNS if c in names and not _is_list(schema.field(c).type)), None)
        lists = [f.name for f in schema if _is_list(f.type) and f.name != self._rewards]
        self._act_cols = sorted(c for c in lists if "action" in c)
        self._obs_cols = sorted(c for c in lists if "action" not in c)
        if not self._obs_cols or not self._act_cols:
            raise SourceError(f"{self.path}: needs list columns of observations and of actions "
                              f"(columns: {', '.join(names)})")
        self._fields = self._infer_fields()

    # --- reading -----------------------------------------------------------------------------
    def _schema(self) -> pa.Schema:
        if self._hf:
            return self._hf_table().schema
        return self._parquet().schema_arrow

    def _parquet(self):
        """The Parquet file, opened afresh (a dataset may have thousands: none is kept open) but
        with the footer parsed only once per process."""
        try:
            pf = pq.ParquetFile(self.path, metadata=getattr(self, "_md", None))
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{self.path}: not a readable Parquet file ({first_line(e)})") from None
        self._md = pf.metadata
        return pf

    def _metadata(self):
        return self._md if getattr(self, "_md", None) is not None else self._parquet().metadata

    def __getstate__(self):  # workers reopen the file / memory map themselves
        return {k: v for k, v in self.__dict__.items() if k not in ("_table", "_md")}

    def _hf_table(self) -> pa.Table:
        if getattr(self, "_table", None) is None:
            self._table = self._load_hf()
        return self._table

    def _load_hf(self) -> pa.Table:
        return load_dataset(self.path).data.table  # memory-mapped

    def _batches(self, start: int, stop: int, columns: list[str], rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        try:
            if self._hf:
                yield from self._hf_table().select(columns).slice(start, stop - start).to_batches(rows)
            else:
                yield from self._parquet_batches(start, stop, tuple(columns), rows)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{self.path}: unreadable table data ({first_line(e)})") from None

    def _parquet_batches(self, start: int, stop: int, columns: tuple[str, ...],
                         rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Rows start..stop-1, streamed row group by row group in small batches.

        Parquet cannot seek inside a row group: rows before `start` are decoded and dropped. A
        work unit that ends inside a row group therefore leaves its reader there (`_CURSOR`, one
        per process, so at most one file stays open), and the next unit of this process, which
        usually starts at that row, goes on from it instead of decoding the row group's first rows
        again (up to a fifth of all decoding otherwise).
        """
        pf = None
        meta = self._metadata()
        row = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            lo, hi = max(start, row), min(stop, row + n)
            if lo < hi:
                key = (self, g, columns, rows)  # this reader: a file re-opened later starts afresh
                cursor, _CURSOR[0] = _CURSOR[0], None
                if cursor is not None and cursor[0] == key and cursor[1] <= lo:
                    _, at, pending, it = cursor
                else:
                    at, pending = row, None
                    pf = pf or self._parquet()
                    it = pf.iter_batches(rows, row_groups=[g], columns=list(columns), use_threads=False)
                while at < hi:
                    batch, pending = (pending if pending is not None else next(it, None)), None
                    if batch is None:
                        break
                    end = at + batch.num_rows
                    a, b = max(lo, at), min(hi, end)
                    if a < b:
                        yield batch.slice(a - at, b - a)
                    if end > hi:  # the rest of this batch belongs to the next range
                        at, pending = hi, batch.slice(hi - at)
                    else:
                        at = end
                if at < row + n:  # set only once the range is done: an abandoned read leaves none
                    _CURSOR[0] = (key, at, pending, it)
            row += n
            if row >= stop:
                break

    def num_episodes(self) -> int:
        return self._hf_table().num_rows if self._hf else self._metadata().num_rows

    # --- fields ------------------------------------------------------------------------------
    def _infer_fields(self) -> dict[str, dict[str, FieldInfo]]:
        """Kinds and per-step shapes from the first row that has steps.

        Read one row at a time: every process opens every input (a dataset of many files), and
        a batch of 16 long episodes would cost as much as converting a unit."""
        cols = self._obs_cols + self._act_cols
        first: dict[str, np.ndarray | list] = {}
        why: dict[str, str] = {}  # the first row error of a column, to say why it has no steps
        for batch in self._batches(0, self.num_episodes(), cols, rows=1):
            for c in cols:
                if c not in first:
                    for v in _column_rows(batch.column(c)):
                        if isinstance(v, str):
                            why.setdefault(c, v)
                        elif v is not None and len(v):
                            first[c] = v
                            break
            if len(first) == len(cols):
                break
        out: dict[str, dict[str, FieldInfo]] = {"obs": {}, "action": {}}
        for c in cols:
            if c not in first:
                raise SourceError(f"{self.path}: column {c!r} has no steps in any row"
                                  + (f" (first row: {why[c]})" if c in why else ""))
            v = first[c]
            if isinstance(v, list) and v and isinstance(v[0], np.ndarray):  # images of several sizes
                kind, shape = "image", None
            elif isinstance(v, list):
                kind, shape = "text", None
            else:
                shape = tuple(v.shape[1:])
                prefixed = next((k[:-1] for k in KIND_PREFIXES if c.startswith(k)), None)
                if prefixed is not None:
                    kind = prefixed
                else:
                    try:
                        kind = guess_kind(v.dtype, shape)
                    except SourceError as e:
                        raise SourceError(f"{self.path}: column {c!r}: {e}") from None
                if kind == "image" and v.dtype.kind not in "uib":
                    raise SourceError(f"{self.path}: column {c!r}: image pixels must be integers, got {v.dtype}")
            out["action" if c in self._act_cols else "obs"][c] = FieldInfo(c, kind, shape)
        return out

    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        return self._fields["obs"], self._fields["action"]

    def episode_lengths(self) -> np.ndarray:
        """Length of each row's rewards list: one narrow column read."""
        out = [batch.column(0).value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
               for batch in self._batches(0, self.num_episodes(), [self._rewards])]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def returns(self) -> np.ndarray:
        out = []
        for batch in self._batches(0, self.num_episodes(), [self._rewards]):
            col = batch.column(0)
            lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            values = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
            out.append(np.bincount(np.repeat(np.arange(len(col)), lengths), weights=values, minlength=len(col)))
        return np.concatenate(out) if out else np.zeros(0)

    # --- episodes ----------------------------------------------------------------------------
    def episodes(self, start: int, stop: int) -> Iterator[RawEpisode]:
        cols = self._obs_cols + self._act_cols + [self._rewards] + ([self._id] if self._id else [])
        pos = start
        for batch in self._batches(start, min(stop, self.num_episodes()), cols):
            rows = {c: _column_rows(batch.column(i)) for i, c in enumerate(cols) if c != self._id}
            ids = batch.column(len(cols) - 1).to_pylist() if self._id else None
            for i in range(batch.num_rows):
                ep_id = ids[i] if ids is not None and ids[i] is not None else pos + i
                raw = RawEpisode(int(ep_id), {c: rows[c][i] for c in self._obs_cols},
                                 {c: rows[c][i] for c in self._act_cols})
                bad = next((c for c in rows if isinstance(rows[c][i], str) or rows[c][i] is None), None)
                if bad is not None:
                    raw.error = f"column {bad!r}: {rows[bad][i] or 'missing (null)'}"
                else:
                    try:
                        raw.rewards = np.asarray(rows[self._rewards][i], dtype=np.float64).reshape(-1)
                    except (ValueError, TypeError) as e:
                        raw.error = f"column {self._rewards!r}: not numbers ({first_line(e)})"
                yield raw
            pos += batch.num_rows
