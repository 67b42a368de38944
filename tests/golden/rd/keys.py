"""Where each tensor of our RD networks sits in the references' networks, for the make_golden scripts.

RD4AD (hq-deng/RD4AD) and the 3CAD release (CFRG's recovery branch) define the same classes:
a torchvision-style ResNet encoder, `BN_layer` (the one-class bottleneck) and
`de_wide_resnet50_2` (the decoder). Both scripts copy `threecad.distillation`'s networks and
our teacher into them by these name maps; a reference tensor mapped to None is one ours lacks
and the reference's forward pass never uses (the encoder's layer4 and fc, whose output is
discarded or not computed; the bottleneck's conv4/bn4, never called).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


def encoder_key(k: str) -> str | None:
    """torchvision ResNet name -> our FeatureExtractor's (stem, then layer1-3 as stages 1-3)."""
    if k.startswith(("layer4.", "fc.")):
        return None
    for prefix, ours in (("conv1.", "stages.0.0."), ("bn1.", "stages.0.1."),
                         ("layer1.", "stages.1."), ("layer2.", "stages.2."), ("layer3.", "stages.3.")):
        if k.startswith(prefix):
            return ours + k[len(prefix):]
    raise KeyError(k)


_FUSION = {"conv1": "down1.0", "bn1": "down1.1", "conv2": "down1.3", "bn2": "down1.4",
           "conv3": "down2.0", "bn3": "down2.1"}


def bottleneck_key(k: str) -> str | None:
    """`BN_layer` name -> `OneClassBottleneck`'s."""
    head, _, rest = k.partition(".")
    if head in ("conv4", "bn4"):
        return None
    if head in _FUSION:
        return f"{_FUSION[head]}.{rest}"
    if head == "bn_layer":
        return "embed." + rest.replace("downsample.", "shortcut.")
    raise KeyError(k)


def decoder_key(k: str) -> str:
    """`de_wide_resnet50_2` name -> `MirroredDecoder`'s."""
    for i in (1, 2, 3):
        if k.startswith(f"layer{i}."):
            return f"stages.{i - 1}." + k[len(f"layer{i}."):].replace("upsample.", "shortcut.")
    raise KeyError(k)


def copy_into(reference: nn.Module, ours: nn.Module, key: Callable[[str], str | None]) -> int:
    """Every tensor of `ours` into `reference` under the mapped name, each used once, shapes
    equal; the reference's unmapped tensors keep their values. Returns the number copied."""
    state, own = reference.state_dict(), ours.state_dict()
    mapped = {k: key(k) for k in state}
    used = [v for v in mapped.values() if v is not None]
    assert sorted(used) == sorted(own), (sorted(set(own) - set(used))[:5], sorted(set(used) - set(own))[:5])
    for k, v in mapped.items():
        if v is not None:
            assert state[k].shape == own[v].shape, (k, v, tuple(state[k].shape), tuple(own[v].shape))
            state[k] = own[v].detach().clone()
    reference.load_state_dict(state, strict=True)
    return len(used)
