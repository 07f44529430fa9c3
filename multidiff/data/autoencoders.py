"""Which autoencoder a latent run uses, and where it comes from.

In order of precedence:
1. a pretrained ``diffusers`` VAE when ``data.autoencoder.pretrained`` names one;
2. the copy saved in the run directory (a finished run always decodes with the autoencoder it was
   trained with, whatever happened to the cache since);
3. the cache, ``cache_root()/autoencoders/KEY.pt``, where KEY fingerprints the training images and
   every setting that changes the trained weights, so later runs reuse it and a change retrains it;
4. otherwise it is trained here on the training split (and cached).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..files import atomic_torch_save
from ..metrics.features import cache_root
from ..nets.autoencoder import KINDS, autoencoder_from_config, map_batches, train_autoencoder

CACHE_FORMAT = "multidiff.autoencoder"
CACHE_VERSION = 1  # bump when the architecture or training loop changes, so old caches retrain
RUN_WEIGHTS = "autoencoder.pt"  # our own autoencoder, copied into the run directory
RUN_POINTER = "autoencoder.json"  # a pretrained one is recorded by name, not copied
#: settings that do not change what the trained autoencoder is (so they are not in its key)
_NOT_IN_KEY = ("pretrained", "subfolder")


@dataclass
class Autoencoder:
    """A frozen map between images [N, C, H, W] in [0, 1] and latents [N, c, h, w]."""

    net: nn.Module  # has encode(images) and decode(latents)
    key: str  # what the encoded-latent cache is keyed on
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def encode(self, images: Tensor, batch: int = 500) -> Tensor:
        self.net.to(images.device)
        return map_batches(lambda x: self.net.encode(x.float()), images, batch)

    @torch.no_grad()
    def decode(self, latents: Tensor, batch: int = 500) -> Tensor:
        self.net.to(latents.device)
        return map_batches(lambda z: self.net.decode(z.float()), latents, batch)


def tensor_fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def autoencoder_key(cfg: dict[str, Any], train_images: Tensor) -> str:
    """Fingerprint of the training images and the settings that shape the trained weights."""
    settings = {k: v for k, v in sorted(cfg.items()) if k not in _NOT_IN_KEY}
    settings.update({k: float(settings[k]) for k in ("kl_weight", "lr")})  # 1e-3 and 0.001 are one setting
    text = json.dumps({"version": CACHE_VERSION, "settings": settings}, sort_keys=True)
    return hashlib.sha1(f"{text}|{tensor_fingerprint(train_images)}".encode()).hexdigest()[:16]


def pretrained_key(name: str, subfolder: Optional[str]) -> str:
    """A pretrained VAE's cache key: its name, and for a local folder the size and time of every file
    in it, so replacing the weights there re-encodes the latents."""
    h = hashlib.sha1(f"{name}|{subfolder}".encode())
    folder = Path(name) / (subfolder or "")
    if folder.is_dir():
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return "pretrained-" + h.hexdigest()[:12]


def check_config(cfg: dict[str, Any]) -> None:
    """UserError naming the field for settings the autoencoder cannot be built or trained with."""
    if cfg["pretrained"] is not None and not isinstance(cfg["pretrained"], str):
        raise UserError(f"data.autoencoder.pretrained must be a folder or hub id (or null), got {cfg['pretrained']!r}")
    if cfg["kind"] not in KINDS:
        raise UserError(f"data.autoencoder.kind must be one of {', '.join(KINDS)}, got {cfg['kind']!r}")
    for key in ("latent_channels", "channels", "steps", "batch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise UserError(f"data.autoencoder.{key} must be a positive integer, got {cfg[key]!r}")
    if not isinstance(cfg["downsample"], int) or not 0 <= cfg["downsample"] <= 5:
        raise UserError(f"data.autoencoder.downsample must be an integer in 0..5, got {cfg['downsample']!r}")
    for key in ("kl_weight", "lr"):
        if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or cfg[key] < 0:
            raise UserError(f"data.autoencoder.{key} must be a non-negative number, got {cfg[key]!r}")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _save(path: Path, net: nn.Module, key: str, info: dict[str, Any]) -> None:
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "config": net.config(),
               "state_dict": net.state_dict(), "info": info}  # fmt: skip
    atomic_torch_save(path, payload)  # a concurrent reader never sees half a file, writers never collide


def _load(path: Path) -> Autoencoder:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT or saved.get("version") != CACHE_VERSION:
        raise ValueError("not a multidiff autoencoder of this version")
    cfg = saved["config"]
    net = autoencoder_from_config(cfg, tuple(cfg["image_shape"]))
    net.load_state_dict(saved["state_dict"])
    return Autoencoder(net.eval().requires_grad_(False), saved["key"], dict(saved["info"]))


def obtain_autoencoder(
    cfg: dict[str, Any],
    train_images: Tensor,
    run_dir: Optional[Path] = None,
    log: Callable[[str], None] = _stderr,
) -> Autoencoder:
    """The autoencoder for ``cfg`` (a resolved ``data.autoencoder`` section); see the module docstring."""
    check_config(cfg)
    if cfg["pretrained"]:
        from ..nets.pretrained_vae import load_diffusers_vae

        net, info = load_diffusers_vae(cfg["pretrained"], cfg["subfolder"], int(train_images.shape[1]))
        key = pretrained_key(cfg["pretrained"], cfg["subfolder"])
        return Autoencoder(net, key, {**info, "source": "pretrained"})
    if run_dir is not None and (Path(run_dir) / RUN_WEIGHTS).is_file():
        path = Path(run_dir) / RUN_WEIGHTS
        try:
            ae = _load(path)
        except Exception as exc:
            raise UserError(f"{path}: cannot read the run's autoencoder ({type(exc).__name__}: {exc})") from None
        ae.info["source"] = "run directory"
        return ae
    key = autoencoder_key(cfg, train_images)
    path = cache_root() / "autoencoders" / f"{key}.pt"
    if path.is_file():
        try:
            ae = _load(path)
            ae.info["source"] = "cache"
            return ae
        except Exception as exc:  # truncated or foreign file: retrain over it
            log(f"multidiff: ignoring unreadable autoencoder cache {path} ({type(exc).__name__}); retraining")
    shape = "×".join(str(s) for s in train_images.shape[1:])
    log(f"training the autoencoder ({cfg['kind']}, {cfg['steps']} steps) on {train_images.shape[0]} images of {shape} → {path}")
    net, facts = train_autoencoder(train_images, cfg, log=log)
    info = {"kind": cfg["kind"], "parameters": sum(p.numel() for p in net.parameters()), **facts}
    _save(path, net, key, info)
    return Autoencoder(net.requires_grad_(False), key, {**info, "source": "trained"})


def save_to_run(ae: Autoencoder, run_dir: Path) -> None:
    """Copy our own autoencoder into the run directory; record a pretrained one by name."""
    run_dir = Path(run_dir)
    if ae.info.get("kind") == "pretrained":
        pointer = {k: ae.info.get(k) for k in ("pretrained", "subfolder", "published_scaling_factor")}
        (run_dir / RUN_POINTER).write_text(json.dumps(pointer, indent=1))
        return
    info = {k: v for k, v in ae.info.items() if k != "source"}
    _save(run_dir / RUN_WEIGHTS, ae.net, ae.key, info)
