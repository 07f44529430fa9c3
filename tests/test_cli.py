"""The command line as a user runs it: a run directory end to end, reuse of its schedule, bad input."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, copy_run, tiny_train_args
from PIL import Image

from multidiff.cli import main
from multidiff.schedules.io import load_schedule_file


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(tiny_train_args(out, steps=20, extra=("schedule.warmup=5", "schedule.refresh=5"))) == 0
    return out


def test_run_directory_layout(run):
    for rel in ["recipe.yaml", "metrics.csv", "schedule.json", "eval.json", "checkpoints/last.ckpt",
                "checkpoints/step0000010.ckpt", "checkpoints/step0000020.ckpt", "schedule_history/refreshes.csv",
                "schedule_history/step0000020.json", "plots/schedule.png", "plots/curves.png", "samples/final.png",
                "samples/final.npy", "timing.json"]:  # fmt: skip
        assert (run / rel).is_file(), rel
    for png in ["plots/schedule.png", "plots/curves.png", "samples/final.png"]:
        assert Image.open(run / png).size[0] > 100
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 20 and ev["schedule"] == "infonoise" and ev["nelbo_unit"] == "bits/pixel"
    assert 0 < ev["nelbo"] < 20 and ev["fd"] > 0 and sum(ev["sample_class_histogram"]) == 64
    samples = np.load(run / "samples" / "final.npy")
    assert samples.shape == (16, 1, 8, 8) and set(np.unique(samples)) <= {0, 1}
    table = load_schedule_file(run / "schedule.json").table
    assert table.method == "infonoise" and table.step == 20 and table.gate["c"] == 0.2
    rows = (run / "schedule_history" / "refreshes.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["5", "10", "15", "20"]
    metrics = (run / "metrics.csv").read_text()
    assert "val/nelbo" in metrics and "train/loss" in metrics and "quality/fd" in metrics
    # the curves end with eval.json's values: the saved EMA weights, measured by the same functions
    from multidiff.report.curves import metric_curves

    curves = metric_curves(run)
    assert curves["nelbo"][0] == [10, 20] and curves["nelbo"][1][-1] == ev["nelbo"]
    assert curves["fd"][0] == [10, 20] and curves["fd"][1][-1] == ev["quality"]["fd"] == ev["fd"]
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) + 1 for r in rows if r.get("quality/fd")] == [10]  # the final step is not measured twice
    noise = ev["quality_noise"]["fd"]
    assert len(noise["values"]) == 2 and noise["values"][0] == ev["fd"] and noise["sd"] > 0


def test_sample_eval_and_schedule_commands(run, tmp_path, capsys):
    assert main(["sample", str(run), "--n", "9", "--steps", "5", "--sigmas", "learned", "--seed", "3"]) == 0
    first = np.load(run / "samples" / "learned-heun5-seed3.npy")
    assert first.shape == (9, 1, 8, 8)
    assert main(["sample", str(run), "--n", "9", "--steps", "5", "--sigmas", "learned", "--seed", "3"]) == 0
    assert np.array_equal(first, np.load(run / "samples" / "learned-heun5-seed3.npy"))  # seeded
    assert main(["sample", str(run), "--n", "4", "--steps", "3", "--sigmas", str(run / "schedule.json")]) == 0
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["step"] == 20
    exported = tmp_path / "learned.json"
    assert main(["schedule", "export", str(run), "-o", str(exported)]) == 0
    assert main(["schedule", "export", str(run), "-o", str(exported)]) == 2  # never overwrite silently
    assert main(["schedule", "show", str(exported)]) == 0
    assert (tmp_path / "learned.png").is_file()
    capsys.readouterr()
    assert main(["schedule", "sigmas", str(exported), "--steps", "6"]) == 0
    sigmas = json.loads(capsys.readouterr().out)
    assert len(sigmas) == 7 and sigmas[-1] == 0 and sigmas[0] == pytest.approx(80.0) and sigmas == sorted(sigmas, reverse=True)


def test_learned_schedule_file_trains_a_new_run_frozen(run, tmp_path):
    out = tmp_path / "frozen"
    args = tiny_train_args(out, steps=10)
    args[args.index("--out"):args.index("--out")] = ["--schedule", str(run / "schedule.json")]
    assert main(args) == 0
    frozen = load_schedule_file(out / "schedule.json").table
    learned = load_schedule_file(run / "schedule.json").table
    assert frozen.pdf == learned.pdf and (out / "eval.json").is_file()


def test_compare_to_edm_writes_the_comparison_report(tmp_path):
    """`train --baseline` is `compare` with two schedules and one seed: the same report."""
    out = tmp_path / "cmp"
    assert main(tiny_train_args(out, steps=10, extra=("schedule.warmup=4", "schedule.refresh=4")) + ["--baseline", "edm"]) == 0
    md = (out / "report.md").read_text()
    assert "| infonoise |" in md and "| edm |" in md and "speedup" in md.lower() and "one seed" in md
    for png in ("curves.png", "densities.png", "profiles.png"):
        assert (out / png).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "edm" and summary["seeds"] == [0]
    assert set(summary["schedules"]["infonoise"]["metrics"]) == {"nelbo", "fd"}
    base = json.loads((out / "edm" / "seed0" / "eval.json").read_text())
    assert base["schedule"] == "edm"
    # identical seeds and budget: both runs start from the same weights and see the same batches
    a = torch.load(out / "infonoise" / "seed0" / "checkpoints" / "step0000010.ckpt", weights_only=False)
    b = torch.load(out / "edm" / "seed0" / "checkpoints" / "step0000010.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 10


# ---- bad input: one line, exit 2, nothing overwritten ---------------------------------------------


def one_line_error(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("multidiff: error:"), err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    recipe = str(REPO / "recipes" / "binary_digits.yaml")
    out = str(tmp_path / "x")
    msg = one_line_error(capsys, main(["train", recipe, "--schedule", "lognormal", "--out", out]))
    assert "unknown schedule 'lognormal'" in msg
    msg = one_line_error(capsys, main(["train", recipe, "--set", "train.lrr=1", "--out", out]))
    assert "train.lrr" in msg
    msg = one_line_error(capsys, main(["train", recipe, "--set", "schedule.warmpu=1", "--out", out]))
    assert "warmpu" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndomain: binary_image\ntrain: [1, 2\n")
    msg = one_line_error(capsys, main(["train", str(bad), "--out", out]))
    assert str(bad) in msg and "YAML" in msg
    bad.write_text("name: x\ndomain: binary_imag\n")
    assert "unknown domain" in one_line_error(capsys, main(["train", str(bad), "--out", out]))
    msg = one_line_error(capsys, main(["train", recipe, "--set", "data.source=fashion_mnist", "--set", f"data.path={tmp_path}", "--out", out]))
    assert "Fashion-MNIST not found" in msg
    msg = one_line_error(capsys, main(["train", recipe, "--set", f"data.path={tmp_path}/none.npy", "--out", out]))
    assert "none.npy not found" in msg
    msg = one_line_error(capsys, main(["train", recipe, "--precision", "bf17", "--out", out]))
    assert "precision=bf17" in msg
    if not torch.cuda.is_available():
        assert "accelerator=gpu" in one_line_error(capsys, main(["train", recipe, "--accelerator", "gpu", "--out", out]))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "multidiff.schedule", "version": 1}')
    msg = one_line_error(capsys, main(["train", recipe, "--schedule", str(corrupt), "--out", out]))
    assert str(corrupt) in msg and "missing field" in msg
    msg = one_line_error(capsys, main(["train", recipe, "--set", "eval.final_quality_samples=100", "--out", out]))
    assert "eval.final_quality_samples (100) must be at least eval.quality_samples (256)" in msg
    assert not (tmp_path / "x").exists()  # nothing was created by any of these
    assert one_line_error(capsys, main(["sample", str(tmp_path)])).endswith("(no recipe.yaml)")
    with pytest.raises(SystemExit) as exc:  # argparse errors are one line and status 2 too
        main(["train"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_existing_run_is_not_overwritten(run, capsys):
    before = (run / "eval.json").read_bytes(), (run / "checkpoints" / "last.ckpt").stat().st_mtime
    msg = one_line_error(capsys, main(tiny_train_args(run, steps=5)))
    assert "already exists" in msg and "--resume" in msg
    assert ((run / "eval.json").read_bytes(), (run / "checkpoints" / "last.ckpt").stat().st_mtime) == before


def test_nan_loss_stops_with_one_line_and_keeps_earlier_checkpoints(tmp_path, capsys):
    out = tmp_path / "nan"
    args = tiny_train_args(out, steps=40, extra=("train.grad_clip=null", "train.lr_warmup=1", "train.checkpoint_every=2"))
    assert main(args[:] + ["--set", "train.lr=1e30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0]
    for ckpt in (out / "checkpoints").glob("*.ckpt") if (out / "checkpoints").exists() else []:
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_console_script_reports_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "multidiff", "train", str(REPO / "recipes" / "binary_digits.yaml"), "--schedule", "nope", "--out", str(tmp_path / "y")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("multidiff: error: unknown schedule")


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly():
    """`multidiff schedule list | head -n 1`: no error message, no traceback (status 141, as a shell
    reports a writer whose reader went away)."""
    proc = subprocess.run(f"'{sys.executable}' -m multidiff schedule list | head -n 1; echo \"status ${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[1] in ("status 0", "status 141"), proc.stdout  # 0: everything fit in the pipe before head left
    assert proc.stderr == "", proc.stderr


def test_final_evaluation_draws_more_samples_and_keeps_the_curve_at_one_count(run, tmp_path):
    """With eval.final_quality_samples above eval.quality_samples, eval.json's final values score
    all the samples, while the quality curve's last point scores the first quality_samples of them:
    the same samples an evaluation at the curve's count draws (one seeded stream, a deterministic
    sampler), so the curve point equals that evaluation's value."""
    import yaml

    from multidiff.report.curves import final_values, metric_curves

    small = copy_run(run, tmp_path / "small")
    assert main(["eval", str(small)]) == 0
    at_curve_count = json.loads((small / "eval.json").read_text())
    large = copy_run(run, tmp_path / "large")
    recipe = yaml.safe_load((large / "recipe.yaml").read_text())
    recipe["eval"]["final_quality_samples"] = 256
    (large / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["eval", str(large)]) == 0
    ev = json.loads((large / "eval.json").read_text())
    assert (ev["quality_samples"], ev["final_quality_samples"]) == (64, 256)
    assert ev["quality_curve"]["fd"] == pytest.approx(at_curve_count["quality"]["fd"], rel=1e-6)
    assert ev["quality"]["fd"] != pytest.approx(ev["quality_curve"]["fd"], rel=1e-3)  # all 256 samples: another value
    assert ev["quality_noise"]["fd"]["values"][0] == ev["quality"]["fd"]
    curves = metric_curves(large)
    assert curves["fd"][1][-1] == ev["quality_curve"]["fd"]  # the curve keeps one sample count
    assert final_values(large, curves)["fd"] == ev["quality"]["fd"]  # the reports' final value uses all samples


def test_quality_noise_tool_reproduces_the_final_evaluations_noise(run):
    """tools/quality_noise.py at the run's own count and two sample seeds gives what the final
    evaluation recorded as the metric's noise (its mean and sd over the same two seeds)."""
    ev = json.loads((run / "eval.json").read_text())
    noise = ev["quality_noise"]["fd"]
    out = subprocess.run([sys.executable, str(REPO / "tools" / "quality_noise.py"), str(run), "--counts", "64", "--seeds", "2"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("| 64 |"))
    mean, sd = (float(x) for x in row.split("|")[2].split("±"))
    assert mean == pytest.approx(np.mean(noise["values"]), rel=1e-3)
    assert sd == pytest.approx(np.std(noise["values"], ddof=1), rel=0.05)  # printed to two digits
