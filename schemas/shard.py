"""The Arrow schema v1 of a shard (SPEC 7) and the conversions rows <-> record batches.

Rows become Arrow list columns through offsets and flat buffers (no per-token Python), and shards
are read memory-mapped from Arrow IPC stream files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.sequence import Row

SCHEMA_VERSION = 1
PATCH_BYTES = 16 * 16 * 3
SHARD_PATTERN = "shard-{:05d}.arrow"

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


def shard_schema(rl: bool) -> pa.Schema:
    """Schema of a shard; RL shards add num_steps and episode_return."""
    cols = dict(ROW_COLUMNS) | SCALAR_COLUMNS | (RL_COLUMNS if rl else {})
    return pa.schema([pa.field(k, v, nullable=False) for k, v in cols.items()],
                     metadata={b"gato_kit_schema_version": str(SCHEMA_VERSION).encode()})


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=out[1:])
    return out


def _list(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(_offsets([len(a) for a in arrays])),
                                    pa.array(flat, type=value_type))


def rows_to_batch(rows: Sequence[Row], source_ids: Sequence[str], task: str | Sequence[str],
                  num_steps: Sequence[int] | None = None, episode_returns: Sequence[float] | None = None
                  ) -> pa.RecordBatch:
    """Build one record batch of rows; RL when `episode_returns` is given."""
    rl = episode_returns is not None
    n = len(rows)
    tasks = [task] * n if isinstance(task, str) else list(task)
    cols = {
        "tokens": _list([r.tokens for r in rows], pa.int32()),
        "loss_mask": _list([r.loss_mask for r in rows], pa.uint8()),
        "local_pos": _list([r.local_pos for r in rows], pa.int16()),
        "modality": _list([r.modality for r in rows], pa.uint8()),
        "step_starts": _list([r.step_starts for r in rows], pa.int32()),
    }
    patch_counts = [len(r.patches) for r in rows]
    flat_patches = (np.concatenate([r.patches for r in rows]) if n else np.zeros((0, PATCH_BYTES), np.uint8))
    patch_values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(PATCH_BYTES), len(flat_patches), [None, pa.py_buffer(np.ascontiguousarray(flat_patches, np.uint8))])
    cols["patches"] = pa.ListArray.from_arrays(pa.array(_offsets(patch_counts)), patch_values)
    flat_pos = np.concatenate([r.patch_pos for r in rows]) if n else np.zeros((0, 4), np.uint8)
    pos_values = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat_pos, np.uint8).reshape(-1)), 4)
    cols["patch_pos"] = pa.ListArray.from_arrays(pa.array(_offsets(patch_counts)), pos_values)
    cols["source_id"] = pa.array(list(source_ids), pa.string())
    cols["task"] = pa.array(tasks, pa.string())
    if rl:
        cols["num_steps"] = pa.array(np.asarray(num_steps if num_steps is not None else
                                                [len(r.step_starts) for r in rows], np.int32))
        cols["episode_return"] = pa.array(np.asarray(episode_returns, np.float64))
    schema = shard_schema(rl)
    return pa.RecordBatch.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def row_from_table(table: pa.Table | pa.RecordBatch, i: int) -> Row:
    """Row i of a shard back to numpy (for inspection and decoding, not for the hot path)."""
    def flat(name: str) -> pa.Array:
        return table.column(name)[i].values

    patches = np.frombuffer(flat("patches").buffers()[1], dtype=np.uint8, count=len(flat("patches")) * PATCH_BYTES,
                            offset=flat("patches").offset * PATCH_BYTES).reshape(-1, PATCH_BYTES) \
        if len(flat("patches")) else np.zeros((0, PATCH_BYTES), np.uint8)
    pos = flat("patch_pos")
    return Row(
        tokens=flat("tokens").to_numpy(zero_copy_only=False).astype(np.int32),
        loss_mask=flat("loss_mask").to_numpy(zero_copy_only=False).astype(np.uint8),
        local_pos=flat("local_pos").to_numpy(zero_copy_only=False).astype(np.int16),
        modality=flat("modality").to_numpy(zero_copy_only=False).astype(np.uint8),
        step_starts=flat("step_starts").to_numpy(zero_copy_only=False).astype(np.int32),
        patches=patches.copy(),
        patch_pos=(pos.flatten().to_numpy(zero_copy_only=False).astype(np.uint8).reshape(-1, 4)
                   if len(pos) else np.zeros((0, 4), np.uint8)),
    )


def write_shard(path: str | os.PathLike, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write batches as an Arrow IPC stream under a temporary name, fsync, rename. Returns bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for b in batches:
                writer.write_batch(b)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


def open_shard(path: str | os.PathLike) -> pa.Table:
    """A shard as a memory-mapped table: no copy of the data is made."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_stream(source).read_all()


def iter_shard_batches(path: str | os.PathLike) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(path), "r") as source:
        yield from pa.ipc.open_stream(source)
