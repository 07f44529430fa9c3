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

from ..files import atomic_torch_save
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
    payload = {"state_dict": net.state_dict(), "in_channels": train_x.shape[1], "num_classes": num_classes, "info": info}
    atomic_torch_save(path, payload)  # unique temporary name: concurrent runs never collide
    return net, info


@torch.no_grad()
def features(net: GridClassifier, x: Tensor) -> np.ndarray:
    return torch.cat([net.features(x[i : i + 512].float()) for i in range(0, x.shape[0], 512)]).numpy()


@torch.no_grad()
def predictions(net: GridClassifier, x: Tensor) -> np.ndarray:
    return torch.cat([net(x[i : i + 512].float()).argmax(1) for i in range(0, x.shape[0], 512)]).numpy()


class ClassifierScore:
    """Fréchet distance of samples against held-out grids in the evaluation classifier's features,
    and the classifier's label histogram of the samples.

    ``data`` is a DomainData whose train/val (or ``reference``) are grids [N, C, H, W] in the same
    space as the samples. :meth:`prepare` trains (or loads) the classifier and fits the reference
    features once, before training starts, so a dataset the classifier cannot be made for is
    refused before a run directory exists, and repeated evaluations during training pay only for
    the samples. ``options`` (``steps``, ``seed``) go to :func:`feature_classifier`; the key must name them.
    """

    def __init__(self, key: str, data: Any, reference: Optional[Tensor] = None, **options: Any) -> None:
        self.key, self.data, self.options = key, data, options
        self.reference = data.val if reference is None else reference
        self.net: Optional[GridClassifier] = None

    def prepare(self) -> "ClassifierScore":
        from ..errors import UserError
        from .frechet import gaussian_fit

        if self.net is not None:
            return self
        d = self.data
        if d.train_labels is None and d.train.shape[0] < 10:
            raise UserError(f"data: {d.train.shape[0]} unlabelled training examples are too few for the evaluation "
                            f"classifier's 10 k-means pseudo-labels; give labels or at least 10 examples")  # fmt: skip
        if self.reference.shape[0] < 2:
            raise UserError(f"data: the held-out split has {self.reference.shape[0]} example(s); the Fréchet distance needs at least 2")
        self.net, self.info = feature_classifier(self.key, d.train, d.train_labels, d.num_classes, d.val, d.val_labels, **self.options)
        self.reference_fit = gaussian_fit(features(self.net, self.reference))
        return self

    def labels(self, samples: Tensor) -> np.ndarray:
        """The classifier's class for each sample."""
        self.prepare()
        assert self.net is not None
        return predictions(self.net, samples)

    def __call__(self, samples: Tensor) -> dict[str, Any]:
        from .frechet import frechet_distance, gaussian_fit

        self.prepare()
        assert self.net is not None
        counts = np.bincount(predictions(self.net, samples), minlength=self.info["num_classes"])
        return {
            "fd": frechet_distance(*gaussian_fit(features(self.net, samples)), *self.reference_fit),
            "fd_reference": f"validation split ({self.reference.shape[0]} examples)",
            "fd_samples": int(samples.shape[0]),
            "classifier": self.info,
            "sample_class_histogram": counts.tolist(),
        }
