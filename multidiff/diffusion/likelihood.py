"""The variational bound (NELBO) of the VE diffusion, for comparing schedules.

For x_σ = x + σε, the continuous-time bound on −ln p(x), in nats, is

    ∫_{ln σmin}^{ln σmax} ‖x − D(x_σ; σ)‖² / σ²  du        (diffusion term, u = ln σ)
  + KL(N(x, σmax² I) ‖ N(0, σmax² I)) = ‖x‖² / (2 σmax²)    (prior term)
  + E[−ln p(x | x_σmin)]                                   (reconstruction, the domain's decoder)

The integral uses a fixed midpoint rule over u and noise fixed per example id, so the number is
independent of the training schedule and of how examples are batched or split across processes.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

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


Parts = dict[str, Tensor]


@torch.no_grad()
def nelbo_along_paths(
    denoise: Callable[[Parts, Parts], Parts],
    x: Parts,
    noise: Parts,
    *,
    floors: dict[str, float],
    sigma_max: float,
    recon_nll: dict[str, ReconNLL],
    given: Optional[dict[str, float]] = None,
) -> dict[str, dict[str, Tensor]]:
    """Per-example bound components in nats, per modality: ``{name: {diffusion, prior, recon, total}}``.

    ``x``: each modality's clean examples [B, ...]; ``noise``: its fixed standard normals
    [B, nodes + 1, ...] (the last draw is the reconstruction's). ``denoise(noisy, sigma)`` takes and
    returns every modality at once (σ: [B] per modality). Each modality follows its own path from
    ``sigma_max`` down to its floor (σ, not ln σ): at node j it sits at the midpoint of cell j of
    [ln floor, ln σ_max], so all modalities move together and one network call serves a node.
    ``given``: modalities held clean at the σ given for them (a conditional bound), not counted.
    """
    given = given or {}
    counted = [k for k in x if k not in given]
    nodes = next(iter(noise.values())).shape[1] - 1
    grid = {k: quadrature(floors[k], sigma_max, nodes) for k in counted}  # (midpoints of ln σ, cell width)
    batch = next(iter(x.values())).shape[0]
    diffusion = {k: x[k].new_zeros(batch) for k in counted}
    for j in range(nodes):
        level = {k: given[k] if k in given else math.exp(float(grid[k][0][j])) for k in x}
        sigma = {k: torch.full((batch,), level[k], device=x[k].device) for k in x}
        noisy = {k: x[k] if k in given else x[k] + level[k] * noise[k][:, j] for k in x}
        denoised = denoise(noisy, sigma)
        for k in counted:
            diffusion[k] += (denoised[k].float() - x[k]).square().flatten(1).sum(1) / level[k] ** 2 * grid[k][1]
    out = {}
    for k in counted:
        prior = x[k].square().flatten(1).sum(1) / (2 * sigma_max**2)
        recon = recon_nll[k](x[k], x[k] + floors[k] * noise[k][:, -1], floors[k])
        out[k] = {"diffusion": diffusion[k], "prior": prior, "recon": recon, "total": diffusion[k] + prior + recon}
    return out


def nelbo_nats(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    noise: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    recon_nll: ReconNLL,
) -> dict[str, Tensor]:
    """One modality's per-example bound components in nats (:func:`nelbo_along_paths` with one path,
    from σ_max down to σ_min). ``noise`` is [B, nodes + 1, *x.shape[1:]]."""
    return nelbo_along_paths(lambda noisy, sigma: {"x": denoiser(noisy["x"], sigma["x"])}, {"x": x}, {"x": noise},
                             floors={"x": sigma_min}, sigma_max=sigma_max, recon_nll={"x": recon_nll})["x"]  # fmt: skip
