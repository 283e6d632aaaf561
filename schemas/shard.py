"""The Arrow schema of a shard (SPEC 7) and the conversions rows <-> record batches.

Rows become Arrow list columns through offsets and flat buffers (no per-token Python), and shards
are read memory-mapped from Arrow IPC stream files.

Schema versions 2 and 3 (gato-kit) are version 1 plus leaner forms (schemas.shard_forms derives
what they leave out, `full_columns`), so validation, `verify`, `inspect` and row decoding see
version-1 columns for every version. Version 2 had the text form; version 3 (written now) adds
the caption form and uint16 ids in the full form:
- text: plain text rows store only `tokens` (uint16 when the vocabulary fits in 65,536 ids, else
  int32), `source_id` and `task`; loss 1, no position, modality text, no steps or patches derived.
- caption: image-caption rows store `tokens`, `patches`, `patch_pos`, `source_id`, `task`; loss
  mask (0 at a patch slot, else 1), modality (image at a slot, else text), local position -1 and
  no steps are derived from the tokens.
- full: every column (RL shards); tokens uint16 when the vocabulary fits.
Tokens of a form with patches (caption, full) hold patch slots: as uint16 the slot is SLOT_ID
(65535), so uint16 needs a vocabulary of at most 65,535 ids (ids 0..65534); else int32 with -1.
The loader reads a text shard's token buffer alone and the others as version 1. Version-1 and
version-2 shards read as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.errors import LONG_LINE, first_line
from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import PATCH_BYTES
from tokenizer_kit.sequence import Row

from .arrow_numpy import to_numpy
from .shard_forms import (CAPTION_DERIVED, FORMS, LEAN_VERSIONS, READ_VERSIONS, RL_COLUMNS, ROW_COLUMNS, SCALAR_COLUMNS,
                          SCHEMA_VERSION, SLOT_ID, TEXT_DERIVED, TOKEN_TYPES, ShardError, full_columns,
                          is_text_form, lean_tokens, schema_version, shard_form, shard_schema, token_type)

# the schema's names are re-exported: schemas.shard is where the rest of gato-kit imports them from
__all__ = ["CAPTION_DERIVED", "FORMS", "LEAN_VERSIONS", "PATCH_BYTES", "READ_VERSIONS", "RL_COLUMNS", "ROW_COLUMNS",
           "SCALAR_COLUMNS", "SCHEMA_VERSION", "SHARD_NAME_RE", "SHARD_PATTERN", "SLOT_ID", "TEXT_DERIVED",
           "TOKEN_TYPES",
           "UNIT_SHARD_PATTERN", "ShardError", "full_columns", "is_text_form", "open_shard", "row_from_table",
           "rows_to_batch", "schema_version", "shard_form", "shard_schema", "token_type", "write_shard"]

SHARD_PATTERN = "shard-{:05d}.arrow"
UNIT_SHARD_PATTERN = "shard-{:05d}-{:03d}.arrow"  # what the writer makes: work unit index, piece of that unit
SHARD_NAME_RE = r"^shard-\d+(-\d+)?\.arrow$"  # either name


def _offsets(lengths: Sequence[int]) -> pa.Array:
    """int32 list offsets; a batch past 2**31 values would wrap them, so it is refused."""
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
    if len(ends) and ends[-1] > np.iinfo(np.int32).max:
        raise ShardError(f"record batch of {int(ends[-1])} values exceeds the int32 list offsets; "
                         "write smaller batches")
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    out[1:] = ends
    return pa.array(out)


def _list(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """One list column from per-row arrays: one concatenation, no per-element Python."""
    dtype = value_type.to_pandas_dtype()
    flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays]) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(_offsets([len(a) for a in arrays]), pa.array(flat.astype(dtype, copy=False)))


def rows_to_batch(rows: Sequence[Row], source_ids: Sequence[str], task: str | Sequence[str],
                  num_steps: Sequence[int] | None = None, episode_returns: Sequence[float] | None = None,
                  schema: pa.Schema | None = None) -> pa.RecordBatch:
    """Build one record batch of rows; RL when `episode_returns` is given. A lean `schema`
    (shard_schema(text=True), caption=True, or with uint16 tokens) keeps what its form stores: rows
    must be what the form derives and their ids must fit its token type, else ShardError (never a
    silently wrong id)."""
    rl = episode_returns is not None
    n = len(rows)
    tasks = [task] * n if isinstance(task, str) else list(task)
    lists: dict[str, list] = {"source_ids": list(source_ids), "tasks": tasks}
    if episode_returns is not None:  # rl
        lists["episode_returns"] = list(episode_returns)
        if num_steps is not None:
            lists["num_steps"] = list(num_steps)
    for name, values in lists.items():
        if len(values) != n:
            raise ShardError(f"{len(values)} {name} for {n} rows")
    for i, r in enumerate(rows):
        if len(r.loss_mask) != len(r.tokens) or len(r.local_pos) != len(r.tokens) or len(r.modality) != len(r.tokens):
            raise ShardError(f"row {i} ({lists['source_ids'][i]}): per-token columns differ in length")
        if np.shape(r.patches)[1:] != (PATCH_BYTES,) or np.shape(r.patch_pos)[1:] != (4,) or \
                len(r.patches) != len(r.patch_pos):
            raise ShardError(f"row {i} ({lists['source_ids'][i]}): patches must be (N, {PATCH_BYTES}) with "
                             f"(N, 4) positions, got {np.shape(r.patches)} and {np.shape(r.patch_pos)}")
    cols = {
        "tokens": _list([r.tokens for r in rows], pa.int32()),
        "loss_mask": _list([r.loss_mask for r in rows], pa.uint8()),
        "local_pos": _list([r.local_pos for r in rows], pa.int16()),
        "modality": _list([r.modality for r in rows], pa.uint8()),
        "step_starts": _list([r.step_starts for r in rows], pa.int32()),
    }
    patch_counts = [len(r.patches) for r in rows]
    # one row (an RL episode of images makes a batch of its own) is taken as it is: no copy of its pixels
    flat_patches = (np.concatenate([r.patches for r in rows]) if n > 1 else rows[0].patches if n
                    else np.zeros((0, PATCH_BYTES), np.uint8))
    patch_values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(PATCH_BYTES), len(flat_patches), [None, pa.py_buffer(np.ascontiguousarray(flat_patches, np.uint8))])
    cols["patches"] = pa.ListArray.from_arrays(_offsets(patch_counts), patch_values)
    flat_pos = np.concatenate([r.patch_pos for r in rows]) if n else np.zeros((0, 4), np.uint8)
    pos_values = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat_pos, np.uint8).reshape(-1)), 4)
    cols["patch_pos"] = pa.ListArray.from_arrays(_offsets(patch_counts), pos_values)
    cols["source_id"] = pa.array(list(source_ids), pa.string())
    cols["task"] = pa.array(tasks, pa.string())
    if rl:
        cols["num_steps"] = pa.array(np.asarray(num_steps if num_steps is not None else
                                                [len(r.step_starts) for r in rows], np.int32))
        cols["episode_return"] = pa.array(np.asarray(episode_returns, np.float64))
    schema = schema if schema is not None else shard_schema(rl)
    lean = lean_tokens(rows, lists["source_ids"], schema)
    if lean is not None:
        cols["tokens"] = pa.ListArray.from_arrays(cols["tokens"].offsets, pa.array(lean))
    return pa.RecordBatch.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def row_from_table(table: pa.Table | pa.RecordBatch, i: int) -> Row:
    """Row i of a shard back to numpy (for inspection and decoding, not for the hot path)."""
    if not 0 <= i < table.num_rows:
        raise IndexError(f"row {i} is outside the {table.num_rows} rows of the shard")
    try:  # offsets past their values would make Arrow abort the process when the row is sliced
        table.slice(i, 1).validate(full=True)
    except pa.ArrowInvalid as e:
        raise ShardError(f"row {i} is damaged ({first_line(e, LONG_LINE)})") from None
    table = full_columns(table.slice(i, 1))
    i = 0

    def values(name: str) -> pa.Array:
        return table.column(name)[i].values  # the row's slice of the flat child array

    def numpy(name: str, dtype) -> np.ndarray:
        return to_numpy(values(name)).astype(dtype)

    patches = values("patches")  # fixed_size_binary: one buffer of N * 768 bytes
    flat_patches = np.frombuffer(patches.buffers()[1], dtype=np.uint8, count=len(patches) * PATCH_BYTES,
                                 offset=patches.offset * PATCH_BYTES) if len(patches) else np.zeros(0, np.uint8)
    return Row(
        tokens=numpy("tokens", np.int32),
        loss_mask=numpy("loss_mask", np.uint8),
        local_pos=numpy("local_pos", np.int16),
        modality=numpy("modality", np.uint8),
        step_starts=numpy("step_starts", np.int32),
        patches=flat_patches.reshape(-1, PATCH_BYTES).copy(),
        patch_pos=to_numpy(values("patch_pos").flatten()).astype(np.uint8).reshape(-1, 4),
    )


def write_shard(path: str | os.PathLike, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write batches as an Arrow IPC stream under a temporary name, fsync, rename. Returns bytes.

    If anything fails (the batch iterator included) the temporary file is removed and nothing
    appears under `path`, so a shard under its final name is always complete.
    """
    path = Path(path)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return path.stat().st_size


def open_shard(path: str | os.PathLike | pa.Buffer, full: bool = True) -> pa.Table:
    """A shard as a memory-mapped table: no copy of the data is made (the mapping lives as long
    as the table's buffers do). `path` may be a buffer over a mapping made already (the shard
    cache's, which pins the copy while mapped). Version-2 shards come with the columns their form
    leaves out derived and int32 ids (full_columns: version-1 columns, in memory); `full=False`
    (the loader) keeps what it can read as stored: a text shard's token buffer, an RL shard's
    uint16 ids (schemas.reader.RowView.ids); a caption shard's derived columns are still made."""
    if isinstance(path, pa.Buffer):
        table = pa.ipc.open_stream(pa.BufferReader(path)).read_all()
        return full_columns(table) if full or shard_form(table.schema) == "caption" else table
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_stream(source).read_all()
    return full_columns(table) if full or shard_form(table.schema) == "caption" else table
