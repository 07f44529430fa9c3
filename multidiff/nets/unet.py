"""A compact UNet backbone F(x, c_noise) for 2-D grids (binarized images, spectrograms, latents).

It knows nothing of σ or preconditioning: EDMPrecond feeds it c_in·x and c_noise = ln(σ)/4.
Sizes come from the recipe (``channels``, ``channel_mult``, ``num_blocks``, ``attention``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..settings import check_settings, int_list, integer, number


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if ch % 8 == 0 else 1, ch)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise followed by a 2-layer MLP."""

    def __init__(self, dim: int, freqs: int = 32) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), freqs)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # adaptive scale and shift from the noise level
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.drop(h))


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm, self.qkv, self.out = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """UNet over [B, C, H, W]; ``attention`` lists the levels (0 = full resolution) with self-attention."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_blocks: int = 1,
        attention: Sequence[int] = (),
        dropout: float = 0.0,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        emb_dim = 4 * channels
        self.embed = NoiseEmbedding(emb_dim)
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(self._block(ch, channels * mult, emb_dim, dropout, level in attention))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(self._block(ch + skips.pop(), channels * mult, emb_dim, dropout, level in attention))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after nearest upsampling
        self.head = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @staticmethod
    def _block(cin: int, cout: int, emb_dim: int, dropout: float, attn: bool) -> nn.ModuleList:
        return nn.ModuleList([ResBlock(cin, cout, emb_dim, dropout)] + ([Attention(cout)] if attn else []))

    channels_last = False  # set on CUDA, where channels-last convolutions are faster

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.embed(c_noise)
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, nn.Conv2d):  # upsample to the next skip's size (odd sizes allowed)
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
            else:
                h = self._run(layer, torch.cat([h, hs.pop()], dim=1), emb)
        return self.head(h)

    @staticmethod
    def _run(layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if isinstance(layer, nn.Conv2d):
            return layer(h)
        for sub in layer:
            h = sub(h, emb) if isinstance(sub, ResBlock) else sub(h)
        return h


UNET_DEFAULTS: dict[str, Any] = {"channels": 32, "channel_mult": [1, 2], "num_blocks": 1, "attention": [], "dropout": 0.0}
UNET_RULES = {
    "channels": integer(1),
    "channel_mult": int_list(1, nonempty=True),
    "num_blocks": integer(1),
    "attention": int_list(0),
    "dropout": number(0, 1, open_hi=True),
}


def unet_from_config(cfg: dict[str, Any], in_channels: int) -> UNet:
    """A UNet from a recipe's ``model`` section (keys of UNET_DEFAULTS); UserError on bad values."""
    from ..errors import UserError

    check_settings("model", cfg, UNET_RULES)
    levels = len(cfg["channel_mult"])
    if any(a >= levels for a in cfg["attention"]):
        raise UserError(f"model.attention lists levels 0..{levels - 1} (one per model.channel_mult entry), got {cfg['attention']}")
    try:
        return UNet(
            in_channels=in_channels,
            channels=int(cfg["channels"]),
            channel_mult=[int(m) for m in cfg["channel_mult"]],
            num_blocks=int(cfg["num_blocks"]),
            attention=[int(a) for a in cfg["attention"]],
            dropout=float(cfg["dropout"]),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"model: invalid UNet settings {cfg} ({exc})") from None
