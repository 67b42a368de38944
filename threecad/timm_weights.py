"""Backbone weights as timm publishes them, for references that load their backbone through timm.

`timm.create_model(name, pretrained=True)` loads timm's own file for `name`, which need not be
torchvision's. RealNet pins timm 0.5.4, whose `wide_resnet50_2` is a WideResNet-50 that timm
retrained (`wide_resnet50_racm-8234f177.pth`), not torchvision's `wide_resnet50_2-95faca4d.pth`.
A config names such a file by a key of `TIMM_WEIGHTS` (`weights=timm_racm`); it is found:
1. in torch hub's checkpoint folder under the name timm's release gives it (where timm itself
   caches it, so a machine that ran the reference has it);
2. on the Hugging Face Hub, where timm publishes them (timm's registry gives
   `wide_resnet50_2.racm_in1k` both the release URL and the Hub repository; the Hub holds the
   state dict as `pytorch_model.bin`): the local Hugging Face cache first, then a download,
   never when THREECAD_OFFLINE=1.
A local copy of either file works as `weights=PATH`.

Key layout: timm's ResNets name their tensors as torchvision's (conv1, bn1, layer1.0.downsample.0,
..., fc). Built from timm 0.5.4's classes, `wide_resnet50_2` has torchvision's 320 state-dict
keys with the same shapes and computes the same outputs from the same tensors, so the file
loads into threecad's torchvision-built backbone as it is; the backbone's own check refuses a
file that lacks any tensor it needs.

The weight file's sha256 goes into the run's method info (`backbone_weights`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from threecad.backbones import offline, random_weights, weights_record
from threecad.errors import WeightsUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimmWeights:
    """One weight file timm publishes: the backbone it fits and where it is found."""

    backbone: str  # the threecad backbone (threecad.backbones.BACKBONES) its tensors fit
    file: str  # the release file's name, as torch hub caches it
    hub_repo: str  # the Hugging Face Hub repository timm publishes it in
    reference: str  # who loads it, for messages and the model card
    hub_file: str = "pytorch_model.bin"  # timm's Hub upload of the state dict (torch.save)

    def cached_file(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file


TIMM_WEIGHTS: dict[str, TimmWeights] = {
    "timm_racm": TimmWeights("wide_resnet50_2", "wide_resnet50_racm-8234f177.pth", "timm/wide_resnet50_2.racm_in1k",
                             "timm 0.5.4's wide_resnet50_2(pretrained=True)"),
}


def _hub_cache() -> str | None:
    """The Hugging Face cache folder, read at call time (the library reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _unavailable(spec: TimmWeights, why: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"the weights of {spec.reference} are not available ({why}). Put {spec.file} in "
        f"{spec.cached_file().parent}, or unset THREECAD_OFFLINE to fetch them from the Hugging Face Hub "
        f"({spec.hub_repo}), or pass a local copy with `--set weights=PATH`.")


def local_timm_file(name: str) -> Path | None:
    """The timm weights `name` (a key of TIMM_WEIGHTS) already on disk: torch hub's checkpoint
    folder, then the Hugging Face cache; None when neither holds them (nothing is downloaded)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    spec = TIMM_WEIGHTS[name]
    if spec.cached_file().is_file():
        return spec.cached_file()
    try:
        return Path(hf_hub_download(spec.hub_repo, spec.hub_file, cache_dir=_hub_cache(), local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def timm_weights_file(name: str) -> Path:
    """The local file of the timm weights `name`, downloaded from the Hub if it is not on disk and
    THREECAD_OFFLINE is unset."""
    from huggingface_hub import hf_hub_download

    spec = TIMM_WEIGHTS[name]
    local = local_timm_file(name)
    if local is not None:
        return local
    if offline():
        raise _unavailable(spec, f"not in {spec.cached_file().parent} nor the Hugging Face cache, "
                                 "and THREECAD_OFFLINE is set")
    try:
        log.info("downloading %s/%s (%s)", spec.hub_repo, spec.hub_file, spec.reference)
        return Path(hf_hub_download(spec.hub_repo, spec.hub_file, cache_dir=_hub_cache()))
    except Exception as exc:  # noqa: BLE001 - any download failure ends in the same advice
        raise _unavailable(spec, f"download failed: {type(exc).__name__}") from None


def backbone_weights(weights: str, meta: bool = False) -> tuple[str, dict[str, str]]:
    """A config's `weights` -> (the setting `FeatureExtractor` takes, the record for the run's
    method info: the setting, and the file read with its sha256 when one is). A timm name
    becomes its file's path; on the meta device (model cards) no file is looked up."""
    record = {"weights": str(weights)}
    if meta:
        return ("none" if weights in TIMM_WEIGHTS else weights), record
    if weights in TIMM_WEIGHTS:
        path = timm_weights_file(weights)
    elif random_weights(weights) or str(weights).lower() == "imagenet":
        return weights, record
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"weights file {path} does not exist")
    record.update(weights_record(path))
    return str(path), record
