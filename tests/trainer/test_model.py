"""GatoModel: shapes, causality, what the loss counts, patch gradients, presets, parameter groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.text_rows import build_caption_row, build_text_row
from trainer.batch import Sample, collate
from trainer.model import PRESETS, GatoConfig, GatoModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

torch.set_flush_denormal(True)
LAYOUT = VocabLayout(text_vocab_size=512, eos_id=2)
L = 48


def _sample(row, task=0):
    n = L + 1
    return Sample(row.tokens[:n], row.loss_mask[:n], row.local_pos[:n], row.patches, row.patch_pos, task)


@pytest.fixture(scope="module")
def batch():
    """Captions (patches + text), a long text and a short padded text, through the real collate."""
    rng = np.random.default_rng(0)
    rows = [build_caption_row(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), rng.integers(3, 500, 30), LAYOUT),
            build_text_row(rng.integers(3, 500, 80), LAYOUT),
            build_text_row(rng.integers(3, 500, 10), LAYOUT)]
    row = rows[1]
    row.local_pos = np.arange(len(row.tokens), dtype=np.int16) % 7  # some local positions in use
    return collate([_sample(r, t) for t, r in enumerate(rows)], L, training=True, rng=np.random.default_rng(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GatoModel(GatoConfig(layout=LAYOUT.to_dict(), n_layer=2, d_model=64, n_head=4, d_ff=128,
                                patch_channels=16, patch_groups=4))


def test_forward_shape_and_batch_is_real(model, batch):
    assert batch.patches.shape[0] == 6 and batch.attention_mask[2].sum() < L  # patches and padding present
    logits = model(batch)
    assert logits.shape == (3, L, LAYOUT.vocab_size) and torch.isfinite(logits).all()


def test_attention_is_causal(model, batch):
    base = model(batch)
    changed = batch.tokens.clone()
    changed[:, 30] = (changed[:, 30] + 7) % LAYOUT.vocab_size
    out = model(type(batch)(**{**batch.__dict__, "tokens": changed}))
    assert torch.equal(out[:, :30], base[:, :30])
    assert not torch.allclose(out[:, 30:], base[:, 30:])


def test_loss_is_mean_over_target_tokens(model, batch):
    logits = model(batch)
    m = batch.loss_mask.bool()
    expected = F.cross_entropy(logits[m], batch.targets[m])
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    s, n = model.loss_terms(batch)
    assert torch.equal(n, batch.loss_mask.sum(1))


def test_masked_positions_contribute_nothing(model, batch):
    """Changing targets where the loss mask is 0 (patches, padding) leaves the loss unchanged."""
    m = batch.loss_mask == 0
    assert m.any() and (~m).any()
    targets = batch.targets.clone()
    targets[m] = torch.randint(0, LAYOUT.vocab_size, (int(m.sum()),), generator=torch.Generator().manual_seed(3))
    assert not torch.equal(targets, batch.targets)
    other = type(batch)(**{**batch.__dict__, "targets": targets})
    assert model.loss(other).item() == model.loss(batch).item()
    s1, _ = model.loss_terms(other)
    s0, _ = model.loss_terms(batch)
    assert torch.equal(s0, s1)
    # ...while changing one target that is counted does change it.
    t = batch.targets.clone()
    i = torch.nonzero(~m)[0]
    t[i[0], i[1]] = (t[i[0], i[1]] + 1) % LAYOUT.vocab_size
    assert model.loss(type(batch)(**{**batch.__dict__, "targets": t})).item() != model.loss(batch).item()


def test_patch_embeddings_receive_gradients(model, batch):
    model.zero_grad()
    model.loss(batch).backward()
    pe = model.patch_embed
    for p in (pe.stem.weight, pe.conv1.weight, pe.conv2.weight, pe.norm1.weight, pe.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    used_rows = set(batch.patch_row.tolist())
    row_grad = model.patch_row.weight.grad.abs().sum(1)
    assert all(row_grad[r] > 0 for r in used_rows)
    assert all(row_grad[r] == 0 for r in range(LAYOUT.position_bins) if r not in used_rows)
    assert model.local_pos.weight.grad[:7].abs().sum(1).min() > 0
    model.zero_grad()


def test_patches_reach_their_slots(model, batch):
    """A patch's pixels change the logits at its slot and after, never before it."""
    base = model(batch)
    k = 2
    pos = int(batch.patch_index[k])
    b, i = divmod(pos, L)
    patches = batch.patches.clone()
    patches[k] = -patches[k]
    out = model(type(batch)(**{**batch.__dict__, "patches": patches}))
    assert torch.equal(out[b, :i], base[b, :i])
    assert not torch.allclose(out[b, i], base[b, i])
    others = [j for j in range(3) if j != b]
    assert torch.equal(out[others], base[others])


def test_text_only_batch_and_bf16_autocast(model):
    rows = [build_text_row(np.arange(3, 60), LAYOUT)]
    b = collate([_sample(r) for r in rows], L)
    assert b.patches.shape[0] == 0
    fp32 = model.loss(b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.loss(b)
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.05
    # Training on a batch without images still reaches every parameter (DDP needs that), with 0.
    model.zero_grad()
    fp32.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.patch_embed.stem.weight.grad.abs().sum() == 0
    model.zero_grad()


def test_init_and_param_groups(model):
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    nd = {id(p) for p in no_decay["params"]}
    assert id(model.embed.weight) in nd and id(model.local_pos.weight) in nd and id(model.patch_row.weight) in nd
    assert id(model.blocks[0].norm1.weight) in nd and id(model.patch_embed.norm1.bias) in nd
    d = {id(p) for p in decay["params"]}
    assert id(model.blocks[0].attn.qkv.weight) in d and id(model.patch_embed.stem.weight) in d
    assert len(d) + len(nd) == len(list(model.parameters()))


def _value_rows(value_embed: str) -> torch.Tensor:
    torch.manual_seed(0)
    m = GatoModel(GatoConfig.from_preset("tiny", LAYOUT, value_embed=value_embed))
    lo = LAYOUT.continuous_offset
    return m.embed.weight[lo:lo + LAYOUT.num_bins].detach()


def test_value_embeddings_start_smooth_in_the_value():
    """Neighbouring continuous-value bins start close, distant ones unrelated; "normal" (the plain
    lookup-table init) has no such structure, and both keep the init scale."""
    def cos(rows, gap):
        a, b = rows[:-gap], rows[gap:]
        return F.cosine_similarity(a, b, dim=1).mean().item()

    smooth, plain = _value_rows("smooth"), _value_rows("normal")
    for rows in (smooth, plain):
        assert rows.std().item() == pytest.approx(0.02, rel=0.1)
    assert cos(smooth, 1) > 0.7 and abs(cos(smooth, 512)) < 0.2
    assert abs(cos(plain, 1)) < 0.1
    with pytest.raises(ValueError, match="value_embed"):
        GatoConfig.from_preset("tiny", LAYOUT, value_embed="fourier")


@pytest.mark.parametrize("name,layers,width,heads", [("gato-79m", 8, 768, 24), ("gato-364m", 12, 1536, 12),
                                                     ("gato-1.18b", 24, 2048, 16)])
def test_paper_presets(name, layers, width, heads):
    layout = VocabLayout(text_vocab_size=32000, eos_id=2)
    cfg = GatoConfig.from_preset(name, layout)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (layers, width, heads, 4 * width)
    with torch.device("meta"):
        m = GatoModel(cfg)
    assert m.embed.weight.shape == (33025, width)
    assert GatoConfig.from_dict(cfg.to_dict()) == cfg
    assert "tiny" in PRESETS


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError):
        GatoConfig(layout=LAYOUT.to_dict(), d_model=100, n_head=3)
