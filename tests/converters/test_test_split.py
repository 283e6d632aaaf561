"""--test-share: a deterministic share of records held out as the test split, in shards the
manifest marks test; a converter's own test records (a dataset's test files) go there too."""

from __future__ import annotations

from dataclasses import replace

import pytest

from converters.cli import main
from converters.text import TextConverter
from converters.writer import convert
from converters.writer.unit import held_out
from schemas.manifest import Manifest, ManifestError
from schemas.reader import ShardDir
from schemas.shard import open_shard

from test_convert_cli import text_cmd, write_docs


def ids_by_split(out) -> dict[str, list[str]]:
    m = Manifest.read(out)
    got = {"train": [], "test": []}
    for s in m.shards:
        got[s.split] += open_shard(out / s.name).column("source_id").to_pylist()
    return got


def test_test_share_holds_out_the_same_records_for_any_worker_count(tmp_path, sp_model_path, capsys):
    inputs = write_docs(tmp_path / "in", files=4, docs=40)
    outs = {}
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        out = tmp_path / name
        assert main(text_cmd(inputs, out, sp_model_path, "--test-share", "0.25", "--shard-size", "4KB", *extra)) == 0
        outs[name] = ids_by_split(out)
    assert outs["one"] == outs["two"]
    train, test = outs["one"]["train"], outs["one"]["test"]
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.35 and not set(train) & set(test)
    assert all(held_out(i, 0.25) for i in test) and not any(held_out(i, 0.25) for i in train)
    plain = tmp_path / "plain"
    assert main(text_cmd(inputs, plain, sp_model_path, "--shard-size", "4KB")) == 0
    assert sorted(ids_by_split(plain)["train"]) == sorted(train + test)  # nothing lost
    assert {s.split for s in Manifest.read(plain).shards} == {"train"}
    m = Manifest.read(tmp_path / "one")
    assert m.rows_in("test") == len(test) and m.stats["conversion"]["test_share"] == 0.25
    more = tmp_path / "more"  # a larger share only adds records to the test split
    assert main(text_cmd(inputs, more, sp_model_path, "--test-share", "0.5")) == 0
    assert set(test) < set(ids_by_split(more)["test"])
    # readers take one split: rows numbered over its shards
    sd = ShardDir.open(tmp_path / "one", split="test")
    assert sd.num_rows == len(test) and all(s.info.split == "test" for s in sd.shards)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "one")]) == 0
    assert f"{len(test)} rows held out" in capsys.readouterr().out


@pytest.mark.parametrize("share", ["1", "-0.1", "x"])
def test_a_bad_test_share_is_bad_usage(tmp_path, sp_model_path, share):
    with pytest.raises(SystemExit) as e:
        main(text_cmd(write_docs(tmp_path / "in", 1, 2), tmp_path / "o", sp_model_path, "--test-share", share))
    assert e.value.code == 2


class OwnTestFilesText(TextConverter):
    """A source with its own test files (as the jat-dataset has): records of `test*.txt` are test."""

    def convert_unit(self, unit):
        for rec in super().convert_unit(unit):
            yield replace(rec, split="test") if "test.txt" in rec.source_id else rec


def test_a_sources_own_test_records_go_to_the_test_split(tmp_path, text_tokenizer):
    d = tmp_path / "in"
    d.mkdir()
    (d / "train.txt").write_text("a robot arm grasps a cube\n\nthe pole balances\n")
    (d / "test.txt").write_text("the cart moves left\n\nthe door opens\n\na red ball\n")
    conv = OwnTestFilesText([str(d / "train.txt"), str(d / "test.txt")], text_tokenizer, text_tokenizer.layout(),
                         split="blank-line")
    out = tmp_path / "out"
    convert(conv, out, layout=text_tokenizer.layout(), tokenizer_path=text_tokenizer.path, progress=False)
    got = ids_by_split(out)
    assert len(got["train"]) == 2 and len(got["test"]) == 3
    assert all("test.txt" in i for i in got["test"])


def test_a_manifest_with_an_unknown_split_is_refused(tmp_path, text_shard_dir):
    import json
    import shutil
    d = tmp_path / "d"
    shutil.copytree(text_shard_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][0]["split"] = "validation"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="split 'validation'"):
        Manifest.read(d)
