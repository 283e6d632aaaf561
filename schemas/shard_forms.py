"""The shard schema and its lean forms (SPEC 7, gato-kit): which columns a shard stores, how
the ones a lean form leaves out follow from its tokens (`full_columns`), and which rows a form may
hold. schemas.shard builds and reads record batches with them.

A form is told by its columns alone: no per-token column at all is a text shard; patches without
loss_mask, local_pos, modality and step_starts (and no RL column) is a caption shard; anything
else is the full form, whose missing columns validation reports. Version 2 had the text form only;
version 3 adds the caption form and uint16 ids in the caption and full forms. Both are read.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from tokenizer_kit.layout import IMAGE, NO_POSITION, PATCH_BYTES, PATCH_SLOT, TEXT
from tokenizer_kit.sequence import Row

from .arrow_numpy import from_numpy, list_offsets, to_numpy

SCHEMA_VERSION = 3
READ_VERSIONS = (1, 2, 3)  # what this gato-kit reads
LEAN_VERSIONS = (2, 3)  # versions whose shards may be in a lean form (version 1: every column, int32 ids)
_VERSION_KEY = b"gato_kit_schema_version"

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
# The per-token columns text shards (versions 2, 3) leave out (all constants), and caption shards
# (version 3; derived from the tokens: a patch slot is an image token without loss, anything else text with loss)
TEXT_DERIVED = ("loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos")
CAPTION_DERIVED = ("loss_mask", "local_pos", "modality", "step_starts")
TOKEN_TYPES = (pa.int32(), pa.uint16())  # tokens' value types: uint16 only in versions 2 and 3
SLOT_ID = 2**16 - 1  # a patch slot in uint16 tokens of a form with patches; never an id there
FORMS = ("text", "caption", "full")


def token_type(vocab_size: int | None, slots: bool) -> pa.DataType:
    """uint16 when every id of the vocabulary fits beside the patch slot (`slots`: SLOT_ID is
    reserved, so at most 65,535 ids), else int32; int32 when the vocabulary is not known."""
    if vocab_size is None:
        return pa.int32()
    return pa.uint16() if vocab_size <= (SLOT_ID if slots else 2**16) else pa.int32()


def shard_schema(rl: bool, text: bool = False, vocab_size: int | None = None, caption: bool = False) -> pa.Schema:
    """Schema of a shard; RL shards add num_steps and episode_return. `text` and `caption` shards
    (not RL) are the lean forms; with `vocab_size` given, tokens are uint16 when it fits."""
    cols = dict(ROW_COLUMNS) | SCALAR_COLUMNS | (RL_COLUMNS if rl else {})
    if text and not rl:
        cols = {"tokens": pa.list_(token_type(vocab_size, False))} | SCALAR_COLUMNS
    elif caption and not rl:
        cols = {k: v for k, v in cols.items() if k not in CAPTION_DERIVED}
    if not (text and not rl):
        cols["tokens"] = pa.list_(token_type(vocab_size, True))
    return pa.schema([pa.field(k, v, nullable=False) for k, v in cols.items()],
                     metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()})


def schema_version(schema: pa.Schema) -> int | None:
    """The version a shard's schema says it is (None when it says nothing or nonsense)."""
    raw = (schema.metadata or {}).get(_VERSION_KEY)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def shard_form(schema: pa.Schema) -> str:
    """Which form (FORMS) a shard's columns make: text, caption or full."""
    names = set(schema.names)
    if names & set(RL_COLUMNS):
        return "full"
    if not names & set(TEXT_DERIVED):
        return "text"
    if "patches" in names and not names & set(CAPTION_DERIVED):
        return "caption"
    return "full"


def is_text_form(schema: pa.Schema) -> bool:
    """A lean text shard: tokens without the per-token columns they imply."""
    return shard_form(schema) == "text"


def _chunks(col: pa.ChunkedArray | pa.Array) -> list:
    return col.chunks if isinstance(col, pa.ChunkedArray) else [col]


def _derive(chunk: pa.ListArray, form: str) -> dict[str, pa.Array]:
    """Version-1 tokens (int32, -1 at a patch slot) of one chunk, and the columns `form` leaves out."""
    import pyarrow.compute as pc  # noqa: PLC0415 - start-up time: ~90 ms, needed only where a lean shard is read
    base = list_offsets(chunk)
    rel = from_numpy(base - base[0]) if len(base) and base[0] else chunk.offsets
    values = chunk.flatten()  # this chunk's slice of the values (nulls stay nulls: validation names them)
    # numpy where there are no nulls (pyarrow.compute's scalars import pandas: schemas.arrow_numpy);
    # pyarrow.compute keeps nulls as nulls, for validation to name
    wide = None if values.null_count else to_numpy(values).astype(np.int32)
    if wide is not None:
        if values.type == pa.uint16() and form != "text":
            wide[wide == SLOT_ID] = PATCH_SLOT
        ids = from_numpy(wide)
    elif values.type == pa.uint16() and form != "text":
        ids = pc.if_else(pc.equal(values, SLOT_ID), pa.scalar(PATCH_SLOT, pa.int32()), values.cast(pa.int32()))
    else:
        ids = values.cast(pa.int32())
    out = {"tokens": pa.ListArray.from_arrays(rel, ids)}
    if form == "full":
        return out
    n, zeros = len(ids), from_numpy(np.zeros(len(chunk) + 1, np.int32))
    out["local_pos"] = pa.ListArray.from_arrays(rel, from_numpy(np.full(n, NO_POSITION, np.int16)))
    out["step_starts"] = pa.ListArray.from_arrays(zeros, from_numpy(np.zeros(0, np.int32)))
    if form == "text":
        out["loss_mask"] = pa.ListArray.from_arrays(rel, from_numpy(np.ones(n, np.uint8)))
        out["modality"] = pa.ListArray.from_arrays(rel, from_numpy(np.full(n, TEXT, np.uint8)))
        out["patches"] = pa.ListArray.from_arrays(
            zeros, pa.FixedSizeBinaryArray.from_buffers(pa.binary(PATCH_BYTES), 0, [None, pa.py_buffer(b"")]))
        out["patch_pos"] = pa.ListArray.from_arrays(
            zeros, pa.FixedSizeListArray.from_arrays(from_numpy(np.zeros(0, np.uint8)), 4))
    elif wide is not None:  # caption: a slot is an image token without loss, any other token text with loss
        is_slot = wide == PATCH_SLOT
        out["loss_mask"] = pa.ListArray.from_arrays(rel, from_numpy((~is_slot).view(np.uint8)))
        out["modality"] = pa.ListArray.from_arrays(rel, from_numpy(np.where(is_slot, IMAGE, TEXT).astype(np.uint8)))
    else:
        slot = pc.equal(ids, PATCH_SLOT)
        out["loss_mask"] = pa.ListArray.from_arrays(rel, pc.invert(slot).cast(pa.uint8()))
        out["modality"] = pa.ListArray.from_arrays(
            rel, pc.if_else(slot, pa.scalar(IMAGE, pa.uint8()), pa.scalar(TEXT, pa.uint8())))
    return out


def full_columns(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """A lean table or batch as version 1 stores it: the columns its form leaves out derived,
    tokens int32 with -1 at patch slots, version-1 column order. A version-1 one is returned as it is."""
    names = data.schema.names
    form = shard_form(data.schema)
    if "tokens" not in names or (form == "full" and data.schema.field("tokens").type == ROW_COLUMNS["tokens"]):
        return data
    parts = [_derive(c, form) for c in _chunks(data.column("tokens"))]
    cols, fields_ = [], []
    for name, typ in ROW_COLUMNS.items():  # version-1 column order, then whatever else the data holds
        if parts and name in parts[0]:
            cols.append([p[name].cast(typ) for p in parts])
            fields_.append(pa.field(name, typ, nullable=False))
        elif not parts and name in ("tokens",) + (() if form == "full" else
                                                   TEXT_DERIVED if form == "text" else CAPTION_DERIVED):
            cols.append([])
            fields_.append(pa.field(name, typ, nullable=False))
        elif name in names:
            cols.append(_chunks(data.column(name)))
            fields_.append(data.schema.field(name))
    for name in names:
        if name not in ROW_COLUMNS:
            cols.append(_chunks(data.column(name)))
            fields_.append(data.schema.field(name))
    schema = pa.schema(fields_, metadata=data.schema.metadata)
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatch.from_arrays([c[0] for c in cols], schema=schema)
    return pa.Table.from_arrays([pa.chunked_array(c, type=f.type) for c, f in zip(cols, fields_, strict=True)],
                                schema=schema)


class ShardError(ValueError):
    """Rows that cannot become a record batch of the shard schema."""


def lean_tokens(rows: Sequence[Row], source_ids: Sequence[str], schema: pa.Schema) -> np.ndarray | None:
    """The rows' flat tokens as `schema`'s form stores them (None: int32 as the rows hold them),
    after checking the rows are what the form derives and their ids fit its token type; ShardError
    naming the first row that breaks it (never a silently wrong id or column). Whole-batch numpy."""
    form = shard_form(schema)
    token = schema.field("tokens").type.value_type
    if form == "full" and token == pa.int32():
        return None
    lengths = np.fromiter((len(r.tokens) for r in rows), np.int64, len(rows))
    ends = np.cumsum(lengths)

    def flat(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(r, name)).reshape(-1) for r in rows]) if rows else np.zeros(0)

    def row_of(bad: np.ndarray) -> int:
        return int(np.searchsorted(ends, np.argmax(bad), side="right"))

    tokens = flat("tokens").astype(np.int64)
    slot = tokens == PATCH_SLOT
    first = []
    if form != "full":
        steps = np.fromiter((len(r.step_starts) for r in rows), np.int64, len(rows))
        patches = np.fromiter((len(r.patches) for r in rows), np.int64, len(rows))
        want_mod, want_loss = (np.where(slot, IMAGE, TEXT), ~slot) if form == "caption" else (TEXT, 1)
        bad = (flat("loss_mask") != want_loss) | (flat("local_pos") != NO_POSITION) | (flat("modality") != want_mod)
        first += [row_of(bad)] if bad.any() else []
        first += [int(np.argmax(steps > 0))] if steps.any() else []
        first += [int(np.argmax(patches > 0))] if form == "text" and patches.any() else []
    if first:
        i = min(first)
        what = ("a plain text row (a text shard derives loss 1, no position, text modality, no steps or patches)"
                if form == "text" else "an image-caption row (a caption shard derives no steps, no position, "
                "image without loss at a patch slot, text with loss elsewhere)")
        raise ShardError(f"row {i} ({source_ids[i]}): not {what}")
    hi = {pa.uint16(): 2**16 if form == "text" else SLOT_ID}.get(token, 2**31)
    out = (~slot | (form == "text")) & ((tokens < 0) | (tokens >= hi))
    if out.any():
        i = row_of(out)
        raise ShardError(f"row {i} ({source_ids[i]}): token id outside [0, {hi}) of the shard's {token} ids")
    if token == pa.uint16() and form != "text":
        tokens[slot] = SLOT_ID
    return tokens.astype(token.to_pandas_dtype())
