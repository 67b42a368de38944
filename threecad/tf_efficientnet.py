"""EfficientNets as TensorFlow's reference and lukemelas' `efficientnet_pytorch` build them.

Why a module of its own: references built on `efficientnet_pytorch` (the 3CAD release's
student, UniAD's and CRAD's backbone) differ from torchvision's EfficientNets in ways that
change every feature map, though their parameters are the same tensors under other names.

`efficientnet_b0_tf` is EfficientNet-B0 as the TensorFlow reference and lukemelas'
`efficientnet_pytorch` (the 3CAD release's student) build it: BatchNorm eps 1e-3 and
momentum 0.01 (TensorFlow's decay 0.99), "same" padding (stride-2 convolutions pad one
pixel less on the top/left than on the bottom/right), PyTorch's default initialisation.
It is torchvision's module with those three changes, so parameter names and counts are
torchvision's; fed the same weights it equals lukemelas' network to float precision
(tested against `efficientnet_pytorch` when installed). torchvision's own `efficientnet_b0`
(eps 1e-5, momentum 0.1, symmetric padding, Kaiming fan-out init) differs in every feature map.

`efficientnet_b4_tf` is EfficientNet-B4 as UniAD's and CRAD's references build it
(lukemelas' `EfficientNet.from_name("efficientnet-b4")`): the same BatchNorm, initialisation
and torchvision module names, but lukemelas' *static* "same" padding, computed once for
the network's image size (380 px for B4) and kept whatever size the input has. Its
"imagenet" file is lukemelas' TensorFlow port, `efficientnet-b4-6ed6700e.pth`, found where
`efficientnet_pytorch` caches it (torch hub's checkpoint folder); its keys are mapped to
torchvision's (`lukemelas_to_torchvision`), so a path may hold either layout.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.errors import WeightsUnavailable


class SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: output ceil(in / stride), the odd pixel of
    padding on the bottom/right (as `efficientnet_pytorch`'s same-padding convolutions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


def _same_padding(module: nn.Module) -> None:
    """Replace every Conv2d under `module` by a SamePadConv2d holding the same parameters."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            conv = SamePadConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 padding=0, dilation=child.dilation, groups=child.groups,
                                 bias=child.bias is not None, device=child.weight.device)
            conv.weight = child.weight
            if child.bias is not None:
                conv.bias = child.bias
            setattr(module, name, conv)
        else:
            _same_padding(child)


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding of one side: (before, after), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticSamePadConv2d(nn.Conv2d):
    """A convolution with fixed zero padding (left, right, top, bottom), as lukemelas'
    `Conv2dStaticSamePadding`: "same" padding computed once for one image size."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=0,
                         dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                         device=conv.weight.device)
        self.weight = conv.weight
        if conv.bias is not None:
            self.bias = conv.bias
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pads), self.weight, self.bias)


def static_same_pads(features: nn.Module, image_size: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(name, (left, right, top, bottom)) of every convolution under `features`, in forward
    order, as lukemelas pads them for `image_size`: each one's padding is computed for the
    size its input has when the network's input is `image_size` (square)."""
    out, size = [], image_size
    for name, m in features.named_modules():
        if isinstance(m, nn.Conv2d):
            (k, _), (s, _), (d, _) = m.kernel_size, m.stride, m.dilation
            before, after = tf_same_pads(size, k, s, d)
            out.append((name, (before, after, before, after)))
            size = -(-size // s)
    return out


def _static_same_padding(features: nn.Module, image_size: int) -> None:
    """Give every convolution under `features` lukemelas' static padding for `image_size`; a
    convolution whose padding is already that (symmetric) is left as it is."""
    for name, pads in static_same_pads(features, image_size):
        parent_name, _, child = name.rpartition(".")
        parent = features.get_submodule(parent_name)
        conv = getattr(parent, child)
        ph, pw = conv.padding
        if pads != (pw, pw, ph, ph):
            setattr(parent, child, StaticSamePadConv2d(conv, pads))


TF_BN_EPS = 1e-3
TF_BN_MOMENTUM = 0.01  # PyTorch's momentum = 1 - TensorFlow's decay (0.99)
B4_TF_IMAGE_SIZE = 380  # lukemelas' (and TensorFlow's) B4 image size: its static padding is for it


def _as_lukemelas_builds(net: nn.Module) -> nn.Module:
    """TensorFlow's BatchNorm settings and PyTorch's default initialisation (a lukemelas network
    from scratch never re-initialises)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = TF_BN_EPS, TF_BN_MOMENTUM
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()
    return net


def build_b0_tf() -> nn.Module:
    """EfficientNet-B0 as `efficientnet_pytorch` builds it from scratch (see the module docstring)."""
    import torchvision

    net = torchvision.models.efficientnet_b0(weights=None)
    _same_padding(net)
    return _as_lukemelas_builds(net)


def build_b4_tf() -> nn.Module:
    """EfficientNet-B4 as lukemelas' `EfficientNet.from_name("efficientnet-b4")` (see the module docstring)."""
    import torchvision

    net = torchvision.models.efficientnet_b4(weights=None)
    _static_same_padding(net.features, B4_TF_IMAGE_SIZE)
    return _as_lukemelas_builds(net)


# lukemelas' names inside a block -> torchvision's, by the block's position (the expansion, when
# present, shifts the rest by one)
_LUKEMELAS_BLOCK = {"_expand_conv": "block.0.0", "_bn0": "block.0.1", "_depthwise_conv": "block.{0}.0",
                    "_bn1": "block.{0}.1", "_se_reduce": "block.{1}.fc1", "_se_expand": "block.{1}.fc2",
                    "_project_conv": "block.{2}.0", "_bn2": "block.{2}.1"}


def lukemelas_to_torchvision(depths: Sequence[int]) -> Callable[[dict], dict]:
    """The key map from lukemelas' EfficientNet state dict to torchvision's, for a network whose
    stages have `depths` blocks. A state already in torchvision's layout passes unchanged."""
    positions = [(stage + 1, block) for stage, n in enumerate(depths) for block in range(n)]
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{len(depths) + 1}.0",
           "_bn1": f"features.{len(depths) + 1}.1", "_fc": "classifier.1"}

    def convert(state: dict) -> dict:
        if "_conv_stem.weight" not in state:
            return state
        out = {}
        for key, value in state.items():
            module, _, tensor = key.rpartition(".")
            parts = module.split(".")
            if len(parts) == 3 and parts[0] == "_blocks" and parts[2] in _LUKEMELAS_BLOCK \
                    and int(parts[1]) < len(positions):
                stage, block = positions[int(parts[1])]
                shift = int(f"_blocks.{parts[1]}._expand_conv.weight" in state)
                name = _LUKEMELAS_BLOCK[parts[2]].format(shift, shift + 1, shift + 2)
                out[f"features.{stage}.{block}.{name}.{tensor}"] = value
            elif module in top:
                out[f"{top[module]}.{tensor}"] = value
            else:
                raise WeightsUnavailable(f"weight {key} has no place in lukemelas' EfficientNet layout")
        return out
    return convert
