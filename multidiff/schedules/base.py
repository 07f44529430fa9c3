"""The schedule interface.

A schedule is a training-noise distribution over ``u = ln σ`` on ``[ln σ_min, ln σ_max]``. It
changes *only* where σ is drawn from; the loss weight and parameterization stay fixed elsewhere.
Every number that crosses this interface is either σ (``sample``, ``observe``) or u = ln σ
(``pdf``, ``cdf``, ``icdf``); densities are per unit u.

Schedules import nothing from domains or the trainer: what they need to know about the run
(σ range, σ_data, the fixed loss weight w(σ)) arrives in a :class:`ScheduleContext`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..settings import check_fields
from .density import TabulatedDensity
from .io import save_schedule_file
from .table import ScheduleTable

WeightFn = Callable[[Tensor], Tensor]
#: the σ's a schedule may cover: σ and σ² stay finite and normal in float32 at both ends
SIGMA_BOUNDS = (1e-12, 1e12)


@dataclass(frozen=True)
class ScheduleContext:
    """What a schedule may know about the run it serves.

    sigma_min, sigma_max: the σ range (σ, not ln σ). sigma_data: RMS of the encoded data.
    weight: the fixed loss weight w(σ) of the training loss in x0 terms (takes σ, returns w). Only
    schedules that need it (InfoNoise divides it out) refuse a context without one.
    """

    sigma_min: float
    sigma_max: float
    sigma_data: float = 1.0
    weight: Optional[WeightFn] = None
    weighting: Optional[str] = None  # the weight's name, recorded in schedule files (edm, snr, eps-mse, ...)
    #: the density a loop draws its own noise variable from (uniform DDPM timesteps, uniform flow t),
    #: as a schedule over this context's u; a learned schedule's ``base: native`` warms up from it
    native: Optional[Callable[["ScheduleContext"], "Schedule"]] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        lo, hi = SIGMA_BOUNDS
        if not (lo <= self.sigma_min < self.sigma_max <= hi):  # NaN fails too
            raise UserError(f"sigma range must satisfy {lo:g} <= sigma_min < sigma_max <= {hi:g} (σ² stays finite "
                            f"in float32), got [{self.sigma_min}, {self.sigma_max}]")  # fmt: skip
        if not (isinstance(self.sigma_data, (int, float)) and 0 < self.sigma_data < math.inf):
            raise UserError(f"sigma_data must be a positive finite number, got {self.sigma_data!r}")

    @property
    def u_min(self) -> float:
        return math.log(self.sigma_min)

    @property
    def u_max(self) -> float:
        return math.log(self.sigma_max)


class Probe(Protocol):
    """What the trainer lends a schedule at a refresh to measure the current denoiser (CRS x0/eps).

    ``data()``: a fixed held-out batch, encoded by the current model, on the device (the same
    examples at every refresh and on every process). ``probe(x, sigma)``: the denoiser's x0 estimate
    D(x; σ) for noisy ``x`` and per-example σ (σ, not ln σ), under no_grad, in eval mode. Every call
    is counted (``examples``, ``calls``) so its cost can be reported.
    """

    examples: int
    calls: int

    def data(self) -> Tensor: ...

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


def stratified_uniform(
    n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
) -> Tensor:
    """n uniforms on [0, 1), one in each of n equal strata: lower-variance than iid draws."""
    offsets = torch.arange(n, device=device, dtype=torch.float32)
    return (offsets + torch.rand(n, generator=generator, device=device)) / n


def shuffled(values: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """``values`` (1-D) in a random order drawn from ``generator``: a stratified draw comes out sorted,
    and whoever slices a batch by position (dropout by index, micro-batches, devices) must not see
    its noise levels sorted with it."""
    order = torch.randperm(values.numel(), generator=generator, device=values.device)
    return values[order]


class Schedule:
    """Base class: a fixed density over u = ln σ. Adaptive schedules override the hooks below."""

    name: str = "schedule"
    #: steps between calls to :meth:`refresh` (0: never; fixed schedules).
    refresh_every: int = 0
    #: training examples :meth:`prepare` wants once before training (0: not called).
    prepare_examples: int = 0
    #: held-out examples the :class:`Probe` passed to :meth:`refresh` should hold (0: no probe).
    probe_examples: int = 0

    def __init__(self, ctx: ScheduleContext, params: Any = None) -> None:
        if dataclasses.is_dataclass(params):  # every parameter against its rule, however the schedule is built
            check_fields("schedule", params)
        self.ctx = ctx
        self.params = params
        self.device = torch.device("cpu")
        self.last_refresh = 0  # step of the latest refresh (recorded in exported tables)

    # ---- the distribution, on u = ln σ -------------------------------------------------------
    def pdf(self, u: Tensor) -> Tensor:
        """Density per unit u at u = ln σ (zero outside the range)."""
        raise NotImplementedError

    def cdf(self, u: Tensor) -> Tensor:
        """P(ln σ ≤ u)."""
        raise NotImplementedError

    def icdf(self, q: Tensor) -> Tensor:
        """Inverse CDF: quantile q in [0, 1] → u = ln σ."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
    ) -> Tensor:
        """n training σ's (σ, not ln σ): stratified uniforms through the inverse CDF, on ``device``,
        in a random order drawn from ``generator`` (batch position carries no noise level)."""
        q = stratified_uniform(n, generator, device or self.device)
        return self.icdf(shuffled(q, generator)).exp()

    # ---- adaptation hooks (no-ops for fixed schedules) ---------------------------------------
    def observe(self, sigma: Tensor, error: Tensor, loss: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        """Per-example detached σ, unweighted x0-space error per dimension, and weighted loss
        (default: w(σ)·error with the context's weight); ``mask`` (0/1 per example, optional)
        leaves examples out (e.g. a modality given clean).

        Called every training step; implementations must stay on the device (no host sync).
        """

    def weighted(self, sigma: Tensor, error: Tensor, loss: Optional[Tensor]) -> Tensor:
        """The weighted loss a caller passed, or w(σ)·error when it passed none."""
        if loss is not None:
            return loss
        return error if self.ctx.weight is None else self.ctx.weight(sigma.float()) * error

    def prepare(self, x: Tensor) -> dict[str, Any]:
        """Called once at the start of fitting with ``prepare_examples`` encoded training examples
        (a fixed subset, identical on every process, on the device); returns what to log.

        Data-only schedules (CRS ``fd``) build their table here. A schedule restored from a
        checkpoint that already holds its table may ignore the call.
        """
        return {}

    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        """Rebuild the density from accumulated statistics; returns what to log (may be empty).

        ``probe`` measures the current model (see :class:`Probe`); only schedules with
        ``probe_examples > 0`` get one.
        """
        return {}

    def refresh_due(self, step: int) -> bool:
        """Whether a loop should call :meth:`refresh` after training step ``step`` (never for a
        schedule that does not learn: its ``refresh_every`` is 0)."""
        return self.refresh_every > 0 and step > 0 and step % self.refresh_every == 0

    def loss_scale(self, sigma: Tensor) -> Optional[Tensor]:
        """Per-example factor on the weighted loss (importance correction), or None for 1."""
        return None

    def synchronize(self) -> None:
        """Merge per-process pending statistics so rank 0 holds them all (before a checkpoint)."""

    # ---- state --------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "Schedule":
        self.device = torch.device(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def grid(self, n: int = 256) -> Tensor:
        """A uniform grid of n points over [ln σ_min, ln σ_max] (float64, CPU)."""
        return torch.linspace(self.ctx.u_min, self.ctx.u_max, n, dtype=torch.float64)

    def to_table(self, n: int = 256) -> ScheduleTable:
        """Tabulate the current density on a uniform grid (exported as the schedule file)."""
        u = self.grid(n)
        with torch.no_grad():
            pdf = self.pdf(u.to(self.device, torch.float32)).double().cpu()
        return self.table_from(TabulatedDensity(u, pdf))

    # ---- what the schedule tells its users, through the table ---------------------------------
    def sampling_density(self) -> Optional[tuple[list[float], list[float]]]:
        """(u, density) on which sampling σ's should be placed, when that is not the training pdf
        (InfoNoise: the gated information rate). None: the pdf."""
        return None

    def notes(self) -> list[str]:
        """Plain-language remarks on the current state (printed by reports and ``schedule show``)."""
        return []

    def table_from(self, dens: Any, profile: Optional[dict[str, list[float]]] = None) -> ScheduleTable:
        """The schedule-file table of a :class:`TabulatedDensity` (u, pdf, cdf as exported)."""
        sampling = self.sampling_density()
        return ScheduleTable(
            method=self.name,
            sigma_min=self.ctx.sigma_min,
            sigma_max=self.ctx.sigma_max,
            u=dens.u64.tolist(),
            pdf=dens.p64.tolist(),
            cdf=dens.c64.tolist(),
            profile=profile or {},
            params=_params_dict(self.params),
            sampling={"u": list(sampling[0]), "density": list(sampling[1])} if sampling else {},
            notes=self.notes(),
            step=int(self.last_refresh),
        )

    def save(self, path: Any, **meta: Any) -> Any:
        """Write the current table as a schedule file (any loop's ``multidiff train --schedule FILE``
        and sampling grids read it). σ_data and the weighting are filled in from the context; ``meta``
        adds ``domain``, ``dataset`` and anything else worth recording (kept under ``info``)."""
        fields: dict[str, Any] = {"sigma_data": self.ctx.sigma_data, "weighting": self.ctx.weighting}
        known: dict[str, Any] = {k: meta.pop(k) for k in ("domain", "dataset") if k in meta}
        return save_schedule_file(path, self.to_table(), {**fields, **known, "info": meta})


def _params_dict(params: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(params) and not isinstance(params, type):
        return asdict(params)
    return dict(params or {})


def all_reduce_sum_(*tensors: Tensor) -> None:
    """Sum tensors across processes in place (no-op without an initialized process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def merge_into_rank0_(*tensors: Tensor) -> None:
    """Sum every process's pending statistics into rank 0 and clear them elsewhere (before a
    checkpoint, which rank 0 writes), so nothing is counted twice after a resume."""
    all_reduce_sum_(*tensors)
    keep_on_rank0_(*tensors)


def keep_on_rank0_(*tensors: Tensor) -> None:
    """Clear the tensors on every process but rank 0 (after loading statistics that rank 0's
    checkpoint holds for everyone)."""
    if process_rank() != 0:
        for t in tensors:
            t.zero_()


def share_from_rank0(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Rank 0's array on every process (through a device tensor: NCCL reduces only CUDA tensors)."""
    mine = array if process_rank() == 0 else np.zeros_like(array)
    shared = torch.as_tensor(mine, dtype=torch.float64, device=device)
    all_reduce_sum_(shared)
    return shared.cpu().numpy().copy()


def process_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
