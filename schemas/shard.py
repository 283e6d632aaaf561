"""The Arrow schema of a shard (SPEC 7) and the conversions rows <-> record batches.

Rows become Arrow list columns through offsets and flat buffers (no per-token Python), and shards
are read memory-mapped from Arrow IPC stream files.

Schema version 2 (gato-kit) is version 1 plus one leaner form for plain text rows, whose per-token
columns are constants (loss 1, no local position, modality text, no steps, no patches): a text
shard stores only `tokens` (uint16 when the vocabulary fits in 65,536 ids, else int32),
`source_id` and `task`, about 2 bytes a token instead of 8. The constant columns are derived on
read (`full_columns`), so validation, `verify`, `inspect` and row decoding see version-1 columns
for both versions; the loader reads the token buffer alone. RL and image-caption shards keep every
column (their tokens hold -1 patch slots, so int32). Version-1 shards read as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.errors import LONG_LINE, first_line
from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import NO_POSITION, TEXT
from tokenizer_kit.layout import PATCH_BYTES  # noqa: F401  (re-exported: the one patch geometry)
from tokenizer_kit.sequence import Row

SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)  # what this gato-kit reads
SHARD_PATTERN = "shard-{:05d}.arrow"
UNIT_SHARD_PATTERN = "shard-{:05d}-{:03d}.arrow"  # what the writer makes: work unit index, piece of that unit
SHARD_NAME_RE = r"^shard-\d+(-\d+)?\.arrow$"  # either name

ROW_COLUMNS = {
    "tokens": pa.list_(pa.int32()),
    "loss_mask": pa.list_(pa.uint8()),
    "local_pos": pa.list_(pa.int16()),
    "modality": pa.list_(pa.uint8()),
    "step_starts": pa.list_(pa.int32()),
    "patches": pa.list_(pa.binary(PATCH_BYTES)),
    "patch_pos": pa.list_(pa.list_(pa.uint8(), 4)),
}
SCALAR_COLUMNS = {"source_id": pa.string(), "task": pa.string()}
RL_COLUMNS = {"num_steps": pa.int32(), "episode_return": pa.float64()}
# Version 2 text shards: the per-token columns left out, as the constants they would hold
TEXT_DERIVED = ("loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos")
TOKEN_TYPES = (pa.int32(), pa.uint16())  # tokens' value types: uint16 only in version-2 text shards
_VERSION_KEY = b"gato_kit_schema_version"


def shard_schema(rl: bool, text: bool = False, vocab_size: int | None = None) -> pa.Schema:
    """Schema of a shard; RL shards add num_steps and episode_return; `text` shards (version 2)
    hold tokens only, as uint16 when `vocab_size` fits."""
    cols = dict(ROW_COLUMNS) | SCALAR_COLUMNS | (RL_COLUMNS if rl else {})
    if text and not rl:
        small = vocab_size is not None and vocab_size <= 2**16
        cols = {"tokens": pa.list_(pa.uint16() if small else pa.int32())} | SCALAR_COLUMNS
    return pa.schema([pa.field(k, v, nullable=False) for k, v in cols.items()],
                     metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()})


def schema_version(schema: pa.Schema) -> int | None:
    """The version a shard's schema says it is (None when it says nothing or nonsense)."""
    raw = (schema.metadata or {}).get(_VERSION_KEY)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def is_text_form(schema: pa.Schema) -> bool:
    """A version-2 text shard: tokens without the per-token columns they imply."""
    return not any(c in schema.names for c in TEXT_DERIVED)


def full_columns(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """A version-2 text table or batch with the columns it leaves out derived (loss 1, local
    position -1, modality text, no steps or patches) and int32 tokens: what version 1 stores.
    Anything else is returned as it is."""
    names = data.schema.names
    if "tokens" not in names or not is_text_form(data.schema):
        return data
    tokens = data.column("tokens")
    chunks = tokens.chunks if isinstance(tokens, pa.ChunkedArray) else [tokens]
    derived: dict[str, list[pa.Array]] = {k: [] for k in ("tokens",) + TEXT_DERIVED}
    for c in chunks:
        offsets = c.offsets
        base = offsets.to_numpy()
        rel = pa.array(base - base[0]) if len(base) and base[0] else offsets
        n = int(base[-1] - base[0]) if len(base) else 0
        zeros = pa.array(np.zeros(len(c) + 1, np.int32))
        derived["tokens"].append(pa.ListArray.from_arrays(rel, c.flatten().cast(pa.int32())))
        derived["loss_mask"].append(pa.ListArray.from_arrays(rel, pa.array(np.ones(n, np.uint8))))
        derived["local_pos"].append(pa.ListArray.from_arrays(rel, pa.array(np.full(n, NO_POSITION, np.int16))))
        derived["modality"].append(pa.ListArray.from_arrays(rel, pa.array(np.full(n, TEXT, np.uint8))))
        derived["step_starts"].append(pa.ListArray.from_arrays(zeros, pa.array(np.zeros(0, np.int32))))
        derived["patches"].append(pa.ListArray.from_arrays(
            zeros, pa.FixedSizeBinaryArray.from_buffers(pa.binary(PATCH_BYTES), 0, [None, pa.py_buffer(b"")])))
        derived["patch_pos"].append(pa.ListArray.from_arrays(
            zeros, pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(0, np.uint8)), 4)))
    cols, fields_ = [], []
    for f in shard_schema(False):  # version-1 column order, then whatever else the data holds
        if f.name in derived:
            arrs = [a.cast(f.type) for a in derived[f.name]]
        elif f.name in names:
            col = data.column(f.name)
            arrs = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        else:
            continue
        cols.append(arrs)
        fields_.append(pa.field(f.name, f.type if f.name in derived else data.schema.field(f.name).type,
                                nullable=False))
    for name in names:
        if name not in {f.name for f in fields_}:
            col = data.column(name)
            cols.append(col.chunks if isinstance(col, pa.ChunkedArray) else [col])
            fields_.append(data.schema.field(name))
    schema = pa.schema(fields_, metadata=data.schema.metadata)
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatch.from_arrays([c[0] for c in cols], schema=schema)
    return pa.Table.from_arrays([pa.chunked_array(c, type=f.type) for c, f in zip(cols, fields_, strict=True)],
                                schema=schema)


class ShardError(ValueError):
    """Rows that cannot become a record batch of the shard schema."""


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
    """Build one record batch of rows; RL when `episode_returns` is given. A version-2 text
    `schema` (shard_schema(text=True)) keeps tokens only: rows must be plain text rows and their
    ids must fit its token type, else ShardError (never a silently wrong id)."""
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
    if is_text_form(schema):
        _check_text_rows(rows, lists["source_ids"], schema.field("tokens").type.value_type)
    return pa.RecordBatch.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def _check_text_rows(rows: Sequence[Row], source_ids: Sequence[str], token_type: pa.DataType) -> None:
    """Rows a version-2 text shard can hold: the constants its left-out columns imply, ids in
    range; checked over the batch's flat columns at once, naming the first row that breaks them."""
    hi = 2**16 if token_type == pa.uint16() else 2**31
    lengths = np.fromiter((len(r.tokens) for r in rows), np.int64, len(rows))
    ends = np.cumsum(lengths)

    def flat(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(r, name)).reshape(-1) for r in rows]) if rows else np.zeros(0)

    extra = np.fromiter((len(r.step_starts) + len(r.patches) for r in rows), np.int64, len(rows))
    bad = (flat("loss_mask") != 1) | (flat("local_pos") != NO_POSITION) | (flat("modality") != TEXT)
    first = [int(np.searchsorted(ends, np.argmax(bad), side="right"))] if bad.any() else []
    first += [int(np.argmax(extra > 0))] if extra.any() else []
    if first:
        i = min(first)
        raise ShardError(f"row {i} ({source_ids[i]}): not a plain text row (a text shard derives loss 1, "
                         "no position, text modality, no steps or patches)")
    tokens = flat("tokens").astype(np.int64)
    out = (tokens < 0) | (tokens >= hi)
    if out.any():
        i = int(np.searchsorted(ends, np.argmax(out), side="right"))
        raise ShardError(f"row {i} ({source_ids[i]}): token id outside [0, {hi}) of the shard's {token_type} ids")


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
        return values(name).to_numpy(zero_copy_only=False).astype(dtype)

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
        patch_pos=values("patch_pos").flatten().to_numpy(zero_copy_only=False).astype(np.uint8).reshape(-1, 4),
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
    cache's, which pins the copy while mapped). `full`: a version-2 text shard with its left-out
    columns derived (full_columns: version-1 columns, in memory); the loader asks for the stored
    columns alone."""
    if isinstance(path, pa.Buffer):
        table = pa.ipc.open_stream(pa.BufferReader(path)).read_all()
        return full_columns(table) if full else table
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_stream(source).read_all()
    return full_columns(table) if full else table
