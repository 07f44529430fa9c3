import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Caches (evaluation classifiers, synthesized data) live in one temp dir per test session."""
    cache = tmp_path_factory.mktemp("multidiff-cache")
    old = os.environ.get("MULTIDIFF_CACHE")
    os.environ["MULTIDIFF_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("MULTIDIFF_CACHE", None)
    else:
        os.environ["MULTIDIFF_CACHE"] = old


def require(ok: bool, what: str) -> None:
    """Skip when a Debian data package is missing, unless CI demands it (MULTIDIFF_REQUIRE_DATA=1)."""
    if ok:
        return
    if os.environ.get("MULTIDIFF_REQUIRE_DATA") == "1":
        pytest.fail(f"{what} is required (MULTIDIFF_REQUIRE_DATA=1) but missing")
    pytest.skip(f"{what} is not installed")


def gauss_hermite(n: int = 120):
    """Nodes/weights for E[f(ε)], ε ~ N(0, 1)."""
    e, w = np.polynomial.hermite_e.hermegauss(n)
    return e, w / w.sum()


def binary_mmse(sigma: np.ndarray) -> np.ndarray:
    """Bayes MMSE per dimension of iid uniform ±1 pixels under x + σε: 1 − E[tanh²(y/σ²)], y ~ N(1, σ²)."""
    e, w = gauss_hermite()
    sigma = np.atleast_1d(sigma)[:, None]
    y = 1 + sigma * e[None]
    return 1 - (w[None] * np.tanh(y / sigma**2) ** 2).sum(1)


def tiny_train_args(out: Path, steps: int = 20, extra: tuple[str, ...] = ()) -> list[str]:
    """A fast variant of the default recipe for end-to-end tests."""
    args = [
        "train", str(REPO / "recipes" / "binary_digits.yaml"), "--out", str(out), "--max-steps", str(steps),
        "--set", "model.channels=8", "--set", "model.channel_mult=[1]", "--set", "train.progress_bar=false",
        "--set", "train.eval_every=10", "--set", "eval.quality_every=10", "--set", "train.checkpoint_every=10", "--set", "train.log_every=5",
        "--set", "eval.nelbo_examples=32", "--set", "eval.nelbo_nodes=8", "--set", "eval.quality_samples=64",
        "--set", "sample.n=16", "--set", "sample.steps=4", "--set", "train.batch_size=16",
        "--set", "schedule.bins=16", "--set", "schedule.min_count=2",
    ]  # fmt: skip
    for item in extra:
        args += ["--set", item]
    return args


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
