"""Data sources, the step-indexed batch stream, and the evaluation features."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

from multidiff.data.images import FASHION_MNIST_DIR, load_fashion_mnist
from multidiff.domains.binary_image import BinaryImageDomain
from multidiff.errors import UserError
from multidiff.metrics import features as feats
from multidiff.metrics.frechet import frechet_between, frechet_distance
from multidiff.train.data import StepBatches


def domain(**data):
    return BinaryImageDomain({"data": data, "model": {}, "seed": 0}, Path("/nonexistent"))


def test_digits_are_binarized_and_split_independently_of_the_training_seed():
    a = domain().load()
    b = BinaryImageDomain({"data": {}, "model": {}, "seed": 123}, Path("/x")).load()
    assert a.train.shape == (1438, 1, 8, 8) and a.val.shape == (359, 1, 8, 8)
    assert set(a.train.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a.val, b.val) and torch.equal(a.train, b.train)
    # the two splits partition the dataset: together they are exactly the 1 797 images, each once
    from multidiff.data.images import load_digits

    everything = torch.where(torch.from_numpy(load_digits().train) > 0.5, 1.0, -1.0).flatten(1)
    both = torch.cat([a.train, a.val]).flatten(1)
    rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert rows(both) == rows(everything)
    assert a.num_classes == 10 and a.train_labels.shape == (1438,)


def test_fashion_mnist_from_debian():
    require((FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), "dataset-fashion-mnist")
    raw = load_fashion_mnist()
    assert raw.train.shape == (60000, 28, 28) and raw.val.shape == (10000, 28, 28)
    assert 0 <= raw.train.min() and raw.train.max() <= 1 and set(np.unique(raw.train_labels)) == set(range(10))
    small = domain(source="fashion_mnist", size=14, limit=500).load()
    assert small.train.shape == (500, 1, 14, 14) and small.val.shape == (10000, 1, 14, 14)
    assert small.dataset == "fashion_mnist@14"


def test_local_arrays(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((50, 6, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", imgs)
    d = domain(path=str(tmp_path / "a.npy")).load()
    assert d.train.shape[1:] == (1, 6, 6) and d.train.shape[0] + d.val.shape[0] == 50 and d.train_labels is None
    np.savez(tmp_path / "b.npz", x=imgs, y=np.arange(50) % 3)
    d = domain(path=str(tmp_path / "b.npz")).load()
    assert d.num_classes == 3 and d.train_labels is not None
    np.save(tmp_path / "bad.npy", imgs * 255)
    with pytest.raises(UserError, match=r"within \[0, 1\]"):
        domain(path=str(tmp_path / "bad.npy")).load()
    np.save(tmp_path / "flat.npy", imgs.reshape(50, 36))
    with pytest.raises(UserError, match="N×H×W"):
        domain(path=str(tmp_path / "flat.npy")).load()
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(UserError, match="cannot read"):
        domain(path=str(tmp_path / "junk.npy")).load()


def test_binarization_follows_the_threshold(tmp_path):
    imgs = np.array([[[0.2, 0.6], [0.5, 0.9]]] * 10, dtype=np.float32)
    np.save(tmp_path / "t.npy", imgs)
    d = domain(path=str(tmp_path / "t.npy"), threshold=0.55).load()
    assert d.train[0, 0].tolist() == [[-1.0, 1.0], [-1.0, 1.0]]


def test_step_batches_cover_each_epoch_and_split_ranks():
    data = torch.arange(10)
    single = StepBatches(data, 4, seed=1)
    seen = torch.cat([single.indices(t) for t in range(5)])  # 20 draws = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    r0, r1 = StepBatches(data, 2, seed=1, rank=0, world=2), StepBatches(data, 2, seed=1, rank=1, world=2)
    for t in range(5):
        assert torch.equal(torch.cat([r0.indices(t), r1.indices(t)]), single.indices(t))
    resumed = iter(StepBatches(data, 4, seed=1, start_step=3))
    assert torch.equal(next(resumed), data[single.indices(3)])


def test_frechet_distance_closed_forms():
    d, a, b = 5, 1.0, 2.0
    assert frechet_distance(np.zeros(d), a**2 * np.eye(d), np.ones(d), b**2 * np.eye(d)) == pytest.approx(d + d * (a - b) ** 2)
    x = np.random.default_rng(0).normal(size=(4000, 3))
    assert frechet_between(x, x) == pytest.approx(0, abs=1e-8)


def test_evaluation_classifier_is_accurate_and_cached():
    data = domain().load()
    key = f"test-{data.fingerprint}"
    net, info = feats.feature_classifier(key, data.train, data.train_labels, 10, data.val, data.val_labels)
    assert info["val_accuracy"] >= 0.9  # it is the evaluator: it must be good
    assert (feats.cache_root() / "classifiers" / f"{key}.pt").is_file()
    again, info2 = feats.feature_classifier(key, data.train, None, 10, data.val, None)  # served from the cache
    assert info2 == info and torch.equal(next(again.parameters()), next(net.parameters()))
    # features separate real digits from noise
    noise = torch.where(torch.rand_like(data.val) > 0.5, 1.0, -1.0)
    real = frechet_between(feats.features(net, data.val[:180]), feats.features(net, data.val[180:]))
    fake = frechet_between(feats.features(net, noise), feats.features(net, data.val))
    assert fake > 5 * real


def test_unlabelled_data_get_pseudo_labels(tmp_path):
    imgs = (np.random.default_rng(1).random((120, 8, 8)) > 0.5).astype(np.float32)
    np.save(tmp_path / "u.npy", imgs)
    dom = domain(path=str(tmp_path / "u.npy"))
    data = dom.load()
    out = dom.sample_metrics(data.val, data)
    assert out["classifier"]["labels"] == "k-means pseudo-labels" and np.isfinite(out["fd"])


def test_step_batches_through_workers_keep_the_order_of_steps():
    from torch.utils.data import DataLoader

    data = torch.arange(50).float()[:, None]
    plain = StepBatches(data, 4, seed=3)
    expected = [plain.data[plain.indices(s)] for s in range(12)]
    loader = DataLoader(StepBatches(data, 4, seed=3), batch_size=None, num_workers=2)
    got = [b for _, b in zip(range(12), loader)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))  # two workers, steps still in order


def test_density_images_reach_loggers_that_take_them():
    from multidiff.schedules.base import ScheduleContext
    from multidiff.schedules.fixed import LogNormal
    from multidiff.train.loggers import check_loggers, log_density, logger_names

    class Board:  # TensorBoard's experiment surface
        def __init__(self):
            self.figures = []

        def add_figure(self, tag, fig, global_step, close):
            self.figures.append((tag, global_step, len(fig.axes)))

    class Logger:
        experiment = Board()

    logger = Logger()
    table = LogNormal(ScheduleContext(0.002, 80.0)).to_table()
    log_density([logger], {"image": table, "audio": table}, step=40)
    assert logger.experiment.figures == [("schedule/density", 40, 2)]  # one panel per modality
    assert logger_names(["tensorboard", "csv"]) == ["csv", "tensorboard"]
    with pytest.raises(UserError, match="unknown logger 'nope'"):
        logger_names("nope")
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(UserError, match=r"pip install 'multidiff\[wandb\]'"):
            check_loggers(["wandb"])
