"""`multidiff compare` as a user runs it: several schedules × seeds, a report, reuse of finished
runs, and one-line refusals of bad input."""
import json
import re

import pytest
from conftest import REPO, tiny_train_args
from PIL import Image

from multidiff.cli import main
from multidiff.report.compare_report import evaluation_notes
from multidiff.schedules.registry import REGISTRY


def compare_args(out, schedules="edm,crs,cosine", steps=10, extra=()):
    """The tiny training settings of tiny_train_args, for `compare`."""
    train = tiny_train_args(out, steps=steps)
    flags = train[train.index("--max-steps") + 2 :]  # "--set", "KEY=V" pairs
    sets = [kv for kv in flags[1::2] if not kv.startswith(("schedule.bins", "schedule.min_count"))] + list(extra)
    args = ["compare", str(REPO / "recipes" / "binary_digits.yaml"), "--schedules", schedules,
            "--max-steps", str(steps), "--out", str(out)]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "digits"
    assert main(compare_args(out, extra=("schedule.bins=16",)) + ["--seeds", "2"]) == 0
    return out


def test_compare_writes_a_report_over_schedules_and_seeds(campaign):
    md = (campaign / "report.md").read_text()
    for label in ("edm", "crs", "cosine"):
        assert f"| {label} |" in md
        for seed in (0, 1):
            assert (campaign / label / f"seed{seed}" / "eval.json").is_file()
    assert "±" in md and "speedup" in md.lower() and "Fréchet distance" in md
    head = next(line for line in md.splitlines() if "density peak σ" in line).split(" | ")
    edm_row = next(line for line in md.splitlines() if line.startswith("| edm |")).split(" | ")
    float(edm_row[head.index("density peak σ")])  # one modality: a bare σ, not labelled by its domain
    for png in ("curves.png", "densities.png", "profiles.png"):
        assert Image.open(campaign / png).size[0] > 300, png
        assert f"({png})" in md
    summary = json.loads((campaign / "summary.json").read_text())
    assert summary["baseline"] == "edm" and summary["seeds"] == [0, 1]
    crs = summary["schedules"]["crs"]["metrics"]
    evals = [json.loads((campaign / "crs" / f"seed{s}" / "eval.json").read_text()) for s in (0, 1)]
    assert crs["nelbo"]["final"] == [e["nelbo"] for e in evals]  # every per-seed value is kept
    assert crs["nelbo"]["mean"] == pytest.approx(sum(e["nelbo"] for e in evals) / 2)  # the mean over seeds
    assert crs["fd"]["final"] == [e["quality"]["fd"] for e in evals]
    for key in ("nelbo", "fd"):  # a speedup and a paired difference per metric, with per-seed values
        assert len(crs[key]["speedup_per_seed"]) == 2 and set(crs[key]["speedup"]) >= {"mean", "interval", "verdict"}
        assert len(crs[key]["difference"]["diffs"]) == 2
    assert "speedup" not in summary["schedules"]["edm"]["metrics"]["nelbo"]  # the baseline is not raced against itself
    # the schedule.KEY override reached the schedule that has the key (crs), and only it
    recipe = (campaign / "crs" / "seed0" / "recipe.yaml").read_text()
    assert "bins: 16" in recipe and "bins" not in (campaign / "edm" / "seed0" / "recipe.yaml").read_text()
    # same initial weights and data order: seed 0 runs differ only by their schedule
    assert "seed: 1" in (campaign / "edm" / "seed1" / "recipe.yaml").read_text()


def test_compare_reuses_finished_runs_and_resumes_unfinished_ones(campaign, capsys):
    ckpt = campaign / "edm" / "seed0" / "checkpoints" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    (campaign / "cosine" / "seed1" / "eval.json").unlink()  # as if it stopped before its evaluation
    capsys.readouterr()
    assert main(compare_args(campaign, extra=("schedule.bins=16",)) + ["--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 5 and "cosine seed 1: resuming" in out
    assert ckpt.stat().st_mtime_ns == stamp  # not retrained
    assert (campaign / "cosine" / "seed1" / "eval.json").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--schedules", "edm,edm"], "appears twice"),
        (["--schedules", "edm,nosuch"], "unknown schedule 'nosuch'"),
        (["--seeds", "0"], "--seeds"),
        (["--baseline", "laplace"], "--baseline laplace"),
        (["--set", "schedule.nosuch=1"], "schedule.nosuch"),
        (["--set", "train.lr=0.5"], "different recipe"),
        (["--max-steps", "5"], "more than --max-steps 5"),
    ],
)
def test_compare_bad_input_is_one_line_and_exit_2(campaign, capsys, change, message):
    args = compare_args(campaign, extra=("schedule.bins=16",))
    if change[0] == "--schedules":
        args[args.index("--schedules") + 1] = change[1]
    else:
        args += change
    before = sorted(p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file())
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file()) == before  # nothing touched


def test_schedule_list_names_every_schedule(capsys):
    assert main(["schedule", "list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert f"\n{name} " in "\n" + out
    assert "measure = fd" in out and "patience = 200" in out and "function = sigmoid" in out


def test_schedule_variants_and_a_shared_pool_of_runs(tmp_path, capsys):
    pool, a, b = tmp_path / "pool", tmp_path / "report-a", tmp_path / "report-b"
    args = compare_args(a, schedules="edm,infonoise:allocation=density:warmup=2", steps=4) + ["--runs", str(pool)]
    assert main(args) == 0
    variant = pool / "infonoise-allocation=density-warmup=2" / "seed0"
    recipe = (variant / "recipe.yaml").read_text()
    assert "allocation: density" in recipe and "warmup: 2" in recipe
    md = (a / "report.md").read_text()
    assert "| infonoise-allocation=density-warmup=2 |" in md
    assert not (a / "edm").exists()  # the runs live in the pool, the report where --out says
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert any("final.png" in link for link in links)
    for link in links:  # every link resolves from the report's folder, runs elsewhere included
        assert not link.startswith("/") and (a / link).exists(), link  # relative: the folders can move together
    capsys.readouterr()
    assert main(compare_args(b, schedules="edm", steps=4) + ["--runs", str(pool)]) == 0
    assert "reusing" in capsys.readouterr().out  # a second report over the same runs trains nothing
    assert (b / "report.md").is_file()
    msg = main(compare_args(b, schedules="edm,infonoise:allocation", steps=4) + ["--runs", str(pool)])
    assert msg == 2 and ":KEY=VALUE" in capsys.readouterr().err


def test_measured_sigma_data_of_every_modality_does_not_block_reuse():
    """A joint run records σ_data per modality (a dict); a plan that measures it (None) may reuse the run,
    while any other nested difference still counts."""
    from multidiff.recipe import differences

    stored = {"diffusion": {"sigma_data": {"image": 1.0, "audio": 0.99}, "sigma_max": 80.0}}
    asked = {"diffusion": {"sigma_data": None, "sigma_max": 80.0}}
    assert differences(stored, asked, frozenset({"diffusion.sigma_data"})) == []
    assert differences(stored, asked, frozenset()) == ["diffusion.sigma_data.audio", "diffusion.sigma_data.image"]
    other = {"diffusion": {"sigma_data": None, "sigma_max": 40.0}}
    assert differences(stored, other, frozenset({"diffusion.sigma_data"})) == ["diffusion.sigma_max"]


def test_evaluation_notes_say_which_schedule_each_belongs_to():
    evals = {"edm": {"notes": ["unit: bits", "labels: 3 3 4"]}, "infonoise": {"notes": ["unit: bits", "labels: 9 9 9"]}}
    assert evaluation_notes(evals) == ["unit: bits", "edm: labels: 3 3 4", "infonoise: labels: 9 9 9"]
    assert evaluation_notes({"edm": {}, "crs": {"notes": ["x"]}}) == ["crs: x"]


def test_the_report_races_every_schedule_against_the_strongest_fixed_one(campaign):
    """edm and cosine are fixed, crs learns from data: per metric the fixed one with the better mean
    final value is the yardstick, and the others' paired differences to it are its finals subtracted."""
    summary = json.loads((campaign / "summary.json").read_text())
    assert summary["fixed"] == ["edm", "cosine"]
    schedules = summary["schedules"]
    for key, spec in summary["metrics"].items():
        if spec["lower"] is None:
            assert key not in summary["strongest_fixed"]
            continue
        means = {label: schedules[label]["metrics"][key]["mean"] for label in ("edm", "cosine")}
        best = min(means, key=means.get) if spec["lower"] else max(means, key=means.get)
        assert summary["strongest_fixed"][key] == best
        assert "vs_strongest_fixed" not in schedules[best]["metrics"][key]
        for label in set(schedules) - {best}:
            race = schedules[label]["metrics"][key]["vs_strongest_fixed"]
            assert race["schedule"] == best
            own, ref = schedules[label]["metrics"][key]["final"], schedules[best]["metrics"][key]["final"]
            assert race["difference"]["diffs"] == pytest.approx([a - b for a, b in zip(own, ref)])
            assert len(race["speedup_per_seed"]) == 2
    md = (campaign / "report.md").read_text()
    section = md[md.index("## Against the strongest fixed schedule"):]
    assert f"| crs | NELBO (bits/pixel) | {summary['strongest_fixed']['nelbo']} |" in section


def test_readme_tables_show_the_race_against_the_strongest_fixed_schedule(campaign, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "tools" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    monkeypatch.setattr(tables, "OUT", campaign.parent)
    text = tables.table(campaign.name)
    summary = json.loads((campaign / "summary.json").read_text())
    best = summary["strongest_fixed"]["nelbo"]
    head = text.splitlines()[0].split(" | ")
    column = head.index(f"NELBO (bits/pixel) against the strongest fixed ({best})")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:] if line.startswith("| ")}
    assert rows[best][column].strip(" |") == "itself"
    race = summary["schedules"]["crs"]["metrics"]["nelbo"]["vs_strongest_fixed"]
    assert rows["crs"][column].startswith(f"Δ {race['difference']['mean']:+.3g}")
