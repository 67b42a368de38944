"""CFRG's three losses, each weighted 1 as in the release.

- discrimination: the student should match the teacher on normal pixels and differ from it
  on anomalous ones: mean over pixels of d (1 - M) + (1 - d) M with d = 1 - cos(T_a, S)
  upsampled to the mask, averaged over the three scales;
- recovery: the recovery branch fed T(x_a) should output T(x_n): sum over scales of
  1 - cos between the flattened maps (RD's loss);
- segmentation: binary cross-entropy of the U-Net's logits against the synthetic mask.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from threecad.distillation import cosine_distance, flattened_cosine_loss


def discrimination_loss(teacher_anomalous: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                        masks: torch.Tensor) -> torch.Tensor:
    masks = masks.float()
    total = masks.new_zeros(())
    for t, s in zip(teacher_anomalous, student):
        d = F.interpolate(cosine_distance(t, s).unsqueeze(1), size=masks.shape[-2:], mode="bilinear",
                          align_corners=False)
        total = total + (d * (1 - masks) + (1 - d) * masks).mean()
    return total / len(student)


def recovery_loss(teacher_normal: Sequence[torch.Tensor], recovered: Sequence[torch.Tensor]) -> torch.Tensor:
    return flattened_cosine_loss(teacher_normal, recovered)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(logits.float(), masks.float())
