"""Continuous and discrete values (SPEC 1-2): the paper's worked values, edges, dtypes, errors, round trips."""

import math

import numpy as np
import pytest

from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.values import (bins_to_continuous, continuous_bins, continuous_to_tokens, discrete_to_tokens,
                                  quantization_error, tokens_to_continuous, tokens_to_discrete)

T = 32000
LAYOUT = VocabLayout(T, eos_id=2)
HALF_BIN = 1.0 / 1024  # bins are 2/1024 wide on [-1, 1]


def mu_law(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.log1p(100.0 * np.abs(x)) / math.log1p(256 * 100.0)


def reference_bins(x, companded=True):
    """SPEC 2 in float64, written plainly: the reference the fast path must agree with."""
    y = mu_law(x) if companded else np.asarray(x, np.float64)
    y = np.clip(y, -1, 1)
    return np.minimum(1023, np.floor((y + 1) / 2 * 1024)).astype(np.int64)


@pytest.mark.parametrize("value, token", [(0.0, T + 512), (0.5, T + 710), (-10.0, T + 163), (256.0, T + 1023),
                                          (1000.0, T + 1023)])
def test_paper_worked_observation_values(value, token):
    assert continuous_to_tokens([value], LAYOUT, mu_law=True).tolist() == [token]


@pytest.mark.parametrize("value, token", [(0.25, T + 640), (-1.0, T + 0)])
def test_paper_worked_action_values(value, token):
    assert continuous_to_tokens([value], LAYOUT, mu_law=False).tolist() == [token]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_worked_values_for_every_float_dtype(dtype):
    obs = np.array([0.0, 0.5, -10.0, 256.0, 1000.0], dtype)
    assert (continuous_to_tokens(obs, LAYOUT) - T).tolist() == [512, 710, 163, 1023, 1023]
    act = np.array([0.25, -1.0], dtype)
    assert (continuous_to_tokens(act, LAYOUT, mu_law=False) - T).tolist() == [640, 0]


def test_edges_stay_inside_the_continuous_range():
    obs = np.array([1.0, -1.0, 256.0, -256.0, 1e6, -1e6, 3e38, -3e38], np.float32)
    bins = continuous_bins(obs, LAYOUT)
    assert bins.tolist() == reference_bins(obs).tolist()
    assert bins[2] == 1023 and bins[3] == 0 and bins[4] == 1023 and bins[5] == 0
    act = continuous_bins([1.0, -1.0, 5.0, -5.0], LAYOUT, mu_law=False)
    assert act.tolist() == [1023, 0, 1023, 0]  # +1.0 is the last bin, never 1024; actions are clipped


def test_negative_zero_and_tiny_values_land_next_to_zero():
    tiny = np.array([-0.0, 1e-45, 1e-30, 1e-7], np.float32)
    assert continuous_bins(tiny, LAYOUT).tolist() == [512] * 4
    assert continuous_bins([-1e-5], LAYOUT).tolist() == [511]  # sign kept once it shows in the bins
    assert continuous_bins([-0.0], LAYOUT, mu_law=False).tolist() == [512]


def test_integer_and_bool_inputs_are_values():
    assert continuous_bins(np.array([0, 1, -10], np.int64), LAYOUT).tolist() == reference_bins([0, 1, -10]).tolist()
    assert continuous_bins(np.array([True, False]), LAYOUT, mu_law=False).tolist() == [1023, 512]


def test_matches_the_float64_reference_on_random_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, s, 20000) for s in (0.01, 1, 30, 500)])
    ref = reference_bins(x)
    assert np.array_equal(continuous_bins(x, LAYOUT), ref)  # float64 input: computed in float64
    got32 = continuous_bins(x.astype(np.float32), LAYOUT)
    assert np.abs(got32 - reference_bins(x.astype(np.float32))).max() <= 1  # float32 can move a bin edge
    assert np.mean(got32 != reference_bins(x.astype(np.float32))) < 1e-3


def test_shape_and_dtype_are_kept():
    x = np.zeros((3, 2, 5), np.float32)
    tok = continuous_to_tokens(x, LAYOUT)
    assert tok.shape == (3, 2, 5) and tok.dtype == np.int32


def test_observation_round_trip_within_half_a_bin_of_mu_law():
    x = np.concatenate([np.linspace(-256, 256, 20001), [0.0, 1e-6, -1e-6, 0.5, -10.0]])
    decoded = tokens_to_continuous(continuous_to_tokens(x, LAYOUT), LAYOUT, mu_law=True)
    assert np.abs(mu_law(decoded) - mu_law(x)).max() <= HALF_BIN + 1e-12


def test_action_round_trip_within_half_a_bin():
    x = np.linspace(-1, 1, 10001)
    decoded = tokens_to_continuous(continuous_to_tokens(x, LAYOUT, mu_law=False), LAYOUT, mu_law=False)
    assert np.abs(decoded - x).max() <= HALF_BIN + 1e-12


def test_decoding_gives_bin_centres_never_edges():
    c = bins_to_continuous(np.array([0, 511, 512, 1023]), LAYOUT, mu_law=False)
    assert c.tolist() == [-1 + 1 / 1024, -1 / 1024, 1 / 1024, 1 - 1 / 1024]
    obs = bins_to_continuous(np.array([0, 1023]), LAYOUT, mu_law=True)
    assert obs[1] == pytest.approx(-obs[0]) and 200 < obs[1] < 256


def test_quantization_error_is_what_the_bins_cost():
    x = np.array([0.3, -2.0, 17.0])
    err = quantization_error(x, LAYOUT)
    assert np.allclose(err, np.abs(x - tokens_to_continuous(continuous_to_tokens(x, LAYOUT), LAYOUT)))
    assert (err > 0).all() and (err < 0.01 * np.maximum(1, np.abs(x))).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_nan_and_inf_are_refused_naming_field_and_place(dtype, bad, kind):
    x = np.zeros((4, 3), dtype)
    x[2, 1] = bad
    with pytest.raises(TokenizeError) as e:
        continuous_to_tokens(x, LAYOUT, field="obs/velocity")
    msg = str(e.value)
    assert msg.startswith(f"field 'obs/velocity': {kind} value at step 2 index 1") and "\n" not in msg


@pytest.mark.parametrize("values", [["a", "b"], [1 + 2j], [[1.0, 2.0], [3.0]], [None]])
def test_non_numbers_are_refused(values):
    with pytest.raises(TokenizeError, match="field 'x'"):
        continuous_to_tokens(values, LAYOUT, field="x")


def test_tokens_outside_the_continuous_range_do_not_decode():
    with pytest.raises(TokenizeError, match="continuous range"):
        tokens_to_continuous([T - 1], LAYOUT)
    with pytest.raises(TokenizeError, match="continuous range"):
        tokens_to_continuous([T + 1024], LAYOUT)


# --- discrete ----------------------------------------------------------------------------------------

def test_discrete_ids_are_the_values_in_gato_and_offset_in_disjoint():
    v = np.array([[0, 1], [2, 1023]])
    assert discrete_to_tokens(v, LAYOUT).tolist() == [[0, 1], [2, 1023]]
    disjoint = VocabLayout(T, profile="disjoint")
    tok = discrete_to_tokens(v, disjoint)
    assert tok.tolist() == [[T + 1024, T + 1025], [T + 1026, T + 2047]]
    assert tokens_to_discrete(tok, disjoint).tolist() == v.tolist()


def test_discrete_accepts_bools_and_whole_floats():
    assert discrete_to_tokens(np.array([True, False]), LAYOUT).tolist() == [1, 0]
    assert discrete_to_tokens(np.array([3.0, 0.0], np.float32), LAYOUT).tolist() == [3, 0]


@pytest.mark.parametrize("values, reason", [([1024], r"outside \[0, 1024\)"), ([-1], r"outside \[0, 1024\)"),
                                            ([2.5], "not an integer"), ([np.nan], "NaN"), (["3"], "expected integers"),
                                            ([[1, 2], [3]], "ragged")])
def test_discrete_out_of_range_is_refused_never_wrapped(values, reason):
    with pytest.raises(TokenizeError, match=reason):
        discrete_to_tokens(values, LAYOUT, field="action")


def test_discrete_tokens_from_another_range_do_not_decode():
    with pytest.raises(TokenizeError, match="discrete range"):
        tokens_to_discrete([T + 5], VocabLayout(T, profile="disjoint"))
