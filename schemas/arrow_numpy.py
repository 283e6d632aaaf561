"""Arrow arrays as numpy views and numpy arrays as Arrow arrays, through their buffers.

pyarrow's own conversions (`Array.to_numpy`, `np.asarray(array)`, `pa.array(ndarray)`) import
pandas wherever one is installed (pyarrow probes for it on the first conversion): about 90 MB of
memory and 0.14 s in every process that reads a shard, loader workers and ranks included. Reading
paths convert here instead; `tests/schemas/test_arrow_numpy.py` proves both against pyarrow's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_numpy(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a fixed-width array: a view of its buffer for numbers (read-only, nulls read
    as whatever their slot holds: callers check nulls first), one uint8 copy for bit-packed bools."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n, start = len(arr), arr.offset
    buf = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        if not n:
            return np.zeros(0, np.uint8)
        bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=start + n, bitorder="little")
        return bits[start:]
    dtype = np.dtype(arr.type.to_pandas_dtype())  # a numpy dtype; pandas is not imported for it
    if not n or buf is None:
        return np.zeros(0, dtype)
    return np.frombuffer(buf, dtype, count=n, offset=start * dtype.itemsize)


def list_offsets(arr: pa.Array) -> np.ndarray:
    """The len(arr) + 1 offsets of a (large) list array's slice, as stored: they index the whole
    child array (`arr.values`), so the first need not be 0 when the array is a slice."""
    dtype = np.dtype(np.int64 if pa.types.is_large_list(arr.type) else np.int32)
    return np.frombuffer(arr.buffers()[1], dtype, count=len(arr) + 1, offset=arr.offset * dtype.itemsize)


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-D numeric array as an Arrow array without nulls, sharing the array's memory."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype == np.bool_:
        raise ValueError(f"from_numpy takes a 1-D numeric array, got {values.dtype} of shape {values.shape}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
