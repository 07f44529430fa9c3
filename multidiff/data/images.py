"""Image sources: grayscale arrays in [0, 1] of shape [N, H, W], with integer labels when known.

Offline: scikit-learn's bundled digits, Debian's dataset-fashion-mnist, any local .npy/.npz.
With a network: MNIST (or another image dataset) through Hugging Face ``datasets``.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .splits import cap, holdout, load_hub_dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class ImageSet:
    train: np.ndarray  # [N, H, W] float32 in [0, 1]
    train_labels: Optional[np.ndarray]
    val: Optional[np.ndarray] = None  # the source's own held-out split, if it has one
    val_labels: Optional[np.ndarray] = None
    num_classes: int = 0


def load_digits() -> ImageSet:
    """scikit-learn's 8×8 handwritten digits (1 797 images, values 0–16), bundled with the package."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return ImageSet(train=(d.images / 16.0).astype(np.float32), train_labels=d.target.astype(np.int64), num_classes=10)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: Optional[str] = None) -> ImageSet:
    """Fashion-MNIST from IDX files (Debian's dataset-fashion-mnist installs them under /usr/share)."""
    root = Path(directory) if directory else FASHION_MNIST_DIR
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserError(
            f"Fashion-MNIST not found: {root / missing[0]} is missing; install it with "
            f"'apt-get install dataset-fashion-mnist' or point data.path at a folder with the IDX files"
        )
    tr, trl, te, tel = (_read_idx(root / n) for n in names)
    return ImageSet(
        train=(tr / 255.0).astype(np.float32), train_labels=trl.astype(np.int64),
        val=(te / 255.0).astype(np.float32), val_labels=tel.astype(np.int64), num_classes=10,
    )  # fmt: skip


def load_array(path: str) -> ImageSet:
    """A local .npy ([N, H, W] or [N, 1, H, W], values in [0, 1]) or .npz (keys x/images, optional y/labels)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data.path: array file {p} not found")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:  # corrupt or not an array file
        raise UserError(f"data.path: cannot read {p} as a NumPy array ({exc})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        xkey = next((k for k in ("x", "images", "arr_0") if k in keys), keys[0] if keys else None)
        if xkey is None:
            raise UserError(f"data.path: {p} holds no arrays")
        x = loaded[xkey]
        ykey = next((k for k in ("y", "labels") if k in keys), None)
        labels = loaded[ykey].astype(np.int64) if ykey else None
    else:
        x = loaded
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] < 2:
        raise UserError(f"data.path: {p} must hold an array of shape N×H×W, got {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError(f"data.path: values in {p} must be finite and within [0, 1] (got {x.min():.3g}..{x.max():.3g})")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise UserError(f"data.path: {p} has {x.shape[0]} images but {labels.shape[0]} labels")
    return ImageSet(train=x, train_labels=labels, num_classes=int(labels.max()) + 1 if labels is not None else 0)


def load_hub(name: str) -> ImageSet:
    """An image dataset from the Hugging Face hub (e.g. 'mnist'); needs a network or a local cache."""
    ds = load_hub_dataset(name, offline_hint="use data.source=digits, fashion_mnist or data.path=FILE.npy")

    def convert(split):
        img_key = next(k for k in split.features if k in ("image", "img", "pixels"))
        x = np.stack([np.asarray(im, dtype=np.float32) for im in split[img_key]]) / 255.0
        y = np.asarray(split["label"], dtype=np.int64) if "label" in split.features else None
        return x, y

    tr, trl = convert(ds["train"])
    te, tel = convert(ds["test"]) if "test" in ds else (None, None)
    return ImageSet(train=tr, train_labels=trl, val=te, val_labels=tel, num_classes=int(trl.max()) + 1 if trl is not None else 0)


IMAGE_SOURCES = ("digits", "fashion_mnist", "array", "hub")


@dataclass
class ImageSplit:
    """A dataset's fixed train/validation split, grayscale [N, H, W] in [0, 1]."""

    train: np.ndarray
    train_labels: Optional[np.ndarray]
    val: np.ndarray
    val_labels: Optional[np.ndarray]
    dataset: str
    num_classes: int


def source_name(cfg: dict) -> str:
    """The image source a ``data`` section asks for. A given ``data.path`` is always used or refused:
    a .npy/.npz file (any case) means ``array``; otherwise it must be what the source reads (a folder
    of IDX files for fashion_mnist, a dataset id for hub)."""
    path, source = cfg.get("path"), cfg.get("source")
    if source not in IMAGE_SOURCES:
        raise UserError(f"data.source: unknown source {source!r}; choose digits, fashion_mnist, array or hub")
    if isinstance(path, str) and path.lower().endswith((".npy", ".npz")):
        return "array"
    if source == "array":
        raise UserError(f"data.source=array needs data.path=FILE.npy or FILE.npz, got {path!r}")
    if path and source == "digits":
        raise UserError(f"data.path {path}: not a .npy/.npz array, and the digits source reads no path "
                        f"(for Fashion-MNIST IDX files set data.source=fashion_mnist)")  # fmt: skip
    if path and source == "fashion_mnist" and not Path(path).is_dir():
        raise UserError(f"data.path {path}: not a folder of Fashion-MNIST IDX files")
    return source


def load_image_split(cfg: dict) -> ImageSplit:
    """Load the source named by a ``data`` section (keys source, path, val_fraction, split_seed, limit).

    Sources without their own test split are split with ``split_seed``, independent of the training
    seed, so every run of a dataset sees the same held-out images; ``limit`` caps the training split.
    """
    source = source_name(cfg)
    if source == "digits":
        raw, dataset = load_digits(), "digits"
    elif source == "fashion_mnist":
        raw, dataset = load_fashion_mnist(cfg.get("path")), "fashion_mnist"
    elif source == "array":
        raw, dataset = load_array(cfg["path"]), Path(cfg["path"]).name
    else:
        name = cfg.get("path") or "mnist"
        raw, dataset = load_hub(name), name
    if raw.val is None:
        train, train_y, val, val_y = holdout(raw.train, raw.train_labels, cfg["val_fraction"], cfg["split_seed"], cfg.get("limit"))
    else:
        (train, train_y), val, val_y = cap(raw.train, raw.train_labels, cfg.get("limit")), raw.val, raw.val_labels
    return ImageSplit(train, train_y, val, val_y, dataset, raw.num_classes)
