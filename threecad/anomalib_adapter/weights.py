"""Pretrained backbones of anomalib's models: threecad's offline file where threecad ships the network.

anomalib builds its backbones with `timm.create_model(name, pretrained=...)`, and timm downloads
its own file. The adapter's `weights` setting decides instead, for every timm model the
anomalib model creates (recorded while it is built, `timm_builds`):
- `imagenet`: where threecad ships the same network offline (timm's `tf_efficientnet_lite0` is
  threecad's `efficientnet_lite0`, the TensorFlow release's weights: the same tensors under
  other names, the same features to the last bit, tests/test_anomalib_adapter.py), threecad's
  file, with the input normalisation it was trained with (mean 127/255, std 128/255, not
  anomalib's ImageNet statistics); elsewhere timm's own download, as anomalib does;
- `none`: random initialisation;
- PATH: a state dict in timm's key layout for the backbone.
A model that asks for no pretrained backbone (`pre_trained=false`) gets none, and backbones
built other ways (torchvision's, DTD textures, a model's own downloads) are anomalib's business.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from threecad.backbones import BACKBONES, random_weights, resolve_weights, weights_file, weights_record
from threecad.errors import WeightsUnavailable

# timm architecture -> the threecad backbone whose offline file holds its weights
THREECAD_FILES = {"tf_efficientnet_lite0": "efficientnet_lite0"}


@dataclass
class Built:
    """One timm model an anomalib model created: its architecture, the model, whether it asked for weights."""

    arch: str
    model: nn.Module
    pretrained: bool


def lite0_to_timm(state: dict[str, torch.Tensor], blocks: list[str]) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 in the efficientnet_lite_pytorch layout (`_blocks.3._expand_conv`) -> timm's
    (`blocks.1.1.conv_pw`); `blocks` are timm's block prefixes in order (`blocks.0.0`, ...)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanding = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expansion
    out = {}
    for key, value in state.items():
        layer, rest = key.split(".", 1)
        if layer != "_blocks":
            out[f"{top[layer]}.{rest}"] = value
            continue
        index, layer, rest = rest.split(".", 2)
        names = expanding if f"_blocks.{index}._expand_conv.weight" in state else first
        out[f"{blocks[int(index)]}.{names[layer]}.{rest}"] = value
    return out


def timm_blocks(model: nn.Module) -> list[str]:
    """The `blocks.S.J` prefixes of a timm EfficientNet, in order."""
    found = {tuple(int(p) for p in k.split(".")[1:3]) for k in model.state_dict() if k.startswith("blocks.")}
    return [f"blocks.{s}.{j}" for s, j in sorted(found)]


def threecad_supplies(arch: str | None, weights: str) -> bool:
    """Whether threecad's offline file gives `arch` its ImageNet weights under this setting."""
    return str(weights).lower() == "imagenet" and arch is not None and arch.split(".")[0] in THREECAD_FILES


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the threecad file of `arch` was trained with."""
    spec = BACKBONES[THREECAD_FILES[arch.split(".")[0]]]
    return spec.mean, spec.std


@contextlib.contextmanager
def timm_builds(weights: str, download: bool) -> Iterator[list[Built]]:
    """Record every timm model built inside; timm loads its own file only where `weights` leaves that to
    it (`imagenet` without a threecad file) and `download` allows (not for a model card, not when a
    checkpoint will overwrite the weights)."""
    import timm

    created: list[Built] = []
    original = timm.create_model

    def create(model_name: str, pretrained: bool = False, **kwargs) -> nn.Module:
        arch = model_name.split(".")[0]
        timm_file = download and bool(pretrained) and str(weights).lower() == "imagenet" and arch not in THREECAD_FILES
        model = original(model_name, pretrained=timm_file, **kwargs)
        created.append(Built(arch, model, bool(pretrained)))
        return model

    timm.create_model = create
    try:
        yield created
    finally:
        timm.create_model = original


def load_backbones(created: list[Built], weights: str) -> list[dict[str, str]]:
    """Give every recorded backbone that asked for pretrained weights the file `weights` names;
    returns the files used ({"backbone", "file", "sha256"}) for the run's records."""
    used = []
    for built in created:
        if not built.pretrained or random_weights(weights):
            continue
        if str(weights).lower() == "imagenet":
            if built.arch not in THREECAD_FILES:
                used.append({"backbone": built.arch, "file": "timm's own (downloaded by timm)", "sha256": ""})
                continue
            name = THREECAD_FILES[built.arch]
            state = lite0_to_timm(resolve_weights(name, "imagenet"), timm_blocks(built.model))
            path = weights_file(name, "imagenet")
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsUnavailable(f"weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, _ = built.model.load_state_dict(state, strict=False)
        if missing:
            raise WeightsUnavailable(f"the weights for {built.arch} do not fit it: missing {', '.join(missing[:3])}")
        used.append({"backbone": built.arch, **weights_record(path)})
    return used
