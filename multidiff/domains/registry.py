"""Domains by recipe name. Imports are lazy, so a run pays only for the domain it uses."""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Domain

DOMAINS = {
    "binary_image": ("multidiff.domains.binary_image", "BinaryImageDomain"),
    "latent_image": ("multidiff.domains.latent_image", "LatentImageDomain"),
    "text": ("multidiff.domains.text", "TextDomain"),
    "spectrogram": ("multidiff.domains.spectrogram", "SpectrogramDomain"),
    "joint": ("multidiff.domains.joint", "JointDomain"),
}


def get_domain(name: str) -> type[Domain]:
    if name not in DOMAINS:
        raise UserError(f"unknown domain {name!r}; choose one of {', '.join(DOMAINS)}")
    module, cls = DOMAINS[name]
    return getattr(importlib.import_module(module), cls)
