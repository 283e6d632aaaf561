"""collate's action input noise: which input tokens it may touch, what it puts there, and that
targets, observations and evaluation batches never change."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.loader_data import make_rl_dir
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from trainer.batch import ActionInputNoise, Sample, collate
from trainer.data import build_loader
from trainer.source import DataError

LAYOUT = VocabLayout(text_vocab_size=512, eos_id=2)
SPEC = EpisodeSpec((FieldSpec("obs", "continuous", (3,)),), (FieldSpec("torque", "continuous", (1,)),))
L = 40


def _samples(n: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    rows = [build_episode({"obs": rng.uniform(-1, 1, (8, 3)).astype(np.float32)},
                          {"torque": rng.uniform(-1, 1, (8, 1)).astype(np.float32)}, SPEC, LAYOUT) for _ in range(n)]
    return [Sample(r.tokens[:L + 1], r.loss_mask[:L + 1], r.local_pos[:L + 1], r.patches, r.patch_pos) for r in rows]


def _noise(share: float) -> ActionInputNoise:
    return ActionInputNoise(share, LAYOUT.continuous_offset, LAYOUT.continuous_offset + LAYOUT.num_bins)


def test_only_action_inputs_change_and_targets_never():
    samples = _samples()
    clean = collate(samples, L, training=True, rng=np.random.default_rng(3))
    noisy = collate(samples, L, training=True, rng=np.random.default_rng(3), action_noise=_noise(0.5))
    assert np.array_equal(noisy.targets, clean.targets) and np.array_equal(noisy.loss_mask, clean.loss_mask)
    inputs, noisy_inputs = clean.tokens.numpy(), noisy.tokens.numpy()
    is_action = np.zeros_like(inputs, bool)  # an input token that is itself a target: here, the torques
    is_action[:, 1:] = clean.loss_mask.numpy()[:, :-1] > 0
    changed = inputs != noisy_inputs
    assert changed.any() and not (changed & ~is_action).any()  # observations and separators untouched
    assert set(noisy_inputs[is_action]) <= set(inputs[is_action])  # replaced by actions of the same batch
    share = changed.sum() / is_action.sum()
    assert 0.25 < share < 0.55  # half chosen, some redrawn to the value they had


def test_evaluation_batches_and_zero_share_are_untouched():
    samples = _samples()
    clean = collate(samples, L, training=True, rng=np.random.default_rng(3))
    assert np.array_equal(collate(samples, L, training=True, rng=np.random.default_rng(3),
                                  action_noise=_noise(0.0)).tokens, clean.tokens)
    ev = collate(samples, L, training=False)
    assert np.array_equal(collate(samples, L, training=False, action_noise=_noise(0.9)).tokens, ev.tokens)
    with pytest.raises(ValueError, match="action input noise"):
        _noise(1.0)


def test_loader_applies_it_to_training_batches_only(tmp_path):
    d = str(make_rl_dir(tmp_path / "rl", LAYOUT, pixels=True))  # continuous actions beside patches
    def first(training, noise):
        it = iter(build_loader([d], 64, 4, seed=1, training=training, action_noise=noise, prompt_prob=0.0))
        return next(it)
    clean, noisy = first(True, 0.0), first(True, 0.6)
    assert np.array_equal(clean.targets, noisy.targets) and not np.array_equal(clean.tokens, noisy.tokens)
    assert np.array_equal(first(False, 0.0).tokens, first(False, 0.6).tokens)
    with pytest.raises(DataError, match="action input noise"):
        build_loader([d], 64, 4, action_noise=1.5)
