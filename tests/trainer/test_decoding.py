"""Cached decoding: the key/value cache gives the logits, and so the greedy actions, of the full context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.rows import concat_rows, slice_tokens
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec
from tokenizer_kit.text_rows import build_caption_row, text_token_row
from trainer.acting.decoding import Decoder, generate_text
from trainer.model import GatoConfig, GatoModel
from trainer.acting.envs import make_env_fn
from trainer.acting.rollout import Agent, run_episodes

LAYOUT = VocabLayout(text_vocab_size=1000, eos_id=2)


def _model(seed: int = 0) -> GatoModel:
    torch.manual_seed(seed)
    cfg = GatoConfig.from_preset("tiny", LAYOUT, n_layer=2, d_model=64, n_head=4, d_ff=128, seq_len=64)
    model = GatoModel(cfg)
    with torch.no_grad():  # sharper logits than the N(0, 0.02) init: fewer near-ties for argmax
        model.embed.weight.mul_(20.0)
    return model.eval()


def test_cached_logits_equal_full_context_logits_across_chunks_and_rows():
    """Rows of different lengths, with image patches, grown by chunks of different widths."""
    model = _model()
    rng = np.random.default_rng(0)
    rows = [build_caption_row(rng.integers(0, 255, (32, 16, 3), np.uint8), rng.integers(10, 900, 9), LAYOUT,
                              "resize", (32, 16)),
            build_caption_row(rng.integers(0, 255, (16, 16, 3), np.uint8), rng.integers(10, 900, 4), LAYOUT,
                              "resize", (16, 16))]
    cuts = [(3, 5, 9, 12, len(rows[0])), (1, 2, 6, 7, len(rows[1]))]  # inside the image, one token, ...
    cached, full = Decoder(model, cache=True), Decoder(model, cache=False)
    starts = [slice_tokens(r, 0, c[0]) for r, c in zip(rows, cuts)]
    torch.testing.assert_close(cached.start(starts), full.start(starts), atol=1e-4, rtol=1e-4)
    for k in range(1, 5):
        chunks = [slice_tokens(r, c[k - 1], c[k]) for r, c in zip(rows, cuts)]
        torch.testing.assert_close(cached.extend(chunks), full.extend(chunks), atol=1e-4, rtol=1e-4)
    cached.keep([1]), full.keep([1])
    more = [text_token_row(np.array([5, 6, 7]))]
    torch.testing.assert_close(cached.extend(more), full.extend(more), atol=1e-4, rtol=1e-4)
    assert cached.lengths == [len(rows[1]) + 3]
    # and the cache really is incremental: its keys hold exactly the tokens fed, not the context again
    assert int(cached.kv.valid.sum()) == len(rows[1]) + 3


@pytest.mark.parametrize("env_id,spec", [
    ("CartPole-v1", EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))),
    ("Pendulum-v1", EpisodeSpec((FieldSpec("obs", "continuous", (3,)),), (FieldSpec("action", "continuous", (1,)),))),
])
def test_greedy_actions_identical_with_and_without_cache(env_id, spec):
    """Token for token, over episodes long enough that the context is trimmed (and the cache rebuilt)
    several times, with episodes ending at different steps."""
    model = _model(1)
    prompt_rows = []
    chosen = {}
    for cache in (True, False):
        agent = Agent(model, LAYOUT, spec, seq_len=48, cache=cache)
        taken: list = []
        original = agent.act

        def recording(obs, eps, slots, original=original, taken=taken):
            out = original(obs, eps, slots)
            taken.append([float(np.asarray(v["action"]).reshape(-1)[0]) for v in out])
            return out

        agent.act = recording
        results = run_episodes(agent, make_env_fn(env_id, rescale_actions=True), 3, prompt_rows, 0, "none",
                               max_steps=40)
        chosen[cache] = (taken, [r.steps for r in results], [r.ret for r in results])
    assert chosen[True] == chosen[False]
    assert sum(chosen[True][1]) >= 20  # enough steps that seq_len 48 forced several trims


def test_generate_text_same_with_and_without_cache():
    model = _model(2)
    rng = np.random.default_rng(1)
    contexts = [concat_rows([text_token_row(rng.integers(10, 900, n))]) for n in (3, 7, 12)]
    a = generate_text(model, LAYOUT, contexts, max_new_tokens=10, cache=True)
    b = generate_text(model, LAYOUT, contexts, max_new_tokens=10, cache=False)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert all(len(x) >= 1 for x in a)
    t = generate_text(model, LAYOUT, contexts, max_new_tokens=10, temperature=1.0, top_k=1, cache=True)
    assert [x.tolist() for x in t] == [x.tolist() for x in a]  # top-1 sampling is greedy
