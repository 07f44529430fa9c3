"""EDM preconditioning: D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise).

The backbone F never sees σ directly, only c_noise = ln(σ)/4; σ is σ (not ln σ) everywhere here.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def edm_output_variance(sigma: Any, sigma_data: float) -> Any:
    """c_out² = σ²·σ_data² / (σ² + σ_data²): the x0 error per unit of error in the backbone's output F
    (σ, a tensor or a float). EDM's loss weight is its inverse, and an F-MSE is an x0 error times it."""
    s2, d2 = sigma * sigma, sigma_data * sigma_data
    return s2 * d2 / (s2 + d2)


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise level σ and data RMS σ_data. c_out is the square root
    of :func:`edm_output_variance`, written as k-diffusion writes it so the denoiser matches it bit for bit."""
    s2, d2 = sigma * sigma, sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Wraps a backbone ``net(x, c_noise, **cond) -> F`` into the x0-denoiser D(x; σ)."""

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        F = self.net(c_in * x, c_noise.flatten(), **cond)
        return c_skip * x + c_out * F.to(torch.float32)
