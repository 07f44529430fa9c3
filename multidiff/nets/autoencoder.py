"""A small convolutional autoencoder for latent diffusion, its training loop and its PSNR.

Images are [N, C, H, W] in [0, 1]; latents are [N, latent_channels, h, w] with h = ⌈H / 2^d⌉ after
d stride-2 stages. ``kind: kl`` is a VAE-style encoder (posterior mean and log-variance, a small
KL penalty that keeps the latent scale bounded, as in latent diffusion's KL-f autoencoders);
``kind: plain`` is a deterministic encoder. Either way the latents given to diffusion are
deterministic (the posterior mean), so they can be encoded once and cached.

Settings come from the recipe's ``data.autoencoder`` section (keys of AUTOENCODER_DEFAULTS).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "pretrained": None,  # a diffusers AutoencoderKL folder or hub id; null: the toolkit trains its own
    "subfolder": None,  # subfolder of `pretrained` holding the VAE (e.g. "vae" in a pipeline repo)
    "kind": "kl",  # kl | plain
    "latent_channels": 4,
    "channels": 32,  # width of the first stage; later stages use twice this
    "downsample": 2,  # stride-2 stages: latents are (H / 2^d) × (W / 2^d)
    "kl_weight": 1.0e-4,  # weight of the per-latent KL against the per-pixel squared error (kind: kl)
    "steps": 2000,  # optimizer steps
    "batch_size": 64,
    "lr": 2.0e-3,  # peak learning rate (one-cycle)
    "seed": 0,  # fixed, independent of the diffusion seed, so seed sweeps share one autoencoder
}
KINDS = ("kl", "plain")


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if ch % 8 == 0 else 1, ch)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ConvAutoencoder(nn.Module):
    """Encoder: stem, then per stage a residual block and a stride-2 conv; decoder mirrors it.

    ``image_shape`` (C, H, W) is fixed at construction so the decoder upsamples to the exact
    encoder sizes (odd sizes such as 7 → 4 → 7 come back right).
    """

    def __init__(self, image_shape: tuple[int, int, int], latent_channels: int = 4, channels: int = 32,
                 downsample: int = 2, kind: str = "kl") -> None:  # fmt: skip
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        c_img, h, w = image_shape
        self.image_shape, self.kind, self.latent_channels = tuple(image_shape), kind, latent_channels
        widths = [channels * (1 if i == 0 else 2) for i in range(downsample + 1)]
        self.sizes = [(h, w)]
        for _ in range(downsample):
            h, w = (h + 1) // 2, (w + 1) // 2  # a 3×3 stride-2 conv with padding 1 gives ⌈s/2⌉
            self.sizes.append((h, w))
        self.latent_shape = (latent_channels, h, w)

        enc: list[nn.Module] = [nn.Conv2d(c_img, widths[0], 3, padding=1)]
        for i in range(downsample):
            enc += [_Res(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [_Res(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU()]
        enc += [nn.Conv2d(widths[-1], latent_channels * (2 if kind == "kl" else 1), 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        self.dec_in = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 3, padding=1), _Res(widths[-1], widths[-1]))
        self.dec_up = nn.ModuleList()
        for i in reversed(range(downsample)):
            self.dec_up.append(nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), _Res(widths[i], widths[i])]))
        self.dec_out = nn.Sequential(_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c_img, 3, padding=1))

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x); for ``plain`` the log-variance is −∞ (a point)."""
        h = self.encoder(images * 2 - 1)  # centre the [0, 1] input
        if self.kind == "plain":
            return h, torch.full_like(h, -math.inf)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def encode(self, images: Tensor) -> Tensor:
        """[N, C, H, W] in [0, 1] → deterministic latents (the posterior mean)."""
        return self.posterior(images)[0]

    def decode_raw(self, z: Tensor) -> Tensor:
        """Latents → images, unclamped (what the reconstruction loss sees)."""
        h = self.dec_in(z)
        for (conv, res), size in zip(self.dec_up, reversed(self.sizes[:-1])):
            h = res(conv(F.interpolate(h, size=size, mode="nearest")))
        return self.dec_out(h) * 0.5 + 0.5

    def decode(self, z: Tensor) -> Tensor:
        """Latents → images in [0, 1]."""
        return self.decode_raw(z).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "latent_channels": self.latent_channels,
                "channels": self.encoder[0].out_channels, "downsample": len(self.sizes) - 1, "kind": self.kind}  # fmt: skip


def autoencoder_from_config(cfg: dict[str, Any], image_shape: tuple[int, int, int]) -> ConvAutoencoder:
    return ConvAutoencoder(
        tuple(image_shape), latent_channels=int(cfg["latent_channels"]), channels=int(cfg["channels"]),
        downsample=int(cfg["downsample"]), kind=str(cfg["kind"]),
    )  # fmt: skip


def kl_per_latent(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, e^logvar) ‖ N(0, 1)) averaged over latent elements, in nats."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()


def train_autoencoder(
    images: Tensor,
    cfg: dict[str, Any],
    log: Optional[Callable[[str], None]] = None,
) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Train on ``images`` [N, C, H, W] in [0, 1]: per-pixel MSE (+ kl_weight · KL for ``kl``).

    Deterministic given ``cfg["seed"]`` on a CPU. Returns the net (eval mode) and training facts.
    """
    torch.manual_seed(int(cfg["seed"]))
    net = autoencoder_from_config(cfg, tuple(images.shape[1:]))
    steps, batch, lr = int(cfg["steps"]), int(cfg["batch_size"]), float(cfg["lr"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    start, kl_w = time.time(), float(cfg["kl_weight"])
    for step in range(1, steps + 1):
        x = images[torch.randint(0, images.shape[0], (batch,), generator=g)].float()
        mean, logvar = net.posterior(x)
        if net.kind == "kl":  # reparameterized sample: the decoder must tolerate the posterior's spread
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)
            loss = F.mse_loss(net.decode_raw(z), x) + kl_w * kl_per_latent(mean, logvar)
        else:
            loss = F.mse_loss(net.decode_raw(mean), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 500 == 0 or step == steps):
            log(f"  autoencoder step {step}/{steps} · loss {loss.item():.5f} · {time.time() - start:.0f} s")
    return net.eval(), {"steps": steps, "train_seconds": round(time.time() - start, 1)}


@torch.no_grad()
def map_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 500) -> Tensor:
    """Apply ``fn`` to x in batches (memory stays flat on large sets)."""
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def psnr(reference: Tensor, reconstruction: Tensor) -> float:
    """Mean per-image PSNR in dB for images in [0, 1] (peak 1): mean of 10·log10(1 / MSE_i).

    A perfect reconstruction is capped at 100 dB so one exact image cannot make the mean infinite.
    """
    mse = (reference.float() - reconstruction.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())
