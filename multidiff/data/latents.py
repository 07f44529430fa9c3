"""Latents of an image set: encoded once and cached, then normalized per channel.

The cache, ``cache_root()/latents/KEY.pt``, holds the train and validation latents of one
(autoencoder, images) pair together with the autoencoder's reconstruction PSNR on them, so a
second run neither re-encodes nor re-decodes anything.

Normalization answers latent diffusion's "scale factor" question by measurement: statistics are
fitted on the training split and saved in the run directory (``latent_norm.json``), so sampling,
evaluation and resuming map between diffusion space and the autoencoder's space exactly as
training did. Modes: ``channel`` (per-channel mean and standard deviation: the training split gets
zero mean and unit variance in every channel), ``global`` (one scale, no shift, as Stable
Diffusion's scaling_factor: unit standard deviation over all latent elements) and ``none``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..files import atomic_torch_save
from ..metrics.features import cache_root
from ..nets.autoencoder import psnr
from ..textdata import parse_json
from .autoencoders import Autoencoder, tensor_fingerprint

NORM_MODES = ("channel", "global", "none")
NORM_FILE = "latent_norm.json"
PSNR_TRAIN_IMAGES = 5000  # training images the train-split PSNR is measured on (a fixed prefix)


def encoded_latents(ae: Autoencoder, train_images: Tensor, val_images: Tensor) -> dict[str, Any]:
    """{"train", "val": latents, "psnr": {"train", "val": dB}}, from the cache when present."""
    key = hashlib.sha1(f"{ae.key}|{tensor_fingerprint(train_images, val_images)}".encode()).hexdigest()[:16]
    path = cache_root() / "latents" / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated file: encode again and overwrite it
            pass
    out: dict[str, Any] = {"train": ae.encode(train_images), "val": ae.encode(val_images)}
    head = train_images[:PSNR_TRAIN_IMAGES]
    out["psnr"] = {
        "train": psnr(head, ae.decode(out["train"][: head.shape[0]])),
        "val": psnr(val_images, ae.decode(out["val"])),
    }
    atomic_torch_save(path, out)  # unique temporary name: concurrent runs never collide
    return out


@dataclass
class LatentNorm:
    """x = (z − shift[c]) / scale[c] for latent channel c; z = x · scale[c] + shift[c]."""

    mode: str
    shift: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, z: Tensor, mode: str) -> "LatentNorm":
        """Measure on training latents [N, C, h, w] (population statistics, in float64)."""
        if mode not in NORM_MODES:
            raise UserError(f"data.normalize must be one of {', '.join(NORM_MODES)}, got {mode!r}")
        z = z.double()
        c = z.shape[1]
        if mode == "channel":
            per = z.transpose(0, 1).reshape(c, -1)
            shift, scale = per.mean(1).tolist(), per.std(1, correction=0).tolist()
        elif mode == "global":
            shift, scale = [0.0] * c, [float(z.std(correction=0))] * c
        else:
            shift, scale = [0.0] * c, [1.0] * c
        if not all(math.isfinite(s) and s > 0 for s in scale):
            raise UserError(f"latent normalization: a latent channel is constant or not finite (std {scale}); check the autoencoder")
        return cls(mode, shift, scale)

    def _view(self, values: list[float], like: Tensor) -> Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, *([1] * (like.ndim - 2)))

    def apply(self, z: Tensor) -> Tensor:
        return (z - self._view(self.shift, z)) / self._view(self.scale, z)

    def invert(self, x: Tensor) -> Tensor:
        return x * self._view(self.scale, x) + self._view(self.shift, x)

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        doc = {"format": "multidiff.latent_norm", "version": 1, "mode": self.mode, "shift": self.shift,
               "scale": self.scale, "rule": "x = (z - shift[c]) / scale[c]", **extra}  # fmt: skip
        Path(path).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: Path, channels: int) -> "LatentNorm":
        """Read a run's saved statistics; UserError naming the file and field when they are unusable."""
        try:
            doc = parse_json(Path(path).read_text(), str(path))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read latent normalization ({exc})") from None
        if not isinstance(doc, dict):
            raise UserError(f"{path}: latent normalization must be a JSON object")
        for name in ("mode", "shift", "scale"):
            if name not in doc:
                raise UserError(f"{path}: missing field '{name}'")
        for name in ("shift", "scale"):
            v = doc[name]
            if not isinstance(v, list) or len(v) != channels or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in v):
                raise UserError(f"{path}: field '{name}' must be {channels} finite numbers (one per latent channel)")
        if not all(s > 0 for s in doc["scale"]):
            raise UserError(f"{path}: field 'scale' must be positive")
        return cls(str(doc["mode"]), [float(a) for a in doc["shift"]], [float(a) for a in doc["scale"]])
