"""A frozen backbone's features of each training image, computed once and reused every epoch.

Exact, not an approximation, for a method whose backbone is frozen and in eval mode and whose
training images are not augmented: every epoch would compute the same tensors. Keyed by the
image path the loader gives (a batch without paths is computed). Bounded: past its budget the
cache stops adding, says so once in the log, and the images it could not keep are computed
every epoch. Held on the device by default (no copy per batch), or on the host where features
of a large training set would crowd the accelerator.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence, Union

import torch

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MB = 4096  # for methods whose config only switches the cache on or off

Features = Union[torch.Tensor, Sequence[torch.Tensor]]  # batch first; one tensor per scale if several


class FeatureCache:
    """Features by image path, up to `budget_mb` megabytes (0: nothing is kept)."""

    def __init__(self, budget_mb: float, host: bool = False, owner: str = "features"):
        self.budget = int(budget_mb * 2 ** 20)
        self.host = host
        self.owner = owner  # named in the log line
        self._store: dict[str, tuple[torch.Tensor, ...]] = {}
        self._bytes = 0
        self._full = False
        self._single = True  # whether `compute` returns one tensor (else a sequence of scales)

    def __len__(self) -> int:
        return len(self._store)

    def get(self, batch: dict, compute: Callable[[torch.Tensor], Features]) -> Features:
        """The features of the batch's images as `compute(images)` gives them, computing only the
        images not kept yet."""
        images, paths = batch["image"], batch.get("path")
        if self.budget <= 0 or paths is None:
            return compute(images)
        missing = [i for i, p in enumerate(paths) if p not in self._store]
        fresh: dict[int, tuple[torch.Tensor, ...]] = {}
        if missing:
            out = compute(images[missing])
            self._single = torch.is_tensor(out)
            scales = [out] if self._single else list(out)
            for j, i in enumerate(missing):
                fresh[i] = self._add(paths[i], tuple(s[j] for s in scales))
        rows = [fresh[i] if i in fresh else self._store[p] for i, p in enumerate(paths)]
        stacked = [torch.stack([row[k].to(images.device, non_blocking=True) for row in rows])
                   for k in range(len(rows[0]))]
        return stacked[0] if self._single else stacked

    def _add(self, path: str, item: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Keep one image's features if the budget allows; returns what to use for it."""
        if self._full:
            return item
        size = sum(t.numel() * t.element_size() for t in item)
        if self._bytes + size > self.budget:
            self._full = True
            log.info("%s: feature cache full at %d MB (%d images); the other training images are computed "
                     "every epoch", self.owner, self.budget // 2 ** 20, len(self._store))
            return item
        # a copy, not a view that keeps the whole batch alive
        kept = tuple(t.detach().to("cpu" if self.host else t.device, copy=True) for t in item)
        self._store[path] = kept
        self._bytes += size
        return kept

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0
        self._full = False
