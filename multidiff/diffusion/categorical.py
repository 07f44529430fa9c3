"""Diffusion on learned token embeddings, CDCD-style (Dieleman et al. 2022).

Tokens are embedded with learned vectors that are L2-normalized and scaled to norm σ_data·√D, so
every embedding (hence the data x) has per-dimension RMS exactly σ_data. The network sees EDM's
input scaling c_in·x and c_noise = ln σ / 4 and outputs logits over the vocabulary; it is trained
with cross-entropy. Its x0 estimate is the *expected embedding* under the softmax (score
interpolation): D(x; σ) = Σ_k softmax(logits)_k · e_k. That is what samplers and the likelihood
bound use, and its squared error against the true embedding is the ``e`` adaptive schedules observe.

The loss weight w(σ) multiplies the cross-entropy as it multiplies the MSE elsewhere; text recipes
use ``weighting: uniform`` (plain cross-entropy, as CDCD), so a learned schedule alone decides
where training effort goes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loss import LossOutput, bcast
from .model import DiffusionModel
from .precond import edm_coefficients


class CategoricalDiffusion(DiffusionModel):
    """Token ids [B, L] ↔ embeddings x [B, L, D]; ``backbone(c_in·x, c_noise, cond) -> logits [B, L, V]``."""

    def __init__(self, backbone: nn.Module, vocab_size: int, embed_dim: int, sigma_data: float, self_condition: bool = False) -> None:
        super().__init__()
        self.net = backbone
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embedding.weight)
        self.sigma_data = float(sigma_data)
        self.self_condition = self_condition

    # ---- embeddings ---------------------------------------------------------------------------
    def embeddings(self) -> Tensor:
        """[V, D] normalized embeddings, each of norm σ_data·√D (per-dimension RMS σ_data)."""
        w = self.embedding.weight
        return F.normalize(w.float(), dim=-1) * (self.sigma_data * math.sqrt(w.shape[1]))

    def encode(self, batch: Tensor) -> Tensor:
        return F.embedding(batch.long(), self.embeddings())

    # ---- the denoiser -------------------------------------------------------------------------
    def logits(self, x: Tensor, sigma: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Logits [B, L, V] for noisy x at noise level σ [B] (float32)."""
        _, _, c_in, c_noise = edm_coefficients(sigma.float().reshape(-1), self.sigma_data)
        if cond is not None:
            cond = cond / self.sigma_data  # the x0 estimate has RMS ≤ σ_data; feed it at unit scale
        return self.net(bcast(c_in, x) * x, c_noise, cond).float()

    def expected_embedding(self, logits: Tensor) -> Tensor:
        """Score interpolation: Σ_k softmax(logits)_k · e_k, [B, L, D]."""
        return logits.float().softmax(-1) @ self.embeddings()

    def _first_pass(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.expected_embedding(self.logits(x, sigma))  # no self-conditioning input (zeros)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The x0 estimate D(x; σ). With self-conditioning: a first pass without, then one
        conditioned on its estimate, so D stays a function of (x, σ) that any sampler can call."""
        cond = self._first_pass(x, sigma) if self.self_condition else None
        return self.expected_embedding(self.logits(x, sigma, cond))

    def loss(self, x: Tensor, sigma: Tensor, noise: Tensor, weight: Callable[[Tensor], Tensor], batch: Any,
             generator: Optional[torch.Generator] = None) -> LossOutput:  # fmt: skip
        """w(σ)·cross-entropy per token (mean over positions); ``error`` = mean ‖D − x‖² per dimension."""
        tokens = batch.long()
        z = x + bcast(sigma, x) * noise
        cond = None
        if self.self_condition:
            # half the examples get the first pass's estimate; which half follows the step's seeded
            # noise (sign of its first entry), so resumed runs repeat the same choices
            with torch.no_grad():
                first = self._first_pass(z, sigma)
            use = (noise.flatten(1)[:, 0] > 0).to(first.dtype)
            cond = first * bcast(use, first)
        logits = self.logits(z, sigma, cond)
        ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(1)
        with torch.no_grad():
            error = (self.expected_embedding(logits) - x).square().flatten(1).mean(1)
        return LossOutput(loss=weight(sigma) * ce, error=error.detach())

    # ---- likelihood and decoding --------------------------------------------------------------
    def token_log_posterior(self, z: Tensor, sigma: float) -> Tensor:
        """ln p(k | z_l) [B, L, V] at noise σ under a uniform prior over the vocabulary, per position:
        softmax_k(−‖z_l − e_k‖² / 2σ²). Exact for σ small next to the embedding distances."""
        e = self.embeddings()
        sq = z.float().square().sum(-1, keepdim=True) - 2 * z.float() @ e.T + e.square().sum(-1)
        return (-sq / (2 * sigma**2)).log_softmax(-1)

    def recon_nll(self, x: Tensor, z: Tensor, sigma: float) -> Tensor:
        """−ln p(tokens | z) in nats per example: the true tokens are the embeddings nearest to x."""
        logp = self.token_log_posterior(z, sigma)
        tokens = self.decode(x)
        return -logp.gather(-1, tokens[..., None]).squeeze(-1).sum(1)

    def decode(self, x: Tensor) -> Tensor:
        """Token ids [B, L]: argmax over the vocabulary of ⟨x, e_k⟩ (the nearest embedding, as all
        embeddings have the same norm)."""
        return (x.float() @ self.embeddings().T).argmax(-1)
