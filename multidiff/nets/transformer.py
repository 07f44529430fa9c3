"""A pre-norm transformer denoiser over sequences of vectors, producing logits per position.

Input: ``x`` [B, L, D] (already scaled by EDM's c_in) and ``c_noise`` [B] (= ln σ / 4); optionally
a self-conditioning input [B, L, D] (the previous x0 estimate divided by σ_data). Output: logits
[B, L, V]. The noise level enters through adaptive LayerNorm (a per-example scale and shift of
every norm, initialized to the identity), so the network starts as a plain pre-norm transformer.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..settings import check_settings, flag, integer, number

TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "embed_dim": 64,  # D: dimension of the token embeddings the diffusion runs in
    "width": 256,  # transformer width
    "layers": 4,
    "heads": 4,
    "mlp_ratio": 4,
    "dropout": 0.0,
    "self_condition": False,  # feed the previous x0 estimate back in (CDCD); doubles sampling cost
}


def noise_features(c_noise: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of c_noise = ln σ / 4 (frequencies spanning its range of about ±3)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(200.0), half, device=c_noise.device))
    angles = c_noise.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class AdaNorm(nn.Module):
    """LayerNorm whose scale and shift depend on the noise embedding (zero-initialized: identity)."""

    def __init__(self, width: int, cond: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond, 2 * width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """``emb``: [B, C] (one noise level per sequence) or [B, L, C] (one per token)."""
        mod = self.mod(emb)
        scale, shift = (mod[:, None] if mod.ndim == 2 else mod).chunk(2, dim=-1)
        return self.norm(h) * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm block: h + Attn(Norm(h)), then h + MLP(Norm(h)); bidirectional attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, cond: int) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = AdaNorm(width, cond), AdaNorm(width, cond)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(self.norm1(h, emb)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, w)))
        return h + self.drop(self.mlp(self.norm2(h, emb)))


class SequenceTransformer(nn.Module):
    """``net(x, c_noise, cond=None) -> logits``: x [B, L, D] → logits [B, L, vocab]."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        embed_dim: int = 64,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        self.self_condition = self_condition
        self.inp = nn.Linear(embed_dim * (2 if self_condition else 1), width)
        self.pos = nn.Parameter(torch.randn(1, seq_len, width) * 0.02)
        self.noise_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, width) for _ in range(layers))
        self.out_norm = AdaNorm(width, width)
        self.head = nn.Linear(width, vocab_size)
        nn.init.zeros_(self.head.weight)  # start from uniform predictions: x0 estimate = mean embedding
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        if self.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if cond is None else cond.to(x.dtype)], dim=-1)
        h = self.inp(x) + self.pos[:, : x.shape[1]]
        emb = self.noise_mlp(noise_features(c_noise, h.shape[-1]).to(h.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.head(self.out_norm(h, emb))


TRANSFORMER_RULES = {
    "embed_dim": integer(1), "width": integer(1), "layers": integer(1), "heads": integer(1),
    "mlp_ratio": number(0, open_lo=True), "dropout": number(0, 1, open_hi=True), "self_condition": flag(),
}  # fmt: skip


def transformer_from_config(cfg: dict[str, Any], vocab_size: int, seq_len: int) -> SequenceTransformer:
    """Build from the recipe's ``model`` section (keys of TRANSFORMER_DEFAULTS); UserError on bad values."""
    check_settings("model", cfg, TRANSFORMER_RULES)
    if cfg["width"] % cfg["heads"]:
        raise UserError(f"model.width ({cfg['width']}) must be divisible by model.heads ({cfg['heads']})")
    return SequenceTransformer(
        vocab_size, seq_len, embed_dim=cfg["embed_dim"], width=cfg["width"], layers=cfg["layers"],
        heads=cfg["heads"], mlp_ratio=cfg["mlp_ratio"], dropout=float(cfg["dropout"]),
        self_condition=cfg["self_condition"],
    )  # fmt: skip
