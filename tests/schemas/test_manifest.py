"""manifest.json (SPEC 7): written last and atomically, read back equal, unknown versions refused."""

import json

import numpy as np
import pytest

from schemas.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardInfo
from schemas.shard import SCHEMA_VERSION
from tokenizer_kit.layout import LayoutError, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec

LAYOUT = VocabLayout(32000, eos_id=2)


def manifest(**kw) -> Manifest:
    spec = EpisodeSpec((FieldSpec("s", "continuous", (3,)),), (FieldSpec("a", "discrete", (1,)),))
    args = dict(layout=LAYOUT.to_dict(), converter="rl", options={"env": "CartPole-v1", "image_size": [32, 32]},
                shards=[ShardInfo("shard-00000.arrow", 10, 1234, 5678, "ab" * 32)],
                stats={"rows": 10, "tokens": 900, "tokens_by_modality": {"continuous": 900}},
                skipped=[{"source": "ep-3", "reason": "NaN"}],
                tokenizer_sha256="cd" * 32, episode_spec=spec.to_dict(), tasks=["cartpole"])
    return Manifest(**(args | kw))


def test_write_read_round_trip(tmp_path):
    m = manifest()
    path = m.write(tmp_path)
    assert path == tmp_path / MANIFEST_NAME and [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]
    back = Manifest.read(tmp_path)
    assert back == m
    assert back.vocab_layout == LAYOUT and back.total_rows == 10 and back.total_tokens == 1234
    assert EpisodeSpec.from_dict(back.episode_spec).observations[0].shape == (3,)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["layout"]["profile"] == "gato"
    assert on_disk["layout"]["separator_id"] == 33024  # derived ids are readable in the file


def test_numpy_statistics_serialise(tmp_path):
    m = manifest(stats={"returns": np.array([1.5, 2.0]), "rows": np.int64(3), "max_err": np.float32(0.25)})
    m.write(tmp_path)
    assert Manifest.read(tmp_path).stats == {"returns": [1.5, 2.0], "rows": 3, "max_err": 0.25}


def test_unserialisable_manifest_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        manifest(options={"callback": object()}).write(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path):
    manifest().write(tmp_path)
    manifest(converter="text").write(tmp_path)
    assert Manifest.read(tmp_path).converter == "text" and len(list(tmp_path.iterdir())) == 1


def test_version_1_manifests_still_read(tmp_path):
    d = manifest().to_dict()
    d["schema_version"] = 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    assert Manifest.read(tmp_path).schema_version == 1


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None, "1"])
def test_unknown_schema_version_is_refused(tmp_path, version):
    d = manifest().to_dict()
    d["schema_version"] = version
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="schema version .* is not supported") as e:
        Manifest.read(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("text, reason", [
    (None, "no manifest"),
    ("{not json", "unreadable manifest"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"schema_version": 1, "converter": "rl"}), "malformed manifest"),
    (json.dumps({"schema_version": 1, "converter": "rl", "layout": {"text_vocab_size": 10, "profile": "x"}}),
     "unknown layout profile"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, text, reason):
    if text is not None:
        (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=reason) as e:
        Manifest.read(tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_keys_from_newer_writers_are_ignored(tmp_path):
    d = manifest().to_dict() | {"future_field": 1}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    assert Manifest.read(tmp_path) == manifest(created=d["created"])


def test_a_manifest_layout_refuses_another_layout():
    m = manifest()
    m.vocab_layout.check_same(VocabLayout(32000, eos_id=2))
    with pytest.raises(LayoutError, match=r"shards \(gato T=32000\) differs from the model's \(disjoint T=32000\)"):
        m.vocab_layout.check_same(VocabLayout(32000, profile="disjoint", eos_id=2))


def test_the_writer_s_statistics_read_back_typed(tmp_path):
    from schemas.manifest import FieldError, Manifest, ReturnStats, SkippedRecord, Stats
    from tokenizer_kit.layout import VocabLayout
    from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
    stats = Stats(rows=2, tokens=10, tokens_by_modality={"text": 10}, field_errors={"obs/x": FieldError(0.1, 0.05, 4)},
                  rows_per_task={"t": 2}, skipped=1, episode_return=ReturnStats(2, -1.0, 1.0, 0.0, 1.0),
                  conversion={"fingerprint": "f"})
    spec = EpisodeSpec((FieldSpec("x", "continuous", (2,)),), (FieldSpec("a", "discrete", (1,)),))
    m = Manifest(layout=VocabLayout(text_vocab_size=32000).to_dict(), converter="rl", stats=stats.to_dict(),
                 skipped=[{"source": "s", "reason": "r"}], episode_spec=spec.to_dict(), compression="zstd")
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back.typed_stats == stats and back.skipped_records == [SkippedRecord("s", "r")]
    assert back.spec == spec and back.compression == "zstd"
    assert "episode_return" not in Stats(rows=1).to_dict()  # RL only
    bad = Manifest(layout=VocabLayout(text_vocab_size=32000).to_dict(), converter="rl", stats=Stats(tokens_by_modality={"x": float("inf")}).to_dict())
    import pytest
    with pytest.raises(ValueError):
        bad.write(tmp_path / "bad")  # JSON has no Infinity: never written


@pytest.mark.parametrize("data, reason", [(b'{"converter": "te\xdc\xff"}', "unreadable manifest"),
                                          (b"[" * 100_000 + b"]" * 100_000, "unreadable manifest")])
def test_manifests_that_are_not_utf8_or_too_deep_are_one_line_errors(tmp_path, data, reason):
    (tmp_path / MANIFEST_NAME).write_bytes(data)
    with pytest.raises(ManifestError, match=reason) as e:
        Manifest.read(tmp_path)
    assert "\n" not in str(e.value)


def test_frame_stacks_and_clipped_values_are_typed_and_old_counter_keys_read_the_same(tmp_path):
    from schemas.manifest import FrameStackCount, Stats
    from schemas.workunit import UnitMarker, UnitStats, merge_stats
    # a conversion's events (Record.counts, summed per unit) become typed statistics
    units = [UnitMarker(i, f"u{i}", "x", [], UnitStats(rows=1, counts=c)) for i, c in enumerate((
        {"frame_stack_last": {"obs": 2}, "outside_unit_range": {"action": 5}, "other": {"k": 1}},
        {"frame_stack_split": {"obs": 1, "obs/depth": 3}, "outside_unit_range": {"action": 2}}))]
    st = merge_stats(units, rl=True, modality_names={})
    assert st.frame_stacks == {"obs": FrameStackCount(2, 1), "obs/depth": FrameStackCount(0, 3)}
    assert st.outside_unit_range == {"action": 7} and st.counts == {"other": {"k": 1}}
    new = manifest(stats=st.to_dict())
    assert new.stats["frame_stacks"] == {"obs": {"last": 2, "split": 1}, "obs/depth": {"last": 0, "split": 3}}
    assert "frame_stack_last" not in new.stats["counts"] and new.stats["outside_unit_range"] == {"action": 7}
    (tmp_path / "new").mkdir()
    new.write(tmp_path / "new")
    # a manifest written before the typed fields: the same counts under stats.counts
    old = manifest(stats={"rows": 2, "counts": {"frame_stack_last": {"obs": 2}, "frame_stack_split": {
        "obs": 1, "obs/depth": 3}, "outside_unit_range": {"action": 7}, "other": {"k": 1}}})
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / MANIFEST_NAME).write_text(json.dumps(old.to_dict()))
    a, b = Manifest.read(tmp_path / "new"), Manifest.read(old_dir)
    for m in (a, b):
        t = m.typed_stats
        assert (t.frame_stacks, t.outside_unit_range, t.counts) == (st.frame_stacks, {"action": 7}, {"other": {"k": 1}})
        assert m.frame_modes() == {"obs": "last", "obs/depth": "split"}
    assert b.stats == old.stats  # the file's own dict is kept as written
    keys = ("frame_stacks", "outside_unit_range", "counts")  # an old manifest re-written: the new layout
    assert {k: Stats.from_dict(b.stats).to_dict()[k] for k in keys} == {k: a.stats[k] for k in keys}
    tie = Stats().with_events({"frame_stack_last": {"f": 1}, "frame_stack_split": {"f": 1}})
    assert tie.frame_stacks["f"].acting_mode() in ("last", "split") and tie.counts is None


def test_wrong_shaped_typed_statistics_are_refused_on_reading(tmp_path):
    for stats in ({"frame_stacks": {"obs": {"last": "2"}}}, {"outside_unit_range": {"action": 1.5}},
                  {"frame_stacks": ["obs"]}):
        d = manifest(stats=stats).to_dict()
        (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
        with pytest.raises(ManifestError, match="wrong shape"):
            Manifest.read(tmp_path)


def test_row_kind_is_the_converter_or_rl_for_an_episode_spec():
    assert manifest().row_kind == "rl" and manifest(converter="captions", episode_spec=None).row_kind == "captions"
    assert manifest(converter="text", episode_spec=None).row_kind == "text"
    assert manifest(converter="custom").row_kind == "rl" and manifest(converter="x", episode_spec=None).row_kind is None
    assert manifest().spec == EpisodeSpec.from_dict(manifest().episode_spec)
    assert manifest(episode_spec=None).spec is None


def test_the_longest_unit_is_numbered_over_all_units_rows():
    from schemas.manifest import LongestUnit
    from schemas.workunit import UnitMarker, UnitStats, merge_stats
    sizes = [(3, LongestUnit(5, 2, "a")), (0, None), (4, LongestUnit(9, 1, "b")), (2, LongestUnit(7, 0, "c"))]
    units = [UnitMarker(i, f"u{i}", "x", [], UnitStats(rows=n, longest=lu)) for i, (n, lu) in enumerate(sizes)]
    assert merge_stats(units, rl=True, modality_names={}).longest_unit == LongestUnit(9, 3 + 0 + 1, "b")
