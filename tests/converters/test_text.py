"""Text converter: real .txt / .jsonl / Parquet / HF dataset inputs, checked row by row by decoding
the shard tokens back with the SentencePiece model."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.base import SourceError
from converters.text import TextConverter
from converters.writer import convert
from schemas.manifest import Manifest
from schemas.shard import SCHEMA_VERSION, open_shard
from schemas.validate import validate_table
from tokenizer_kit.layout import TEXT


def documents(n: int, seed: int = 0) -> list[str]:
    words = "the agent moves left right and picks a red ball box key door opens robot arm grasps cube".split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))).capitalize() + "."
            for _ in range(n)]


def run_text(inputs, out, tok, on_error="fail", workers=1, shard_size=1 << 20, **options):
    conv = TextConverter([str(p) for p in inputs], tok, tok.layout(), **options)
    return convert(conv, out, layout=tok.layout(), tokenizer_path=tok.path, on_error=on_error, workers=workers,
                   shard_size=shard_size, progress=False)


def read_rows(out) -> tuple[list[str], list[np.ndarray], pa.Table]:
    m = Manifest.read(out)
    tables = [open_shard(out / s.name) for s in m.shards]
    table = pa.concat_tables(tables)
    tokens = [np.asarray(t, np.int32) for t in table.column("tokens").to_pylist()]
    return table.column("source_id").to_pylist(), tokens, table


def check_rows(out, tok, expected: list[tuple[str, str]]) -> None:
    """Rows hold exactly the expected (source_id, document) pairs, in order, decoding back to the text."""
    ids, tokens, table = read_rows(out)
    assert ids == [sid for sid, _ in expected]
    for (sid, doc), t in zip(expected, tokens, strict=True):
        assert t[-1] == tok.eos_id, sid
        assert np.array_equal(t, tok.encode(doc, add_eos=True)), sid
        assert tok.decode(t) == " ".join(doc.split()), sid  # SentencePiece collapses whitespace
    assert validate_table(table, Manifest.read(out).vocab_layout) == []
    m = Manifest.read(out)
    for s in m.shards:  # lean text shards: uint16 ids only, the constant columns derived on read
        raw = open_shard(out / s.name, full=False).schema
        assert raw.names == ["tokens", "source_id", "task"] and raw.field("tokens").type == pa.list_(pa.uint16())
    assert m.schema_version == SCHEMA_VERSION
    modality = table.column("modality").combine_chunks().values.to_numpy()
    assert (modality == TEXT).all()
    assert (table.column("loss_mask").combine_chunks().values.to_numpy() == 1).all()


def test_txt_one_document_per_file(tmp_path, text_tokenizer):
    docs = documents(5)
    paths = []
    for i, d in enumerate(docs):
        p = tmp_path / "in" / f"doc{i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_text(d + "\n" + d.lower() + "\n")
        paths.append(p)
    (tmp_path / "in" / "empty.txt").write_text("  \n")  # whitespace only: no row
    res = run_text([tmp_path / "in"], tmp_path / "out", text_tokenizer)
    expected = [(str(p), p.read_text().rstrip("\n")) for p in paths]
    check_rows(tmp_path / "out", text_tokenizer, expected)
    assert res.manifest.stats["rows"] == 5
    assert res.manifest.stats["tokens_by_modality"]["text"] == res.manifest.total_tokens


@pytest.mark.parametrize("unit_size", [1, 97, 1 << 20])
def test_txt_blank_line_blocks_survive_any_unit_cut(tmp_path, text_tokenizer, unit_size):
    docs = documents(40, seed=1)
    # documents of one or several lines, separated by one or more blank (or whitespace) lines
    text, expected = "\n \n", []  # leading blank lines too
    for i, d in enumerate(docs):
        block = d if i % 3 else d + "\n" + d.upper()
        sep = "\n" * (1 + i % 3) + (" \n" if i % 5 == 0 else "")
        expected.append((f"{tmp_path / 'a.txt'}@{len(text.encode())}", block))
        text += block + "\n" + sep
    (tmp_path / "a.txt").write_text(text)
    res = run_text([tmp_path / "a.txt"], tmp_path / "out", text_tokenizer, split="blank-line", unit_size=unit_size)
    check_rows(tmp_path / "out", text_tokenizer, expected)
    if unit_size == 1:
        assert res.units_total == 41  # every block its own unit, plus the leading blank lines
    if unit_size == 1 << 20:
        assert res.units_total == 1


def test_jsonl_text_field_and_bad_lines(tmp_path, text_tokenizer):
    docs = documents(30, seed=2)
    lines, expected, pos = [], [], 0
    path = tmp_path / "d.jsonl"
    for i, d in enumerate(docs):
        line = json.dumps({"id": i, "body": d}) + "\n"
        expected.append((f"{path}@{pos}", d))
        lines.append(line.encode())
        pos += len(line.encode())
    bad = [b'{"id": 99, "body": 7}\n', b"not json\n", b'{"id": 100}\n']
    path.write_bytes(b"".join(lines) + b"".join(bad))
    res = run_text([path], tmp_path / "out", text_tokenizer, on_error="skip", text_field="body", unit_size=300)
    assert res.units_total > 3
    check_rows(tmp_path / "out", text_tokenizer, expected)
    reasons = [s["reason"] for s in res.manifest.skipped]
    assert reasons == [f"{path}: line 31: field 'body' is int, expected a string",
                       f"{path}: line 32: not JSON (Expecting value)",
                       f"{path}: line 33: field 'body' is missing"]
    with pytest.raises(SourceError, match=r"d\.jsonl: line 31: field 'body' is int"):
        run_text([path], tmp_path / "out2", text_tokenizer, text_field="body", unit_size=300)


def test_parquet_row_groups_and_units(tmp_path, text_tokenizer):
    docs = documents(50, seed=3)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": docs, "n": list(range(50))}), path, row_group_size=7)
    res = run_text([path], tmp_path / "out", text_tokenizer, unit_size=1500)
    assert res.units_total > 1
    check_rows(tmp_path / "out", text_tokenizer, [(f"{path}#{i}", d) for i, d in enumerate(docs)])


def test_parquet_binary_column_with_bad_utf8(tmp_path, text_tokenizer):
    docs = [d.encode() for d in documents(4, seed=4)]
    docs[2] = b"caf\xe9 au lait"
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array(docs + [None], pa.binary())}), path)
    res = run_text([path], tmp_path / "out", text_tokenizer, on_error="skip")
    check_rows(tmp_path / "out", text_tokenizer, [(f"{path}#{i}", docs[i].decode()) for i in (0, 1, 3)])
    assert [s["source"] for s in res.manifest.skipped] == [f"{path}#2", f"{path}#4"]
    assert "row 2: field 'text' is not UTF-8 text" in res.manifest.skipped[0]["reason"]
    assert "row 4: field 'text' is null" in res.manifest.skipped[1]["reason"]


def test_missing_column_names_the_file(tmp_path, text_tokenizer):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(SourceError, match=r"c\.parquet: no column 'text' \(has body\)"):
        run_text([path], tmp_path / "out", text_tokenizer)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_hf_dataset_directory(tmp_path, text_tokenizer):
    import datasets
    docs = documents(60, seed=5)
    ds = datasets.Dataset.from_dict({"text": docs, "label": list(range(60))})
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds.select(range(10)), "test": ds.select(range(10, 15))}).save_to_disk(
        str(tmp_path / "dd"))
    res = run_text([tmp_path / "ds"], tmp_path / "out", text_tokenizer, unit_size=2000)
    assert res.units_total > 2
    check_rows(tmp_path / "out", text_tokenizer, [(f"{tmp_path / 'ds'}#{i}", d) for i, d in enumerate(docs)])
    # a DatasetDict directory: its splits in the dict's order
    run_text([tmp_path / "dd"], tmp_path / "out2", text_tokenizer)
    order = json.loads((tmp_path / "dd" / "dataset_dict.json").read_text())["splits"]
    want = {"train": range(10), "test": range(10, 15)}
    check_rows(tmp_path / "out2", text_tokenizer,
               [(f"{tmp_path / 'dd' / s}#{j}", docs[i]) for s in order for j, i in enumerate(want[s])])
    # shards open with datasets as they are
    shard = Manifest.read(tmp_path / "out").shards[0].name
    loaded = datasets.Dataset.from_file(str(tmp_path / "out" / shard))
    assert loaded[0]["source_id"] == f"{tmp_path / 'ds'}#0"
    assert loaded[0]["tokens"] == text_tokenizer.encode(docs[0], add_eos=True).tolist()


def test_non_utf8_txt_fail_and_skip(tmp_path, text_tokenizer):
    good = documents(3, seed=6)
    path = tmp_path / "mixed.txt"
    path.write_bytes(f"{good[0]}\n\n{good[1]}\nbad \xff byte here\n\n{good[2]}\n".encode("latin-1"))
    with pytest.raises(SourceError) as e:
        run_text([path], tmp_path / "out", text_tokenizer, split="blank-line")
    assert str(e.value).startswith(f"{path}: line 4 (byte ")
    assert "not UTF-8 text" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("shard-*")) and not list((tmp_path / "out").rglob(".*tmp*"))

    res = run_text([path], tmp_path / "out", text_tokenizer, split="blank-line", on_error="skip")
    second = len(f"{good[0]}\n\n".encode())
    assert res.manifest.skipped == [{"source": f"{path}@{second}", "reason": str(e.value)}]
    check_rows(tmp_path / "out", text_tokenizer, [(f"{path}@0", good[0]),
                                                  (f"{path}@{path.read_bytes().index(good[2].encode())}", good[2])])


def test_a_byte_order_mark_is_not_text(tmp_path, text_tokenizer):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfthe robot arm\n")
    (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a red cube"}\n')
    run_text([tmp_path / "a.txt", tmp_path / "b.jsonl"], tmp_path / "out", text_tokenizer)
    check_rows(tmp_path / "out", text_tokenizer, [(str(tmp_path / "a.txt"), "the robot arm"),
                                                  (f"{tmp_path / 'b.jsonl'}@0", "a red cube")])


def test_unsupported_input_is_refused(tmp_path, text_tokenizer):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="x.csv: unsupported text input"):
        run_text([tmp_path / "x.csv"], tmp_path / "out", text_tokenizer)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="empty: no .txt, .jsonl or .parquet files"):
        run_text([tmp_path / "empty"], tmp_path / "out", text_tokenizer)


def test_default_work_units_follow_the_input_size(tmp_path, text_tokenizer):
    """Without --unit-size a file is cut into about 16 units (1 to 16 MiB each): enough to keep 2 or
    4 workers busy to the end, from the input alone (so a plan never depends on the worker count)."""
    from converters.text import UNIT_SIZE_RANGE, auto_unit_size
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: its size without its bytes
        f.truncate(50 * 10**6)
    assert auto_unit_size([(str(big), "txt")]) == 50 * 10**6 // 16
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(documents(25000, seed=3)) + "\n", encoding="utf-8")  # about 2.5 MB
    assert auto_unit_size([(str(small), "txt")]) == UNIT_SIZE_RANGE[0]
    conv = TextConverter([str(small)], text_tokenizer, text_tokenizer.layout(), split="blank-line")
    units = conv.work_units()
    assert conv.options()["unit_size"] == UNIT_SIZE_RANGE[0]
    assert abs(len(units) - small.stat().st_size / UNIT_SIZE_RANGE[0]) <= 1 and len(units) >= 2
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(800 * 2**20)
    assert auto_unit_size([(str(huge), "txt")]) == UNIT_SIZE_RANGE[1]
