"""The trainer settings users of other training scripts expect: learning-rate decay after the
warm-up, and logger settings passed through (with the tools' own environment variables)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_train_args

from multidiff.cli import main
from multidiff.errors import UserError
from multidiff.train.module import lr_factor


@pytest.mark.parametrize("decay", ["constant", "cosine", "linear"])
def test_lr_factor_warms_up_then_follows_its_shape_to_the_final_rate(decay):
    f = lr_factor(decay, warmup=10, max_steps=110, final=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # (step + 1) / warmup
    middle = {"constant": 1.0, "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), "linear": 0.1 + 0.9 * 0.5}[decay]
    assert f(59) == pytest.approx(middle)  # half-way through the decay: progress (59 + 1 − 10) / 100
    assert f(109) == pytest.approx(1.0 if decay == "constant" else 0.1)  # the last step reaches lr_final
    assert f(500) == pytest.approx(f(109))  # past max_steps (a longer resume is stretched, not extrapolated)
    values = [f(s) for s in range(10, 110)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))  # never rises after the warm-up


def test_a_run_ends_at_the_decayed_rate(tmp_path):
    out = tmp_path / "decay"
    assert main(tiny_train_args(out, steps=20, extra=("train.lr_warmup=4", "train.lr_decay=linear", "train.lr_final=0.25"))) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    lr = ckpt["multidiff"]["recipe"]["train"]["lr"]
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.25 * lr)


def test_bad_decay_settings_are_refused_before_anything_is_written(tmp_path, capsys):
    for setting, message in (("train.lr_decay=step", "one of constant, cosine, linear"), ("train.lr_final=2", "in [0, 1]"),
                             ("train.accumulate_grad_batches=0", "train.accumulate_grad_batches")):  # fmt: skip
        assert main(tiny_train_args(tmp_path / "x", steps=2, extra=(setting,))) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


class _Recorder:
    """Stands in for a Lightning logger class: records what it was built with."""

    made: list[tuple[str, dict]] = []

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, **kwargs):
        _Recorder.made.append((self.kind, kwargs))
        return SimpleNamespace(kind=self.kind, kwargs=kwargs)


@pytest.fixture
def recorded(monkeypatch):
    from lightning.pytorch import loggers

    _Recorder.made = []
    for cls in ("WandbLogger", "MLFlowLogger", "TensorBoardLogger"):
        monkeypatch.setattr(loggers, cls, _Recorder(cls))
    return _Recorder.made


def test_logger_options_pass_through_and_the_environment_is_respected(recorded, monkeypatch, tmp_path):
    from multidiff.train.loggers import make_loggers

    cfg = SimpleNamespace(name="digits")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    make_loggers(["wandb", "mlflow", "tensorboard"], tmp_path / "run", cfg,
                 {"wandb": {"entity": "lab", "group": "ablation"}, "tensorboard": {"name": "tb"}})  # fmt: skip
    made = dict(recorded)
    assert made["WandbLogger"] == {"project": "from-env", "name": "digits-run", "entity": "lab", "group": "ablation",
                                   "save_dir": str(tmp_path / "run")}  # fmt: skip
    assert made["MLFlowLogger"]["tracking_uri"] == "http://tracking.example:5000"
    assert made["TensorBoardLogger"]["name"] == "tb" and made["TensorBoardLogger"]["save_dir"] == str(tmp_path / "run")
    recorded.clear()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    make_loggers(["mlflow"], tmp_path / "run", cfg, {"mlflow": {"experiment_name": "mine"}})
    kwargs = dict(recorded)["MLFlowLogger"]
    assert kwargs["experiment_name"] == "mine" and kwargs["tracking_uri"] == f"file:{(tmp_path / 'run').resolve() / 'mlruns'}"


@pytest.mark.parametrize("options, message", [
    ({"wandb": {"entity": "x"}}, "wandb is not among train.logger"),
    ({"tensorboard": {"save_dir": "/elsewhere"}}, "set by multidiff"),
    ({"tensorboard": "x"}, "must map a logger name"),
])  # fmt: skip
def test_logger_options_are_checked(options, message):
    from multidiff.train.loggers import logger_options

    with pytest.raises(UserError, match=message):
        logger_options(["tensorboard"], options)
