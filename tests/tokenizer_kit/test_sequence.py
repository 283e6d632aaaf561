"""Rows (SPEC 4): episodes, image-caption pairs and text to the shard columns, and episodes back.

`reference_episode` is SPEC 4 written token by token in plain Python; the vectorised builder must
produce exactly its row, for uniform episodes and for ragged ones (text and images that change
size from step to step).
"""

import numpy as np
import pytest

from tokenizer_kit.episode_decode import decode_episode
from tokenizer_kit.errors import TokenizeError
from tokenizer_kit.images import image_to_patches
from tokenizer_kit.layout import CONTINUOUS, DISCRETE, IMAGE, NO_POSITION, PATCH_SLOT, SEPARATOR, TEXT, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, Row, build_episode
from tokenizer_kit.text_rows import build_caption_row, build_text_row, decode_caption
from tokenizer_kit.values import continuous_to_tokens, discrete_to_tokens

GROUP = {"text": 0, "image": 1, "discrete": 2, "continuous": 2}


def reference_episode(obs, act, spec, layout, tok, action_local_pos=False):
    """SPEC 4 one token at a time: (tokens, loss, local_pos, modality, step_starts, patches, patch_pos)."""
    tokens, loss, lpos, mod, starts, patches, ppos = [], [], [], [], [], [], []
    steps = len(next(iter(obs.values())))
    order = lambda fields: sorted(fields, key=lambda f: (GROUP[f.kind], f.name))  # noqa: E731
    for t in range(steps):
        starts.append(len(tokens))
        k = 0
        for f in order(spec.observations):
            v = obs[f.name][t]
            if f.kind == "text":
                ids, m, lo = list(tok.encode(v, add_eos=True)), TEXT, 1
            elif f.kind == "image":
                p, q = image_to_patches(v, f.fit, f.shape)
                patches += list(p)
                ppos += list(q)
                ids, m, lo = [PATCH_SLOT] * len(p), IMAGE, 0
            elif f.kind == "discrete":
                ids, m, lo = list(discrete_to_tokens(np.ravel(v), layout)), DISCRETE, 0
            else:
                ids, m, lo = list(continuous_to_tokens(np.ravel(v), layout, f.mu_law)), CONTINUOUS, 0
            for i in ids:
                tokens.append(int(i)), loss.append(lo), lpos.append(k), mod.append(m)
                k += 1
        tokens.append(layout.separator_id), loss.append(0), lpos.append(-1), mod.append(SEPARATOR)
        for f in order(spec.actions):
            v = act[f.name][t]
            if f.kind == "text":
                ids, m = list(tok.encode(v, add_eos=True)), TEXT
            elif f.kind == "discrete":
                ids, m = list(discrete_to_tokens(np.ravel(v), layout)), DISCRETE
            else:
                ids, m = list(continuous_to_tokens(np.ravel(v), layout, False)), CONTINUOUS
            for i in ids:
                tokens.append(int(i)), loss.append(1), mod.append(m)
                lpos.append(layout.local_positions - 1 if action_local_pos else -1)
    return tokens, loss, lpos, mod, starts, patches, ppos


def assert_row_is(row: Row, ref):
    tokens, loss, lpos, mod, starts, patches, ppos = ref
    assert row.tokens.dtype == np.int32 and row.loss_mask.dtype == np.uint8
    assert row.local_pos.dtype == np.int16 and row.modality.dtype == np.uint8 and row.step_starts.dtype == np.int32
    assert row.tokens.tolist() == tokens
    assert row.loss_mask.tolist() == loss
    assert row.local_pos.tolist() == lpos
    assert row.modality.tolist() == mod
    assert row.step_starts.tolist() == starts
    assert row.patches.dtype == np.uint8 and row.patch_pos.dtype == np.uint8
    assert np.array_equal(row.patches, np.array(patches, np.uint8).reshape(-1, 768))
    assert np.array_equal(row.patch_pos, np.array(ppos, np.uint8).reshape(-1, 4))


def frames(steps, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (steps, h, w, 3), dtype=np.uint8)


@pytest.fixture
def tok_layout(text_tokenizer):
    return text_tokenizer.layout()


# --- the builder against the reference ------------------------------------------------------------

def test_uniform_episode_with_several_image_fields_and_tensors(tok_layout):
    # declared out of order on purpose: the row must follow text < image < tensor, then names
    spec = EpisodeSpec(
        (FieldSpec("z_vel", "continuous", (2,)), FieldSpec("wrist", "image", (16, 32)),
         FieldSpec("buttons", "discrete", (3,)), FieldSpec("cam", "image", (32, 32)),
         FieldSpec("a_pos", "continuous", (2, 2))),
        (FieldSpec("torque", "continuous", (2,)), FieldSpec("grip", "discrete", ())))
    assert [f.name for f in spec.observations] == ["cam", "wrist", "a_pos", "buttons", "z_vel"]
    assert [f.name for f in spec.actions] == ["grip", "torque"]
    rng = np.random.default_rng(0)
    T = 3
    obs = {"z_vel": rng.normal(0, 5, (T, 2)), "wrist": frames(T, 16, 32, 1), "buttons": rng.integers(0, 2, (T, 3)),
           "cam": frames(T, 32, 32, 2), "a_pos": rng.normal(0, 50, (T, 2, 2)).astype(np.float32)}
    act = {"torque": rng.uniform(-1.5, 1.5, (T, 2)), "grip": rng.integers(0, 5, T)}
    row = build_episode(obs, act, spec, tok_layout)
    assert_row_is(row, reference_episode(obs, act, spec, tok_layout, None))
    # one step = 4 + 2 patches, 4 + 3 + 2 tensors, separator, 1 + 2 actions
    assert row.step_starts.tolist() == [0, 19, 38] and len(row) == 57
    first = row.modality[:19].tolist()
    assert first == [IMAGE] * 6 + [CONTINUOUS] * 4 + [DISCRETE] * 3 + [CONTINUOUS] * 2 + [SEPARATOR] + \
        [DISCRETE] + [CONTINUOUS] * 2
    # slot order: step 0 cam (4), step 0 wrist (2), step 1 cam, ...
    wrist_patches = obs["wrist"][0].reshape(16, 2, 16, 3).transpose(1, 0, 2, 3)
    assert np.array_equal(row.patches[4:6].reshape(2, 16, 16, 3), wrist_patches)
    assert np.array_equal(row.patches[6:10], image_to_patches(obs["cam"][1])[0])


def test_ragged_episode_with_text_and_images_of_changing_size(text_tokenizer, tok_layout):
    spec = EpisodeSpec((FieldSpec("mission", "text"), FieldSpec("goal", "text"), FieldSpec("view", "image"),
                        FieldSpec("hp", "discrete", (1,))),
                       (FieldSpec("move", "continuous", (1,)),))
    obs = {"mission": ["open the door", "", "pick up the red key and open the door"],
           "goal": ["door", "key", "box"],
           "view": [frames(1, 16, 16, 0)[0], frames(1, 40, 20, 1)[0], frames(1, 20, 50, 2)[0, ..., 0]],
           "hp": [[3], [2], [2]]}
    act = {"move": [[0.5], [-1.0], [1.0]]}
    row = build_episode(obs, act, spec, tok_layout, text_tokenizer)
    ref = reference_episode(obs, act, spec, tok_layout, text_tokenizer)
    assert_row_is(row, ref)
    assert row.modality[0] == TEXT and row.loss_mask[row.modality == TEXT].all()  # text observations are trained on


def test_action_local_pos_option(tok_layout):
    spec = EpisodeSpec((FieldSpec("x", "continuous", (3,)),), (FieldSpec("a", "discrete", (2,)),),
                       action_local_pos=True)
    obs, act = {"x": np.zeros((2, 3))}, {"a": np.ones((2, 2), int)}
    row = build_episode(obs, act, spec, tok_layout)
    assert_row_is(row, reference_episode(obs, act, spec, tok_layout, None, action_local_pos=True))
    assert row.local_pos.tolist() == [0, 1, 2, -1, 511, 511] * 2


def test_masks_positions_and_modalities_of_a_small_episode(tok_layout):
    spec = EpisodeSpec((FieldSpec("img", "image", (16, 32)), FieldSpec("s", "continuous", (2,))),
                       (FieldSpec("a", "discrete", (1,)),))
    row = build_episode({"img": frames(2, 16, 32, 0), "s": [[0.0, 0.5], [-10.0, 1000.0]]}, {"a": [[7], [9]]},
                        spec, tok_layout)
    c, sep = tok_layout.continuous_offset, tok_layout.separator_id
    assert row.tokens.tolist() == [-1, -1, c + 512, c + 710, sep, 7, -1, -1, c + 163, c + 1023, sep, 9]
    assert row.loss_mask.tolist() == [0, 0, 0, 0, 0, 1] * 2  # images, non-text obs, separator: 0; actions: 1
    assert row.local_pos.tolist() == [0, 1, 2, 3, -1, -1] * 2  # restart every step; none for | and actions
    assert row.modality.tolist() == [IMAGE, IMAGE, CONTINUOUS, CONTINUOUS, SEPARATOR, DISCRETE] * 2
    assert row.step_starts.tolist() == [0, 6]
    assert len(row.patches) == 4 == int((row.tokens == PATCH_SLOT).sum())


def test_observations_only_for_acting(tok_layout):
    spec = EpisodeSpec((FieldSpec("s", "continuous", (2,)),), (FieldSpec("a", "discrete", (1,)),))
    row = build_episode({"s": np.zeros((1, 2))}, None, spec, tok_layout)
    assert row.tokens.tolist() == [tok_layout.continuous_offset + 512] * 2 + [tok_layout.separator_id]
    steps = decode_episode(row, spec, tok_layout)
    assert len(steps) == 1 and steps[0][1] == {}


def test_disjoint_profile_moves_discrete_ids():
    lay = VocabLayout(1000, profile="disjoint")
    spec = EpisodeSpec((FieldSpec("d", "discrete", (1,)),), (FieldSpec("a", "discrete", (1,)),))
    row = build_episode({"d": [[5]]}, {"a": [[6]]}, spec, lay)
    assert row.tokens.tolist() == [lay.discrete_offset + 5, lay.separator_id, lay.discrete_offset + 6]


# --- the inverse ----------------------------------------------------------------------------------

def test_decode_episode_inverts_the_builder(text_tokenizer, tok_layout):
    spec = EpisodeSpec((FieldSpec("say", "text"), FieldSpec("cam", "image", (32, 16)),
                        FieldSpec("v", "continuous", (2, 2)), FieldSpec("k", "discrete", (1,))),
                       (FieldSpec("a", "continuous", (2,)), FieldSpec("b", "discrete", ())))
    rng = np.random.default_rng(3)
    T = 4
    obs = {"say": ["go left", "go right now", "", "stop"], "cam": frames(T, 32, 16, 4),
           "v": rng.normal(0, 20, (T, 2, 2)), "k": rng.integers(0, 1024, (T, 1))}
    act = {"a": rng.uniform(-1, 1, (T, 2)), "b": rng.integers(0, 1024, T)}
    row = build_episode(obs, act, spec, tok_layout, text_tokenizer)
    steps = decode_episode(row, spec, tok_layout, text_tokenizer)
    assert len(steps) == T
    for t, (o, a) in enumerate(steps):
        assert o["say"] == obs["say"][t]
        assert np.array_equal(o["cam"], obs["cam"][t])
        assert o["v"].shape == (2, 2)
        y = lambda x: np.sign(x) * np.log1p(100 * np.abs(x)) / np.log1p(25600)  # noqa: E731
        assert np.abs(y(o["v"]) - y(obs["v"][t])).max() <= 1 / 1024 + 1e-9
        assert o["k"].tolist() == obs["k"][t].tolist()
        assert np.abs(a["a"] - act["a"][t]).max() <= 1 / 1024 + 1e-9
        assert a["b"].shape == () and int(a["b"]) == act["b"][t]
    ids_only = decode_episode(row, spec, tok_layout)  # without the tokenizer: text as ids
    assert ids_only[0][0]["say"].tolist() == text_tokenizer.encode("go left").tolist()


def test_decode_episode_refuses_a_row_of_another_spec(tok_layout):
    spec = EpisodeSpec((FieldSpec("s", "continuous", (2,)),), (FieldSpec("a", "discrete", (1,)),))
    row = build_episode({"s": np.zeros((2, 2))}, {"a": [[1], [2]]}, spec, tok_layout)
    other = EpisodeSpec((FieldSpec("s", "continuous", (3,)),), (FieldSpec("a", "discrete", (1,)),))
    with pytest.raises(TokenizeError, match=r"step 0: field 's' at token 0: ids outside the continuous range"):
        decode_episode(row, other, tok_layout)
    fewer = EpisodeSpec((FieldSpec("s", "continuous", (1,)),), (FieldSpec("a", "discrete", (1,)),))
    with pytest.raises(TokenizeError, match="step 0: expected the separator at token 1"):
        decode_episode(row, fewer, tok_layout)


# --- text and image-caption rows ------------------------------------------------------------------

def test_text_row_appends_end_of_text_and_trains_on_everything(text_tokenizer, tok_layout):
    ids = text_tokenizer.encode("the cat and the dog")
    row = build_text_row(ids, tok_layout)
    assert row.tokens.tolist() == ids.tolist() + [tok_layout.eos_id]
    assert row.loss_mask.tolist() == [1] * len(row) and (row.local_pos == NO_POSITION).all()
    assert (row.modality == TEXT).all() and len(row.step_starts) == 0 and len(row.patches) == 0
    assert build_text_row(row.tokens, tok_layout).tokens.tolist() == row.tokens.tolist()  # eos not doubled
    with pytest.raises(TokenizeError, match=r"text id outside \[0, 512\)"):
        build_text_row([5, 600], tok_layout)


def test_caption_row_is_patches_then_caption_with_loss_on_the_caption(text_tokenizer, tok_layout):
    img = frames(1, 40, 24, 7)[0]
    ids = text_tokenizer.encode("a small robot")
    row = build_caption_row(img, ids, tok_layout, policy="pad")
    n = 3 * 2
    assert row.tokens[:n].tolist() == [PATCH_SLOT] * n and row.tokens[n:].tolist() == ids.tolist() + [2]
    assert row.loss_mask.tolist() == [0] * n + [1] * (len(ids) + 1)
    assert row.modality.tolist() == [IMAGE] * n + [TEXT] * (len(ids) + 1)
    assert (row.local_pos == NO_POSITION).all()
    images, caption = decode_caption(row, tok_layout, text_tokenizer)
    assert caption == "a small robot" and len(images) == 1
    assert np.array_equal(images[0][:40, :24], img) and not images[0][40:].any()


# --- bad input: one-line errors -------------------------------------------------------------------

SPEC = EpisodeSpec((FieldSpec("s", "continuous", (2,)),), (FieldSpec("a", "discrete", (1,)),))


@pytest.mark.parametrize("obs, act, reason", [
    ([1, 2], {"a": [[1]]}, "observation must be a dict of fields, got list"),
    ({"s": [[1, 2]]}, [[1]], "action must be a dict of fields, got list"),
    ({"t": [[1, 2]]}, {"a": [[1]]}, "observation field 's' is missing"),
    ({"s": [[1, 2], [3, 4]]}, {"a": [[1]]}, "disagree in length"),
    ({"s": np.zeros((0, 2))}, {"a": np.zeros((0, 1), int)}, "empty episode"),
    ({"s": [[1, 2, 3]]}, {"a": [[1]]}, r"3 values per step, expected 2"),
    ({"s": [[1, 2], [3]]}, {"a": [[1], [2]]}, "ragged"),
    ({"s": [[1, np.nan]]}, {"a": [[1]]}, "field 's': NaN value at step 0 index 1"),
    ({"s": [[1, 2]]}, {"a": [[1024]]}, r"field 'a': discrete value outside \[0, 1024\)"),
    ({"s": 3.0}, {"a": [[1]]}, "expected one entry per step"),
])
def test_bad_episodes_are_one_line_errors(tok_layout, obs, act, reason):
    with pytest.raises(TokenizeError, match=reason) as e:
        build_episode(obs, act, SPEC, tok_layout)
    assert "\n" not in str(e.value)


def test_text_field_needs_a_matching_tokenizer(text_tokenizer):
    spec = EpisodeSpec((FieldSpec("say", "text"),), ())
    with pytest.raises(TokenizeError, match="need a SentencePiece model"):
        build_episode({"say": ["hi"]}, {}, spec, text_tokenizer.layout())
    with pytest.raises(TokenizeError, match="does not match the layout"):
        build_episode({"say": ["hi"]}, {}, spec, VocabLayout(100, eos_id=2), text_tokenizer)
    with pytest.raises(TokenizeError, match="step 1 is int"):
        build_episode({"say": ["hi", 5]}, {}, spec, text_tokenizer.layout(), text_tokenizer)


def test_too_many_observation_tokens_for_the_local_positions():
    lay = VocabLayout(100, local_positions=8)
    spec = EpisodeSpec((FieldSpec("s", "continuous", (9,)),), ())
    with pytest.raises(TokenizeError, match="more than the 8 local positions"):
        build_episode({"s": np.zeros((1, 9))}, {}, spec, lay)


@pytest.mark.parametrize("make, reason", [
    (lambda: FieldSpec("x", "vector"), "unknown kind 'vector'"),
    (lambda: FieldSpec("x", "image", fit="crop"), "unknown image fit policy 'crop'"),
    (lambda: FieldSpec("x", "image", (16, 16, 3)), "is not an image size"),
    (lambda: EpisodeSpec((FieldSpec("x", "continuous"), FieldSpec("x", "discrete")), ()), "duplicate field names"),
    (lambda: EpisodeSpec((), (FieldSpec("x", "image"),)), "image actions"),
])
def test_bad_specs(make, reason):
    with pytest.raises(TokenizeError, match=reason):
        make()


def test_spec_round_trips_through_dicts():
    spec = EpisodeSpec((FieldSpec("cam", "image", (32, 32), fit="pad"), FieldSpec("s", "continuous", (2,))),
                       (FieldSpec("a", "continuous", (1,), mu_law=False),), action_local_pos=True)
    assert EpisodeSpec.from_dict(spec.to_dict()) == spec


def test_patch_span_counts_a_spans_patches_from_either_side():
    from tokenizer_kit.sequence import patch_span
    tokens = np.array([-1, -1, 5, -1, 7, 8, -1, -1, 9])
    for a in range(len(tokens) + 1):
        for b in range(a, len(tokens) + 1):
            want = (int((tokens[:a] == -1).sum()), int((tokens[:b] == -1).sum()))
            assert patch_span(tokens, a, b, 5) == want == patch_span(tokens, a, b)
            stored = np.where(tokens == -1, 65535, tokens).astype(np.uint16)  # a version-2 shard's uint16 ids
            assert patch_span(stored, a, b, 5, slot=65535) == want == patch_span(stored, a, b, slot=65535)
