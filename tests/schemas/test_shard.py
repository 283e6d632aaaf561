"""Shard schema v1 (SPEC 7): rows <-> record batches, atomic writes, memory-mapped reads, datasets."""

import numpy as np
import pyarrow as pa
import pytest

from schemas.shard import (PATCH_BYTES, SCHEMA_VERSION, ShardError, open_shard, row_from_table,
                           rows_to_batch, shard_schema, write_shard)
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, Row, build_episode
from tokenizer_kit.text_rows import build_caption_row, build_text_row

LAYOUT = VocabLayout(32000, eos_id=2)


def rl_rows():
    spec = EpisodeSpec((FieldSpec("cam", "image", (32, 16)), FieldSpec("s", "continuous", (3,))),
                       (FieldSpec("a", "discrete", (1,)),))
    rng = np.random.default_rng(0)
    rows = []
    for steps in (3, 1, 5):
        obs = {"cam": rng.integers(0, 256, (steps, 32, 16, 3), dtype=np.uint8), "s": rng.normal(0, 3, (steps, 3))}
        rows.append(build_episode(obs, {"a": rng.integers(0, 4, (steps, 1))}, spec, LAYOUT))
    return rows


def mixed_rows():
    img = np.random.default_rng(1).integers(0, 256, (48, 32, 3), dtype=np.uint8)
    return [build_text_row([5, 6, 7], LAYOUT), build_caption_row(img, [9, 10], LAYOUT), build_text_row([], LAYOUT)]


def assert_same_row(a: Row, b: Row):
    for name in ("tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def test_schema_has_the_spec_columns():
    s = shard_schema(rl=True)
    assert s.names == ["tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches", "patch_pos",
                       "source_id", "task", "num_steps", "episode_return"]
    assert s.field("patches").type == pa.list_(pa.binary(768)) and PATCH_BYTES == 768
    assert s.field("patch_pos").type == pa.list_(pa.list_(pa.uint8(), 4))
    assert s.metadata[b"gato_kit_schema_version"] == str(SCHEMA_VERSION).encode()
    assert "episode_return" not in shard_schema(rl=False).names


@pytest.mark.parametrize("rl", [True, False])
def test_rows_to_batch_and_back(rl):
    rows = rl_rows() if rl else mixed_rows()
    ids = [f"src/{i}" for i in range(len(rows))]
    batch = rows_to_batch(rows, ids, "task-a", episode_returns=[1.5, -2.0, 0.0] if rl else None)
    assert batch.schema == shard_schema(rl) and batch.num_rows == len(rows)
    assert batch.column("source_id").to_pylist() == ids and batch.column("task").to_pylist() == ["task-a"] * 3
    if rl:
        assert batch.column("num_steps").to_pylist() == [3, 1, 5]
        assert batch.column("episode_return").to_pylist() == [1.5, -2.0, 0.0]
    table = pa.Table.from_batches([batch])
    for i, r in enumerate(rows):
        assert_same_row(row_from_table(batch, i), r)
        assert_same_row(row_from_table(table, i), r)
    assert_same_row(row_from_table(table.slice(1), 0), rows[1])  # offsets of a sliced table


def test_patch_bytes_are_the_raw_uint8_patches():
    rows = mixed_rows()
    batch = rows_to_batch(rows, ["a", "b", "c"], "t")
    cell = batch.column("patches")[1]
    assert len(cell) == 6 and cell[0].as_py() == rows[1].patches[0].tobytes()
    assert batch.column("patch_pos")[1][5].as_py() == rows[1].patch_pos[5].tolist()


def test_bool_loss_masks_and_per_row_tasks():
    row = build_text_row([1, 3], LAYOUT)
    row.loss_mask = row.loss_mask.astype(bool)
    batch = rows_to_batch([row, build_text_row([3], LAYOUT)], ["a", "b"], ["t1", "t2"])
    assert batch.column("loss_mask").to_pylist() == [[1, 1, 1], [1, 1]]
    assert batch.column("task").to_pylist() == ["t1", "t2"]


@pytest.mark.parametrize("break_it, reason", [
    (lambda r: setattr(r, "loss_mask", r.loss_mask[:-1]), "per-token columns differ"),
    (lambda r: setattr(r, "patches", np.zeros((2, 10), np.uint8)), "patches must be"),
])
def test_inconsistent_rows_are_refused(break_it, reason):
    row = build_text_row([1, 2], LAYOUT)
    break_it(row)
    with pytest.raises(ShardError, match=reason):
        rows_to_batch([row], ["doc-1"], "t")


def test_source_ids_must_match_rows():
    with pytest.raises(ShardError, match="1 source_ids for 2 rows"):
        rows_to_batch([build_text_row([1], LAYOUT)] * 2, ["only-one"], "t")


def test_write_then_open_memory_mapped(tmp_path):
    rows = rl_rows()
    batch = rows_to_batch(rows, ["a", "b", "c"], "t", episode_returns=[1, 2, 3])
    path = tmp_path / "shard-00000.arrow"
    size = write_shard(path, [batch.slice(0, 2), batch.slice(2)], batch.schema)
    assert size == path.stat().st_size and [p.name for p in tmp_path.iterdir()] == ["shard-00000.arrow"]
    before = pa.total_allocated_bytes()
    table = open_shard(path)
    assert pa.total_allocated_bytes() - before < 4096  # buffers point into the mapping, nothing copied
    assert table.num_rows == 3 and table.schema == batch.schema
    assert_same_row(row_from_table(table, 2), rows[2])
    with pa.memory_map(str(path)) as src:  # the Arrow IPC *stream* format, a record batch per write
        assert [b.num_rows for b in pa.ipc.open_stream(src)] == [2, 1]
    with pa.memory_map(str(path)) as src:
        assert pa.ipc.open_stream(src).read_all().equals(table)


def test_write_is_atomic_when_the_batches_fail(tmp_path):
    batch = rows_to_batch(mixed_rows(), ["a", "b", "c"], "t")

    def batches():
        yield batch
        raise RuntimeError("source died")

    path = tmp_path / "shard-00001.arrow"
    with pytest.raises(RuntimeError, match="source died"):
        write_shard(path, batches(), batch.schema)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary file


def test_write_keeps_a_complete_shard_when_a_rewrite_fails(tmp_path):
    batch = rows_to_batch(mixed_rows(), ["a", "b", "c"], "t")
    path = tmp_path / "shard-00000.arrow"
    write_shard(path, [batch], batch.schema)
    wrong = rows_to_batch(rl_rows(), ["a", "b", "c"], "t", episode_returns=[0, 0, 0])
    with pytest.raises(pa.ArrowInvalid):
        write_shard(path, [wrong], batch.schema)  # schema mismatch mid-write
    assert open_shard(path).num_rows == 3 and len(list(tmp_path.iterdir())) == 1


def test_datasets_reads_a_shard(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = rl_rows()
    batch = rows_to_batch(rows, ["a", "b", "c"], "pong", episode_returns=[1.0, 2.0, 3.0])
    path = tmp_path / "shard-00000.arrow"
    write_shard(path, [batch], batch.schema)
    ds = datasets.Dataset.from_file(str(path))
    assert len(ds) == 3 and ds.column_names == batch.schema.names
    ex = ds[2]
    assert ex["tokens"] == rows[2].tokens.tolist() and ex["num_steps"] == 5 and ex["task"] == "pong"
    assert ex["patches"][0] == rows[2].patches[0].tobytes() and ex["patch_pos"][0] == rows[2].patch_pos[0].tolist()


def test_a_row_with_offsets_past_its_values_is_a_shard_error_not_an_abort():
    """Arrow aborts the process when a list with offsets past its values is sliced; a damaged
    shard read for inspection must be an error instead."""
    layout = VocabLayout(text_vocab_size=100, eos_id=1)
    batch = rows_to_batch([build_text_row(np.arange(3, 9), layout)], ["doc"], "text")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    offsets = np.array([0, 7], np.int32).tobytes()  # a list column's offsets (the last: modality's)
    at = data.rfind(offsets)
    data = data[:at] + np.array([0, 1_473_238_878], np.int32).tobytes() + data[at + len(offsets):]
    table = pa.ipc.open_stream(data).read_all()
    with pytest.raises(ShardError, match="row 0 is damaged"):
        row_from_table(table, 0)


# --- schema version 2: text shards hold tokens only -------------------------------------------------------

SMALL = VocabLayout(8000, eos_id=2)


def _text_rows(n_docs=20, seed=0, hi=8000):
    rng = np.random.default_rng(seed)
    layout = SMALL if hi <= 8000 else VocabLayout(hi, eos_id=2)
    return [build_text_row(rng.integers(3, hi, size=int(rng.integers(1, 400))), layout) for _ in range(n_docs)]


def test_v2_text_shard_stores_uint16_tokens_and_derives_the_rest(tmp_path):
    from schemas.shard import full_columns, is_text_form
    from schemas.validate import validate_table
    rows = _text_rows()
    schema = shard_schema(False, text=True, vocab_size=SMALL.vocab_size)
    assert schema.names == ["tokens", "source_id", "task"] and schema.field("tokens").type == pa.list_(pa.uint16())
    assert shard_schema(False, text=True, vocab_size=70000).field("tokens").type == pa.list_(pa.int32())
    batch = rows_to_batch(rows, [f"d{i}" for i in range(len(rows))], "t", schema=schema)
    path = tmp_path / "shard-00000.arrow"
    nbytes = write_shard(path, [batch], schema)
    tokens = sum(len(r) for r in rows)
    assert nbytes / tokens < 2.5  # 2 bytes a token plus offsets and the stream's framing
    raw = open_shard(path, full=False)
    assert is_text_form(raw.schema) and raw.schema.metadata[b"gato_kit_schema_version"] == str(SCHEMA_VERSION).encode()
    full = open_shard(path)
    assert full.schema.names[:7] == ["tokens", "loss_mask", "local_pos", "modality", "step_starts", "patches",
                                     "patch_pos"]
    for i, r in enumerate(rows):
        assert_same_row(row_from_table(full, i), r)
        assert_same_row(row_from_table(raw, i), r)  # row_from_table derives on its own too
    assert validate_table(raw, SMALL) == [] and validate_table(full_columns(raw), SMALL) == []


def test_v2_text_rows_that_do_not_fit_are_refused():
    schema = shard_schema(False, text=True, vocab_size=SMALL.vocab_size)
    with pytest.raises(ShardError, match="row 1 .*not a plain text row"):
        rows_to_batch([_text_rows(1)[0], rl_rows()[0]], ["a", "b"], "t", schema=schema)
    big = build_text_row(np.array([5, 70000]), VocabLayout(80000, eos_id=2))
    with pytest.raises(ShardError, match=r"row 0 \(x\): token id outside \[0, 65536\)"):
        rows_to_batch([big], ["x"], "t", schema=schema)


def test_v2_text_shard_with_a_bad_id_names_row_and_column(tmp_path):
    from schemas.validate import validate_table
    rows = _text_rows(5, hi=9000)  # ids up to 9000: outside the 8000-id text range of SMALL
    schema = shard_schema(False, text=True, vocab_size=SMALL.vocab_size)
    batch = rows_to_batch(rows, [f"d{i}" for i in range(5)], "t", schema=schema)
    problems = validate_table(pa.Table.from_batches([batch]), SMALL)
    assert problems and problems[0].column == "tokens" and problems[0].row is not None


def test_v1_shards_still_read_and_validate(tmp_path):
    """A shard as version 1 wrote it (every column, int32 tokens, version 1 in its metadata)."""
    from schemas.validate import check_schema, validate_table
    rows = mixed_rows()
    schema = shard_schema(False).with_metadata({b"gato_kit_schema_version": b"1"})
    batch = rows_to_batch(rows, ["a", "b", "c"], "t", schema=schema)
    write_shard(tmp_path / "s.arrow", [batch], schema)
    table = open_shard(tmp_path / "s.arrow")
    assert table.schema.metadata[b"gato_kit_schema_version"] == b"1"
    for i, r in enumerate(rows):
        assert_same_row(row_from_table(table, i), r)
    assert validate_table(table, LAYOUT) == []
    # a version-1 shard may not leave columns out: only version-2 text shards derive them
    short = pa.schema([schema.field("tokens"), schema.field("source_id"), schema.field("task")],
                      metadata={b"gato_kit_schema_version": b"1"})
    assert [p.column for p in check_schema(short)][:2] == ["loss_mask", "local_pos"]
