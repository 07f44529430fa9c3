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
from multidiff.cli import main
from multidiff.schedules.infonoise import InfoNoise, InfoNoiseParams
from multidiff.schedules.io import load_schedule_file
from test_schedules import CTX

REFRESH = ("schedule.warmup=4", "schedule.refresh=4")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_continues_exactly(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(tiny_train_args(straight, steps=20, extra=REFRESH)) == 0
    assert main(tiny_train_args(halves, steps=10, extra=REFRESH)) == 0
    assert main(tiny_train_args(halves, steps=20, extra=REFRESH) + ["--resume"]) == 0
    a, b = _state(straight / "checkpoints" / "last.ckpt"), _state(halves / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 20
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], rtol=1e-5, atol=1e-6), (key, name)
    sa, sb = a["multidiff"]["schedule"], b["multidiff"]["schedule"]
    assert torch.allclose(sa["sums"], sb["sums"], rtol=1e-5) and torch.equal(sa["counts"], sb["counts"])
    assert np.allclose(sa["mmse"], sb["mmse"], rtol=1e-5, equal_nan=True)
    assert [h["step"] for h in sa["history"]] == [h["step"] for h in sb["history"]] == [4, 8, 12, 16, 20]
    ta, tb = load_schedule_file(straight / "schedule.json").table, load_schedule_file(halves / "schedule.json").table
    assert np.allclose(ta.pdf, tb.pdf, rtol=1e-5)
    # the metrics log has each training step once, not twice
    with (halves / "metrics.csv").open(newline="") as f:
        logged = [row["step"] for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(logged) == len(set(logged)) == 4  # log_every=5 over 20 steps


def test_resume_refuses_a_changed_recipe(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(tiny_train_args(out, steps=10)) == 0
    assert main(tiny_train_args(out, steps=20, extra=("train.lr=0.1",)) + ["--resume"]) == 2
    assert "train.lr" in capsys.readouterr().err


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
