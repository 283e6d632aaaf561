"""`finalize` does not trust unit markers (issue 20): a marker listing another unit's shard, or its
own shard twice, does not count as done, so the manifest never lists a shard twice and no real
shard is deleted; a manifest listing a shard twice is refused by verify and the loader."""

from __future__ import annotations

import json

import pytest

from converters.base import SourceError
from converters.writer import WORK_DIR, finalize
from schemas.manifest import Manifest
from test_writer import make_inputs, run, text_converter

from tests.support.cli_outcome import check_message, run_cli


def _partitions(tmp_path, text_tokenizer):
    paths = make_inputs(tmp_path / "in", files=3, docs=10)
    out = tmp_path / "out"
    for i in range(3):
        run(text_converter(paths, text_tokenizer), out, text_tokenizer, num_partitions=3, partition=i)
    return out


@pytest.mark.parametrize("tamper", ["another-units-shard", "own-shard-twice", "sha-path"])
def test_a_tampered_marker_lists_no_shard_twice_and_deletes_none(tamper, tmp_path, text_tokenizer):
    out = _partitions(tmp_path, text_tokenizer)
    markers = sorted((out / WORK_DIR).glob("unit-*.json"))
    assert len(markers) >= 2
    first, second = (json.loads(p.read_text()) for p in markers[:2])
    if tamper == "another-units-shard":
        second["shards"] = first["shards"]
    elif tamper == "own-shard-twice":
        second["shards"] = second["shards"] + second["shards"]
    else:
        second["shards"][0]["sha256"] = "../../../../etc/passwd"
    markers[1].write_text(json.dumps(second))
    shards_before = {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")}
    with pytest.raises(SourceError, match="not converted yet"):
        finalize(out)
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")} == shards_before
    assert not (out / "manifest.json").exists()


def test_an_untampered_run_still_finalizes(tmp_path, text_tokenizer):
    out = _partitions(tmp_path, text_tokenizer)
    m = finalize(out)
    assert len({s.name for s in m.shards}) == len(m.shards) > 1


def test_verify_refuses_a_manifest_listing_a_shard_twice(tmp_path, text_tokenizer):
    out = _partitions(tmp_path, text_tokenizer)
    finalize(out)
    d = json.loads((out / "manifest.json").read_text())
    d["shards"].append(dict(d["shards"][0]))
    (out / "manifest.json").write_text(json.dumps(d))
    o = run_cli(["verify", str(out)])
    check_message(o)
    assert o.code == 1 and "listed twice" in o.err, str(o)
    with pytest.raises(Exception, match="listed twice"):
        Manifest.read(out)
