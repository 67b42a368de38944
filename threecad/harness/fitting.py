"""Fitting a method the same way for every method: its loaders, its seed, the timed fit, and
`--ddp`'s share of one fit trained by every rank of a torchrun job.

The per-category run, the unified fit and a study's ranks all build and fit a method through
these functions, so that a method sees the same loaders and seed whichever path runs it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from threecad.harness import devices
from threecad.method import Method, uses_amp
from threecad.training import GradientSync, seed_everything
from threecad.wording import plural

log = logging.getLogger(__name__)


def loader(dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int, sampler=None) -> DataLoader:
    workers = devices.loader_workers(device)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      generator=gen)


@dataclass
class DDPFit:
    """`--ddp`: this rank's part of one fit trained by every rank of the job.

    The training loader gives this rank its share of the images (DistributedSampler, shuffled
    by seed and epoch) in batches of `batch_size / world_size`, so that with gradients averaged
    each optimiser step sees the config's batch size, as one process would; the learning rate
    and the number of steps per epoch stay those of the config.
    """

    rank: int
    world_size: int
    backend: str
    sync: GradientSync  # threecad.harness.distributed.GradientAverager

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def facts(self, config) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend,
                "batch_per_rank": config.batch_size // self.world_size}


def new_method(method_cls: type[Method], config, device: torch.device, work_dir: Path) -> Method:
    """The method, built after seeding (its initial weights repeat) with its scratch folder."""
    seed_everything(config.seed)
    method = method_cls(config, device=device, amp=uses_amp(config, device))
    method.work_dir = work_dir
    return method


def fit(method: Method, config, train, val, device: torch.device, label: str, ddp: DDPFit | None = None) -> float:
    """Fit on `train` (shuffled) and `val`; returns the seconds it took (device synchronised).

    With `ddp`, this rank trains on its share of `train` with gradients averaged across ranks
    (`Method.gradient_sync`); a method that did not train through train_epochs is
    an error, since its ranks would each have fitted alone.
    """
    val_loader = loader(val, config.batch_size, device, False, config.seed) if val is not None else None
    if ddp is None:
        train_loader = loader(train, config.batch_size, device, True, config.seed)
    else:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True,
                                     seed=config.seed)
        train_loader = loader(train, config.batch_size // ddp.world_size, device, True, config.seed, sampler)
    log.info("%s: fitting on %s", label, plural(len(train), "image")
             + (f" across {ddp.world_size} ranks (--ddp)" if ddp is not None else ""))
    devices.synchronize(device)
    t0 = time.perf_counter()
    if ddp is None:
        method.fit(train_loader, val_loader)
    else:
        ddp.sync.loops = 0
        method.gradient_sync = ddp.sync
        try:
            method.fit(train_loader, val_loader)
        finally:
            method.gradient_sync = None
        if ddp.sync.loops == 0:
            raise RuntimeError(f"{type(method).__name__} did not train through threecad.training.train_epochs, "
                               "so --ddp could not share its fit")
    devices.synchronize(device)
    return time.perf_counter() - t0
