"""Latent images: diffusion in the latent space of an autoencoder.

Latents carry far less pixel redundancy than images and have their own statistics, so the band of
σ where denoising is informative moves; this domain lets the schedules find it. The pipeline:

images (data/images.py) → autoencoder (trained and cached by the toolkit, or a pretrained VAE)
→ latents (encoded once, cached) → per-channel normalization fitted on the training split and
saved in the run directory → diffusion over the normalized latents with the recipe's UNet.
Samples are decoded through the autoencoder into images, written as PNG grids and scored with the
image classifier's Fréchet distance against held-out images.

The NELBO is a bound on the *density* of the normalized latents, in bits per latent dimension,
with a Gaussian reconstruction term at σ_min; a density can be negative. It is comparable between
schedules (same latents, normalization, quadrature and noise), not with pixel-space bits/dim.
In the autoencoder's raw latent units add the mean of log2(scale[c]) over latent dimensions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import images
from ..data.autoencoders import Autoencoder, check_config, obtain_autoencoder, save_to_run, tensor_fingerprint
from ..data.latents import NORM_FILE, NORM_MODES, LatentNorm, encoded_latents
from ..diffusion.model import ContinuousDiffusion, DiffusionModel
from ..errors import UserError
from ..metrics.features import ClassifierScore
from ..nets.autoencoder import AUTOENCODER_DEFAULTS
from ..nets.unet import UNET_DEFAULTS, UNET_RULES, unet_from_config
from ..settings import SPLIT_RULES, choice, integer, text
from .base import Domain, DomainData
from .grids import save_grid_png


class LatentDecoder:
    """Normalized latents → images in [0, 1]: undo the normalization, then the autoencoder's decoder.

    A plain object rather than an nn.Module, so the frozen autoencoder is neither optimized,
    averaged into the EMA nor written into every diffusion checkpoint (the run keeps one copy).
    """

    def __init__(self, ae: Autoencoder, norm: LatentNorm) -> None:
        self.ae, self.norm = ae, norm

    def __call__(self, x: Tensor) -> Tensor:
        return self.ae.decode(self.norm.invert(x.float()))


class LatentDiffusion(ContinuousDiffusion):
    """Continuous diffusion over normalized latents whose ``decode`` returns images."""

    def __init__(self, backbone: nn.Module, sigma_data: float, decoder: LatentDecoder) -> None:
        super().__init__(backbone, sigma_data, recon="gaussian")
        self.latent_decoder = decoder

    def decode(self, x: Tensor) -> Tensor:
        return self.latent_decoder(x)


class LatentImageDomain(Domain):
    name = "latent_image"
    joinable = True
    nelbo_unit = "bits/latent dim"
    data_defaults = {
        "source": "digits",  # digits | fashion_mnist | array | hub (as the binary_image domain)
        "path": None,  # .npy/.npz for `array`, a folder for fashion_mnist, a dataset id for hub
        "size": None,  # resize images to size×size (area averaging) before the autoencoder
        "val_fraction": 0.2,  # held-out share, for sources without their own test split
        "split_seed": 0,  # fixed, independent of the training seed
        "limit": None,  # use at most this many training images (autoencoder and diffusion)
        "normalize": "channel",  # latent normalization fitted on the training split: channel | global | none
        "autoencoder": dict(AUTOENCODER_DEFAULTS),  # see nets/autoencoder.py
    }
    model_defaults = dict(UNET_DEFAULTS)
    data_rules = {
        "source": choice(images.IMAGE_SOURCES), "path": text(optional=True), "size": integer(1, optional=True),
        "normalize": choice(NORM_MODES), **SPLIT_RULES,
    }  # fmt: skip
    model_rules = UNET_RULES

    def __init__(self, recipe: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(recipe, cache_dir)
        # the nested section merges key by key, so `--set data.autoencoder.steps=500` keeps the rest
        given = ((recipe.get("data") or {}).get("autoencoder")) or {}
        if not isinstance(given, dict):
            raise UserError("data.autoencoder must be a mapping of autoencoder settings")
        unknown = sorted(set(given) - set(AUTOENCODER_DEFAULTS))
        if unknown:
            raise UserError(
                f"domain 'latent_image' has no setting 'data.autoencoder.{unknown[0]}'; "
                f"valid keys: {', '.join(sorted(AUTOENCODER_DEFAULTS))}"
            )
        self.data_cfg["autoencoder"] = {**AUTOENCODER_DEFAULTS, **given}
        check_config(self.data_cfg["autoencoder"])  # before any data is loaded or anything trained
        if self.data_cfg["normalize"] not in NORM_MODES:
            raise UserError(f"data.normalize must be one of {', '.join(NORM_MODES)}, got {self.data_cfg['normalize']!r}")

    def _images(self, split: images.ImageSplit) -> tuple[Tensor, Tensor]:
        """[N, H, W] arrays → [N, 1, H', W'] float tensors in [0, 1] (resized when data.size is set)."""
        out = []
        for a in (split.train, split.val):
            x = torch.from_numpy(np.ascontiguousarray(a)).float()[:, None]
            if self.data_cfg["size"]:
                size = int(self.data_cfg["size"])
                x = F.interpolate(x, size=(size, size), mode="area")
            out.append(x)
        return out[0], out[1]

    def load(self, run_dir: Optional[Path] = None) -> DomainData:
        cfg = self.data_cfg
        split = images.load_image_split(cfg)
        train_img, val_img = self._images(split)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)) if a is not None else None  # noqa: E731
        image_data = DomainData(
            train=train_img, val=val_img, dataset=split.dataset,
            train_labels=to_t(split.train_labels), val_labels=to_t(split.val_labels), num_classes=split.num_classes,
        )  # fmt: skip
        ae = obtain_autoencoder(cfg["autoencoder"], train_img, run_dir)
        latents = encoded_latents(ae, train_img, val_img)
        channels = int(latents["train"].shape[1])
        saved = Path(run_dir) / NORM_FILE if run_dir is not None else None
        if saved is not None and saved.is_file():
            norm = LatentNorm.load(saved, channels)
        else:
            norm = LatentNorm.fit(latents["train"], str(cfg["normalize"]))
        c, h, w = latents["train"].shape[1:]
        base = split.dataset if not cfg["size"] else f"{split.dataset}@{cfg['size']}"
        ae_info = {**ae.info, "key": ae.key, "latent_shape": [c, h, w],
                   "compression": round(train_img[0].numel() / (c * h * w), 3),
                   "psnr_val": latents["psnr"]["val"], "psnr_train": latents["psnr"]["train"]}  # fmt: skip
        return DomainData(
            train=norm.apply(latents["train"]).float(),
            val=norm.apply(latents["val"]).float(),
            dataset=f"{base}/{ae_info['kind']}-latents-{c}x{h}x{w}",
            train_labels=image_data.train_labels,
            val_labels=image_data.val_labels,
            num_classes=split.num_classes,
            info={"images": image_data, "autoencoder": ae, "autoencoder_info": ae_info, "norm": norm},
        )

    def save_artifacts(self, data: DomainData, run_dir: Path) -> None:
        ae: Autoencoder = data.info["autoencoder"]
        save_to_run(ae, run_dir)
        data.info["norm"].save(
            run_dir / NORM_FILE,
            {"latent_shape": data.info["autoencoder_info"]["latent_shape"], "autoencoder_key": ae.key,
             "measured_on": f"training split ({data.train.shape[0]} images)"},
        )  # fmt: skip
        (run_dir / "plots").mkdir(exist_ok=True)
        self.reconstruction_grid(data, run_dir / "plots" / "autoencoder.png")

    def reconstruction_grid(self, data: DomainData, path: Path, n: int = 32, cols: int = 8) -> Path:
        """PNG whose rows alternate held-out images and their reconstructions: what the decoder can do."""
        n = min(n, data.val.shape[0])
        cols = min(cols, n)
        n -= n % cols  # whole rows only
        originals = data.info["images"].val[:n]
        recon = LatentDecoder(data.info["autoencoder"], data.info["norm"])(data.val[:n])
        rows = [t for i in range(0, n, cols) for t in (originals[i : i + cols], recon[i : i + cols])]
        return save_grid_png(torch.cat(rows), path, columns=cols)

    def classify(self, decoded: Tensor) -> Any:
        return self._classifier.labels(decoded)

    def build_model(self, data: DomainData, sigma_data: float) -> DiffusionModel:
        backbone = unet_from_config(self.model_cfg, in_channels=data.train.shape[1])
        return LatentDiffusion(backbone, sigma_data, LatentDecoder(data.info["autoencoder"], data.info["norm"]))

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        """``decoded``: images [N, C, H, W] in [0, 1] → PNG grid and the float array."""
        out_dir.mkdir(parents=True, exist_ok=True)
        npy = out_dir / f"{tag}.npy"
        np.save(npy, decoded.float().numpy())
        png = save_grid_png(decoded, out_dir / f"{tag}.png")
        return [png, npy]

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        """Fréchet distance of decoded samples against held-out images, with the autoencoder's own floor.

        The floor is the same distance for the autoencoder's reconstructions of held-out images
        (as many as the metric's samples, up to the split's size): samples cannot be expected to beat
        it, since every sample passes the same decoder.
        """
        image_data: DomainData = data.info["images"]
        score = ClassifierScore(f"images-{tensor_fingerprint(image_data.train, image_data.val)}", image_data).prepare()
        self._classifier = score
        floors: dict[int, float] = {}

        def metric(decoded: Tensor) -> dict[str, Any]:
            out = score(decoded)
            n = min(decoded.shape[0], data.val.shape[0])
            if n not in floors:
                floors[n] = score(LatentDecoder(data.info["autoencoder"], data.info["norm"])(data.val[:n]))["fd"]
            ae = {**data.info["autoencoder_info"], "fd_reconstructions": floors[n], "fd_reconstructions_n": n}
            out["autoencoder"] = ae
            shape = "×".join(str(s) for s in ae["latent_shape"])
            out["notes"] = [
                f"Autoencoder ({ae['kind']}, latents {shape}): PSNR {ae['psnr_val']:.2f} dB on held-out images "
                f"({ae['psnr_train']:.2f} dB on training images); Fréchet distance of its reconstructions "
                f"{floors[n]:.4g}, the floor for decoded samples."
            ]
            return out

        return metric
