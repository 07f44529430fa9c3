"""A pretrained ``diffusers`` AutoencoderKL behind the same encode/decode surface as our own.

For users with a network (or a local copy of a VAE folder). ``diffusers`` is imported lazily and is
not a dependency of the toolkit: ``pip install 'multidiff[latent]'`` (or ``pip install diffusers``).
Such VAEs take RGB in [−1, 1]; grayscale images are repeated to three channels on the way in and
averaged back on the way out. Latents are the posterior mean (deterministic, so they can be cached).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..errors import UserError


class DiffusersVAE(nn.Module):
    """Wraps ``diffusers.AutoencoderKL``: images [N, C, H, W] in [0, 1] ↔ latents."""

    def __init__(self, vae: nn.Module, image_channels: int) -> None:
        super().__init__()
        self.vae, self.image_channels = vae, image_channels
        self.vae_channels = int(vae.config.in_channels)

    def encode(self, images: Tensor) -> Tensor:
        x = images * 2 - 1
        if x.shape[1] != self.vae_channels:  # grayscale into an RGB VAE
            x = x.mean(1, keepdim=True).expand(-1, self.vae_channels, -1, -1)
        return self.vae.encode(x).latent_dist.mean

    def decode(self, z: Tensor) -> Tensor:
        x = self.vae.decode(z).sample
        if x.shape[1] != self.image_channels:
            x = x.mean(1, keepdim=True)
        return (x * 0.5 + 0.5).clamp(0, 1)


def load_diffusers_vae(name: str, subfolder: Optional[str], image_channels: int) -> tuple[DiffusersVAE, dict[str, Any]]:
    """Load ``name`` (a folder or hub id); UserError (one line) when diffusers or the VAE is missing."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:  # not installed, or installed without its own dependencies
        why = "is not installed" if getattr(exc, "name", None) == "diffusers" else f"cannot be imported ({exc})".replace("\n", " ")
        raise UserError(
            f"data.autoencoder.pretrained needs the 'diffusers' package, which {why}; "
            "run pip install 'multidiff[latent]' (or pip install diffusers), or set data.autoencoder.pretrained=null "
            "to train the toolkit's own autoencoder"
        ) from None
    try:
        vae = AutoencoderKL.from_pretrained(name, **({"subfolder": subfolder} if subfolder else {}))
    except Exception as exc:  # missing folder, no network, not a VAE
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"data.autoencoder.pretrained: cannot load AutoencoderKL {name!r} ({type(exc).__name__}: {first})") from None
    vae.eval().requires_grad_(False)
    info = {
        "kind": "pretrained",
        "pretrained": name,
        "subfolder": subfolder,
        # the VAE's published latent scale, for comparison with the one measured on this data
        "published_scaling_factor": float(getattr(vae.config, "scaling_factor", float("nan"))),
    }
    return DiffusersVAE(vae, image_channels), info

