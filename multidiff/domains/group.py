"""What a run is made of: a group of modalities, each with its own σ_data and schedule.

A one-domain run is a group of one (:class:`SingleModality`, keyed by the domain's name); the joint
domain is a group of several composed from ordinary domains. Shared code (setting a run up, the
trainer, evaluation, sampling) asks the group, so it never tells the two apart.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from ..diffusion.model import DiffusionModel
from ..errors import UserError
from .base import Domain, DomainData


class ModalityGroup:
    """The modalities of a run, in order, and what only a group of several can do."""

    #: True for groups that generate some modalities given others: they take ``sample --given/--only``
    #: and ``sample.guidance``
    conditional_sampling = False

    def modalities(self) -> list[str]:
        """The modality names, in order (each gets its own schedule; a group of one: the domain's name)."""
        raise NotImplementedError

    def modality_domain(self, key: str) -> str:
        """The domain a modality's learned schedule belongs to (what its schedule file records)."""
        raise NotImplementedError

    def modality_sigma_data(self, data: DomainData) -> dict[str, float]:
        """Each modality's σ_data (RMS of its encoded training data), by modality."""
        raise NotImplementedError

    def modality_model(self, data: DomainData, sigma_data: dict[str, float]) -> DiffusionModel:
        """The model over every modality, each preconditioned with its own σ_data."""
        raise NotImplementedError

    def model_metrics(self, model: Any, sample: Callable[[int, Any], Tensor], data: DomainData, n: int, final: bool = False,
                      guidance: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """Metrics that need the model itself (conditional generation across modalities); ``sample(n,
        condition)`` runs the recipe's sampler and returns decoded samples, ``guidance`` is the
        recipe's ``sample.guidance`` for conditional samples. A group of one has none."""
        return {}

    def extra_nelbo(self, model: Any, data: DomainData, settings: Any, device: Any) -> dict[str, Any]:
        """More bounds worth reporting at the final evaluation (each modality's NELBO given the
        others clean), from the same fixed subset, noise and quadrature. A group of one has none."""
        return {}

    def condition(self, model: Any, given: dict[str, str], only: Optional[str], n: int, data: DomainData,
                  guidance: float = 1.0) -> Any:  # fmt: skip
        """What ``multidiff sample --given/--only`` holds fixed (groups with ``conditional_sampling``);
        a group of one has nothing to hold fixed."""
        raise UserError(f"--given/--only sample some modalities of a joint run given others; domain '{', '.join(self.modalities())}' is one modality")


class SingleModality(ModalityGroup):
    """A one-domain run: a group whose one member is the domain itself."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def modalities(self) -> list[str]:
        return [self.domain.name]

    def modality_domain(self, key: str) -> str:
        return self.domain.name

    def modality_sigma_data(self, data: DomainData) -> dict[str, float]:
        return {self.domain.name: float(self.domain.measure_sigma_data(data))}

    def modality_model(self, data: DomainData, sigma_data: dict[str, float]) -> DiffusionModel:
        return self.domain.build_model(data, sigma_data[self.domain.name])


def modality_group(domain: Domain) -> ModalityGroup:
    """The run's group: a domain that composes several modalities is its own group; any other a group of one."""
    return domain if isinstance(domain, ModalityGroup) else SingleModality(domain)
