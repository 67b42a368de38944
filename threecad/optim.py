"""Optimiser set-up that more than one method's reference uses (UniAD and CRAD today).

Both are written to fit `threecad.training.train_epochs`, which steps the scheduler once per
epoch and steps the optimiser through the AMP scaler.
"""
from __future__ import annotations

import torch


def delayed_step_lr(optimizer: torch.optim.Optimizer, step_size: int, gamma: float) -> torch.optim.lr_scheduler.LambdaLR:
    """StepLR as UniAD/CRAD drive it: `scheduler.step(epoch)` after each epoch puts the decay one epoch late.

    Stepped once per epoch, epoch e (0-based) trains at lr * gamma ** ((e - 1) // step_size)
    (epoch 0 at lr).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (max(e - 1, 0) // step_size))


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the global gradient norm of the optimiser's parameters before every step (0: never).

    A step pre-hook runs inside `GradScaler.step`, after the gradients are unscaled, so
    the norm is that of the true gradients (as the references clip before `optimizer.step`).
    """
    if max_norm <= 0:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def hook(_optimizer, _args, _kwargs) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    optimizer.register_step_pre_hook(hook)
