"""Every run is a group of modalities; a one-domain run is a group of one, and a group of one is
exactly its member: the same draws, losses, refresh records, checkpoint state and file names as
the member alone, so shared code never tells the two apart."""
import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_schedules import CTX, learned_infonoise, prepared_crs

from multidiff.diffusion.model import ContinuousDiffusion
from multidiff.domains.base import Domain
from multidiff.domains.group import ModalityGroup, SingleModality, modality_group
from multidiff.domains.registry import DOMAINS, get_domain
from multidiff.recipe import per_modality, recorded, schedule_specs
from multidiff.rundir import RunDir, schedule_file_names
from multidiff.schedules.group import ScheduleGroup
from multidiff.schedules.registry import build_schedule


def _feed(schedule, steps=3, seed=0):
    """Observe smooth errors at the schedule's own draws (σ [B], or [B, 1] from a group of one) and
    refresh after each step; the refresh records."""
    records = []
    for step in range(1, steps + 1):
        s = schedule.sample(2048, torch.Generator().manual_seed(seed + step))
        e = s**2 / (1 + s**2)
        schedule.observe(s, e, e * (s**2 + 1) / s**2)
        records.append(schedule.refresh(step))
    return records


@pytest.mark.parametrize("make", [lambda: build_schedule("infonoise", {"warmup": 0, "refresh": 1}, CTX),
                                  lambda: build_schedule("edm", {}, CTX), lambda: learned_infonoise(),
                                  lambda: build_schedule("timewarp", {"warmup": 0, "refresh": 1}, CTX)],
                         ids=["infonoise", "edm", "infonoise(learned)", "timewarp"])  # fmt: skip
def test_a_group_of_one_draws_learns_and_saves_exactly_as_its_member(make):
    alone, member = make(), make()
    group = ScheduleGroup({"binary_image": member})
    a, g = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    drawn = group.sample(64, g)
    assert drawn.shape == (64, 1) and torch.equal(drawn[:, 0], alone.sample(64, a))
    assert _feed(group) == _feed(alone)  # the same refresh records, unprefixed
    assert group.name == alone.name and group.notes() == alone.notes()
    state = group.state_dict()
    assert state.keys() == alone.state_dict().keys()  # a checkpoint holds the member's state, as before
    assert np.array_equal(group.tables()["binary_image"].pdf, alone.to_table().pdf)
    fresh = ScheduleGroup({"binary_image": make()})
    fresh.load_state_dict(copy.deepcopy(state))
    assert np.array_equal(fresh.tables()["binary_image"].pdf, alone.to_table().pdf)


def test_a_group_of_one_lends_its_member_the_probe_and_a_group_of_several_refuses_it():
    crs = build_schedule("crs", {"measure": "x0"}, CTX)
    assert crs.probe_examples > 0
    assert ScheduleGroup({"text": crs}).probe_examples == crs.probe_examples
    with pytest.raises(ValueError, match="probe"):
        ScheduleGroup({"a": build_schedule("crs", {"measure": "x0"}, CTX), "b": build_schedule("edm", {}, CTX)})
    assert ScheduleGroup({"a": prepared_crs()}).sole("a grid") is not None
    with pytest.raises(ValueError, match="one per modality"):
        ScheduleGroup({"a": build_schedule("edm", {}, CTX), "b": build_schedule("edm", {}, CTX)}).sole("a grid")


def test_a_one_modality_model_returns_its_loss_as_one_column():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = net

        def forward(self, x, c_noise):
            return self.conv(x)

    model = ContinuousDiffusion(Net(), sigma_data=0.7)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    sigma = torch.exp(torch.randn(8, 1, generator=g))
    weight = CTX.weight
    single = model.loss(x, sigma[:, 0], noise, weight, None)
    group = model.modality_loss(x, sigma, noise, {"binary_image": weight}, None)
    assert group.loss.shape == (8, 1) and torch.equal(group.loss[:, 0], single.loss) and torch.equal(group.error[:, 0], single.error)
    assert torch.equal(group.loss.sum(1).mean(), single.loss.mean())  # the step's loss, bit for bit
    assert model.modality_parts(x)[0] is x


def test_a_recipe_records_a_group_of_one_in_its_flat_form():
    flat = {"domain": "binary_image", "schedule": {"name": "infonoise", "bins": 32}}
    specs = schedule_specs(flat)
    assert specs == {"binary_image": {"name": "infonoise", "bins": 32}}
    assert recorded(specs) == flat["schedule"]
    joint = {"domain": "joint", "schedule": {"image": {"name": "edm"}, "audio": {"name": "infonoise"}}}
    assert recorded(schedule_specs(joint)) == joint["schedule"]
    assert per_modality(0.5, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert per_modality({"a": 0.5}, ["a", "b"]) == {"a": 0.5, "b": None}
    assert recorded({"binary_image": 0.46}) == 0.46 and recorded({"a": 1.0, "b": 2.0}) == {"a": 1.0, "b": 2.0}


def test_a_group_of_one_keeps_the_plain_schedule_file_names(tmp_path):
    assert schedule_file_names(["binary_image"]) == {"binary_image": "schedule.json"}
    assert schedule_file_names(["image", "audio"], "step0000010") == {"image": "step0000010.image.json",
                                                                     "audio": "step0000010.audio.json"}  # fmt: skip
    run = RunDir(tmp_path)
    run.recipe.write_text("name: x\ndomain: text\n")
    run.schedule_file().write_text("{}")
    assert run.schedule_files() == {"text": run.schedule_file()}
    assert run.schedule_paths(["text"]) == {"text": run.schedule_file()}


def test_only_a_group_knows_about_several_modalities(tmp_path):
    for hook in ("modalities", "modality_domain", "model_metrics", "extra_nelbo", "condition", "conditional_sampling"):
        assert not hasattr(Domain, hook), f"Domain.{hook} belongs to ModalityGroup"
        assert hasattr(ModalityGroup, hook)
    for name in DOMAINS:
        cls = get_domain(name)
        if issubclass(cls, ModalityGroup):
            continue  # composes others (the joint tests cover it)
        group = modality_group(cls({"data": {}, "model": {}, "seed": 0}, tmp_path))
        assert isinstance(group, SingleModality) and group.modalities() == [name] and group.modality_domain(name) == name
        assert not group.conditional_sampling and group.model_metrics(None, None, None, 0) == {}


def test_shared_code_never_tells_one_modality_from_several():
    """The trainer, the pipeline, the plans, the recipe and the report go through the group: no blank
    modality key, no σ_data that is a number here and a mapping there, no loss-shape branch."""
    root = Path(__file__).resolve().parent.parent / "multidiff"
    shared = [*root.glob("pipeline/*.py"), *root.glob("train/*.py"), *root.glob("report/*.py"),
              root / "plans.py", root / "recipe.py", root / "rundir.py"]  # fmt: skip
    smells = [re.compile(p) for p in (r'[\w\])]\[""\]', r'"" in ', r"isinstance\([^)]*sigma_data", r"\.ndim == 2", r"modalities\(\) or")]
    found = [f"{path.name}: {m.group(0)}" for path in shared for pattern in smells for m in pattern.finditer(path.read_text())]
    assert not found, found
