"""Lightning data plumbing shared by every domain.

Training batches form an endless stream indexed by micro-batch: the batch of micro-batch m (step t's
k-th of N accumulated ones is m = t·N + k; without accumulation m = t) depends only on (seed, m,
rank), so a resumed run sees exactly the batches the straight run would have.
Validation is a fixed subset in fixed order, evaluated whole on every process (no sampler split),
so its numbers do not depend on the number of processes.
"""
from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

from ..domains.base import DomainData
from ..evaluation import NelboSettings, validation_subset


class StepBatches(IterableDataset):
    """Batches for steps start_step, start_step + 1, ... (epochs are seeded permutations).

    ``data`` may live on the training device (small datasets: a step then costs no host→device
    copy). With DataLoader workers, worker w of W yields steps start + w, start + w + W, ... and
    the loader's round-robin over workers keeps the steps in order.
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self._perms: dict[int, Tensor] = {}  # the current and the next epoch's permutation

    def _permutation(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.data.shape[0], generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        n, gb = self.data.shape[0], self.batch_size * self.world
        pos = step * gb + self.rank * self.batch_size + torch.arange(self.batch_size)
        epochs, offsets = pos // n, pos % n
        first, last = int(epochs[0]), int(epochs[-1])
        if first == last:  # the common case: one epoch, one gather
            return self._permutation(first)[offsets]
        out = torch.empty_like(pos)
        for e in range(first, last + 1):
            mask = epochs == e
            out[mask] = self._permutation(e)[offsets[mask]]
        return out

    def __iter__(self) -> Iterator[Tensor]:
        info = get_worker_info()
        step, stride = self.start_step, 1
        if info is not None:
            step, stride = self.start_step + info.id, info.num_workers
        while True:
            idx = self.indices(step)
            yield self.data[idx.to(self.data.device)]
            step += stride


#: datasets above this many bytes stay in host memory and are fed by pinned-memory workers on a
#: GPU; smaller ones are copied to the device once
DEVICE_DATA_LIMIT = 2 * 1024**3


class DomainDataModule(L.LightningDataModule):
    def __init__(self, data: DomainData, batch_size: int, seed: int, nelbo: NelboSettings):
        super().__init__()
        self.data, self.batch_size, self.seed, self.nelbo = data, batch_size, seed, nelbo

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device
        data = self.data.train
        on_gpu = device.type == "cuda"
        if on_gpu and data.element_size() * data.nelement() <= DEVICE_DATA_LIMIT:
            data = data.to(device)  # held on the device: no copy per step
        stream = StepBatches(
            data, self.batch_size, self.seed,
            rank=trainer.global_rank, world=trainer.world_size, start_step=trainer.global_step * trainer.accumulate_grad_batches,
        )  # fmt: skip
        if on_gpu and not data.is_cuda:  # large data: workers index it and pinned memory speeds the copy
            return DataLoader(stream, batch_size=None, num_workers=2, pin_memory=True, persistent_workers=True)
        return DataLoader(stream, batch_size=None)  # in-memory indexing on the CPU: workers would only add copies

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
