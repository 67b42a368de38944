"""The method API every anomaly-detection method implements, and typed config building.

A method holds its networks and its fit/predict, nothing else: the harness owns loops
over categories, devices, timing, metrics, smoothing and files. A third-party package adds
a method by registering its class under the entry-point group `threecad.methods`.

What a method implements: `fit`, `predict` (raw maps: never smoothed), `state_dict`,
`load_state_dict`; what it declares: `preprocess()` (its reference's input pipeline,
applied by the dataset), `postprocess()` (its paper's smoothing and image-score rule,
applied by the harness under the `standard` protocol) and `parts()` (its named networks,
counted by the model card, `threecad methods NAME`). Gradient-trained methods subclass
`threecad.trained.TrainedMethod`, which writes `fit` once.

Loader batches are dicts: `image` float32 (N,3,S,S) in [0, 1] (not normalised: each
method normalises for its own backbone), `mask` float32 (N,1,M,M), `label` int64 (N,),
`defect_type` list[str], `path` list[str].
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from threecad.errors import ThreecadError
from threecad.postprocess import PostProcess
from threecad.preprocess import Preprocess


PRECISIONS = ("fp32", "amp")


@dataclass
class MethodConfig:
    """Fields every method config has; methods subclass this with their own fields."""

    image_size: int = 256  # input side; images are resized to a square (as the 3CAD release)
    batch_size: int = 8
    seed: int = 42
    precision: str = "fp32"  # "fp32", or "amp": float16 autocast on CUDA (the CPU runs fp32 either way)

    def __post_init__(self) -> None:
        """Checks every config shares; a method adds its own in `validate` (called from here)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ThreecadError(f"config {f.name}={value}: must be a finite number")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ThreecadError(f"config image_size={self.image_size}: must be an integer of at least 16")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ThreecadError(f"config batch_size={self.batch_size}: must be a positive integer")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ThreecadError(f"config seed={self.seed}: must be an integer >= 0")
        if self.precision not in PRECISIONS:
            raise ThreecadError(f"config precision={self.precision}: must be one of {', '.join(PRECISIONS)}")
        self.validate()

    def validate(self) -> None:
        """Method-specific checks; raise ThreecadError naming the field."""


def build_refusal(method_cls: type["Method"], config: MethodConfig, exc: BaseException) -> ThreecadError:
    """The one-line refusal for a method that cannot be built with `config` (bench and the model
    card say the same): a weights file that torch cannot read is named as such."""
    if isinstance(exc, ThreecadError):
        return exc
    first = (str(exc).strip().splitlines() or [""])[0]
    weights = getattr(config, "weights", None)
    if isinstance(weights, str) and _raised_by_torch_load(exc):
        return ThreecadError(f"the weights file {weights} cannot be read as a PyTorch state dict "
                             f"({type(exc).__name__}: {first}); pass a file saved with torch.save")
    return ThreecadError(f"method '{method_cls.name}' cannot be built with this config: {type(exc).__name__}: {first}")


def _raised_by_torch_load(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if name.endswith(("torch/serialization.py", "torch/_weights_only_unpickler.py")):
            return True
        tb = tb.tb_next
    return False


def uses_amp(config: MethodConfig, device: torch.device) -> bool:
    """Whether a method runs under float16 autocast: asked for by its config, and on CUDA."""
    return config.precision == "amp" and device.type == "cuda"


def config_dict(config: MethodConfig) -> dict[str, Any]:
    """The config in its one canonical form (JSON types: tuples become lists).

    run.json stores this form and `--resume` compares it, so a config read back from disk
    and one built fresh compare equal.
    """
    return json.loads(json.dumps(dataclasses.asdict(config)))


class Method(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]  # one line, shown by `threecad methods`
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # preset name -> field overrides of config_class defaults; "paper" and "cpu" at least.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}}
    # What the harness may ask of the class before building it.
    supports_unified: ClassVar[bool] = True  # can fit one model on the union of categories (--setting unified)
    unified_by_default: ClassVar[bool] = False  # its paper trains one model for all categories
    trains_by_gradient: ClassVar[bool] = False  # fits through threecad.training (so --ddp can share a fit)
    # Why `threecad export` cannot make one graph of `predict` (one line, shown by the model card and
    # the refusal), or None when it can: predict in torch ops, with no Python decision on tensor values.
    export_refusal: ClassVar[str | None] = None

    def __init__(self, config: MethodConfig, device: str | torch.device = "cpu", amp: bool = False):
        self.config = config
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        # Set by the harness before `fit`: the folder for resumable training state (None: none kept),
        # and, under `--ddp`, the gradient sync shared by the ranks (a threecad.training.GradientSync).
        self.work_dir: Path | None = None
        self.gradient_sync: Any = None
        self.epoch_hook: Any = None  # called (epoch, epochs) after each training epoch (--track-test-every)
        self.loop: Any = None  # what the last fit's epoch loop did (threecad.training.LoopResult), if any

    @abc.abstractmethod
    def fit(self, train_loader, val_loader=None) -> None:
        """Train (or build memory banks) on good images only."""

    @abc.abstractmethod
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """images (N,3,S,S) in [0,1] on self.device -> (scores (N,) or None, raw maps (N,h,w)).

        Maps are raw: not smoothed (the harness applies `postprocess()`). Scores are given
        only where the method's image score is not a rule on its map (PatchCore's
        reweighted nearest-neighbour distance); None lets the harness apply the rule.
        Called under torch.inference_mode() by the harness; higher is more anomalous.
        """

    def preprocess(self) -> Preprocess:
        """How an image file becomes this method's input (resize library, geometry, channel
        order), as its reference does it; the dataset applies it to training and test images."""
        return Preprocess(size=self.config.image_size)

    def postprocess(self) -> PostProcess:
        """How the harness smooths this method's maps and scores images under `standard`."""
        return PostProcess()

    def parts(self) -> dict[str, nn.Module]:
        """The named networks, as the method's reference lists them, for the model card.

        Parameters count as trainable when `requires_grad`; a part may be a slice of a
        larger network (e.g. the tapped layers of a backbone).
        """
        return {}

    def reference_parts(self) -> dict[str, nn.Module]:
        """Networks the reference builds but this method does not (a whole backbone of which only a
        slice runs), built on the meta device for the model card; never in its total."""
        return {}

    def pretrained(self) -> list[tuple[str, str]]:
        """(backbone, weights setting) of each pretrained network the method loads, for the model
        card. Default: the config's `backbone` or `teacher` with its `weights`; a method whose
        networks load otherwise says so by overriding this."""
        from threecad.backbones import BACKBONES

        weights = getattr(self.config, "weights", None)
        names = [getattr(self.config, key, None) for key in ("backbone", "teacher")]
        return [(name, weights) for name in names if isinstance(name, str) and name in BACKBONES]

    def card_details(self) -> dict[str, Any]:
        """Facts for the model card beyond parts and post-processing (feature taps, shapes)."""
        return {}

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything predict needs, as tensors and plain containers (torch.save-able, weights_only)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ...

    def info(self) -> dict[str, Any]:
        """Facts about the trained model worth recording in results.json (e.g. texture source)."""
        return {}

    def loss_history(self) -> list[dict[str, float]]:
        """Per-epoch losses of the last fit (`self.loop.history`), [] without epochs; the harness
        writes them as the category's loss CSV and curve."""
        return list(getattr(self.loop, "history", None) or [])

    def selected_epoch(self) -> int | None:
        """The epoch the last fit kept when it chose one on the validation split, else None."""
        if getattr(self.config, "select", "last") != "val" or self.loop is None:
            return None
        return self.loop.selected_epoch

    def autocast(self):
        """Mixed precision on CUDA when enabled, a no-op elsewhere."""
        return torch.autocast(device_type=self.device.type, enabled=self.amp)


def _parse_value(raw: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        return _parse_value(raw, kinds[0], key)
    if origin in (tuple, list):  # "3,4,6", also written "[3,4,6]" or "(3, 4, 6)"
        inner = args[0] if args else str
        body = raw.strip()
        if len(body) >= 2 and (body[0], body[-1]) in (("[", "]"), ("(", ")")):
            body = body[1:-1]
        try:
            items = tuple(_parse_value(x.strip(), inner, key) for x in body.split(",") if x.strip())
        except ThreecadError:
            raise ThreecadError(f"--set {key}={raw}: expected comma-separated "
                                f"{getattr(inner, '__name__', inner)} values, e.g. {key}=3,4,6") from None
        return items if origin is tuple else list(items)
    try:
        if kind is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str):
            return kind(raw)
    except ValueError:
        raise ThreecadError(f"--set {key}={raw}: expected {getattr(kind, '__name__', kind)}") from None
    return raw


def build_config(method: type[Method], preset: str | None = None,
                 overrides: Mapping[str, str] | None = None) -> MethodConfig:
    """The method's config: class defaults, then the preset, then `--set key=value` overrides.

    Override values are strings parsed to the field's type; an unknown key or preset is an
    error that lists the valid ones.
    """
    cls = method.config_class
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in method.presets:
            raise ThreecadError(f"method '{method.name}' has no preset '{preset}'; "
                                f"valid: {', '.join(method.presets)}")
        values.update(method.presets[preset])
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise ThreecadError(f"unknown config key '{key}' for method '{method.name}'; "
                                f"valid: {', '.join(sorted(fields))}")
        values[key] = _parse_value(str(raw), hints[key], key) if isinstance(raw, str) else raw
    return cls(**values)


def parse_set_options(items: typing.Iterable[str]) -> dict[str, str]:
    """`key=value` strings from repeated `--set` options into a dict."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ThreecadError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
