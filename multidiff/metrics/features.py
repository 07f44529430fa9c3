"""The evaluation classifier: trained once per dataset on its training split, cached on disk, and
used for its penultimate features (Fréchet distance) and its predictions (label histograms).

Never downloaded: a pretrained metric network would tie scores to data we cannot see offline.
Unlabelled data get k-means pseudo-labels, so the features still separate the data's modes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..nets.classifier import GridClassifier


def cache_root() -> Path:
    """$MULTIDIFF_CACHE, else $XDG_CACHE_HOME/multidiff, else ~/.cache/multidiff."""
    if os.environ.get("MULTIDIFF_CACHE"):
        return Path(os.environ["MULTIDIFF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "multidiff"


def pseudo_labels(x: Tensor, k: int = 10, seed: int = 0) -> Tensor:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x.flatten(1).numpy())
    return torch.from_numpy(km.labels_.astype(np.int64))


def _train(x: Tensor, y: Tensor, num_classes: int, steps: int, seed: int) -> GridClassifier:
    torch.manual_seed(seed)
    net = GridClassifier(x.shape[1], num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: GridClassifier, x: Tensor, y: Tensor) -> float:
    pred = torch.cat([net(x[i : i + 512]).argmax(1) for i in range(0, x.shape[0], 512)])
    return float((pred == y).float().mean())


def feature_classifier(
    key: str,
    train_x: Tensor,
    train_y: Optional[Tensor],
    num_classes: int,
    val_x: Tensor,
    val_y: Optional[Tensor],
    *,
    steps: int = 1500,
    seed: int = 0,
) -> tuple[GridClassifier, dict]:
    """The classifier for dataset ``key`` (a data fingerprint), trained on first use and cached."""
    path = cache_root() / "classifiers" / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        net = GridClassifier(saved["in_channels"], saved["num_classes"])
        net.load_state_dict(saved["state_dict"])
        return net.eval(), saved["info"]
    if train_y is None:
        num_classes = 10
        train_y = pseudo_labels(train_x, num_classes, seed)
        val_y = None
    net = _train(train_x.float(), train_y, num_classes, steps, seed)
    info = {"num_classes": num_classes, "labels": "dataset" if val_y is not None else "k-means pseudo-labels"}
    if val_y is not None:
        info["val_accuracy"] = accuracy(net, val_x.float(), val_y)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": net.state_dict(), "in_channels": train_x.shape[1], "num_classes": num_classes, "info": info}, tmp)
    os.replace(tmp, path)
    return net, info


@torch.no_grad()
def features(net: GridClassifier, x: Tensor) -> np.ndarray:
    return torch.cat([net.features(x[i : i + 512].float()) for i in range(0, x.shape[0], 512)]).numpy()


@torch.no_grad()
def predictions(net: GridClassifier, x: Tensor) -> np.ndarray:
    return torch.cat([net(x[i : i + 512].float()).argmax(1) for i in range(0, x.shape[0], 512)]).numpy()


def classifier_metrics(key: str, samples: Tensor, data: Any, reference: Optional[Tensor] = None, **options: Any) -> dict:
    """Fréchet distance of ``samples`` against held-out grids, and the classifier's label histogram.

    ``data`` is a DomainData whose train/val (or ``reference``) are grids [N, C, H, W] in the same
    space as ``samples``; the classifier is trained on data.train once per ``key`` and cached.
    ``options`` (``steps``, ``seed``) go to :func:`feature_classifier`; the key should name them.
    """
    from .frechet import frechet_between

    reference = data.val if reference is None else reference
    net, info = feature_classifier(key, data.train, data.train_labels, data.num_classes, data.val, data.val_labels, **options)
    counts = np.bincount(predictions(net, samples), minlength=info["num_classes"])
    return {
        "fd": frechet_between(features(net, samples), features(net, reference)),
        "fd_reference": f"validation split ({reference.shape[0]} examples)",
        "fd_samples": int(samples.shape[0]),
        "classifier": info,
        "sample_class_histogram": counts.tolist(),
    }
