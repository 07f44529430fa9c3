"""Every run's schedule: one member per modality, each drawing its own σ per example and observing
only its own errors.

A :class:`ScheduleGroup` speaks the schedule interface on [B, M] tensors (M members, in order):
``sample(n)`` returns σ of shape [n, M] (column m from member m), ``observe`` routes column m to
member m (a 0/1 ``mask`` leaves out examples where that modality was not noised, e.g. given clean
to train a conditional), ``refresh`` refreshes each member on its own cadence, and the state holds
every member's state. Each member exports its own table (:meth:`tables`), so every learned
schedule becomes its own schedule file, reusable by a single-modality run.

A one-modality run is a group of one, and a group of one is its member: the same name, refresh
records, notes and checkpoint state, and the member's probe of the model (which a group of
several cannot lend, since one probe cannot noise each modality at its own level).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .base import Probe, Schedule, ScheduleContext, ScheduleTable


class ScheduleGroup(Schedule):
    name = "group"

    def __init__(self, members: dict[str, Schedule]) -> None:
        if not members:
            raise ValueError("a schedule group needs at least one member")
        first = next(iter(members.values()))
        super().__init__(first.ctx, {k: s.params for k, s in members.items()})
        self.members = dict(members)
        self.alone: Optional[Schedule] = first if len(members) == 1 else None
        if self.alone is not None:
            self.name, self.probe_examples = first.name, first.probe_examples
        for key, s in self.members.items():
            if s.probe_examples and self.alone is None:
                raise ValueError(f"schedule '{key}' ({s.name}) measures the model through a probe, which joint models do not offer")
        cadences = [s.refresh_every for s in self.members.values() if s.refresh_every]
        self.refresh_every = math.gcd(*cadences) if cadences else 0
        self.prepare_examples = max((s.prepare_examples for s in self.members.values()), default=0)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def sole(self, what: str) -> Schedule:
        """The one member of a group of one; a ValueError naming ``what`` needs it for a group of several."""
        if self.alone is None:
            raise ValueError(f"{what} needs one schedule; this run has one per modality ({', '.join(self.members)})")
        return self.alone

    def context(self, key: str) -> ScheduleContext:
        return self.members[key].ctx

    # ---- drawing and observing, column m ↔ member m ------------------------------------------
    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> Tensor:
        """σ of shape [n, M]: each member's stratified draw, in member order (σ, not ln σ). Each
        column is permuted on its own, so the members' noise levels are independent across examples."""
        return torch.stack([s.sample(n, generator, device) for s in self.members.values()], dim=1)

    def observe(self, sigma: Tensor, error: Tensor, loss: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        for m, s in enumerate(self.members.values()):
            s.observe(sigma[:, m], error[:, m], None if loss is None else loss[:, m], None if mask is None else mask[:, m])

    def loss_scale(self, sigma: Tensor) -> Optional[Tensor]:
        scales = [s.loss_scale(sigma[:, m]) for m, s in enumerate(self.members.values())]
        if all(sc is None for sc in scales):
            return None
        return torch.stack([torch.ones_like(sigma[:, m]) if sc is None else sc for m, sc in enumerate(scales)], dim=1)

    def prepare(self, parts: Any) -> dict[str, Any]:
        """``parts``: a sequence of each member's encoded training examples, in member order."""
        info = {}
        for (key, s), x in zip(self.members.items(), parts):
            if s.prepare_examples:
                info[key] = s.prepare(x[: s.prepare_examples])
        return info

    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        """Each member due at ``step`` refreshes; a group of several prefixes the record keys by the
        member name, a group of one is its member (refreshed when the caller says, with its probe)."""
        self.last_refresh = int(step)
        if self.alone is not None:
            return self.alone.refresh(step, probe)
        out: dict[str, Any] = {}
        for key, s in self.members.items():
            if s.refresh_every and step % s.refresh_every == 0:
                info = s.refresh(step)
                out.update({f"{key}.{k}": v for k, v in info.items() if k != "step"})
        return {"step": int(step), **out} if out else {}

    def synchronize(self) -> None:
        for s in self.members.values():
            s.synchronize()

    # ---- state -----------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "ScheduleGroup":
        super().to(device)
        for s in self.members.values():
            s.to(self.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        if self.alone is not None:
            return self.alone.state_dict()
        return {key: s.state_dict() for key, s in self.members.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.alone is not None:
            self.alone.load_state_dict(state)
            return
        for key, s in self.members.items():
            s.load_state_dict(state[key])

    # ---- the distribution of one member (the group has no single density) ---------------------
    def pdf(self, u: Tensor) -> Tensor:
        raise TypeError("a schedule group has one density per member: use group.members[name]")

    def cdf(self, u: Tensor) -> Tensor:
        return self.pdf(u)

    def icdf(self, q: Tensor) -> Tensor:
        return self.pdf(q)

    def to_table(self, n: int = 256) -> ScheduleTable:
        raise TypeError("a schedule group exports one table per member: use tables()")

    def tables(self, n: int = 256) -> dict[str, ScheduleTable]:
        return {key: s.to_table(n) for key, s in self.members.items()}

    def notes(self) -> list[str]:
        if self.alone is not None:
            return self.alone.notes()
        return [f"{key}: {note}" for key, s in self.members.items() for note in s.notes()]
