"""The variational bound (NELBO) of the VE diffusion, for comparing schedules.

For x_σ = x + σε, the continuous-time bound on −ln p(x), in nats, is

    ∫_{ln σmin}^{ln σmax} ‖x − D(x_σ; σ)‖² / σ²  du        (diffusion term, u = ln σ)
  + KL(N(x, σmax² I) ‖ N(0, σmax² I)) = ‖x‖² / (2 σmax²)    (prior term)
  + E[−ln p(x | x_σmin)]                                   (reconstruction, the domain's decoder)

The integral uses a fixed midpoint rule over u and noise fixed per example id, so the number is
independent of the training schedule and of how examples are batched or split across processes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .loss import bcast

ReconNLL = Callable[[Tensor, Tensor, float], Tensor]


def unit_key(unit: str) -> str:
    """A NELBO unit as a metric-name suffix: 'bits/char' → 'bits_per_char'."""
    return unit.replace("/", "_per_").replace(" ", "_")


def quadrature(sigma_min: float, sigma_max: float, nodes: int) -> tuple[Tensor, float]:
    """Midpoints u_j (ln σ) of `nodes` equal cells over [ln σmin, ln σmax], and the cell width."""
    lo, hi = torch.tensor([sigma_min, sigma_max], dtype=torch.float64).log().tolist()
    du = (hi - lo) / nodes
    return torch.linspace(lo + du / 2, hi - du / 2, nodes, dtype=torch.float64), du


def fixed_noise(example_ids: Tensor, shape: tuple[int, ...], draws: int, seed: int) -> Tensor:
    """[B, draws, *shape] standard normals that depend only on (seed, example id)."""
    out = []
    for i in example_ids.tolist():
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i))
        out.append(torch.randn((draws, *shape), generator=g))
    return torch.stack(out)


@torch.no_grad()
def nelbo_nats(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    noise: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    recon_nll: ReconNLL,
) -> dict[str, Tensor]:
    """Per-example bound components in nats. ``noise`` is [B, nodes + 1, *x.shape[1:]]."""
    nodes = noise.shape[1] - 1
    us, du = quadrature(sigma_min, sigma_max, nodes)
    diffusion = x.new_zeros(x.shape[0])
    for j, u in enumerate(us.tolist()):
        sigma = torch.full((x.shape[0],), float(torch.tensor(u).exp()), device=x.device)
        denoised = denoiser(x + bcast(sigma, x) * noise[:, j], sigma).float()
        diffusion += (denoised - x).square().flatten(1).sum(1) / sigma**2 * du
    prior = x.square().flatten(1).sum(1) / (2 * sigma_max**2)
    z_min = x + sigma_min * noise[:, -1]
    recon = recon_nll(x, z_min, sigma_min)
    return {"diffusion": diffusion, "prior": prior, "recon": recon, "total": diffusion + prior + recon}
