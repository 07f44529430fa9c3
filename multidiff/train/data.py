"""Lightning data plumbing shared by every domain.

Training batches form an endless stream indexed by optimizer step: the batch of step t depends
only on (seed, t, rank), so a resumed run sees exactly the batches the straight run would have.
Validation is a fixed subset in fixed order, evaluated whole on every process (no sampler split),
so its numbers do not depend on the number of processes.
"""
from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from ..domains.base import DomainData
from ..evaluation import NelboSettings, validation_subset


class StepBatches(IterableDataset):
    """Batches for steps start_step, start_step + 1, ... (epochs are seeded permutations)."""

    def __init__(self, data: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step

    def _permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.data.shape[0], generator=g)

    def indices(self, step: int) -> Tensor:
        n, gb = self.data.shape[0], self.batch_size * self.world
        pos = step * gb + self.rank * self.batch_size + torch.arange(self.batch_size)
        epochs, offsets = pos // n, pos % n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            mask = epochs == e
            out[mask] = self._permutation(e)[offsets[mask]]
        return out

    def __iter__(self) -> Iterator[Tensor]:
        step = self.start_step
        while True:
            yield self.data[self.indices(step)]
            step += 1


class DomainDataModule(L.LightningDataModule):
    def __init__(self, data: DomainData, batch_size: int, seed: int, nelbo: NelboSettings):
        super().__init__()
        self.data, self.batch_size, self.seed, self.nelbo = data, batch_size, seed, nelbo

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        stream = StepBatches(
            self.data.train, self.batch_size, self.seed,
            rank=trainer.global_rank, world=trainer.world_size, start_step=trainer.global_step,
        )  # fmt: skip
        return DataLoader(stream, batch_size=None)  # in-memory indexing: workers would only add copies

    def fixed_train_batch(self, n: int) -> Tensor:
        """n training examples in a seeded order (the same on every process and after a resume)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + 104729)
        idx = torch.randperm(self.data.train.shape[0], generator=g)[:n]
        return self.data.train[idx]

    def heldout_batch(self, n: int) -> Tensor:
        """The first n validation examples: the fixed held-out batch schedules may probe the model on."""
        return self.data.val[:n]

    def val_dataloader(self) -> DataLoader:
        x, ids = validation_subset(self.data.val, self.nelbo)
        return DataLoader(TensorDataset(x, ids), batch_size=self.nelbo.batch, shuffle=False)
