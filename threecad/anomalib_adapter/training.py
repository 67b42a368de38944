"""An anomalib model's fit, as anomalib's Engine runs it: Lightning's Trainer with the model's own
`trainer_arguments`, optimiser and schedule (`configure_optimizers`), pre-processor callback and
memory-bank fit, on threecad's device.

What differs from `Engine.fit`, on purpose: no validation loop (threecad's validation split holds
good images only, and anomalib's EarlyStopping on a validation pixel AUROC would select on test
anomalies), no checkpoint, logger or progress bar, and the epoch and step limits of the config.
The training loss that the model logs each epoch is kept as the run's loss history.

The heap is handed back to the system while the fit runs (`returned_heap`): anomalib's k-center
coreset (PatchCore's memory bank) allocates an (N x k) difference per selected point, and with
glibc's malloc the freed blocks left holes that small allocations split, so each step took new
memory until the kernel killed the study for it, on a few dozen training images. Trimming the
free heap twice a second keeps it bounded.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

# Trainer arguments the adapter sets itself: a model's own value for these is not applied
ADAPTER_OWNS = ("accelerator", "devices", "logger", "enable_checkpointing", "default_root_dir", "callbacks")


def trainer_arguments(module, device: torch.device, epochs: int, steps: int, amp: bool,
                      root: Path) -> dict[str, Any]:
    """Lightning Trainer arguments: the config's length, threecad's device, then the model's own
    arguments over them (as anomalib's Engine applies `trainer_arguments`)."""
    args: dict[str, Any] = {
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "devices": [device.index or 0] if device.type == "cuda" else 1,
        "max_epochs": epochs, "max_steps": steps or -1, "precision": "16-mixed" if amp else "32-true",
        "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
        "default_root_dir": str(root),
    }
    args.update({k: v for k, v in module.trainer_arguments.items() if k not in ADAPTER_OWNS})
    return args


@contextlib.contextmanager
def returned_heap(interval_s: float = 0.5):
    """Inside: glibc's free heap pages go back to the system every `interval_s` (nothing elsewhere)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            trim(0)

    thread = threading.Thread(target=run, name="threecad-malloc-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def quiet_lightning():
    """Inside: Lightning's notices (accelerators found, tips) stay out of the run's log; warnings pass."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit(module, batches, device: torch.device, epochs: int, steps: int, amp: bool, work_dir: Path | None,
        epoch_hook: Callable[[int, int], None] | None) -> list[dict[str, float]]:
    """Train `module` (an AnomalibModule) on `batches`; returns one dict of logged losses per epoch."""
    from lightning.pytorch import Callback, Trainer

    history: list[dict[str, float]] = []

    class Epochs(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            losses = {f"train_{k.removeprefix('train_').removesuffix('_epoch')}": float(v)
                      for k, v in trainer.callback_metrics.items() if k.endswith("_epoch") or k == "train_loss"}
            history.append({"epoch": trainer.current_epoch + 1, **losses})
            if epoch_hook is not None:
                epoch_hook(trainer.current_epoch + 1, trainer.max_epochs)

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(), returned_heap(), quiet_lightning():
        # Lightning's advice on loader workers and logging intervals concerns its own loaders, not threecad's
        warnings.filterwarnings("ignore", module="lightning")
        root = Path(work_dir) if work_dir is not None else Path(scratch)
        trainer = Trainer(callbacks=[Epochs()], **trainer_arguments(module, device, epochs, steps, amp, root))
        trainer.fit(module, train_dataloaders=batches)
    return history
