"""Diffusion over several modalities at once, each with its own noise level per example.

x packs the modalities' encoded examples side by side ([B, D], D = Σ D_m). Every modality m has
its own σ_data, EDM preconditioning, fixed loss weight w_m(σ_m) and σ per example (a [B, M] σ
tensor, column m drawn from modality m's schedule). The backbone sees all modalities at once and
each token's noise level, so it learns the joint, every conditional and the marginals:

- a share ``clean_share`` of examples gives one modality (chosen at random) clean — the model
  learns p(other | given) — and that modality is neither trained nor observed by its schedule;
- a share ``drop_share`` puts one modality at σ_max — the model learns the marginal of the others
  (pure noise carries nothing) — and that entry is trained but not observed (its schedule did not
  draw it);
- of the conditional examples, a share ``cond_loguniform`` draws the generated modalities' σ
  log-uniformly on [σ_min, σ_max] instead of from their schedules (trained, not observed). A
  learned schedule puts its σ where the modality's own information is resolved; a conditional also
  has to learn to read the given modality where the generated one is still noise, at high σ.

The bound (:meth:`JointDiffusion.nelbo`) follows every modality down its own path, from σ_max to
its own reconstruction point (a binary image decodes where its pixels are already determined),
evaluated together: at quadrature node s_j modality m sits at σ_m(s_j), log-linear in s.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .likelihood import nelbo_along_paths
from .loss import LossOutput
from .model import RECON, DiffusionModel
from .precond import edm_coefficients
from .weighting import get_weighting


class JointDiffusion(DiffusionModel):
    def __init__(
        self,
        backbone: nn.Module,
        shapes: dict[str, tuple[int, ...]],
        sigma_data: dict[str, float],
        recon: dict[str, str],
        floors: dict[str, float],
        decoders: dict[str, Callable[[Tensor], Tensor]],
        tables: dict[str, Tensor],
        *,
        weighting: str,
        sigma_min: float,
        sigma_max: float,
        clean_share: float,
        drop_share: float,
        cond_loguniform: float = 0.0,
        partner_labels: Optional[dict[str, Tensor]] = None,
    ) -> None:
        super().__init__()
        self.net = backbone
        self.keys = list(shapes)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.sizes = [math.prod(self.shapes[k]) for k in self.keys]
        self.sigma_data, self.recon, self.floors = dict(sigma_data), dict(recon), dict(floors)
        self.decoders = decoders
        self.weights = {k: get_weighting(weighting, self.sigma_data[k]) for k in self.keys}
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.clean_share, self.drop_share = float(clean_share), float(drop_share)
        self.cond_loguniform = float(cond_loguniform)
        for k in self.keys:  # the paired examples, looked up by index (on the model's device; not in checkpoints)
            self.register_buffer(f"table_{k}", tables[k], persistent=False)
        self.lead: Optional[int] = None  # the modality whose example each training pair keeps, when partners are redrawn
        if partner_labels is not None:
            self._class_pools(partner_labels)

    def _class_pools(self, labels: dict[str, Tensor]) -> None:
        """Each modality's training indices grouped by class (sorted, with each class's start and
        count), and the class of every example of the lead modality (the largest, whose column each
        training pair keeps)."""
        self.lead = max(range(len(self.keys)), key=lambda m: labels[self.keys[m]].numel())
        lead_labels = labels[self.keys[self.lead]].long()
        classes = int(max(int(lab.max()) for lab in labels.values())) + 1
        self.register_buffer("lead_labels", lead_labels, persistent=False)
        for k in self.keys:
            lab = labels[k].long()
            count = torch.bincount(lab, minlength=classes)
            self.register_buffer(f"pool_{k}", torch.argsort(lab, stable=True), persistent=False)
            self.register_buffer(f"pool_start_{k}", torch.cumsum(count, 0) - count, persistent=False)
            self.register_buffer(f"pool_count_{k}", count, persistent=False)

    def training_batch(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """[B, M] pair indices → the same lead examples, each with a partner of its class drawn
        afresh in every other modality (when pairing by class redraws partners; else the batch)."""
        if self.lead is None:
            return batch
        idx = batch.long().clone()
        cls = self.lead_labels[idx[:, self.lead]]
        u = torch.rand(idx.shape[0], len(self.keys), generator=generator, device=idx.device)
        for m, k in enumerate(self.keys):
            if m == self.lead:
                continue
            count = getattr(self, f"pool_count_{k}")[cls]
            pick = torch.minimum((u[:, m] * count).long(), count - 1)  # u < 1, but float rounding may reach count
            idx[:, m] = getattr(self, f"pool_{k}")[getattr(self, f"pool_start_{k}")[cls] + pick]
        return idx.to(batch.dtype)

    # ---- packing ------------------------------------------------------------------------------------
    def encode(self, batch: Tensor) -> Tensor:
        """[B, M] example indices (one per modality) → x [B, D]."""
        idx = batch.long()
        return torch.cat([getattr(self, f"table_{k}")[idx[:, m]].flatten(1).float() for m, k in enumerate(self.keys)], dim=1)

    def split(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, D] → each modality's [B, *shape]."""
        return {k: part.reshape(x.shape[0], *self.shapes[k]) for k, part in zip(self.keys, x.split(self.sizes, dim=1))}

    def modality_parts(self, x: Tensor) -> list[Tensor]:
        return list(self.split(x).values())

    def join(self, parts: dict[str, Tensor]) -> Tensor:
        return torch.cat([parts[k].flatten(1) for k in self.keys], dim=1)

    def sigmas(self, sigma: Tensor, batch: int) -> dict[str, Tensor]:
        """σ of shape [B] (shared), [B, M] (per modality) or a scalar → each modality's [B]."""
        sigma = sigma.float().reshape(-1) if sigma.ndim <= 1 else sigma.float()
        if sigma.ndim == 1:
            sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
            return {k: sigma for k in self.keys}
        return {k: sigma[:, m] for m, k in enumerate(self.keys)}

    # ---- the denoiser -------------------------------------------------------------------------------
    def denoise_parts(self, parts: dict[str, Tensor], sig: dict[str, Tensor]) -> dict[str, Tensor]:
        xs, cn, coef = {}, {}, {}
        for k in self.keys:
            s = sig[k].reshape(-1, *([1] * len(self.shapes[k])))
            c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data[k])
            xs[k], cn[k], coef[k] = c_in * parts[k], c_noise.flatten(), (c_skip, c_out)
        out = self.net(xs, cn)
        return {k: coef[k][0] * parts[k] + coef[k][1] * out[k].float() for k in self.keys}

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; σ) for packed x [B, D]; σ [B] (every modality at the same level) or [B, M]."""
        return self.join(self.denoise_parts(self.split(x), self.sigmas(sigma, x.shape[0])))

    # ---- training -------------------------------------------------------------------------------------
    def loss(self, x: Tensor, sigma: Tensor, noise: Tensor, weight: Any, batch: Any, generator: Optional[torch.Generator] = None) -> LossOutput:
        """Per modality: w_m(σ_m)·mean‖D_m − x_m‖² ([B, M]); ``weight`` is unused (each modality has
        its own). Which examples get a modality clean or at σ_max follows the step's generator."""
        b, m = x.shape[0], len(self.keys)
        u = torch.rand(b, generator=generator, device=x.device)
        which = torch.nn.functional.one_hot(torch.randint(m, (b,), generator=generator, device=x.device), m).bool()
        clean = which & (u < self.clean_share)[:, None]
        drop = which & ((u >= self.clean_share) & (u < self.clean_share + self.drop_share))[:, None]
        sigma = torch.where(clean, torch.full_like(sigma, self.sigma_min), torch.where(drop, torch.full_like(sigma, self.sigma_max), sigma))
        spread = torch.zeros_like(clean)
        if self.cond_loguniform > 0:  # drawn only when asked, so runs without it keep their random stream
            spread = ~which & (u < self.clean_share * self.cond_loguniform)[:, None]
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            wide = torch.exp(lo + (hi - lo) * torch.rand(b, m, generator=generator, device=x.device))
            sigma = torch.where(spread, wide.to(sigma.dtype), sigma)
        parts, eps = self.split(x), self.split(noise)
        sig = self.sigmas(sigma, b)
        noisy = {}
        for j, k in enumerate(self.keys):
            keep = (~clean[:, j]).float().reshape(-1, *([1] * len(self.shapes[k])))
            noisy[k] = parts[k] + sig[k].reshape(-1, *([1] * len(self.shapes[k]))) * eps[k] * keep
        den = self.denoise_parts(noisy, sig)
        err = torch.stack([(den[k] - parts[k]).square().flatten(1).mean(1) for k in self.keys], dim=1)
        w = torch.stack([self.weights[k](sig[k]) for k in self.keys], dim=1)
        trained = (~clean).float()
        observed = (~(clean | drop | spread)).float()
        return LossOutput(loss=w * err * trained, error=(err * observed).detach(), mask=observed)

    def modality_loss(self, x: Tensor, sigma: Tensor, noise: Tensor, weights: Any, batch: Any,
                      generator: Optional[torch.Generator] = None) -> LossOutput:  # fmt: skip
        return self.loss(x, sigma, noise, weights, batch, generator)

    # ---- the bound ------------------------------------------------------------------------------------
    def recon_nll(self, x: Tensor, z: Tensor, sigma: float) -> Tensor:
        raise NotImplementedError("the joint bound decodes each modality at its own σ (see nelbo)")

    def nelbo(self, x: Tensor, noise: Tensor, sigma_min: float, sigma_max: float, only: Optional[str] = None) -> Tensor:
        """Per-example NELBO in nats along every modality's own path σ_max → its floor (``sigma_min``
        is each floor's lower limit). ``only``: the bound of that modality alone, the others given
        clean (a conditional NELBO)."""
        parts = self.split(x)
        draws = noise.shape[1]
        eps = {k: part.reshape(x.shape[0], draws, *self.shapes[k]) for k, part in zip(self.keys, noise.split(self.sizes, dim=2))}
        given = {k: self.sigma_min for k in self.keys if only is not None and k != only}
        bound = nelbo_along_paths(self.denoise_parts, parts, eps, floors={k: max(self.floors[k], sigma_min) for k in self.keys},
                                  sigma_max=sigma_max, recon_nll={k: RECON[self.recon[k]] for k in self.keys}, given=given)  # fmt: skip
        return torch.stack([terms["total"] for terms in bound.values()]).sum(0)

    # ---- decoding -------------------------------------------------------------------------------------
    def decode(self, x: Tensor) -> Tensor:
        """Each modality decoded by its own domain (sign of ±1 pixels, an autoencoder's decoder, ...),
        flattened and packed again: [B, Σ decoded sizes]."""
        parts = self.split(x)
        return torch.cat([self.decoders[k](parts[k]).flatten(1).float() for k in self.keys], dim=1)
