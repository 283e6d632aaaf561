"""VocabLayout: the one object that says which id means what (SPEC 1), serialisable and comparable."""

import json

import numpy as np
import pytest

from tokenizer_kit.layout import CONTINUOUS, DISCRETE, IMAGE, PATCH_SLOT, SEPARATOR, TEXT, LayoutError, VocabLayout


def test_gato_profile_ranges():
    lay = VocabLayout(32000, eos_id=2)
    assert lay.id_range(TEXT) == (0, 32000)
    assert lay.id_range(DISCRETE) == (0, 1024)  # shares ids with text [paper]
    assert lay.id_range(CONTINUOUS) == (32000, 33024)
    assert lay.separator_id == 33024
    assert lay.vocab_size == 33025  # T + 1025
    assert lay.id_range(IMAGE) == (PATCH_SLOT, PATCH_SLOT + 1)


def test_disjoint_profile_ranges_do_not_overlap():
    lay = VocabLayout(32000, profile="disjoint")
    ranges = [lay.id_range(m) for m in (TEXT, CONTINUOUS, DISCRETE, SEPARATOR)]
    assert ranges == [(0, 32000), (32000, 33024), (33024, 34048), (34048, 34049)]
    assert lay.vocab_size == 34049
    for (_, hi), (lo, _) in zip(ranges, ranges[1:]):
        assert hi == lo


@pytest.mark.parametrize("profile", ["gato", "disjoint"])
@pytest.mark.parametrize("text_vocab", [16, 512, 1000, 1024, 32000])
def test_every_id_is_inside_the_embedding_table_and_continuous_never_collides(profile, text_vocab):
    lay = VocabLayout(text_vocab, profile=profile)
    clo, chi = lay.id_range(CONTINUOUS)
    for m in (TEXT, DISCRETE, CONTINUOUS, SEPARATOR):
        lo, hi = lay.id_range(m)
        assert 0 <= lo < hi <= lay.vocab_size
        if m != CONTINUOUS:
            assert hi <= clo or lo >= chi, f"modality {m} overlaps the continuous range"
    assert lay.separator_id == lay.vocab_size - 1


def test_to_dict_from_dict_round_trip_through_json():
    for lay in (VocabLayout(512, eos_id=2), VocabLayout(32000, profile="disjoint", local_positions=256)):
        d = json.loads(json.dumps(lay.to_dict()))
        assert d["profile"] == lay.profile and d["separator_id"] == lay.separator_id
        assert VocabLayout.from_dict(d) == lay


def test_numpy_ints_are_plain_ints_so_manifests_serialise():
    lay = VocabLayout(np.int64(512), eos_id=np.int32(2))
    assert type(lay.text_vocab_size) is int and type(lay.eos_id) is int
    json.dumps(lay.to_dict())


def test_from_dict_refuses_derived_ids_that_disagree():
    d = VocabLayout(32000).to_dict()
    d["separator_id"] = 12
    with pytest.raises(LayoutError, match="separator_id"):
        VocabLayout.from_dict(d)


@pytest.mark.parametrize("d", [{}, {"text_vocab_size": "many"}, {"text_vocab_size": 100, "profile": "gpt"}, [1, 2]])
def test_from_dict_malformed_is_a_layout_error(d):
    with pytest.raises(LayoutError):
        VocabLayout.from_dict(d)


def test_check_same_names_both_layouts_and_the_differences():
    ours, theirs = VocabLayout(32000, eos_id=2), VocabLayout(32000, profile="disjoint", eos_id=2)
    ours.check_same(VocabLayout(32000, eos_id=2))  # equal: no error
    with pytest.raises(LayoutError) as e:
        ours.check_same(theirs, what="shards in data/rl", against="checkpoint")
    msg = str(e.value)
    assert "\n" not in msg
    assert "shards in data/rl (gato T=32000)" in msg and "checkpoint's (disjoint T=32000)" in msg
    assert "profile 'gato' vs 'disjoint'" in msg


def test_check_same_sees_a_different_tokenizer():
    with pytest.raises(LayoutError, match="text_vocab_size 1000 vs 32000"):
        VocabLayout(1000).check_same(VocabLayout(32000))


def test_unknown_profile_is_one_line_error():
    with pytest.raises(LayoutError) as e:
        VocabLayout(32000, profile="gatto")
    assert str(e.value) == "unknown layout profile 'gatto'; expected one of gato, disjoint"


@pytest.mark.parametrize("kwargs", [
    {"text_vocab_size": 0}, {"text_vocab_size": -5}, {"text_vocab_size": 10.5}, {"text_vocab_size": True},
    {"text_vocab_size": 100, "num_bins": 0}, {"text_vocab_size": 100, "mu": -1.0},
    {"text_vocab_size": 100, "position_bins": 256}, {"text_vocab_size": 100, "eos_id": 100},
    {"text_vocab_size": 100, "eos_id": -2},
])
def test_impossible_layouts_are_refused(kwargs):
    with pytest.raises(LayoutError):
        VocabLayout(**kwargs)


def test_unknown_modality_code():
    with pytest.raises(LayoutError, match="unknown modality code 7"):
        VocabLayout(100).id_range(7)


def test_a_tokenizer_mismatch_names_the_fix():
    with pytest.raises(LayoutError, match="same --text-tokenizer"):
        VocabLayout(1000).check_same(VocabLayout(32000), what="shard directory a", against="shard directory b")
    with pytest.raises(LayoutError, match="re-convert the data with the --text-tokenizer the model"):
        VocabLayout(1000).check_same(VocabLayout(32000), against="model")


def test_the_patch_size_is_not_configurable():
    with pytest.raises(LayoutError, match="patch_size 8 is not supported"):
        VocabLayout(1000, patch_size=8)
