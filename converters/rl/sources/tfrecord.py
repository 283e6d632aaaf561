"""TFRecord files and `tf.train.Example` records, read without TensorFlow.

A TFRecord file is a run of records: an 8-byte little-endian length, its masked CRC32C, the data,
and the data's masked CRC32C. Both CRCs are checked (google-crc32c), so a flipped bit or a cut-off
record is found here and named, not parsed into wrong values. Examples are parsed with the
`protobuf` runtime from a descriptor built in code (the `tensorflow.Example` messages as
tensorflow/core/example/{example,feature}.proto define them), in a private descriptor pool.
"""

from __future__ import annotations

import struct
from typing import Iterator

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

MAX_RECORD_BYTES = 1 << 31  # a length over this is damage, not an episode: never allocated


class RecordError(ValueError):
    """A damaged record: the message names the file and the record."""


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes | RecordError]]:
    """(record number, data) of records start..stop-1, a damaged record as a RecordError in place
    of its data. Bad data (CRC) is that record's alone; a bad or cut-off length ends the file there,
    since nothing after it can be found again."""
    with open(path, "rb") as f:
        i = 0
        while stop is None or i < stop:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                yield i, RecordError(f"{path}: record {i}: cut off in its length header")
                return
            length, = struct.unpack("<Q", head[:8])
            if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
                yield i, RecordError(f"{path}: record {i}: bad CRC of the length")
                return
            if length > MAX_RECORD_BYTES:
                yield i, RecordError(f"{path}: record {i}: length {length} over {MAX_RECORD_BYTES} bytes")
                return
            if i < start:
                f.seek(length + 4, 1)
                i += 1
                continue
            data, tail = f.read(length), f.read(4)
            if len(data) < length or len(tail) < 4:
                yield i, RecordError(f"{path}: record {i}: cut off ({len(data)} of {length} bytes)")
                return
            if struct.unpack("<I", tail)[0] != _masked_crc(data):  # its length was checked: go on after it
                yield i, RecordError(f"{path}: record {i}: bad CRC of the data")
            else:
                yield i, data
            i += 1


def count_records(path: str) -> int:
    """Records of a file, reading only the length headers (seeks over the data)."""
    n = 0
    for _ in _headers(path):
        n += 1
    return n


def _headers(path: str):
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            length, = struct.unpack("<Q", head[:8])
            if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]) or length > MAX_RECORD_BYTES:
                yield None, None  # counted: reading it reports the damage
                return
            f.seek(length + 4, 1)
            yield length, None


_EXAMPLE: list[type] = []  # the generated message class, once built


def example_class():
    """The `tensorflow.Example` message class, built once per process."""
    if _EXAMPLE:
        return _EXAMPLE[0]
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="gato_kit_example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, *fields, nested=()):
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        for n in nested:
            m.nested_type.append(n)
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, None))
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None, None))
    feature = message("Feature", ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                      ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                      ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0))
    feature.oneof_decl.add(name="kind")
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None),
            nested=[entry])
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    _EXAMPLE.append(message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example")))
    return _EXAMPLE[0]


def parse_example(data: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """An Example's features: float and int64 lists as numpy arrays, bytes lists as lists of bytes."""
    ex = example_class()()
    try:
        ex.ParseFromString(data)
    except DecodeError as e:
        raise RecordError(f"not a tf.train.Example ({e})") from None
    out: dict[str, np.ndarray | list[bytes]] = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feat.int64_list.value, np.int64)
        elif kind == "bytes_list":
            out[key] = list(feat.bytes_list.value)
        else:
            out[key] = np.zeros(0, np.float32)  # an empty feature: no values of any kind
    return out
