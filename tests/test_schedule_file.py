"""The schedule file: export → load round trips, and each kind of corruption has its own message."""
import json

import pytest
import torch
from test_schedules import CTX, learned_infonoise

from multidiff.errors import UserError
from multidiff.schedules.base import ScheduleContext
from multidiff.schedules.io import load_schedule_file, save_schedule_file
from multidiff.schedules.registry import build_schedule

META = {"domain": "binary_image", "dataset": "digits", "sigma_data": 1.0, "weighting": "edm"}


@pytest.fixture
def good(tmp_path):
    table = learned_infonoise().to_table()
    table.step = 123
    return save_schedule_file(tmp_path / "s.json", table, META)


def test_round_trip_gives_the_same_density(tmp_path, good):
    original = learned_infonoise()
    frozen = build_schedule(str(good), {}, CTX)
    u = torch.linspace(CTX.u_min, CTX.u_max, 777)
    assert torch.allclose(frozen.pdf(u), original.pdf(u), rtol=1e-6, atol=1e-7)
    q = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frozen.icdf(q), original.icdf(q), atol=1e-5)
    loaded = load_schedule_file(good)
    assert loaded.table.step == 123 and loaded.meta["dataset"] == "digits"
    assert loaded.table.profile["rate"] == original.to_table().profile["rate"]
    assert good.stat().st_size < 100_000


def test_fixed_schedule_export_matches_closed_form(tmp_path):
    edm = build_schedule("edm", {}, CTX)
    path = save_schedule_file(tmp_path / "edm.json", edm.to_table(512), META)
    frozen = build_schedule(str(path), {}, CTX)
    u = torch.linspace(CTX.u_min, CTX.u_max, 300)
    assert torch.allclose(frozen.pdf(u), edm.pdf(u), atol=2e-4)


def corrupt(data):
    yield "format", lambda d: d.update(format="something.else"), "field 'format'"
    yield "version", lambda d: d.update(version=7), "field 'version'"
    yield "missing", lambda d: d.pop("pdf"), "missing field 'pdf'"
    yield "lengths", lambda d: d.update(pdf=d["pdf"][:-1]), "field 'pdf' has"
    yield "not numbers", lambda d: d.update(u=["a"] * len(d["u"])), "field 'u' must be a list of numbers"
    yield "increasing", lambda d: d["u"].__setitem__(5, d["u"][4]), "field 'u' must be strictly increasing"
    yield "span", lambda d: d.update(sigma_min=0.001), "must span"
    yield "negative", lambda d: d["pdf"].__setitem__(3, -1.0), "field 'pdf' has negative values"
    yield "monotone", lambda d: d["cdf"].__setitem__(10, 0.9), "field 'cdf' is not monotone"
    yield "ends", lambda d: d.update(cdf=[0.5 * c for c in d["cdf"]]), "must run from 0 to 1"
    yield "inconsistent", lambda d: d.update(pdf=[2 * p for p in d["pdf"]]), "inconsistent"
    yield "sigma", lambda d: d.update(sigma_max=-1), "field 'sigma_max'"
    yield "profile", lambda d: d["profile"]["rate"].pop(), "field 'profile.rate' has 95 values but 'profile.u' has 96"
    yield "gate", lambda d: d["gate"].update(c=0), "field 'gate.c'"
    # each of these passed `schedule show` before (or raised a traceback)
    yield "step", lambda d: d.update(step="abc"), "field 'step' must be a non-negative integer"
    yield "method", lambda d: d.update(method=None), "field 'method' must be a non-empty string"
    yield "short profile", lambda d: d.update(profile={"rate": [1.0, 2.0]}), "field 'profile.rate' has 2 values but 'u' has"
    yield "gate n", lambda d: d["gate"].update(n="x"), "field 'gate.n'"


CASES = list(corrupt(None))


@pytest.mark.parametrize("label,mutate,message", CASES, ids=[c[0] for c in CASES])
def test_each_corruption_is_refused_with_its_own_message(tmp_path, good, label, mutate, message):
    data = json.loads(good.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_schedule_file(bad)
    assert message in str(err.value) and str(bad) in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_schedule_file(tmp_path / "nope.json")
    (tmp_path / "trunc.json").write_text('{"format": "multidiff.sched')
    with pytest.raises(UserError, match="not valid JSON"):
        load_schedule_file(tmp_path / "trunc.json")
    (tmp_path / "nan.json").write_text('{"format": "multidiff.schedule", "u": [NaN]}')
    with pytest.raises(UserError, match="non-finite"):
        load_schedule_file(tmp_path / "nan.json")


def test_file_range_must_match_the_recipe(good):
    other = ScheduleContext(0.01, 80.0)
    with pytest.raises(UserError, match="covers σ in"):
        build_schedule(str(good), {}, other)


def test_unknown_schedule_and_parameter_are_user_errors():
    with pytest.raises(UserError, match="unknown schedule 'lognormal'"):
        build_schedule("lognormal", {}, CTX)
    with pytest.raises(UserError, match="has no parameter 'warmpu'"):
        build_schedule("infonoise", {"warmpu": 3}, CTX)
    with pytest.raises(UserError, match="schedule.warmup must be an integer"):
        build_schedule("infonoise", {"warmup": "soon"}, CTX)
    with pytest.raises(UserError, match="floor"):
        build_schedule("infonoise", {"floor": 1.5}, CTX)


def test_the_file_carries_the_sampling_density_and_older_files_still_give_the_infogrid(tmp_path, good):
    import json

    import numpy as np

    from multidiff.schedules.grids import from_schedule

    data = json.loads(good.read_text())
    prof, gate = data["profile"], data["gate"]
    info = np.asarray(prof["rate"]) * np.asarray(prof["gate"])  # the gated rate, as the schedule exported it
    assert np.allclose(data["sampling"]["density"][1:-1], info) and data["sampling"]["u"][1:-1] == prof["u"]
    assert any("gate" in note for note in data["notes"])
    new = from_schedule(str(good), 12)
    del data["sampling"]  # a file written before the field existed
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert gate["c"] > 0 and torch.allclose(from_schedule(str(old), 12), new, rtol=1e-5)
