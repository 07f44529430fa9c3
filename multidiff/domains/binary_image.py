"""Binarized images: grayscale images thresholded to ±1, diffused as continuous values.

A discrete domain: information is gained only in a narrow band of σ (once the noise is small next
to the ±1 gap, a pixel is known), which EDM's image-tuned log-normal does not target.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import images
from ..diffusion.model import ContinuousDiffusion, DiffusionModel
from ..errors import UserError
from ..metrics.features import ClassifierScore
from ..nets.unet import UNET_DEFAULTS, UNET_RULES, unet_from_config
from ..settings import SPLIT_RULES, choice, integer, number, text
from .base import Domain, DomainData
from .grids import save_grid_png


class BinaryImageDomain(Domain):
    name = "binary_image"
    joinable = True
    nelbo_unit = "bits/pixel"
    # Below σ = 0.2 a ±1 pixel is fixed by its noisy value: the exact decoder sigmoid(2xz/σ²) costs
    # 1.2e-6 bits/pixel there, so the bound decodes at 0.2 rather than integrating the band below.
    nelbo_sigma_min = 0.2
    data_defaults = {
        "source": "digits",  # digits | fashion_mnist | array | hub
        "path": None,  # .npy/.npz for `array` (implied by a path ending in .npy/.npz), folder for fashion_mnist, id for hub
        "threshold": 0.5,  # pixel > threshold → +1, else −1
        "size": None,  # resize to size×size (area averaging) before thresholding
        "val_fraction": 0.2,  # held-out share, for sources without their own test split
        "split_seed": 0,  # fixed, independent of the training seed, so every run sees the same split
        "limit": None,  # use at most this many training images
    }
    model_defaults = dict(UNET_DEFAULTS)
    data_rules = {
        "source": choice(images.IMAGE_SOURCES), "path": text(optional=True), "threshold": number(0, 1),
        "size": integer(1, optional=True), **SPLIT_RULES,
    }  # fmt: skip
    model_rules = UNET_RULES

    def load(self, run_dir: Path | None = None) -> DomainData:
        split = images.load_image_split(self.data_cfg)
        size = self.data_cfg["size"]
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)) if a is not None else None  # noqa: E731
        return DomainData(
            train=self._binarize(to_t(split.train)),
            val=self._binarize(to_t(split.val)),
            dataset=split.dataset if not size else f"{split.dataset}@{size}",
            train_labels=to_t(split.train_labels),
            val_labels=to_t(split.val_labels),
            num_classes=split.num_classes,
        )

    def _binarize(self, x: Tensor) -> Tensor:
        """[N, H, W] in [0, 1] → [N, 1, H', W'] of ±1 (float32)."""
        x = x.float()[:, None]
        size = self.data_cfg["size"]
        if size:
            x = F.interpolate(x, size=(int(size), int(size)), mode="area")
        return torch.where(x > float(self.data_cfg["threshold"]), 1.0, -1.0)

    def build_model(self, data: DomainData, sigma_data: float) -> DiffusionModel:
        backbone = unet_from_config(self.model_cfg, in_channels=data.train.shape[1])
        return ContinuousDiffusion(backbone, sigma_data, recon="binary", sign_decode=True)

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        npy = out_dir / f"{tag}.npy"
        np.save(npy, (decoded > 0).numpy().astype(np.uint8))
        png = save_grid_png((decoded + 1) / 2, out_dir / f"{tag}.png")
        return [png, npy]

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        self._classifier = ClassifierScore(f"binary_image-{data.fingerprint}", data).prepare()
        return self._classifier

    def classify(self, decoded: Tensor) -> Any:
        return self._classifier.labels(decoded)

    def load_given(self, path: Path, data: DomainData) -> Tensor:
        """A .npy/.npz of grayscale images in [0, 1] ([N, H, W]), binarized like the data."""
        x = self._binarize(torch.from_numpy(images.load_array(str(path)).train))
        if tuple(x.shape[1:]) != tuple(data.train.shape[1:]):
            raise UserError(f"{path}: images of shape {tuple(x.shape[2:])}, the run's are {tuple(data.train.shape[2:])}")
        return x
