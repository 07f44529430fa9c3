"""Reliability as a user breaks it: resumes that must give the uninterrupted run's numbers, two
processes on one run directory, given paths that must be used or refused, comparisons that must not
reuse runs trained otherwise, validation before anything is written, one-line errors instead of
tracebacks, and kill -9 at any point followed by --resume."""
import csv
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_train_args
from test_compare import compare_args

from multidiff.cli import main
from multidiff.files import RunLock, atomic_write

REFRESH = ("schedule.warmup=4", "schedule.refresh=4")
TIMING_COLUMNS = ("refresh_s", "step_s", "cost_steps", "schedule/cost_steps", "schedule/refresh_s", "schedule/step_s")


def one_line_error(capsys, code) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("multidiff: error:"), err
    return err[0]


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# ---- 1. evaluation always uses the EMA weights, also after resuming a finished run ------------------


def test_resuming_a_finished_run_evaluates_the_same_ema_weights_as_eval(tmp_path):
    out = tmp_path / "r"
    assert main(tiny_train_args(out, steps=10, extra=REFRESH)) == 0
    first = json.loads((out / "eval.json").read_text())
    assert main(tiny_train_args(out, steps=10, extra=REFRESH) + ["--resume"]) == 0  # nothing left to train
    again = json.loads((out / "eval.json").read_text())
    assert again == first
    assert main(["eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text()) == first


# ---- 2. one process per run directory ---------------------------------------------------------------


def test_a_second_process_is_refused_while_the_first_holds_the_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    with RunLock(out):  # as another live process would hold it
        msg = one_line_error(capsys, main(tiny_train_args(out, steps=4)))
        assert "in use by another multidiff process" in msg and str(os.getpid()) in msg
        msg = one_line_error(capsys, main(tiny_train_args(out, steps=4) + ["--overwrite"]))
        assert "in use" in msg
    assert listing(out) == []  # the refused processes wrote nothing, and the lock leaves no folder behind
    assert main(tiny_train_args(out, steps=4)) == 0  # the lock file left behind does not block anyone


def test_a_killed_run_leaves_no_lock_that_blocks_resume(tmp_path, capsys):
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = tiny_train_args(out, steps=300, extra=("train.checkpoint_every=5", "train.eval_every=150", "eval.quality_every=150"))
    proc = subprocess.Popen([sys.executable, "-m", "multidiff", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None and time.time() < deadline, "the first process did not start training"
            time.sleep(0.2)
        msg = one_line_error(capsys, main(args + ["--resume"]))
        assert f"pid {proc.pid}" in msg, msg
    finally:
        proc.kill()  # kill -9: no chance to clean up
        proc.wait()
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "eval.json").read_text())["step"] == 300


# ---- 3. a given data path is used or refused --------------------------------------------------------


def test_a_given_data_path_is_used_or_refused(tmp_path, capsys):
    out = tmp_path / "r"
    msg = one_line_error(capsys, main(tiny_train_args(out) + ["--set", "data.path=/nonexistent/images.dat"]))
    assert "/nonexistent/images.dat" in msg
    images = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    upper = tmp_path / "GOOD.NPY"
    np.save(tmp_path / "good.npy", images)
    (tmp_path / "good.npy").rename(upper)
    assert main(tiny_train_args(out, steps=2) + ["--set", f"data.path={upper}"]) == 0
    assert json.loads((out / "eval.json").read_text())["dataset"] == "GOOD.NPY"  # trained on it, not on digits
    assert not (tmp_path / "x").exists()


# ---- 4. compare never reuses a run trained with other settings --------------------------------------


@pytest.mark.parametrize("setting, key", [("data.limit=300", "data.limit"), ("schedule.p_mean=1.5", "schedule.p_mean")])
def test_compare_refuses_a_run_trained_with_settings_the_recipe_file_does_not_show(tmp_path, capsys, setting, key):
    out = tmp_path / "cmp"
    assert main(compare_args(out, schedules="edm", steps=4, extra=(setting,))) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    msg = one_line_error(capsys, main(compare_args(out, schedules="edm", steps=4)))
    assert f"differs at '{key}'" in msg
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


# ---- 5. everything a run needs is validated before its directory is made ---------------------------


def test_bad_sampler_settings_and_unusable_data_fail_before_the_run_directory_exists(tmp_path, capsys):
    out = tmp_path / "r"
    msg = one_line_error(capsys, main(tiny_train_args(out) + ["--set", "sample.sigmas=bogus"]))
    assert "sample.sigmas" in msg
    np.save(tmp_path / "two.npy", np.random.default_rng(0).random((3, 8, 8)).astype(np.float32))  # 2 train + 1 held out
    msg = one_line_error(capsys, main(tiny_train_args(out) + ["--set", f"data.path={tmp_path / 'two.npy'}"]))
    assert "too few" in msg
    assert not out.exists()


# ---- 6. and 7. one-line errors instead of tracebacks, and nonsense refused --------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.threshold=abc", "data.threshold must be a number"),
        ("model.channels=-4", "model.channels must be an integer ≥ 1"),
        ("train.ema_decay=2", "train.ema_decay must be a number in [0, 1), got 2"),
        ("data.size=0", "data.size must be an integer ≥ 1"),
        ("eval.quality_every=7", "multiple of train.eval_every"),
    ],
)
def test_bad_values_are_one_line_errors_before_anything_is_written(tmp_path, capsys, setting, message):
    out = tmp_path / "r"
    assert message in one_line_error(capsys, main(tiny_train_args(out) + ["--set", setting]))
    assert not out.exists()


def test_a_recipe_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\ndomain: binary_image\n".encode("latin-1"))
    msg = one_line_error(capsys, main(["train", str(bad), "--out", str(tmp_path / "r")]))
    assert str(bad) in msg and "UTF-8" in msg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny_train_args(out, steps=6, extra=("train.checkpoint_every=3",))) == 0
    return out


def test_a_damaged_checkpoint_is_a_one_line_error_for_sample_eval_and_resume(finished, tmp_path, capsys):
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(finished, run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    before = listing(run)
    for argv in (["sample", str(run)], ["eval", str(run)], tiny_train_args(run, steps=9) + ["--resume"]):
        msg = one_line_error(capsys, main(argv))
        assert "last.ckpt cannot be read" in msg and "step0000006.ckpt" in msg
    assert listing(run) == before
    (run / "recipe.yaml").write_text("name: [unclosed\n")
    assert "recipe.yaml is not valid YAML" in one_line_error(capsys, main(["sample", str(run)]))


def test_out_that_is_a_file_or_cannot_be_written_is_a_one_line_error(finished, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    for flag in ("--overwrite", "--resume"):
        assert "is a file" in one_line_error(capsys, main(tiny_train_args(target) + [flag]))
    assert target.read_text() == "keep me"
    locked = tmp_path / "immutable"
    locked.mkdir()
    if not _make_unwritable(locked):
        pytest.skip("cannot make a directory unwritable here")
    try:
        msg = one_line_error(capsys, main(tiny_train_args(locked / "run")))
        assert str(locked / "run") in msg
        msg = one_line_error(capsys, main(["schedule", "export", str(finished), "-o", str(locked / "s.json")]))
        assert "cannot write" in msg
    finally:
        _make_writable(locked)


def _make_unwritable(path: Path) -> bool:
    if os.geteuid() == 0:  # root ignores permissions; the immutable attribute stops it
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    else:
        path.chmod(0o555)
    try:
        (path / "probe").write_text("x")
    except OSError:
        return True
    (path / "probe").unlink()
    return False


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_sample_refuses_a_nonpositive_count_and_a_file_for_another_sigma_range(finished, tmp_path, capsys):
    assert "--n must be positive" in one_line_error(capsys, main(["sample", str(finished), "--n", "0"]))
    from multidiff.schedules.base import ScheduleContext
    from multidiff.schedules.fixed import LogUniform
    from multidiff.schedules.io import save_schedule_file

    path = save_schedule_file(tmp_path / "other.json", LogUniform(ScheduleContext(0.002, 40.0)).to_table())
    msg = one_line_error(capsys, main(["sample", str(finished), "--sigmas", str(path)]))
    assert "covers σ in" in msg


# ---- 8. resume details --------------------------------------------------------------------------------


def test_a_diverged_run_resumes_from_its_last_good_checkpoint_with_a_lower_learning_rate(tmp_path, capsys):
    out = tmp_path / "r"
    args = tiny_train_args(out, steps=6, extra=("train.checkpoint_every=6", "train.grad_clip=null", "train.lr_warmup=1"))
    assert main(args) == 0
    more = tiny_train_args(out, steps=12, extra=("train.checkpoint_every=6", "train.grad_clip=null", "train.lr_warmup=1"))
    msg = one_line_error(capsys, main(more + ["--resume", "--set", "train.lr=1e30"]))
    assert "non-finite" in msg and "--resume --set train.lr=" in msg  # advice that can be followed ...
    assert main(more + ["--resume", "--set", "train.lr=1e-3"]) == 0  # ... and works
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12 and ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert "lr: 0.001" in (out / "recipe.yaml").read_text()


def test_cache_writers_never_collide_on_a_temporary_name(tmp_path):
    target = tmp_path / "entry.pt"
    errors = []

    def write(tag: str) -> None:
        def slow(tmp: Path) -> None:
            tmp.write_text(tag)
            time.sleep(0.3)  # both writers hold their temporary file at once

        try:
            atomic_write(target, slow)
        except Exception as exc:  # noqa: BLE001 - any failure is the defect
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in ("a", "b")
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt"]  # no temporary file left behind


# ---- kill -9 anywhere, then --resume: identical to an uninterrupted run --------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def _snapshot(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    history = sorted(p.name for p in (run / "schedule_history").glob("*.json"))
    return {
        "step": ckpt["global_step"],
        "weights": {k: ckpt[k] for k in ("state_dict", "current_model_state")},
        "optimizer": ckpt["optimizer_states"][0]["state"],
        "schedule_state": ckpt["multidiff"]["schedule"],
        "schedule.json": json.loads((run / "schedule.json").read_text()),
        "history": {name: json.loads((run / "schedule_history" / name).read_text()) for name in history},
        "refreshes": _rows(run / "schedule_history" / "refreshes.csv"),
        "metrics": _rows(run / "metrics.csv"),
        "eval": json.loads((run / "eval.json").read_text()),
    }


def _same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):  # bit-identical (NaN where NaN)
        assert a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, (where, a, b)


def test_kill_9_at_any_point_then_resume_matches_the_uninterrupted_run(tmp_path):
    extra = (*REFRESH, "train.checkpoint_every=5")
    straight = tmp_path / "straight"
    assert main(tiny_train_args(straight, steps=20, extra=extra)) == 0
    expected = _snapshot(straight)
    step = random.Random(20261202).randint(1, 19)
    # SIGTERM (a scheduler's stop) during a step or inside a sample quality evaluation: the run stops
    # at that step with status 143 and one line, instead of finishing the evaluation and exiting 0
    terminated = {f"step:{step}:TERM": step, "quality:10:TERM": 10}
    for fault in (f"step:{step}", "checkpoint:15", "validation:10", "eval", *terminated):
        run = tmp_path / fault.replace(":", "-")
        env = {**os.environ, "MULTIDIFF_FAULT": fault}  # same threads as this process: identical arithmetic
        proc = subprocess.run([sys.executable, "-m", "multidiff", *tiny_train_args(run, steps=20, extra=extra)], env=env,
                              capture_output=True, text=True, cwd=REPO)  # fmt: skip
        if fault in terminated:
            at = terminated[fault]  # checkpoints every 5 steps, an evaluated step's (every 10) after its evaluation
            kept = at - 5 if at % 10 == 0 else at // 5 * 5
            assert proc.returncode == 143, (fault, proc.returncode, proc.stderr[-2000:])
            assert proc.stderr.strip().splitlines()[-1] == (
                f"multidiff: terminated: SIGTERM at step {at}; resuming (`train --resume`, or the same `compare` again) continues from "
                + (f"step {kept}" if kept else "the start (no checkpoint yet)")), fault  # fmt: skip
            rows = _rows(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
            assert not any(r.get("quality/fd") for r in rows if int(r["step"]) + 1 >= at), fault  # not finished, not logged
        else:
            assert proc.returncode == -9, (fault, proc.stderr[-2000:])
        assert main(tiny_train_args(run, steps=20, extra=extra) + ["--resume"]) == 0, fault
        _same(_snapshot(run), expected, fault)
