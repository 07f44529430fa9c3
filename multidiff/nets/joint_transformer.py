"""One transformer over several modalities of 2-D grids (binarized images, spectrograms, latents).

Each modality is cut into patches, embedded by its own linear map with its own positional and
modality embeddings, and all tokens go through one shared stack of pre-norm blocks. The noise
level enters per token: every token's adaptive LayerNorm is driven by the features of *its*
modality's c_noise = ln σ_m / 4, so one example can carry a nearly clean image beside a very noisy
spectrogram. Before each block a summary of each of the other modalities joins that conditioning: a
global path between modalities, which attention alone learns slowly at CPU sizes (what makes
conditional generation work in a few thousand steps). A summary weighs every token position with
its own learned weights (per channel), so it keeps *where* things are: a plain mean of an image's
patch tokens is little more than its amount of ink, which says almost nothing of the digit, while
a spectrogram's mean frame still names its word, so a mean lets speech steer images but not the
reverse. Each modality has its own output head back to its patches.

``net(xs, c_noise) -> Fs``: dicts by modality of [B, C, H, W] (already scaled by that modality's
c_in) and [B] noise features in, network outputs F_m [B, C, H, W] out.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..settings import check_settings, integer, number
from .transformer import AdaNorm, Block, noise_features

JOINT_RULES = {
    "width": integer(8), "layers": integer(1), "heads": integer(1), "mlp_ratio": number(0, open_lo=True),
    "dropout": number(0, 1, open_hi=True),
}  # fmt: skip


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] → [B, (H/p)(W/p), C·p·p]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(t: Tensor, p: int, shape: tuple[int, int, int]) -> Tensor:
    """[B, (H/p)(W/p), C·p·p] → [B, C, H, W]."""
    c, h, w = shape
    b = t.shape[0]
    return t.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class JointTransformer(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int, int]], patches: dict[str, int], width: int = 128, layers: int = 4,
                 heads: int = 4, mlp_ratio: float = 4, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.shapes, self.patches = dict(shapes), dict(patches)
        self.inp, self.out = nn.ModuleDict(), nn.ModuleDict()
        self.pos, self.kind = nn.ParameterDict(), nn.ParameterDict()
        for key, (c, h, w) in self.shapes.items():
            p = self.patches[key]
            self.inp[key] = nn.Linear(c * p * p, width)
            self.out[key] = nn.Linear(width, c * p * p)
            nn.init.zeros_(self.out[key].weight)  # start from F = 0: D = c_skip·x
            nn.init.zeros_(self.out[key].bias)
            self.pos[key] = nn.Parameter(torch.randn(1, (h // p) * (w // p), width) * 0.02)
            self.kind[key] = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.noise_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, width) for _ in range(layers))
        # before each block, every modality's summary (a position-weighted sum of its tokens, projected)
        # joins the other modalities' conditioning: a direct global path that attention alone learns slowly
        tokens = {key: pos.shape[1] for key, pos in self.pos.items()}
        self.pool = nn.ModuleList(
            nn.ParameterDict({key: nn.Parameter(torch.full((n, width), 1.0 / n)) for key, n in tokens.items()})  # starts as the mean
            for _ in range(layers)
        )
        self.summary = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(layers))
        for s in self.summary:
            nn.init.zeros_(s[1].weight)
            nn.init.zeros_(s[1].bias)
        self.out_norm = AdaNorm(width, width)
        self.width = width

    def _cross(self, h: Tensor, pool: nn.ParameterDict, summary: nn.Module) -> Tensor:
        """Per token: the sum of the *other* modalities' projected summaries ([B, L, W])."""
        counts = [pool[key].shape[0] for key in self.shapes]  # tokens per modality, in h's order
        sums = [summary((part * pool[key].to(part.dtype)).sum(1)) for key, part in zip(self.shapes, h.split(counts, dim=1))]
        total = torch.stack(sums).sum(0)
        return torch.cat([(total - own)[:, None].expand(-1, n, -1) for own, n in zip(sums, counts)], 1)

    def forward(self, xs: dict[str, Tensor], c_noise: dict[str, Tensor]) -> dict[str, Tensor]:
        tokens, embs, counts = [], [], []
        for key in self.shapes:
            t = self.inp[key](patchify(xs[key], self.patches[key])) + self.pos[key] + self.kind[key]
            e = self.noise_mlp(noise_features(c_noise[key], self.width).to(t.dtype))
            tokens.append(t)
            embs.append(e[:, None].expand(-1, t.shape[1], -1))  # every token of this modality: its σ
            counts.append(t.shape[1])
        h, emb = torch.cat(tokens, 1), torch.cat(embs, 1)
        for block, pool, summary in zip(self.blocks, self.pool, self.summary):
            h = block(h, emb + self._cross(h, pool, summary))
        h = self.out_norm(h, emb)
        return {key: unpatchify(self.out[key](part), self.patches[key], self.shapes[key])
                for key, part in zip(self.shapes, h.split(counts, dim=1))}  # fmt: skip


def joint_transformer_from_config(cfg: dict[str, Any], shapes: dict[str, tuple[int, int, int]], patches: dict[str, int]) -> JointTransformer:
    check_settings("model", cfg, JOINT_RULES)
    if cfg["width"] % cfg["heads"]:
        raise UserError(f"model.width ({cfg['width']}) must be divisible by model.heads ({cfg['heads']})")
    for key, (_, h, w) in shapes.items():
        p = patches[key]
        if h % p or w % p:
            raise UserError(f"model.patch.{key} = {p} must divide the {key} grid {h}×{w}")
    return JointTransformer(shapes, patches, width=cfg["width"], layers=cfg["layers"], heads=cfg["heads"],
                            mlp_ratio=cfg["mlp_ratio"], dropout=float(cfg["dropout"]))  # fmt: skip
