"""An anomalib model's constructor as a threecad config: `--set key=value` reaches its arguments.

Why: threecad's configs are dataclasses whose fields `--set`, presets, run.json and `--resume`
read; an anomalib model is configured by its constructor's keyword arguments. So each model's
config class is made from its constructor's signature: one field per argument that one
`--set` string can express (numbers, text, flags, enums by value, lists of those), with the
constructor's default. Arguments that cannot (modules, callables, dtypes) and the four
components the adapter owns (pre- and post-processor, evaluator, visualizer) are not fields;
the model card lists them. An argument whose name threecad's own fields already use
(`precision`, `batch_size`, `image_size`, `epochs`) is a field named `anomalib_<name>`.

The threecad fields: `image_size` and `batch_size` (anomalib's defaults: its pre-processor's
256 px, its datamodules' training batch of 32), `weights` (where pretrained backbones come
from, threecad.anomalib_adapter.weights) and, for models trained by gradient, `epochs` and
`steps` (Lightning's `max_epochs`, `max_steps`). Preset `paper` is anomalib's own settings,
its example configs' epochs included; preset `cpu` is small and offline where threecad ships
the backbone weights (EfficientNet-Lite0), matched to threecad's own cpu presets.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threecad.errors import ThreecadError
from threecad.method import MethodConfig
from threecad.trained import length

OWNED = ("pre_processor", "post_processor", "evaluator", "visualizer")  # set by the adapter
PREFIX = "anomalib_"
SCALARS = (bool, int, float, str)

# max_epochs / max_steps of anomalib's example configs (examples/configs/model/*.yaml, anomalib 2.6),
# for models whose `trainer_arguments` set neither. Their EarlyStopping on the validation split's
# pixel AUROC is not carried over: anomalib's validation split holds test anomalies.
EXAMPLE_EPOCHS = {"Cfa": 30, "Cflow": 50, "Csflow": 240, "Draem": 700, "Dsr": 700, "EfficientAd": 1000,
                  "Fastflow": 500, "Fre": 220, "Ganomaly": 100, "Glass": 100, "InpFormer": 200, "Patchflow": 200,
                  "ReverseDistillation": 200, "Stfpm": 100, "Uflow": 200, "UniNet": 100}
EXAMPLE_STEPS = {"Dinomaly": 5000, "EfficientAd": 70000}
LIGHTNING_EPOCHS = 1000  # Lightning's max_epochs when neither is set (what anomalib's Engine then runs)

# Preset `cpu` of the models that threecad's own methods are checked against (README, "anomalib"):
# EfficientNet-Lite0 from threecad's offline file, tapped where threecad's cpu presets tap it
# (timm names its stride-8, 16 and 32 stages blocks.2, blocks.4 and blocks.6), the same input sizes.
LITE0 = "tf_efficientnet_lite0"
CPU_PRESETS: dict[str, dict[str, Any]] = {
    "Patchcore": {"backbone": LITE0, "layers": ("blocks.2", "blocks.4"), "image_size": 256, "batch_size": 16},
    "Padim": {"backbone": LITE0, "layers": ("blocks.2", "blocks.4"), "n_features": 100, "image_size": 128,
              "batch_size": 16},
    # anomalib's FastFlow and RD build their networks for ResNets only: ResNet-18 (its weights need a download)
    "Fastflow": {"backbone": "resnet18", "image_size": 256, "batch_size": 8, "epochs": 10},
    "ReverseDistillation": {"backbone": "resnet18", "image_size": 256, "batch_size": 4, "epochs": 10},
    "Draem": {"image_size": 128, "batch_size": 8, "epochs": 10},
}
CPU_DEFAULT = {"image_size": 128, "batch_size": 8}
CPU_EPOCHS = 4  # a trained model without its own cpu preset


@dataclass
class AnomalibConfig(MethodConfig):
    image_size: int = 256  # anomalib's default pre-processor resizes to 256 x 256
    batch_size: int = 32  # anomalib's datamodules' train_batch_size
    weights: str = "imagenet"  # pretrained backbones: imagenet | none | PATH (threecad.anomalib_adapter.weights)


@dataclass
class TrainedAnomalibConfig(AnomalibConfig):
    epochs: int = length(1)  # Lightning's max_epochs
    steps: int = length(0)  # Lightning's max_steps; 0: no limit on steps

    def validate(self) -> None:
        if self.epochs < 1 or self.steps < 0:
            raise ThreecadError(f"config epochs={self.epochs}, steps={self.steps}: epochs must be >= 1 "
                                "and steps >= 0 (0: no limit)")


def settable_type(annotation: Any, default: Any) -> Any:
    """The field type `--set` parses for a constructor argument, or None when one string cannot say it."""
    if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
        annotation = type(default) if default is not None else None
    if annotation in SCALARS:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, (enum.Enum, Path)):
        return str
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        inner = {a for a in args if a is not Ellipsis}
        return tuple[args[0], ...] if len(inner) == 1 and args[0] in SCALARS else None
    if annotation is tuple:  # a bare `tuple` annotation: typed by its default
        return tuple[int, ...] if all(isinstance(v, int) for v in (default or ())) else None
    if origin in (typing.Union, types.UnionType):
        kinds = [settable_type(a, None) for a in args if a is not type(None)]
        kinds = [k for k in kinds if k is not None]
        if not kinds:
            return None
        own = settable_type(type(default), None) if default is not None else None
        kind = own if own in kinds else kinds[0]
        return kind | None if type(None) in args else kind
    return None


def plain_default(value: Any) -> Any:
    """A constructor default as a config holds it (JSON types: enums by value, paths as text)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def constructor_fields(model_cls: type) -> tuple[list[tuple[str, Any, Any]], dict[str, str], list[str]]:
    """(dataclass fields, config field -> constructor argument, arguments left at their default)."""
    base = {f.name for f in dataclasses.fields(TrainedAnomalibConfig)}
    fields, names, fixed = [], {}, []
    for p in inspect.signature(model_cls.__init__).parameters.values():
        if p.name == "self" or p.name in OWNED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        kind = settable_type(p.annotation, default)
        if kind is None or p.default is inspect.Parameter.empty:
            fixed.append(p.name)
            continue
        name = PREFIX + p.name if p.name in base else p.name
        fields.append((name, kind, dataclasses.field(default=plain_default(default))))
        names[name] = p.name
    return fields, names, fixed


def config_class(model_cls: type, trained: bool) -> tuple[type[AnomalibConfig], dict[str, str], list[str]]:
    """The model's config class, its field -> argument names and the arguments it cannot set."""
    fields, names, fixed = constructor_fields(model_cls)
    base = AnomalibConfig
    if trained:
        base = TrainedAnomalibConfig
        epochs = EXAMPLE_EPOCHS.get(model_cls.__name__, LIGHTNING_EPOCHS)
        fields += [("epochs", int, length(epochs)), ("steps", int, length(EXAMPLE_STEPS.get(model_cls.__name__, 0)))]
    cls = dataclasses.make_dataclass(f"{model_cls.__name__}Config", fields, bases=(base,))
    cls.__module__ = __name__
    return cls, names, fixed


def presets(model_cls: type, config_cls: type[AnomalibConfig]) -> dict[str, dict[str, Any]]:
    """`paper`: anomalib's settings; `cpu`: the matched cpu preset, or small inputs and few epochs."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    cpu = dict(CPU_PRESETS.get(model_cls.__name__, CPU_DEFAULT))
    if "epochs" in fields and "epochs" not in cpu:
        cpu["epochs"] = min(CPU_EPOCHS, fields["epochs"].default)
    if "steps" in fields and fields["steps"].default:
        cpu["steps"] = 0
    return {"paper": {}, "cpu": {k: v for k, v in cpu.items() if k in fields}}


def constructor_kwargs(config: AnomalibConfig, names: dict[str, str], model_cls: type) -> dict[str, Any]:
    """The constructor's keyword arguments from the config (enums rebuilt from their values)."""
    hints = inspect.signature(model_cls.__init__).parameters
    out = {}
    for field, arg in names.items():
        value = getattr(config, field)
        annotation = hints[arg].annotation
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum) and value is not None:
            value = annotation(value)
        elif isinstance(hints[arg].default, list) and isinstance(value, tuple):
            value = list(value)
        out[arg] = value
    return out
