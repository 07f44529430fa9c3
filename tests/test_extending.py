"""What docs/extending.md promises: a new schedule is one class plus one registry line, and the
tests parametrized over the registry, the recipe path and the command line pick it up."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import test_schedules
import torch
from scipy import stats

from multidiff.schedules import bases, registry
from multidiff.schedules.fixed import ClosedForm


@dataclass
class LogisticParams:
    """ln σ − ln σ_data ~ Logistic(mu, s)."""

    mu: float = 0.0
    s: float = 0.6


class Logistic(ClosedForm):
    """A toy fixed family: logistic in ln σ relative to σ_data."""

    name = "logistic"

    def __init__(self, ctx, params=None):
        super().__init__(ctx, params or LogisticParams())
        self.mu, self.s = float(self.params.mu), float(self.params.s)
        self._setup()

    def _cdf(self, v):
        return torch.sigmoid((v - self.mu) / self.s)

    def _pdf(self, v):
        c = torch.sigmoid((v - self.mu) / self.s)
        return c * (1 - c) / self.s

    def _icdf(self, q):
        return self.mu + self.s * torch.log(q / (1 - q))


@pytest.fixture
def registered(monkeypatch):
    spec = registry.ScheduleSpec("logistic", Logistic, LogisticParams, "toy: logistic in ln σ")
    monkeypatch.setitem(registry.REGISTRY, "logistic", spec)
    monkeypatch.setitem(bases.FIXED, "logistic", Logistic)
    monkeypatch.setattr(test_schedules, "SCHEDULES", test_schedules.all_schedules())
    return spec


def test_the_registry_parametrized_contract_tests_cover_a_new_entry(registered):
    assert "logistic" in test_schedules.SCHEDULES
    test_schedules.test_samples_follow_pdf("logistic")
    test_schedules.test_cdf_monotone_and_icdf_inverts("logistic")
    test_schedules.test_batch_position_carries_no_noise_level("logistic")
    s, ctx = test_schedules.SCHEDULES["logistic"], test_schedules.CTX  # and it is the law it says, truncated to the range
    law = stats.logistic(loc=math.log(ctx.sigma_data), scale=0.6)
    u = torch.tensor([-3.0, 0.0, 2.0])
    expected = (law.cdf(u.numpy()) - law.cdf(ctx.u_min)) / (law.cdf(ctx.u_max) - law.cdf(ctx.u_min))
    assert torch.allclose(s.cdf(u).double(), torch.tensor(expected), atol=1e-6)


def test_a_new_entry_reaches_the_recipe_the_library_and_the_command_line(registered, capsys):
    from multidiff import list_schedules
    from multidiff.cli import main
    from multidiff.pipeline import resolve_full
    from multidiff.recipe import load_recipe_file, resolve, select_schedule

    assert list_schedules()["logistic"] == {"mu": 0.0, "s": 0.6}
    assert registry.is_fixed_method("logistic")
    raw = select_schedule(load_recipe_file("recipes/binary_digits.yaml"), "logistic")
    resolved, _ = resolve_full(resolve(raw, "recipes/binary_digits.yaml", ["schedule.s=0.3"]))
    assert resolved["schedule"] == {"name": "logistic", "mu": 0.0, "s": 0.3}
    assert main(["schedule", "list"]) == 0
    assert "logistic" in capsys.readouterr().out


@pytest.mark.parametrize("key", sorted(__import__("multidiff.domains.registry", fromlist=["DOMAINS"]).DOMAINS))
def test_every_registered_domain_declares_what_the_shared_code_asks_of_it(key):
    """The trainer, the evaluation and the report ask a domain only through these declarations."""
    from multidiff.domains.base import Domain
    from multidiff.domains.registry import get_domain

    cls = get_domain(key)
    assert issubclass(cls, Domain) and cls.name == key
    assert all(direction in ("lower", "higher", None) for direction in cls.quality_metrics.values())
    assert isinstance(cls.nelbo_unit, str) and set(cls.data_rules) <= set(cls.data_defaults)
    for hook in ("load", "build_model", "write_samples"):
        assert getattr(cls, hook) is not getattr(Domain, hook), f"{key} must implement {hook}"
    if cls.joinable:  # what a joint model asks of a modality
        assert any(direction == "lower" for direction in cls.quality_metrics.values())
        for hook in ("classify", "make_metric"):
            assert getattr(cls, hook) is not getattr(Domain, hook), f"{key} joins joint models: it must implement {hook}"


def _settings_classes():
    from multidiff.recipe import SECTION_TYPES

    yield from ((f"recipe {name}", cls) for name, cls in SECTION_TYPES.items())
    yield from ((f"schedule {name}", spec.params) for name, spec in registry.REGISTRY.items())


@pytest.mark.parametrize(("what", "cls"), list(_settings_classes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_setting_is_checked_by_its_rule_and_its_default_passes(what, cls):
    """One mechanism for every typed setting (recipe sections, each schedule's parameters): each
    field's rule accepts its default and refuses a value of the wrong kind; a schedule built with a bad
    value is refused in one line naming the key."""
    import dataclasses

    from multidiff.settings import field_rules

    rules = field_rules(cls)
    assert set(rules) == {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        assert rules[f.name](f.default) is None, (f.name, f.default)
        assert rules[f.name](object()) is not None, f.name
    refusing = [key for key, rule in rules.items() if rule("not a value") is not None]
    if what.startswith("schedule") and refusing:
        from multidiff.errors import UserError

        key = refusing[0]
        with pytest.raises(UserError, match=f"schedule.{key} must be"):
            registry.build_schedule(what.split()[1], {key: "not a value"}, test_schedules.CTX)


def test_a_type_annotation_alone_is_a_rule():
    from typing import Optional, Union

    from multidiff.settings import type_rule

    for hint in (Optional[int], int | None):
        assert type_rule(hint)(None) is None and type_rule(hint)(3) is None
        assert type_rule(hint)(True) == type_rule(hint)(2.5) == "an integer or null"  # a bool is not an integer
    assert type_rule(float)(3) is None and type_rule(float)(float("nan")) == "a number"
    assert type_rule(Union[str, list])(["a"]) is None and type_rule(Union[str, list])(1) == "a string or a list"
    assert type_rule(bool)(1) == "true or false"
