"""The base of every gradient-trained method: a method is its paper, `fit` is written once.

A trained method supplies what its paper defines, as hooks:

- its networks, built in `__init__` under `seeded_weights(seed)` and kept as `self.net`;
- `training_setup(train_loader, val_loader) -> TrainingSetup`: what trains, its optimiser and
  schedule, how many epochs, optionally its own sampling of the loader and extra random
  streams (an anomaly synthesizer's) that a resumed fit must continue;
- `step(batch) -> losses`: the losses of one batch, `loss` their sum;
- optionally `validation_loss(batch) -> (mean loss, weight)` and `start_validation()`, which
  make `select=val` available (the epoch with the lowest weighted mean is kept);
- optionally `after_fit()` to drop what only training needed (feature caches);
- what its checkpoint holds, as declarations: `trained_module()` (default `self.net`),
  `frozen_backbone()` (kept only when its weights are random) and `checkpoint_facts`.

The base owns the rest, the same for every method: seeding, the AMP scaler, the epoch loop
with its resumable checkpoint and model selection (`threecad.training.train_epochs`), the
loss history, the data-parallel gradient sync (`gradient_sync`, set by the harness under
`--ddp`), eval mode after the fit, and `state_dict`/`load_state_dict`. Config lengths (epochs, steps) are declared with
`length(...)`, so that tools which shorten a fit find them without a list of names.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from threecad.backbones import random_weights
from threecad.errors import ThreecadError
from threecad.method import Method, MethodConfig
from threecad.training import check_selection, loader_length, seed_everything, train_epochs

# How a length field is cut to run a fit of about `n` steps (tests, gpu_check): kind -> rule.
LENGTH_RULES: dict[str, Callable[[int], int]] = {
    "scaled": lambda n: n,  # epochs, steps: n
    "half": lambda n: max(1, n // 2),  # a first phase inside `steps` (DeSTSeg's student steps)
    "one": lambda n: 1,  # inner repeats and checkpoint intervals
}


def length(default: int, kind: str = "scaled") -> Any:
    """A config field that sets how long a fit runs (declared, so that it can be found and cut)."""
    if kind not in LENGTH_RULES:
        raise ValueError(f"length kind must be one of {', '.join(LENGTH_RULES)}, got '{kind}'")
    return field(default=default, metadata={"length": kind})


def not_length(default: int, why: str) -> Any:
    """A config field whose name sounds like a length but is not one (`lr_step`: epochs between
    decays); saying so lets a check flag any length-like field that is declared neither way."""
    return field(default=default, metadata={"not_length": why})


LENGTH_LIKE = re.compile(r"epoch|step|iter|batches")


def undeclared_lengths(config_class: type) -> list[str]:
    """Fields named like a length that are declared neither `length` nor `not_length`."""
    return sorted(f.name for f in dataclasses.fields(config_class)
                  if LENGTH_LIKE.search(f.name) and not {"length", "not_length"} & set(f.metadata))


def length_fields(config_class: type) -> dict[str, str]:
    """The config's length fields and their kinds ({} for a method that does not train)."""
    return {f.name: f.metadata["length"] for f in dataclasses.fields(config_class) if "length" in f.metadata}


def short_lengths(config_class: type, n: int) -> dict[str, int]:
    """Values that cut every length field of the config to a fit of about `n` steps."""
    return {name: LENGTH_RULES[kind](n) for name, kind in length_fields(config_class).items()}


def epochs_for(train_loader, epochs: int, steps: int) -> int:
    """`epochs`, or with `steps` > 0, enough passes over this loader for that many optimiser steps
    (references that count steps, not epochs: DRAEM's and RealNet's `steps`)."""
    per_epoch = loader_length(train_loader)
    if steps <= 0 or not per_epoch:
        return epochs
    return max(1, math.ceil(steps / per_epoch))


@contextlib.contextmanager
def seeded_weights(seed: int) -> Iterator[None]:
    """Build networks inside: the same initial weights for the same seed, and the global
    random state outside is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class TrainedConfig(MethodConfig):
    """Fields every trained method has (a method declares its lengths with `length(...)`)."""

    select: str = "last"  # the last epoch, or "val": the lowest validation loss (methods that define one)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_selection(self.select)


@dataclass
class TrainingSetup:
    """What `fit` trains, as a method's `training_setup` returns it."""

    model: nn.Module  # the trainable weights: what the epoch checkpoint stores and DDP averages
    optimizer: torch.optim.Optimizer
    scheduler: Any  # stepped once per epoch
    epochs: int
    batches: Iterable[dict] | None = None  # the method's own sampling of the loader; None: the loader
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # saved with the epoch checkpoint


class TrainedMethod(Method):
    """A method trained with gradients: supplies hooks, inherits `fit` (see the module doc)."""

    trains_by_gradient: ClassVar[bool] = True
    net: nn.Module

    def __init__(self, config: TrainedConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        self.channels_last = False  # batches in channels-last memory format (set by a method)
        if getattr(config, "select", "last") == "val" and not self.validates():
            raise ThreecadError(f"method '{self.name}' defines no validation loss: select=last only")

    @classmethod
    def validates(cls) -> bool:
        """Whether the method defines a validation loss (so `select=val` can choose an epoch)."""
        return cls.validation_loss is not None

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        """Optimiser, schedule, epochs and random streams of one fit (called after seeding)."""

    @abc.abstractmethod
    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """The losses of one training batch (already on the device); `loss` is what steps."""

    # `validation_loss(batch) -> (mean loss of a validation batch, its weight)`, averaged over the
    # split by the base; a method without one leaves it None and runs select=last only
    validation_loss: Callable[[dict], tuple[torch.Tensor | float, int]] | None = None

    def start_validation(self) -> None:
        """Before each pass over the validation split (re-seed its random draws here)."""

    def after_fit(self) -> None:
        """After the last epoch (drop what only training needed)."""

    # ------------------------------------------------------------------ the fit, once
    def fit(self, train_loader, val_loader=None) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        setup = self.training_setup(train_loader, val_loader)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.loop = train_epochs(
            setup.model, setup.optimizer, setup.scheduler, scaler, self.step, train_loader,
            epochs=setup.epochs, device=self.device, channels_last=self.channels_last, work_dir=self.work_dir,
            select=getattr(cfg, "select", "last"), validate=self._validate if self.validates() else None,
            val_loader=val_loader, generators=setup.generators, batches=setup.batches, sync=self.gradient_sync,
            after_epoch=self.epoch_hook, desc=self.name)
        self.after_fit()
        self.net.eval()

    def _validate(self, batches: Iterable[dict]) -> float:
        self.start_validation()
        total, n = 0.0, 0
        for batch in batches:
            loss, weight = self.validation_loss(batch)
            total += float(loss) * weight
            n += weight
        return total / max(n, 1)

    # ------------------------------------------------------------------ the checkpoint, once
    # Plain attributes the checkpoint carries beside the weights (e.g. "texture_source").
    checkpoint_facts: ClassVar[tuple[str, ...]] = ()

    def trained_module(self) -> nn.Module:
        """The weights training changes: the checkpoint's `model` entry (default: all of `self.net`)."""
        return self.net

    def frozen_backbone(self) -> tuple[str, nn.Module] | None:
        """(checkpoint key, module) of a frozen backbone whose weights come from a file. It joins
        the checkpoint only when the config asks for random weights: no file could rebuild it."""
        return None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"config": dataclasses.asdict(self.config), "model": self.trained_module().state_dict()}
        state.update({name: getattr(self, name) for name in self.checkpoint_facts})
        frozen = self.frozen_backbone()
        if frozen is not None and random_weights(getattr(self.config, "weights", None)):
            state[frozen[0]] = frozen[1].state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "model" not in state:
            raise ThreecadError(f"this checkpoint has no 'model' entry: not a {self.name} state")
        self.trained_module().load_state_dict(state["model"])
        frozen = self.frozen_backbone()
        if frozen is not None and frozen[0] in state:
            frozen[1].load_state_dict(state[frozen[0]])
        for name in self.checkpoint_facts:
            setattr(self, name, state.get(name))
        self.net.eval()

    def training_facts(self) -> dict[str, Any]:
        """The last fit's loop facts for `info()` (selected epoch, how chosen, final losses)."""
        return self.loop.facts(getattr(self.config, "select", "last")) if self.loop is not None else {}
