"""The domain adapter interface. A domain knows its data and nothing about schedules."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..diffusion.model import DiffusionModel
from ..errors import UserError
from ..settings import Rule, check_settings


@dataclass
class DomainData:
    """A domain's prepared data: training/validation examples as the trainer sees them.

    ``train``/``val`` are encoded examples (continuous domains: x scaled to σ_data) or token ids.
    Labels, when the source has them, feed the evaluation classifier.
    """

    train: Tensor
    val: Tensor
    dataset: str
    train_labels: Optional[Tensor] = None
    val_labels: Optional[Tensor] = None
    num_classes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A short hash of the data, for caches that must follow the data."""
        h = hashlib.sha1()
        for t in (self.train, self.val):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class Domain:
    """Base class: one kind of data (one modality). Subclasses set ``name``, ``data_defaults``,
    ``model_defaults`` and implement the hooks. A run over several modalities is a
    :class:`~multidiff.domains.group.ModalityGroup` composed of domains."""

    name = "domain"
    nelbo_unit = "bits/dim"
    #: σ at which the NELBO decodes (its reconstruction term); None: the recipe's σ_min. Discrete
    #: domains decode where their decoder is already exact, instead of demanding exact ε-prediction below.
    nelbo_sigma_min: float | None = None
    data_defaults: dict[str, Any] = {}
    model_defaults: dict[str, Any] = {}
    #: what each data/model value must be (see multidiff.settings); checked before anything is loaded
    data_rules: dict[str, Rule] = {}
    model_rules: dict[str, Rule] = {}
    #: eval.json keys worth a headline (printed after training, columns of the comparison) → label
    headline_metrics: dict[str, str] = {"fd": "Fréchet distance"}
    #: sample metrics tracked during training (keys of :meth:`sample_metrics`' result) → which way is
    #: better: "lower", "higher", or None for a diagnostic that gets a curve but no speedup
    quality_metrics: dict[str, Optional[str]] = {"fd": "lower"}
    #: whether a joint model may compose this domain as one of its modalities. A joinable domain
    #: encodes every example to a 2-D grid [C, H, W] (``build_model`` may be called on one
    #: modality's data, and its model names its bound's reconstruction term in ``recon`` and
    #: decodes with ``decode``); its first lower-is-better quality metric is a distance between
    #: sample sets (:attr:`distance_metric`); ``classify`` labels decoded samples (and
    #: ``load_given``, where implemented, reads a user's file of it for ``sample --given``). The
    #: joint domain checks this when a recipe is read.
    joinable: bool = False

    def __init__(self, recipe: dict[str, Any], cache_dir: Path) -> None:
        self.data_cfg = self._with_defaults("data", recipe.get("data") or {}, self.data_defaults)
        self.model_cfg = self._with_defaults("model", recipe.get("model") or {}, self.model_defaults)
        check_settings("data", self.data_cfg, self.data_rules)
        check_settings("model", self.model_cfg, self.model_rules)
        self.cache_dir = Path(cache_dir)
        self.seed = int(recipe.get("seed", 0))

    def _with_defaults(self, section: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise UserError(
                f"domain '{self.name}' has no setting '{section}.{unknown[0]}'; valid keys: {', '.join(sorted(defaults))}"
            )
        return {**defaults, **given}

    def resolved_config(self) -> dict[str, dict[str, Any]]:
        return {"data": dict(self.data_cfg), "model": dict(self.model_cfg)}

    # ---- hooks -----------------------------------------------------------------------------------
    def load(self, run_dir: Optional[Path] = None) -> DomainData:
        """Prepare train/val data (offline sources by default); UserError if the data is missing.

        Anything fitted on the training split (a tokenizer, normalization statistics) is read back
        from ``run_dir`` when that run saved it (see :meth:`save_artifacts`), so sampling,
        evaluation and resuming use exactly what training used.
        """
        raise NotImplementedError

    def save_artifacts(self, data: DomainData, run_dir: Path) -> None:
        """Write what :meth:`load` fitted (tokenizer, statistics) into a new run directory."""

    def build_model(self, data: DomainData, sigma_data: float) -> DiffusionModel:
        raise NotImplementedError

    def example_shape(self, data: DomainData) -> tuple[int, ...]:
        """Shape of one x in the diffusion space (what samplers start from)."""
        return tuple(data.train.shape[1:])

    def nelbo_count(self, data: DomainData) -> int:
        """Units per example that the NELBO is divided by (pixels, tokens, bins, latent dims)."""
        return int(torch.tensor(self.example_shape(data)).prod())

    def nelbo_units(self, data: DomainData, n_examples: int) -> dict[str, float]:
        """Every unit the NELBO is reported in → units per example, averaged over the validation
        subset (the first ``n_examples`` of data.val). The entry for ``nelbo_unit`` is the primary
        curve (``val/nelbo``); others are logged as ``val/nelbo_<unit>`` (e.g. text: bits/char,
        from the subset's true characters per token)."""
        return {self.nelbo_unit: float(self.nelbo_count(data))}

    def measure_sigma_data(self, data: DomainData) -> float:
        """RMS of the encoded training data (EDM's preconditioning uses the second moment)."""
        return float(data.train.float().square().mean().sqrt())

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        raise NotImplementedError

    @property
    def distance_metric(self) -> str:
        """The first lower-is-better sample metric: what a joint model reports per modality."""
        lower = [name for name, direction in self.quality_metrics.items() if direction == "lower"]
        if not lower:
            raise UserError(f"domain '{self.name}' has no lower-is-better sample metric to report per modality")
        return lower[0]

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        """The domain's sample metric against held-out data, with whatever it needs (an evaluation
        classifier, a reference model) made now; UserError when the data cannot support it."""
        return lambda decoded: {}

    def classify(self, decoded: Tensor) -> Any:
        """The evaluation classifier's class of each decoded sample (domains with one; after
        :meth:`make_metric`): what a joint model's agreement and conditional accuracy are measured with."""
        raise UserError(f"domain '{self.name}' has no evaluation classifier to label samples with")

    def load_given(self, path: Path, data: DomainData) -> Tensor:
        """Examples from a file, encoded like this domain's data (``multidiff sample --given``)."""
        raise UserError(f"domain '{self.name}' cannot read given examples from files; use --given MODALITY=heldout")

    def prepare_metrics(self, data: DomainData) -> None:
        """Make the sample metric once, before training (so a metric that cannot be made is refused
        before a run directory exists, and evaluations during training pay only for the samples)."""
        self._metric = self.make_metric(data)

    def sample_metrics(self, decoded: Tensor, data: DomainData) -> dict[str, Any]:
        """Domain metrics of decoded samples against held-out data (e.g. Fréchet distance)."""
        if getattr(self, "_metric", None) is None:
            self.prepare_metrics(data)
        return self._metric(decoded)
