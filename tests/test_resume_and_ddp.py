"""Exact resume, and identical schedules across processes."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_train_args
from test_schedules import CTX

from multidiff.cli import main
from multidiff.schedules.infonoise import InfoNoise, InfoNoiseParams
from multidiff.schedules.io import load_schedule_file

REFRESH = ("schedule.warmup=4", "schedule.refresh=4")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _straight_and_resumed(straight: Path, halves: Path, extra: tuple[str, ...]) -> tuple[dict, dict]:
    """20 steps in one go and 10 + 10 with a resume; both last checkpoints, checked to hold the same
    EMA and raw weights at step 20."""
    assert main(tiny_train_args(straight, steps=20, extra=extra)) == 0
    assert main(tiny_train_args(halves, steps=10, extra=extra)) == 0
    assert main(tiny_train_args(halves, steps=20, extra=extra) + ["--resume"]) == 0
    a, b = _state(straight / "checkpoints" / "last.ckpt"), _state(halves / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 20
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], rtol=1e-5, atol=1e-6), (key, name)
    return a, b


def test_resume_continues_exactly(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    a, b = _straight_and_resumed(straight, halves, REFRESH)
    sa, sb = a["multidiff"]["schedule"], b["multidiff"]["schedule"]
    assert torch.allclose(sa["sums"], sb["sums"], rtol=1e-5) and torch.equal(sa["counts"], sb["counts"])
    assert np.allclose(sa["means"], sb["means"], rtol=1e-5, equal_nan=True)
    assert [h["step"] for h in sa["history"]] == [h["step"] for h in sb["history"]] == [4, 8, 12, 16, 20]
    ta, tb = load_schedule_file(straight / "schedule.json").table, load_schedule_file(halves / "schedule.json").table
    assert np.allclose(ta.pdf, tb.pdf, rtol=1e-5)
    # the metrics log has each training step once, not twice
    with (halves / "metrics.csv").open(newline="") as f:
        logged = [row["step"] for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(logged) == len(set(logged)) == 4  # log_every=5 over 20 steps


def test_gradient_accumulation_counts_optimizer_steps_and_resumes_exactly(tmp_path):
    """accumulate_grad_batches = 3: every per-step event (refreshes, checkpoints, validations) happens
    once per optimizer step; the schedule observed 3 micro-batches per step; and a resume at a step
    boundary continues exactly as the straight run (micro-batch seeding t·N + k)."""
    straight = tmp_path / "straight"
    a, _ = _straight_and_resumed(straight, tmp_path / "halves", (*REFRESH, "train.accumulate_grad_batches=3"))
    sched = a["multidiff"]["schedule"]
    assert [h["step"] for h in sched["history"]] == [4, 8, 12, 16, 20]
    observed = float(sched["total_counts"].sum() + sched["counts"].sum())
    assert observed == 20 * 3 * 16  # steps × micro-batches × batch_size: each micro-batch observed once
    assert sorted(p.name for p in (straight / "checkpoints").glob("step*.ckpt")) == ["step0000010.ckpt", "step0000020.ckpt"]
    with (straight / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) + 1 for r in rows if r.get("val/nelbo")}) == [10]  # step 20's is eval.json's
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == [4, 9, 14, 19]


def test_resume_refuses_a_changed_recipe(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(tiny_train_args(out, steps=10)) == 0
    before = (out / "recipe.yaml").read_bytes()
    assert main(tiny_train_args(out, steps=20, extra=("train.batch_size=8",)) + ["--resume"]) == 2
    assert "train.batch_size" in capsys.readouterr().err
    assert (out / "recipe.yaml").read_bytes() == before  # a refused resume leaves the run as it was


# ---- two processes (gloo): identical tables, equal to one process seeing everything -------------------


def _observations(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    sigma = torch.exp(torch.empty(3000).uniform_(CTX.u_min, CTX.u_max, generator=g))
    error = sigma**2 / (0.5 + sigma**2) * (1 + 0.1 * rank)  # the ranks see different errors
    return sigma, error


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    s = InfoNoise(CTX, InfoNoiseParams(warmup=0, refresh=1, bins=48))
    for step in (1, 2):
        sigma, error = _observations(rank)
        s.observe(sigma * (1 + 0.01 * step), error, error)
        s.refresh(step)
    torch.save({"pdf": s.to_table().pdf, "mmse": s.mmse, "counts": s.total_counts}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_end_a_refresh_with_identical_tables(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt", weights_only=False), torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["pdf"] == r1["pdf"] and np.array_equal(r0["mmse"], r1["mmse"])
    single = InfoNoise(CTX, InfoNoiseParams(warmup=0, refresh=1, bins=48))
    for step in (1, 2):
        for rank in (0, 1):
            sigma, error = _observations(rank)
            single.observe(sigma * (1 + 0.01 * step), error, error)
        single.refresh(step)
    assert np.allclose(single.to_table().pdf, r0["pdf"], rtol=1e-5)
    assert np.array_equal(single.total_counts, r0["counts"])


def test_two_process_training_run(tmp_path):
    """`--devices 2` on the CPU: the run completes and every refresh counted both processes' samples."""
    out = tmp_path / "ddp"
    exe = shutil.which("multidiff") or str(Path(sys.executable).with_name("multidiff"))
    args = tiny_train_args(out, steps=12, extra=REFRESH) + ["--accelerator", "cpu", "--devices", "2"]
    proc = subprocess.run([exe] + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = load_schedule_file(out / "schedule.json").table
    pending = _state(out / "checkpoints" / "last.ckpt")["multidiff"]["schedule"]["counts"]
    # every sample of both processes was counted exactly once: consumed by a refresh or still pending
    assert sum(table.profile["counts"]) + float(pending.sum()) == 2 * 16 * 12  # world × batch × steps


# ---- every schedule: exact resume (end to end), identical tables across two processes --------------

ZOO_RUNS = {
    "crs-x0": ("crs", ("schedule.measure=x0", "schedule.warmup=4", "schedule.refresh=4", "schedule.bins=8", "schedule.probe_batch=8")),
    "crs-fd": ("crs", ("schedule.bins=16", "schedule.examples=256")),
    "timewarp": ("timewarp", ("schedule.warmup=4", "schedule.refresh=4", "schedule.bins=16", "schedule.min_count=2")),
    "adaptive": ("adaptive", ("schedule.warmup=4", "schedule.refresh=4", "schedule.bins=16", "schedule.min_count=2")),
    "curriculum": ("curriculum", ("schedule.clusters=4", "schedule.patience=4", "schedule.refresh=2", "schedule.ema=0.5")),
}


def zoo_args(out: Path, schedule: str, steps: int, extra: tuple[str, ...]) -> list[str]:
    """tiny_train_args for another schedule (without its InfoNoise-only settings)."""
    args = tiny_train_args(out, steps=steps)
    for item in ("schedule.bins=16", "schedule.min_count=2"):
        i = args.index(item)
        del args[i - 1 : i + 1]
    for item in extra:
        args += ["--set", item]
    return args + ["--schedule", schedule]


def assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-7, equal_nan=True), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), where
    else:
        assert a == b, where


@pytest.mark.parametrize("label", list(ZOO_RUNS))
def test_every_schedule_resumes_exactly(tmp_path, label):
    schedule, extra = ZOO_RUNS[label]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(zoo_args(straight, schedule, 16, extra)) == 0
    assert main(zoo_args(halves, schedule, 8, extra)) == 0
    assert main(zoo_args(halves, schedule, 16, extra) + ["--resume"]) == 0
    a, b = _state(straight / "checkpoints" / "last.ckpt"), _state(halves / "checkpoints" / "last.ckpt")
    for name, tensor in a["state_dict"].items():
        assert torch.allclose(tensor, b["state_dict"][name], rtol=1e-5, atol=1e-6), name
    assert_same(a["multidiff"]["schedule"], b["multidiff"]["schedule"], label)
    ta, tb = load_schedule_file(straight / "schedule.json").table, load_schedule_file(halves / "schedule.json").table
    assert ta.method == schedule and np.allclose(ta.pdf, tb.pdf, rtol=1e-5)
    # the learned grid samples from every schedule
    assert main(["sample", str(straight), "--n", "4", "--steps", "5", "--sigmas", "learned"]) == 0
    state = a["multidiff"]["schedule"]
    if label == "crs-x0":  # the probe's extra forward passes are logged with their cost
        with (straight / "schedule_history" / "refreshes.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == [4, 8, 12, 16]
        assert all(int(r["probe_examples"]) == 9 * 8 and float(r["cost_steps"]) > 0 for r in rows)
        assert "schedule/cost_steps" in (straight / "metrics.csv").read_text()
    if label == "crs-fd":
        assert state["speed"] is not None and [h["step"] for h in state["history"]] == [0]  # built once
    if label in ("timewarp", "adaptive"):
        assert state["active"] and [h["step"] for h in state["history"]] == [4, 8, 12, 16]


ZOO_PARAMS = {
    "infonoise": ("infonoise", {"warmup": 0, "refresh": 1, "bins": 32, "min_count": 4}),
    "timewarp": ("timewarp", {"warmup": 0, "refresh": 1, "bins": 32}),
    "adaptive": ("adaptive", {"warmup": 0, "refresh": 1, "bins": 32}),
    "crs-fd": ("crs", {"bins": 32}),
    "crs-x0": ("crs", {"measure": "x0", "warmup": 0, "bins": 16, "probe_batch": 64}),
    "curriculum": ("curriculum", {"clusters": 5, "patience": 20, "refresh": 10, "ema": 0.0}),
}


def _zoo_run(label: str, rank: int, world: int) -> dict:
    """Drive one schedule through two refreshes with rank-specific inputs; returns its table and state."""
    from test_schedule_zoo import GaussianProbe

    from multidiff.schedules.registry import build_schedule

    name, params = ZOO_PARAMS[label]
    s = build_schedule(name, params, CTX)
    if label == "crs-fd":  # each rank sees different data here; all must adopt rank 0's table
        s.prepare(torch.randn(256, 8, generator=torch.Generator().manual_seed(rank)))
    elif label == "crs-x0":  # the same held-out batch everywhere; the work is split across ranks
        probe = GaussianProbe(0.5 * torch.randn(64, 8, generator=torch.Generator().manual_seed(7)), 0.5)
        for step in (200, 400):
            s.refresh(step, probe)
    elif label == "curriculum":
        for step in range(1, 121):  # ranks disagree on the loss; only the all-reduced mean decides
            loss = (1 + rank) * (1 / step if step < 30 else 1 / 30)
            s.observe(torch.ones(4), torch.zeros(4), torch.full((4,), loss))
            if step % s.refresh_every == 0:
                s.refresh(step)
    else:
        for step in (1, 2):
            sigma, error = _observations(rank)
            sigma = sigma * (1 + 0.01 * step)
            s.observe(sigma, error, error * (1 + sigma**-2))
            s.refresh(step)
    return {"pdf": s.to_table().pdf, "stage": getattr(s, "stage", None)}


def _zoo_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.save({label: _zoo_run(label, rank, world) for label in ZOO_PARAMS}, Path(out) / f"zoo{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_end_each_refresh_with_identical_tables_for_every_adaptive_schedule(tmp_path):
    port = 29500 + (os.getpid() + 500) % 1000
    mp.spawn(_zoo_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"zoo{r}.pt", weights_only=False) for r in (0, 1))
    for label in ZOO_PARAMS:
        assert r0[label]["pdf"] == r1[label]["pdf"], label
    assert r0["curriculum"]["stage"] == r1["curriculum"]["stage"] > 0
    # the probe's work was split across the ranks and summed: the same speed as one process
    single = _zoo_run("crs-x0", 0, 1)
    assert np.allclose(single["pdf"], r0["crs-x0"]["pdf"], rtol=1e-5)
