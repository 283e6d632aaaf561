"""A text observation that repeats the previous step's text is context, not a target, unless the
field keeps repeats (`repeat_loss`, `gato-tokenize rl --repeated-text-loss`): a BabyAI mission
given every step would otherwise be most of a row's targets."""

from __future__ import annotations

import numpy as np
import pytest

from tokenizer_kit.layout import TEXT
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode


def spec(repeat_loss: bool) -> EpisodeSpec:
    return EpisodeSpec((FieldSpec("mission", "text", repeat_loss=repeat_loss), FieldSpec("obs", "discrete", (3,))),
                       (FieldSpec("action", "discrete", ()),))


def text_targets_per_step(row, steps: int) -> list[int]:
    bounds = np.append(row.step_starts, len(row.tokens))
    return [int(((row.modality == TEXT) & (row.loss_mask == 1))[bounds[t]:bounds[t + 1]].sum()) for t in range(steps)]


@pytest.mark.parametrize("missions", [
    ["go to the red ball"] * 3 + ["open the door"] * 2 + ["go to the red ball"],  # lengths differ: scattered rows
    ["go to the red ball"] * 3 + ["go to the red box"] * 2 + ["go to the red ball"]])  # maybe one length: grid rows
def test_only_the_first_of_repeated_texts_is_a_target(text_tokenizer, layout, missions):
    steps = len(missions)
    obs = {"mission": missions, "obs": np.zeros((steps, 3), np.int64)}
    act = {"action": np.arange(steps) % 3}
    lengths = [len(text_tokenizer.encode(m, add_eos=True)) for m in missions]
    default = build_episode(obs, act, spec(False), layout, text_tokenizer)
    kept = build_episode(obs, act, spec(True), layout, text_tokenizer)
    assert np.array_equal(default.tokens, kept.tokens)  # the context is the same; only the targets differ
    assert text_targets_per_step(kept, steps) == lengths
    first = [1, 0, 0, 1, 0, 1]
    assert text_targets_per_step(default, steps) == [n * f for n, f in zip(lengths, first)]
    actions = default.loss_mask[default.modality != TEXT].sum()
    assert actions == steps  # every action is still a target


def test_repeat_loss_round_trips_through_the_spec():
    s = spec(True)
    assert EpisodeSpec.from_dict(s.to_dict()) == s
    assert "repeat_loss" not in str(spec(False).to_dict())  # the default leaves manifests as they were
