"""Schema version 3's lean caption and RL forms (uint16 ids with a patch-slot sentinel, caption
columns derived from the tokens) read back as the very version-1 rows; version-1 shards still read
and verify; hostile lean shards are refused with one-line reasons."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from schemas.shard import (SLOT_ID, ShardError, full_columns, open_shard, row_from_table, rows_to_batch, shard_form,
                           shard_schema, write_shard)
from schemas.validate import check_schema, validate_and_count, validate_table
from tests.support.row_hash import update_with_row
from tokenizer_kit.layout import PATCH_SLOT, VocabLayout
from tokenizer_kit.text_rows import build_caption_row, build_text_row

from test_shard import LAYOUT, assert_same_row, rl_rows

V1_COLUMNS = ["tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos", "source_id",
              "task"]


def caption_rows(layout=LAYOUT, seed=1):
    rng = np.random.default_rng(seed)
    sizes = [(48, 32), (16, 16), (64, 80)]
    return [build_caption_row(rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
                              rng.integers(3, layout.text_vocab_size, int(rng.integers(0, 12))), layout)
            for hw in sizes]


def rows_digest(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        update_with_row(h, r)
    return h.hexdigest()


def write(tmp_path, rows, schema, rl):
    ids = [f"r{i}" for i in range(len(rows))]
    batch = rows_to_batch(rows, ids, "t", episode_returns=[1.0] * len(rows) if rl else None, schema=schema)
    path = tmp_path / f"shard-{len(list(tmp_path.iterdir())):05d}.arrow"
    return path, write_shard(path, [batch], schema)


@pytest.mark.parametrize("kind", ["caption", "rl"])
def test_lean_shards_read_back_as_the_version_1_rows(tmp_path, kind):
    rl = kind == "rl"
    rows = rl_rows() if rl else caption_rows()
    lean = shard_schema(rl, vocab_size=LAYOUT.vocab_size, caption=not rl)
    assert lean.field("tokens").type == pa.list_(pa.uint16()) and shard_form(lean) == ("full" if rl else "caption")
    if not rl:
        assert lean.names == ["tokens", "patches", "patch_pos", "source_id", "task"]
    v1_path, v1_bytes = write(tmp_path, rows, shard_schema(rl), rl)
    path, nbytes = write(tmp_path, rows, lean, rl)
    assert nbytes < v1_bytes
    raw = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # as stored: the sentinel at the slots
    stored = raw.column("tokens").combine_chunks().flatten().to_numpy()
    assert stored.dtype == np.uint16 and (stored == SLOT_ID).sum() == sum(len(r.patches) for r in rows)
    v1, table = open_shard(v1_path), open_shard(path)
    assert table.schema.names[:9] == V1_COLUMNS and table.schema.field("tokens").type == pa.list_(pa.int32())
    assert table.select(V1_COLUMNS).equals(v1.select(V1_COLUMNS))
    loader = open_shard(path, full=False)  # what the loader maps: RL ids as stored, caption columns derived
    assert loader.schema.names == table.schema.names
    assert loader.schema.field("tokens").type == pa.list_(pa.uint16() if rl else pa.int32())
    back = [row_from_table(table, i) for i in range(table.num_rows)]
    for a, b in zip(back, rows, strict=True):
        assert_same_row(a, b)
    assert rows_digest(back) == rows_digest(rows) == rows_digest(row_from_table(raw, i) for i in range(len(rows)))
    problems, counts = validate_and_count(raw, LAYOUT)
    assert problems == [] and counts.tolist() == validate_and_count(v1, LAYOUT)[1].tolist()


def test_a_vocabulary_too_big_for_uint16_keeps_int32(tmp_path):
    assert shard_schema(True, vocab_size=SLOT_ID).field("tokens").type == pa.list_(pa.uint16())
    assert shard_schema(True, vocab_size=SLOT_ID + 1).field("tokens").type == pa.list_(pa.int32())
    assert shard_schema(False, text=True, vocab_size=SLOT_ID + 1).field("tokens").type == pa.list_(pa.uint16())
    big = VocabLayout(70000, eos_id=2)
    rows = caption_rows(big)
    rows[0].tokens[-1] = 69999
    schema = shard_schema(False, vocab_size=big.vocab_size, caption=True)
    assert schema.field("tokens").type == pa.list_(pa.int32()) and shard_form(schema) == "caption"
    path, _ = write(tmp_path, rows, schema, False)
    raw = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    assert PATCH_SLOT in raw.column("tokens").combine_chunks().flatten().to_numpy()  # int32 keeps -1 at the slots
    table = open_shard(path)
    for i, r in enumerate(rows):
        assert_same_row(row_from_table(table, i), r)
    assert validate_table(raw, big) == []


def test_rows_a_lean_form_cannot_hold_are_refused():
    caption = shard_schema(False, vocab_size=LAYOUT.vocab_size, caption=True)
    with pytest.raises(ShardError, match=r"row 1 \(b\): not an image-caption row"):
        rows_to_batch([caption_rows()[0], rl_rows()[0]], ["a", "b"], "t", schema=caption)
    text_but_no_loss = build_text_row([5, 6], LAYOUT)
    text_but_no_loss.loss_mask[1] = 0
    with pytest.raises(ShardError, match=r"row 0 \(a\): not an image-caption row"):
        rows_to_batch([text_but_no_loss], ["a"], "t", schema=caption)
    rl = shard_schema(True, vocab_size=SLOT_ID)
    row = rl_rows()[0]
    row.tokens[np.flatnonzero(row.tokens >= 0)[0]] = SLOT_ID  # a real id that would read as a slot
    with pytest.raises(ShardError, match=r"row 0 \(x\): token id outside \[0, 65535\) of the shard's uint16 ids"):
        rows_to_batch([row], ["x"], "t", episode_returns=[0.0], schema=rl)


def _lean_table(rows, rl, layout=LAYOUT) -> pa.Table:
    schema = shard_schema(rl, vocab_size=layout.vocab_size, caption=not rl)
    ids = [f"r{i}" for i in range(len(rows))]
    return pa.Table.from_batches([rows_to_batch(rows, ids, "t", episode_returns=[0.0] * len(rows) if rl else None,
                                                schema=schema)])


def _set_token(table: pa.Table, row: int, at, value: int) -> pa.Table:
    """The stored tokens with one value changed (what a hostile or damaged file would hold)."""
    tokens = table.column("tokens").to_pylist()
    tokens[row][at(tokens[row])] = value
    i = table.schema.get_field_index("tokens")
    return table.set_column(i, table.schema.field("tokens"), pa.array(tokens, table.schema.field("tokens").type))


@pytest.mark.parametrize("rl", [False, True])
def test_hostile_lean_shards_are_refused_with_one_line_reasons(rl):
    rows = rl_rows() if rl else caption_rows()
    table = _lean_table(rows, rl)
    assert validate_table(table, LAYOUT) == []
    last_real = lambda t: max(i for i, v in enumerate(t) if v != SLOT_ID)  # noqa: E731
    # a sentinel where no patch is: one slot more than the row has patches (RL: a slot of a continuous value)
    problems = validate_table(_set_token(table, 2, last_real, SLOT_ID), LAYOUT)
    assert problems and problems[0].row == 2 and problems[0].column in {"patches", "tokens"}, problems
    assert all("\n" not in str(p) for p in problems)
    # a token past the vocabulary
    problems = validate_table(_set_token(table, 1, last_real, LAYOUT.vocab_size + 7), LAYOUT)
    assert problems and (problems[0].row, problems[0].column) == (1, "tokens"), problems
    assert "id outside its modality's range" in str(problems[0]) and "\n" not in str(problems[0])
    # uint16 slots under a layout whose ids reach the sentinel: a slot and an id would read alike
    problems = validate_table(table, VocabLayout(SLOT_ID, eos_id=2))
    assert [(p.row, p.column) for p in problems] == [(None, "tokens")] and "65535" in str(problems[0])


def test_version_1_caption_columns_are_not_derived():
    """A caption-form schema that claims version 1 is missing columns (only versions 2 and 3 derive)."""
    lean = shard_schema(False, vocab_size=LAYOUT.vocab_size, caption=True)
    v1 = lean.with_metadata({b"gato_kit_schema_version": b"1"})
    assert check_schema(lean) == []
    assert [p.column for p in check_schema(v1)] == ["tokens", "loss_mask", "local_pos", "modality", "step_starts"]
    rl_caption = pa.schema(list(lean) + [pa.field("episode_return", pa.float64())], metadata=lean.metadata)
    assert "loss_mask" in [p.column for p in check_schema(rl_caption)]  # RL rows are never caption-form


def test_a_version_2_text_shard_still_reads_and_validates(tmp_path):
    """What gato-kit wrote before version 3 (lean text shards labelled 2) reads to the same rows."""
    layout = VocabLayout(1000, eos_id=2)
    rows = [build_text_row(np.arange(3, 3 + n, dtype=np.int32), layout) for n in (5, 1, 40)]
    schema = shard_schema(False, vocab_size=layout.vocab_size, text=True)
    v2 = schema.with_metadata({b"gato_kit_schema_version": b"2"})
    table = pa.Table.from_batches([rows_to_batch(rows, ["a", "b", "c"], "t", schema=v2)])
    assert check_schema(v2) == [] and validate_table(table, layout) == []
    path = tmp_path / "shard-00000.arrow"
    write_shard(path, [rows_to_batch(rows, ["a", "b", "c"], "t", schema=v2)], v2)
    assert open_shard(path, full=False).schema.metadata[b"gato_kit_schema_version"] == b"2"
    assert rows_digest([row_from_table(open_shard(path), i) for i in range(3)]) == rows_digest(rows)


def test_full_columns_of_an_empty_lean_table():
    schema = shard_schema(False, vocab_size=LAYOUT.vocab_size, caption=True)
    table = full_columns(schema.empty_table())
    assert table.num_rows == 0 and table.schema.names[:9] == V1_COLUMNS


def test_row_views_of_stored_uint16_ids_widen_a_slice_to_version_1_ids(tmp_path):
    """The loader's views keep an RL shard's uint16 ids as stored; a sample's slice comes out as
    version 1's int32 ids with -1 at the patch slots, and a version-1 view's slice is not copied."""
    from schemas.reader import batch_view
    rows = rl_rows()
    path, _ = write(tmp_path, rows, shard_schema(True, vocab_size=LAYOUT.vocab_size), True)
    v1_path, _ = write(tmp_path, rows, shard_schema(True), True)
    lean = batch_view(open_shard(path, full=False).to_batches()[0])
    v1 = batch_view(open_shard(v1_path, full=False).to_batches()[0])
    assert lean.tokens.dtype == np.uint16 and lean.slot == SLOT_ID and v1.slot == PATCH_SLOT
    for i, r in enumerate(rows):
        a, b = 1, len(r.tokens) - 1
        got = lean.row(i).ids(a, b)
        assert got.dtype == np.int32 and np.array_equal(got, r.tokens[a:b]) and (got == PATCH_SLOT).any()
        assert np.shares_memory(v1.row(i).ids(a, b), v1.tokens)
