"""A density tabulated on a grid of u = ln σ.

The density is piecewise linear between grid points, so its CDF is piecewise quadratic and the
inverse CDF has a closed form per segment: sampling is exact for the tabulated density, not an
approximation of it. This is the common currency of learned schedules and schedule files.
"""
from __future__ import annotations

import torch
from torch import Tensor


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, clamped to the end values (torch.interp)."""
    i = (torch.searchsorted(xp, x.contiguous(), right=True) - 1).clamp(0, xp.numel() - 2)
    x0, x1 = xp[i], xp[i + 1]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return fp[i] + w * (fp[i + 1] - fp[i])


class TabulatedDensity:
    """Piecewise-linear density on grid ``u`` (increasing) with values ``pdf`` ≥ 0 (normalized here).

    Keeps float64 CPU copies (``u64``, ``p64``, ``c64``) for export, and float32 copies on the
    sampling device for ``pdf``/``cdf``/``icdf``.
    """

    def __init__(self, u: Tensor, pdf: Tensor) -> None:
        u64 = torch.as_tensor(u, dtype=torch.float64).cpu()
        p64 = torch.as_tensor(pdf, dtype=torch.float64).cpu().clamp(min=0)
        if u64.ndim != 1 or u64.numel() < 2 or u64.shape != p64.shape:
            raise ValueError("TabulatedDensity needs 1-D u and pdf of equal length >= 2")
        h = u64.diff()
        if not bool((h > 0).all()):
            raise ValueError("TabulatedDensity grid u must be strictly increasing")
        mass = 0.5 * h * (p64[:-1] + p64[1:])
        total = float(mass.sum())
        if not total > 0:
            raise ValueError("TabulatedDensity pdf has zero mass")
        self.u64 = u64
        self.p64 = p64 / total
        self.c64 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass / total, 0)])
        self.c64[-1] = 1.0
        self.to(torch.device("cpu"))

    def to(self, device: torch.device | str) -> "TabulatedDensity":
        f32 = torch.float32
        self.u = self.u64.to(device, f32)
        self.p = self.p64.to(device, f32)
        self.c = self.c64.to(device, f32)
        self.h = self.u64.diff().to(device, f32)
        self.s = (self.p64.diff() / self.u64.diff()).to(device, f32)  # slope of the pdf per segment
        return self

    def segment_masses(self) -> Tensor:
        """Probability mass of each grid segment (float64, CPU)."""
        return self.c64.diff()

    def pdf(self, u: Tensor) -> Tensor:
        inside = (u >= self.u[0]) & (u <= self.u[-1])
        return torch.where(inside, interp(u, self.u, self.p), torch.zeros_like(u))

    def cdf(self, u: Tensor) -> Tensor:
        i = (torch.searchsorted(self.u, u.contiguous(), right=True) - 1).clamp(0, self.u.numel() - 2)
        t = torch.minimum((u - self.u[i]).clamp(min=0), self.h[i])
        return (self.c[i] + self.p[i] * t + 0.5 * self.s[i] * t * t).clamp(0, 1)

    def icdf(self, q: Tensor) -> Tensor:
        i = (torch.searchsorted(self.c, q.contiguous(), right=True) - 1).clamp(0, self.u.numel() - 2)
        d = (q - self.c[i]).clamp(min=0)
        p, s = self.p[i], self.s[i]
        # Solve c_i + p t + s t²/2 = q for t in the stable form 2d / (p + sqrt(p² + 2 s d)).
        den = p + (p * p + 2 * s * d).clamp(min=0).sqrt()
        t = torch.where(den > 0, 2 * d / den.clamp(min=1e-30), torch.zeros_like(d))
        return self.u[i] + torch.minimum(t, self.h[i])
