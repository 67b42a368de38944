"""The epoch loop of every gradient-trained method, and what it keeps between epochs.

Seeding, the epoch checkpoint that lets an interrupted category resume where it stopped,
model selection on the validation split and the per-epoch loss history. Methods do not call
this loop themselves: `threecad.trained.TrainedMethod.fit` does, with the hooks a method
supplies.

Data parallel training (`threecad bench --ddp` under torchrun) also passes through here,
because a method's `step(batch)` calls its submodules directly rather than one `forward`,
so wrapping a module in DistributedDataParallel would never see the forward pass. Instead
the harness gives the method a `GradientSync` (`Method.gradient_sync`), the base passes it
to `train_epochs`, and this loop averages the gradients of the optimiser's parameters
across ranks after each backward, starts every rank from rank 0's weights, averages the
epoch's loss means, and lets only the writer rank save the epoch checkpoint. A method needs
no change to train on several ranks.
"""
from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from threecad import integrity
from threecad.errors import ThreecadError
from threecad.progress import progress_bar

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "epoch.pt"
PREVIOUS_NAME = "epoch.prev.pt"
SELECTIONS = ("last", "val")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global random states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a round trip through torch.save may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


class EpochCheckpoint:
    """`<work_dir>/epoch.pt`, written atomically after every epoch and removed when fit ends.

    Holds everything needed to continue training exactly: model, optimiser, scheduler,
    AMP scaler, epoch, random states, and the best-so-far state when selecting on val.
    Each file carries a checksum (threecad.integrity). The epoch before the newest is kept
    as `epoch.prev.pt` (the disk peak is the same as one checkpoint plus its temporary
    file), so a damaged newest checkpoint costs one epoch, not the whole fit: on resume a
    checkpoint that fails its checksum is skipped with a warning, and training continues
    from the newest good one, or from the start when there is none.
    """

    def __init__(self, work_dir: str | Path | None):
        self.path = Path(work_dir) / CHECKPOINT_NAME if work_dir is not None else None
        self.previous = Path(work_dir) / PREVIOUS_NAME if work_dir is not None else None

    def load(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        for path in (self.path, self.previous):
            if not path.is_file():
                continue
            reason = integrity.problem(path)
            if reason is not None:
                log.warning("ignoring the epoch checkpoint %s: %s", path, reason)
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                epoch = int(state["epoch"])
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not block training
                log.warning("ignoring the unreadable epoch checkpoint %s (%s)", path, exc)
                continue
            log.info("resuming from %s after epoch %d", path, epoch + 1)
            return state
        if self.path.is_file() or self.previous.is_file():
            log.warning("no usable epoch checkpoint in %s; training from the start", self.path.parent)
        return None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        integrity.remove_checked(self.previous)  # keep the disk peak at one checkpoint + temporary

        def keep_previous() -> None:
            if self.path.is_file():
                integrity.move_checked(self.path, self.previous)

        integrity.save_checked(state, self.path, before_replace=keep_previous)

    def remove(self) -> None:
        if self.path is not None:
            integrity.remove_checked(self.path)
            integrity.remove_checked(self.previous)


def check_selection(select: str) -> None:
    if select not in SELECTIONS:
        raise ThreecadError(f"config select={select}: must be one of {', '.join(SELECTIONS)}")


def cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A detached CPU copy of a (nested) state dict, to keep the best epoch's weights aside."""
    return {k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else
                cpu_copy(v) if isinstance(v, dict) else copy.deepcopy(v)) for k, v in state.items()}


def to_device(loader: Iterable[dict], device: torch.device, channels_last: bool) -> Iterator[dict]:
    """Loader batches with `image` (and `mask`) moved to `device`, channels-last on CUDA."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        out = dict(batch)
        out["image"] = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        if "mask" in batch:
            out["mask"] = batch["mask"].to(device, non_blocking=True)
        yield out


def loader_length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def multistep_scheduler(optimizer: torch.optim.Optimizer, epochs: int, milestones: Iterable[float],
                        gamma: float) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay at fractions of the epoch count (the 3CAD release: x0.2 at 80% and 90%)."""
    steps = sorted({max(1, int(round(f * epochs))) for f in milestones if 0 < f < 1})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=gamma)


class GradientSync(Protocol):
    """What `train_epochs` asks of a data-parallel group (threecad.harness.distributed.GradientAverager)."""

    is_writer: bool  # this rank saves and removes the epoch checkpoint
    loops: int  # train_epochs calls made under it (0 after a fit: the method did not train here)

    def broadcast_state(self, model: nn.Module) -> None:
        """Give every rank the writer's parameters and buffers."""

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of the optimiser's parameters across ranks."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank the writer's buffers (BatchNorm statistics)."""

    def mean_losses(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Per-key means over every rank's batches."""


@dataclass
class LoopResult:
    """What the epoch loop did, for `Method.info()`.

    `history` has one entry per epoch: `epoch` (1-based), `train_<name>` the epoch's mean
    of each loss the step returns (`train_loss` their sum), and `val_loss` when the fit
    selects on the validation split. It is kept in the epoch checkpoint, so a resumed fit's
    history is complete (a checkpoint written before history existed gives the epochs after it).
    """

    epochs: int
    selected_epoch: int  # 1-based
    resumed_after: int | None  # epochs already done when this fit started, if it resumed
    last_losses: dict[str, float] = field(default_factory=dict)
    val_losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    def facts(self, select: str) -> dict[str, Any]:
        """The loop's facts for a method's `info()` (results.json): which epoch, how chosen."""
        return {"selected_epoch": self.selected_epoch, "selection": select,
                "resumed_after_epoch": self.resumed_after, "final_train_losses": self.last_losses}


def train_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                 step: Callable[[dict], dict[str, torch.Tensor]], train_loader: Iterable[dict], *,
                 epochs: int, device: torch.device, channels_last: bool, work_dir: str | Path | None,
                 select: str = "last", validate: Callable[[Iterable[dict]], float] | None = None,
                 val_loader: Iterable[dict] | None = None, generators: dict[str, torch.Generator] | None = None,
                 batches: Iterable[dict] | None = None, sync: GradientSync | None = None,
                 after_epoch: Callable[[int, int], None] | None = None, desc: str = "train") -> LoopResult:
    """Run the epochs of one category with AMP, an epoch checkpoint and model selection.

    `model` holds the trainable weights (what the checkpoint stores); `step(batch)` returns
    the losses of one batch with `loss` their sum; `validate(val_loader)` returns a loss on
    the validation split (lower is better), used when `select="val"`. `generators` are
    extra random streams (e.g. the anomaly synthesizer's) saved and restored with the rest.
    `batches` is a method's own sampling of `train_loader` (an epoch is one pass over it;
    default: the loader); the loader's shuffle generator and sampler are still the
    loader's. `sync` shares the fit across data-parallel ranks. `after_epoch(epoch, epochs)`
    (1-based) runs on the writer rank after each epoch's checkpoint (the harness's test
    tracking, for the record only).
    """
    check_selection(select)
    if select == "val" and (validate is None or val_loader is None):
        raise ThreecadError("select=val needs a validation split: run `threecad split` on the dataset "
                            "first, or use select=last")
    source = train_loader if batches is None else batches
    n_batches = loader_length(source)
    if n_batches == 0:
        raise ThreecadError("the training loader is empty: no good training images, or batch_size "
                            "larger than the training set with drop_last")
    generators = dict(generators or {})
    if isinstance(getattr(train_loader, "generator", None), torch.Generator):
        generators["train_loader"] = train_loader.generator  # its shuffle order, so a resume repeats it
    if sync is not None:
        sync.loops += 1
    writer = sync is None or sync.is_writer
    checkpoint = EpochCheckpoint(work_dir)
    start, best, best_loss, resumed = 0, None, float("inf"), None
    val_losses: list[float] = []
    history: list[dict[str, float]] = []
    state = checkpoint.load()  # every rank reads the writer's checkpoint (a shared work_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        for name, gen in generators.items():
            if name in state["generators"]:
                gen.set_state(state["generators"][name])
        start = resumed = int(state["epoch"]) + 1
        best, best_loss = state.get("best"), float(state.get("best_loss", float("inf")))
        val_losses = list(state.get("val_losses", []))
        history = [dict(h) for h in state.get("history", [])]  # absent in checkpoints from before history
    if sync is not None:
        sync.broadcast_state(model)
    selected = start
    last: dict[str, float] = {}
    total = n_batches * (epochs - start) if n_batches else None
    with progress_bar(total=total, desc=desc, unit="step") as bar:
        for epoch in range(start, epochs):
            _set_epoch(train_loader, epoch)
            model.train()
            sums: dict[str, float] = {}
            count = 0
            for batch in to_device(source, device, channels_last):
                losses = step(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                if sync is not None:
                    sync.reduce_gradients(optimizer)
                scaler.step(optimizer)
                scaler.update()
                count += 1
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{float(losses['loss'].detach()):.4f}")
            scheduler.step()
            if sync is not None:
                last = sync.mean_losses(sums, count)
                sync.sync_buffers(model)
            else:
                last = {k: v / max(count, 1) for k, v in sums.items()}
            entry: dict[str, float] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in last.items()}}
            if select == "val":
                model.eval()
                with torch.no_grad():
                    val = float(validate(to_device(val_loader, device, channels_last)))
                val_losses.append(val)
                entry["val_loss"] = val
                if val < best_loss:
                    best_loss, best, selected = val, cpu_copy(model.state_dict()), epoch + 1
                log.info("epoch %d/%d: train %s, val loss %.5f", epoch + 1, epochs, _fmt(last), val)
            else:
                selected = epoch + 1
                log.debug("epoch %d/%d: train %s", epoch + 1, epochs, _fmt(last))
            history.append(entry)
            if writer:
                checkpoint.save({
                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "generators": {name: gen.get_state() for name, gen in generators.items()},
                    "best": best, "best_loss": best_loss, "val_losses": val_losses, "history": history})
                if after_epoch is not None:
                    after_epoch(epoch + 1, epochs)
    if select == "val" and best is not None:
        model.load_state_dict(best)
        selected = int(np.argmin(val_losses)) + 1
    if writer:
        checkpoint.remove()
    return LoopResult(epochs=epochs, selected_epoch=selected, resumed_after=resumed,
                      last_losses=last, val_losses=val_losses, history=history)


def _set_epoch(loader: Any, epoch: int) -> None:
    """A DistributedSampler shuffles by (seed, epoch): tell it the epoch, so that a resumed
    fit repeats the order."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)


def _fmt(losses: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
