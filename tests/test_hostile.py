"""A hostile-but-realistic user: what was already written is never lost or made wrong, every run file
has one writer, and bad input of any shape ends in one line and exit status 2 (or success).

Part 1 pins the data-loss cases one by one; part 2 the families closed by a mechanism (the bounded
text loader, bounded numbers, validated run files, the library's one error type); part 3 is a
property-style probe over generated recipes, ``--set`` values, schedule files and damaged run
directories, checking the promise as a whole.
"""
import json
import math
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_train_args

import multidiff
from multidiff.cli import main
from multidiff.files import LOCK_NAME, RunLock, atomic_write_text

RECIPE = REPO / "recipes" / "binary_digits.yaml"


def outcome(capsys, code: int) -> str:
    """The promise for one command: success, or exit 2 with exactly one line on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2), (code, err[-3:])
    if code == 2:
        assert len(err) == 1 and err[0].startswith("multidiff: error:"), err
        return err[0]
    return ""


def refused(capsys, code: int) -> str:
    assert code == 2
    return outcome(capsys, code)


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under path: its bytes and mode."""
    return {str(p.relative_to(path)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished InfoNoise run (6 steps, checkpoints at 3 and 6, refreshes in its history)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(run_args(out, steps=6)) == 0
    return out


def run_args(out: Path, steps: int) -> list[str]:
    """The finished run's own command line (with another step count)."""
    return tiny_train_args(out, steps=steps, extra=("train.checkpoint_every=3", "schedule.warmup=2", "schedule.refresh=2"))


def copy_of(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


# ---- 1. the data-loss cases ---------------------------------------------------------------------------


def test_schedule_show_never_plots_over_the_schedule_file(finished, tmp_path, capsys):
    shown = tmp_path / "S.png"  # a schedule file a user named .png
    shutil.copyfile(finished / "schedule.json", shown)
    before = shown.read_bytes()
    assert outcome(capsys, main(["schedule", "show", str(shown)])) == ""
    assert shown.read_bytes() == before
    assert (tmp_path / "S.png.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "schedule file being shown" in refused(capsys, main(["schedule", "show", str(shown), "-o", str(shown)]))
    assert "suffix matplotlib writes" in refused(capsys, main(["schedule", "show", str(shown), "-o", str(tmp_path / "p.xyz")]))
    assert shown.read_bytes() == before and not (tmp_path / "p.xyz").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert "no multidiff run" in refused(capsys, main(tiny_train_args(folder, steps=2) + ["--overwrite"]))
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_eval_and_sample_wait_for_the_process_that_holds_the_run(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    with RunLock(run):  # as a training of the run would hold it
        for argv in (["eval", str(run)], ["sample", str(run), "--n", "2"]):
            assert "in use by another multidiff process" in refused(capsys, main(argv))
    assert snapshot(run) == before


def test_a_one_domain_run_refuses_conditional_sampling_in_one_line(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for argv in (["sample", str(run), "--n", "2", "--given", "image=heldout"], ["sample", str(run), "--n", "2", "--only", "image"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--given/--only" in err and "'binary_image' is one modality" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


def test_resume_without_last_checkpoint_names_the_step_checkpoint_instead_of_retraining(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()
    before = snapshot(run)
    msg = refused(capsys, main(run_args(run, steps=6) + ["--resume"]))
    assert "last.ckpt is missing" in msg and "step0000006.ckpt" in msg
    assert snapshot(run) == before  # metrics.csv and the schedule history are still there


def test_resume_to_fewer_steps_than_trained_changes_nothing(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    msg = refused(capsys, main(run_args(run, steps=3) + ["--resume"]))
    assert "already at step 6" in msg and "--max-steps 6" in msg
    assert snapshot(run) == before


def test_eval_refuses_a_recipe_edited_to_another_schedule(finished, tmp_path, capsys):
    import yaml

    run = copy_of(finished, tmp_path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["schedule"] = {"name": "edm"}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    before = snapshot(run)
    msg = refused(capsys, main(["eval", str(run)]))
    assert "schedule.name" in msg and "infonoise" in msg
    # a checkpoint written before checkpoints recorded their recipe: the schedule state tells
    for name in ("last.ckpt",):
        ckpt = torch.load(run / "checkpoints" / name, weights_only=False)
        del ckpt["multidiff"]["recipe"]
        torch.save(ckpt, run / "checkpoints" / name)
    before = snapshot(run)
    assert "state of another schedule" in refused(capsys, main(["eval", str(run)]))
    assert snapshot(run) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomically_written_files_get_the_mode_of_any_new_file(finished, tmp_path):
    fresh = 0o666 & ~_umask()
    for name in ("recipe.yaml", "eval.json", "schedule.json", "timing.json", "checkpoints/last.ckpt"):
        assert stat.S_IMODE((finished / name).stat().st_mode) == fresh, name
    kept = tmp_path / "shared.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    atomic_write_text(kept, "{ }")  # replacing a file keeps its mode
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "{ }"


# ---- 2. the families, each closed by one mechanism --------------------------------------------------


HOSTILE_YAML = {
    "duplicate key": ("seed: 0\nseed: 1\n", "appears twice"),
    "key read as a boolean": ("on: 1\n", "not a string"),
    "number key": ("3: 2\n", "not a string"),
    "deep nesting": ("data: " + "[" * 200 + "]" * 200 + "\n", "nests deeper"),
    "alias bomb": ("".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else '1'}]\n" for i in range(8)), "expands to more than"),
}


@pytest.mark.parametrize("case", list(HOSTILE_YAML))
def test_a_legal_but_hostile_recipe_is_refused_before_anything_exists(case, tmp_path, capsys):
    text, message = HOSTILE_YAML[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + text if case != "deep nesting" else text)
    msg = refused(capsys, main(["train", str(recipe), "--out", str(tmp_path / "out")]))
    assert message in msg and str(recipe) in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting,message", [
    ("seed=-1", ": seed must be an integer in [0, "), (f"seed={2**40}", "seed must be an integer in [0, "),
    ("sample.seed=-3", "sample.seed"), ("eval.nelbo_seed=99999999999", "eval.nelbo_seed"),
    ("eval.quality_samples=1", "a distance between sample sets needs two"), ("train.batch_size=1000000000", "train.batch_size"),
    ("sample.steps=100000000", "sample.steps"), ("diffusion.sigma_max=1e300", "diffusion.sigma_max"),
    ("diffusion.sigma_data=.nan", "diffusion.sigma_data"), ("diffusion.sigma_data=1e-300", "diffusion.sigma_data"),
])  # fmt: skip
def test_numbers_are_bounded_by_what_they_feed(setting, message, tmp_path, capsys):
    msg = refused(capsys, main(tiny_train_args(tmp_path / "out", steps=2, extra=(setting,))))
    assert message in msg
    assert not (tmp_path / "out").exists()


def test_compare_bounds_its_seed_count(tmp_path, capsys):
    assert "--seeds must be a count between 1 and" in refused(capsys, main(["compare", str(RECIPE), "--schedules", "edm", "--seeds", "1000000",
                                                                     "--out", str(tmp_path / "c")]))  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_resume_names_a_damaged_run_file_before_changing_anything(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    with (run / "metrics.csv").open("a") as f:
        f.write("garbage,,,\n")
    before = snapshot(run)
    msg = refused(capsys, main(run_args(run, steps=8) + ["--resume"]))
    assert "metrics.csv is damaged at line" in msg
    assert snapshot(run) == before
    (run / "metrics.csv").write_bytes(before["metrics.csv"][0].replace(b"garbage,,,\n", b""))
    (run / "timing.json").write_text("{not json")
    assert "timing.json" in refused(capsys, main(run_args(run, steps=8) + ["--resume"]))


def test_a_stray_file_in_the_schedule_history_is_left_alone(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    stray = run / "schedule_history" / "step-notes.json"
    stray.write_text("my notes")
    assert outcome(capsys, main(run_args(run, steps=6) + ["--resume"])) == ""
    assert stray.read_text() == "my notes"


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    made = tmp_path / "new" / "run"
    lock = RunLock(made).acquire()
    lock.release()
    assert not made.exists()  # the lock made it and nothing else was written
    kept = tmp_path / "kept"
    with RunLock(kept):
        (kept / "recipe.yaml").write_text("name: x\n")
    assert sorted(p.name for p in kept.iterdir()) == [LOCK_NAME, "recipe.yaml"]


def _library_calls():
    from multidiff import DDPM, LogSNR, interop, make_schedule

    ddpm = DDPM(torch.linspace(0.999, 0.01, 100))
    ok = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, weighting="edm")
    sched = make_schedule("infonoise", **ok)
    return {
        "σ_data 0": lambda: make_schedule("edm", **{**ok, "sigma_data": 0.0}),
        "σ_data NaN": lambda: make_schedule("edm", **{**ok, "sigma_data": math.nan}),
        "σ_data inf": lambda: make_schedule("edm", **{**ok, "sigma_data": math.inf}),
        "σ range beyond float32": lambda: make_schedule("edm", **{**ok, "sigma_max": 1e30}),
        "unknown weighting": lambda: make_schedule("edm", **{**ok, "weighting": "mse"}),
        "unknown schedule": lambda: make_schedule("nope", **ok),
        "observe σ ≤ 0": lambda: sched.observe(torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.1])),
        "observe negative error": lambda: sched.observe(torch.tensor([0.5, 1.0]), torch.tensor([0.1, -0.1])),
        "fractional DDPM timestep": lambda: ddpm.logsnr(torch.tensor([2.5])),
        "negative DDPM timestep": lambda: ddpm.logsnr(torch.tensor([-1])),
        "DDPM timestep past the end": lambda: ddpm.logsnr(torch.tensor([100])),
        "logSNR range with infinite σ": lambda: LogSNR(lam_min=-2000.0).make_schedule("edm", target="eps"),
        "parameterization σ_data NaN": lambda: DDPM(torch.linspace(0.999, 0.01, 10), sigma_data=math.nan),
        "interop grid not descending": lambda: interop.for_k_diffusion([1.0, 2.0, 0.0]),
    }


@pytest.mark.parametrize("case", list(_library_calls()))
def test_the_library_refuses_bad_arguments_with_its_one_error_type(case):
    call = _library_calls()[case]
    with pytest.raises(multidiff.UserError) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_a_legal_range_never_gives_an_infinite_sigma():
    from multidiff import LogSNR, VPTime, make_schedule

    g = torch.Generator().manual_seed(0)
    for sched in (make_schedule("loguniform", sigma_min=1e-12, sigma_max=1e12, sigma_data=1.0, weighting="edm"),
                  LogSNR(lam_min=-50.0, lam_max=50.0).make_schedule("loguniform", target="eps").schedule,
                  VPTime().make_schedule("edm", target="eps").schedule):  # fmt: skip
        sigma = sched.sample(4096, g)
        assert torch.isfinite(sigma).all() and (sigma > 0).all() and torch.isfinite(sigma.double() ** 2).all()


# ---- 3. the probe ---------------------------------------------------------------------------------------


HOSTILE_VALUES = ["-1", "0", "1e400", "-1e-300", "1e30", "nan", ".inf", "[]", "{}", "null", "true", "'x'", "[[[[1]]]]",
                  str(2**64), "2.5", "{a: {b: {c: 1}}}", "'" + "x" * 300 + "'", "[1, 2, 3]", "0x10", "1_000"]  # fmt: skip


def _recipe_keys() -> list[str]:
    from multidiff.recipe import flatten, load_recipe_file, resolve

    return sorted(flatten(resolve(load_recipe_file(RECIPE), str(RECIPE))))


def test_probe_generated_recipes_and_set_values_succeed_or_fail_in_one_line(tmp_path, capsys):
    """Random keys of the resolved recipe (and unknown ones) set to hostile values, through a recipe
    file and through --set; --print-recipe runs every check a run makes before its directory exists."""
    rng = random.Random(27)
    keys = _recipe_keys() + ["train.nope", "data.nope", "schedule.nope", "nope"]
    outcomes = {0: 0, 2: 0}
    for i in range(40):
        key, value = rng.choice(keys), rng.choice(HOSTILE_VALUES)
        args = ["train", str(RECIPE), "--print-recipe", "--set", f"{key}={value}", "--set", "model.channels=8"]
        if i % 2:  # the same value written into a recipe file instead
            recipe = tmp_path / f"r{i}.yaml"
            recipe.write_text(RECIPE.read_text() + f"\n# probe\n{_nested(key, value)}")
            args = ["train", str(recipe), "--print-recipe"]
        before = sorted(tmp_path.rglob("*"))
        code = main(args)
        outcome(capsys, code)
        outcomes[code] += 1
        assert sorted(tmp_path.rglob("*")) == before  # --print-recipe writes nothing
    assert outcomes[2] >= 20  # most hostile values are refused


def _nested(key: str, value: str) -> str:
    """`a.b.c=v` as a YAML block (appended, so a key the recipe already has appears twice: refused)."""
    parts = key.split(".")
    return "".join("  " * d + f"{p}:\n" for d, p in enumerate(parts[:-1])) + "  " * (len(parts) - 1) + f"{parts[-1]}: {value}\n"


SCHEDULE_DAMAGE = [
    ("pdf", lambda d: [0.0] * len(d["pdf"])), ("pdf", lambda d: [-x for x in d["pdf"]]), ("u", lambda d: d["u"][::-1]),
    ("cdf", lambda d: d["cdf"][:-1]), ("sigma_min", lambda d: 0), ("sigma_max", lambda d: 1e400), ("version", lambda d: 99),
    ("sampling", lambda d: {"u": [0.0, 1.0], "density": [0.0, 0.0]}), ("gate", lambda d: {"c": -1}), ("profile", lambda d: [1]),
    ("step", lambda d: -5), ("notes", lambda d: "text"), ("method", lambda d: ""), ("u", lambda d: "abc"),
]  # fmt: skip


def test_probe_damaged_schedule_files_succeed_or_fail_in_one_line(finished, tmp_path, capsys):
    good = json.loads((finished / "schedule.json").read_text())
    rng = random.Random(7)
    for i, (field, damage) in enumerate(SCHEDULE_DAMAGE + [rng.choice(SCHEDULE_DAMAGE) for _ in range(6)]):
        data = dict(good)
        data[field] = damage(good)
        path = tmp_path / f"s{i}.json"
        text = json.dumps(data) if i < len(SCHEDULE_DAMAGE) else json.dumps(data)[: rng.randrange(10, 400)]  # truncated too
        path.write_text(text)
        for argv in (["schedule", "show", str(path), "-o", str(tmp_path / "p.png")], ["schedule", "sigmas", str(path), "--steps", "4"],
                     ["train", str(RECIPE), "--print-recipe", "--schedule", str(path)]):  # fmt: skip
            outcome(capsys, main(argv))
            assert path.read_text() == text


RUN_DAMAGE = {
    "metrics.csv garbage line": lambda run: (run / "metrics.csv").open("a").write("x,y\n\0\n"),
    "refreshes.csv truncated": lambda run: (run / "schedule_history/refreshes.csv").write_text("ste"),
    "eval.json not json": lambda run: (run / "eval.json").write_text("{"),
    "eval.json a list": lambda run: (run / "eval.json").write_text("[1]"),
    "timing.json duplicate keys": lambda run: (run / "timing.json").write_text('{"fit_s": 1, "fit_s": 2}'),
    "recipe.yaml deep": lambda run: (run / "recipe.yaml").write_text("name: " + "[" * 500 + "]" * 500),
    "recipe.yaml edited seed": lambda run: (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("seed: 0", "seed: 5")),
    "last.ckpt empty": lambda run: (run / "checkpoints/last.ckpt").write_bytes(b""),
    "last.ckpt gone": lambda run: (run / "checkpoints/last.ckpt").unlink(),
    "stray snapshot name": lambda run: (run / "schedule_history/stepXYZ.json").write_text("?"),
    "schedule.json damaged": lambda run: (run / "schedule.json").write_text("[]"),
    "data artifact gone": lambda run: [p.unlink() for p in run.glob("*.json") if p.name not in ("eval.json", "timing.json", "schedule.json")],
}  # fmt: skip
#: what each command's job is to change (anything else must stay byte for byte)
JOBS = {"eval": ("eval.json", "timing.json", "samples/"), "sample": ("samples/",), "resume": None}


@pytest.mark.parametrize("damage", list(RUN_DAMAGE))
def test_probe_damaged_run_directories_succeed_or_fail_in_one_line_and_keep_what_exists(damage, finished, tmp_path, capsys):
    for command in JOBS:
        run = tmp_path / command
        shutil.copytree(finished, run)
        RUN_DAMAGE[damage](run)
        before = snapshot(run)
        argv = {"eval": ["eval", str(run)], "sample": ["sample", str(run), "--n", "2"],
                "resume": run_args(run, steps=6) + ["--resume"]}[command]  # fmt: skip
        code = main(argv)
        outcome(capsys, code)
        after = snapshot(run)
        if code == 2:
            assert after == before, f"{damage}: a refused {command} changed the run"
        elif JOBS[command] is not None:
            changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            assert all(k.startswith(JOBS[command]) for k in changed), (damage, command, changed)
