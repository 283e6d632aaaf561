"""The Gato model: a decoder-only transformer over one shared token embedding plus image patches.

Decisions the paper leaves open (made here, once; README "Model and loop", docs/SPEC.md section 5):
- Sequence order: rotary position embeddings (RoPE) on queries and keys. The paper names only the
  local observation positions and the patch row/column encodings; a causal decoder still needs to
  know token order, and RoPE adds no parameters and does not fix a maximum context length (acting
  may use a longer context than training).
- Output logits are tied to the input embedding table (the paper's parameter counts fit a tied head).
- Feed-forward: GEGLU; norms: pre-norm LayerNorm; linear layers have no biases.
- Padding is at the end of each sequence only (trainer.batch.collate), so the causal mask alone is
  exact for every real position: a real query never sees a padded key. Padded positions carry no
  loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer_kit.layout import VocabLayout

from .batch import Batch

# Paper sizes (Reed et al. 2022, table of model hyper-parameters): layers, width, heads, ff.
# The 79M model uses 24 heads of size 32; the others 128-wide heads (12 and 16 heads).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, d_model=128, n_head=4, d_ff=512, patch_channels=16, patch_groups=4),
    "gato-79m": dict(n_layer=8, d_model=768, n_head=24, d_ff=3072),
    "gato-364m": dict(n_layer=12, d_model=1536, n_head=12, d_ff=6144),
    "gato-1.18b": dict(n_layer=24, d_model=2048, n_head=16, d_ff=8192),
}

VALUE_EMBED_INITS = ("smooth", "normal")


@dataclass
class GatoConfig:
    """Everything needed to rebuild a model: sizes plus the vocabulary layout (as a dict)."""

    layout: dict
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    patch_channels: int = 32  # channels of the per-patch ResNet v2 block
    patch_groups: int = 8  # GroupNorm groups in that block
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    value_embed: str = "smooth"  # initial embeddings of the continuous-value bins: smooth or normal
    preset: str = ""
    seq_len: int = 1024  # context length it was trained with (RoPE sets no hard limit; acting uses it)

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head size must be even for rotary position embeddings")
        if self.patch_channels % self.patch_groups:
            raise ValueError(f"patch_channels {self.patch_channels} not divisible by patch_groups {self.patch_groups}")
        if self.value_embed not in VALUE_EMBED_INITS:
            raise ValueError(f"value_embed must be one of {', '.join(VALUE_EMBED_INITS)}, not {self.value_embed!r}")
        VocabLayout.from_dict(self.layout)  # validates the layout dict

    @property
    def vocab_layout(self) -> VocabLayout:
        return VocabLayout.from_dict(self.layout)

    @property
    def vocab_size(self) -> int:
        return self.vocab_layout.vocab_size

    @classmethod
    def from_preset(cls, name: str, layout: VocabLayout, **overrides) -> "GatoConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls(layout=layout.to_dict(), preset=name, **(PRESETS[name] | overrides))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GatoConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def smooth_value_rows(noise: torch.Tensor, std: float, share: float = 0.8,
                      periods: tuple[float, float] = (2.0, 1 / 32)) -> torch.Tensor:
    """Initial embeddings for the value bins (rows of `noise`, in bin order) that vary smoothly
    with the bin's value: `share` of each row's variance is a fixed random projection of Fourier
    features of the bin centre z in [-1, 1] (z itself and 16 sines and cosines with periods from
    2 down to 1/32 of z, log-spaced), the rest is `noise`.

    Why: a lookup table starts every bin independent of its neighbours, and a small model spends
    thousands of steps learning from data that bin k and bin k + 1 mean nearly the same number.
    Started smooth, neighbouring bins start close (cosine ~0.8) and distant ones unrelated, and
    training still moves each row freely. Measured on the demo's Pendulum (README, "Model and loop").
    """
    n, d = noise.shape
    z = ((torch.arange(n, dtype=torch.float32, device=noise.device) + 0.5) / n * 2 - 1)[:, None]
    freq = 2 * math.pi / torch.logspace(math.log10(periods[0]), math.log10(periods[1]), 16, device=noise.device)
    feats = torch.cat([z, torch.sin(z * freq), torch.cos(z * freq)], 1)
    smooth = feats @ torch.randn(feats.shape[1], d, device=noise.device)
    smooth = smooth / smooth.std().clamp_min(1e-12)
    return math.sqrt(1 - share) * noise + std * math.sqrt(share) * smooth


class PatchEmbed(nn.Module):
    """One ResNet v2 (pre-activation) block per 16x16 patch, then a linear map to the model width."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        lay = cfg.vocab_layout
        c, g = cfg.patch_channels, cfg.patch_groups
        self.patch = lay.patch_size
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(g, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(g, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm_out = nn.GroupNorm(g, c)  # v2 blocks end un-normalised: normalise before the head
        self.pool = nn.AvgPool2d(2)  # (c, 8, 8): c*64 values >= the patch's 768 for c >= 12
        self.proj = nn.Linear(c * (self.patch // 2) ** 2, cfg.d_model, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = patches.view(-1, p, p, 3).permute(0, 3, 1, 2).contiguous()  # batch patches are HWC
        x = self.stem(x)
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        x = self.pool(F.gelu(self.norm_out(x + h)))
        return self.proj(x.flatten(1))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: "KVCache | None" = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, cos, sin).to(v.dtype), _rope(k, cos, sin).to(v.dtype)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the new tokens attend to every cached key of their row and causally to each other
            k, v = cache.append(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class GEGLU(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.inp = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.inp(x).chunk(2, dim=-1)
        return self.out(F.gelu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ff = GEGLU(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, layer, mask)
        return x + self.ff(self.norm2(x))


class KVCache:
    """Keys and values of every layer for B contexts that grow a chunk at a time (acting, generation).

    Chunks are right-padded to a common width, so a row's cache may hold padded columns; `valid`
    masks them as keys for ever after, and `length` counts each row's real tokens, which is the
    RoPE position of its next token. Attention over a row's cache is thus exactly attention over its
    context without padding: the model's output does not depend on what else is in the batch.
    """

    def __init__(self, n_layer: int, batch: int, device: torch.device):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.length = torch.zeros(batch, dtype=torch.int64, device=device)

    @property
    def batch(self) -> int:
        return self.length.shape[0]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past_k, past_v = self.k[layer], self.v[layer]
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def select(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """The cache of some rows only (episodes still running, generations not yet ended)."""
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.length.device)
        out = KVCache(len(self.k), len(rows), self.length.device)
        out.k = [None if t is None else t.index_select(0, rows) for t in self.k]
        out.v = [None if t is None else t.index_select(0, rows) for t in self.v]
        out.valid, out.length = self.valid.index_select(0, rows), self.length.index_select(0, rows)
        return out


class GatoModel(nn.Module):
    """`forward(batch) -> logits (B, L, vocab)`; `loss(batch)` -> mean cross-entropy per target token."""

    inv_freq: torch.Tensor  # a buffer (register_buffer), typed for the checker

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.config = cfg
        lay = cfg.vocab_layout
        self.layout = lay
        self.embed = nn.Embedding(lay.vocab_size, cfg.d_model)
        self.patch_embed = PatchEmbed(cfg)
        self.patch_row = nn.Embedding(lay.position_bins, cfg.d_model)
        self.patch_col = nn.Embedding(lay.position_bins, cfg.d_model)
        self.local_pos = nn.Embedding(lay.local_positions, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        head = cfg.d_model // cfg.n_head
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, head, 2, dtype=torch.float32) / head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) everywhere (default init makes CPU backward hit denormals); residual outputs
        scaled by 1/sqrt(2 * layers) as in GPT-2."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
        for blk in self.blocks:
            assert isinstance(blk, Block)
            for lin in (blk.attn.out, blk.ff.out):
                nn.init.normal_(lin.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))
        if self.config.value_embed == "smooth":
            lay = self.layout
            rows = self.embed.weight[lay.continuous_offset:lay.continuous_offset + lay.num_bins]
            with torch.no_grad():
                rows.copy_(smooth_value_rows(rows, std))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        """Token embeddings, patches scattered into their slots, plus local observation positions."""
        B, L = batch.tokens.shape
        x = self.embed(batch.tokens)
        if batch.patches.shape[0]:
            pe = self.patch_embed(batch.patches.to(x.dtype))
            pe = pe + self.patch_row(batch.patch_row) + self.patch_col(batch.patch_col)
            x = x.reshape(B * L, -1).index_copy(0, batch.patch_index, pe.to(x.dtype)).view(B, L, -1)
        elif self.training and torch.is_grad_enabled():
            # No images in this batch: run one blank patch and add 0 * it, so every parameter is
            # in the graph (DDP expects that) without touching the values.
            blank = self.patch_embed(x.new_zeros(1, self.layout.patch_values))
            x = x + 0.0 * (blank.sum() + self.patch_row.weight[0].sum() + self.patch_col.weight[0].sum())
        lp = batch.local_pos
        has = (lp >= 0).unsqueeze(-1).to(x.dtype)
        return x + self.local_pos(lp.clamp(min=0)) * has

    def hidden(self, batch: Batch) -> torch.Tensor:
        """Final normalised hidden states (B, L, d_model)."""
        x = self.embed_inputs(batch)
        L = x.shape[1]
        t = torch.arange(L, device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x)

    def new_cache(self, batch: int) -> KVCache:
        return KVCache(len(self.blocks), batch, self.inv_freq.device)

    @torch.inference_mode()
    def extend(self, batch: Batch, cache: KVCache) -> torch.Tensor:
        """Feed the next chunk of each row's context (batch.attention_mask marks its real tokens)
        through the model, growing `cache`; returns the logits (B, vocab) after each row's last real
        token of the chunk. A chunk costs attention over the cache plus the chunk, not the context."""
        x = self.embed_inputs(batch)
        B, W = batch.tokens.shape
        real = batch.attention_mask
        # RoPE positions continue each row's own count of real tokens (padding takes no position)
        pos = cache.length[:, None] + torch.cumsum(real.long(), 1) - real.long()
        freqs = pos.to(torch.float32)[..., None] * self.inv_freq
        cos, sin = freqs.cos()[:, None], freqs.sin()[:, None]
        old = cache.valid.shape[1]
        causal = torch.ones(W, W, dtype=torch.bool, device=x.device).tril()
        keys = torch.cat([cache.valid[:, None, :].expand(B, W, old), causal[None] & real[:, None, :]], dim=2)
        mask = (keys | ~real[:, :, None])[:, None]  # a padded query sees everything: no empty softmax rows
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, cache, i, mask)
        cache.valid = torch.cat([cache.valid, real], dim=1)
        n = real.long().sum(1)
        cache.length = cache.length + n
        last = self.norm(x[torch.arange(B, device=x.device), (n - 1).clamp(min=0)])
        return F.linear(last, self.embed.weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        return F.linear(self.hidden(batch), self.embed.weight)  # tied output head

    def loss_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence sums of target-token cross-entropy (B,) and of target counts (B,).

        Logits are computed only where the loss mask is set: masked positions (image patches,
        observations, separators, padding) contribute nothing and cost no vocabulary projection,
        which is most of an RL sequence.
        """
        h = self.hidden(batch)
        mask = batch.loss_mask.float()
        where = mask > 0
        seq = torch.arange(h.shape[0], device=h.device).unsqueeze(1).expand_as(where)[where]
        logits = F.linear(h[where], self.embed.weight)
        ce = F.cross_entropy(logits.float(), batch.targets[where], reduction="none") * mask[where]
        return torch.zeros(h.shape[0], device=h.device).index_add(0, seq, ce), mask.sum(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy averaged over target tokens (not over all positions)."""
        s, n = self.loss_terms(batch)
        return s.sum() / n.sum().clamp(min=1.0)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices and convolutions; not norms, biases or embeddings."""
        no_decay: set[int] = set()
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.LayerNorm, nn.GroupNorm)):
                no_decay.update(id(p) for p in m.parameters(recurse=False))
        decay: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        for p in self.parameters():
            (rest if id(p) in no_decay or p.ndim < 2 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
