"""Model cards: what a method builds under a preset, checkable against its reference.

`threecad methods NAME [--preset P] [--json]` prints the card: description, presets and the
chosen preset's config, the parameter count of each named part (trainable and frozen), the
input size, feature taps, the input pipeline and the post-processing, the precision, the
setting a run takes by default, which epoch it keeps and whether `threecad export` can make one
graph of it (`export`); `reference_parts` lists networks the reference builds but threecad does
not (counted for comparison, outside the total). The networks are built on PyTorch's `meta`
device with pretrained-weight loading switched off, so a card costs no download and almost no
memory even for RealNet's half-billion parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from threecad.backbones import describe_weights
from threecad.choices import default_setting
from threecad.errors import ThreecadError
from threecad.method import Method, build_config, build_refusal, config_dict


def count_parameters(module: torch.nn.Module) -> dict[str, int]:
    """Trainable (requires_grad) and frozen parameter counts of one part; shared tensors count once."""
    trainable = frozen = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"trainable": trainable, "frozen": frozen}


def build_for_card(method_cls: type[Method], preset: str | None = None,
                   overrides: dict[str, str] | None = None) -> Method:
    """The method as `preset` builds it, on the meta device, without pretrained weights."""
    from threecad.backbones import architecture_only

    config = build_config(method_cls, preset, overrides)
    try:
        with architecture_only(), torch.device("meta"):
            method = method_cls(config, device="meta")
    except Exception as exc:  # noqa: BLE001 - refused in the one line bench would print
        refusal = build_refusal(method_cls, config, exc)
        if refusal is exc:
            raise
        raise refusal from exc
    _check_weights_files(method)
    return method


def _check_weights_files(method: Method) -> None:
    """A weights file the config names must exist, as bench requires (the card loads none)."""
    from threecad.backbones import random_weights

    named = getattr(method.config, "weights", None)
    for _, weights in method.pretrained():
        if weights != named or random_weights(weights) or str(weights).lower() == "imagenet":
            continue
        if not Path(weights).expanduser().is_file():
            raise ThreecadError(f"weights file {Path(weights).expanduser()} does not exist")


def selection_rule(method: Method) -> str:
    """Which trained state a run keeps, in words (never the test set)."""
    if not method.trains_by_gradient:
        return "none (the model is built in one pass over the good training images)"
    if getattr(method.config, "select", "last") == "val":
        return "the epoch with the lowest loss on the validation split (select=val)"
    if getattr(method, "validates", lambda: False)():
        return "the last epoch (select=last; select=val: the lowest validation loss)"
    return "the last epoch (it defines no validation loss)"


def export_rule(method_cls: type[Method]) -> str:
    """What `threecad export` makes of a trained model, in words."""
    if method_cls.export_refusal:
        return f"refused: {method_cls.export_refusal}"
    return "onnx or torchscript: one graph from the preprocessed image to the map and score (threecad export)"


def model_card(method_cls: type[Method], preset: str | None = None,
               overrides: dict[str, str] | None = None) -> dict[str, Any]:
    preset = preset or ("paper" if "paper" in method_cls.presets else next(iter(method_cls.presets)))
    method = build_for_card(method_cls, preset, overrides)
    parts = {name: count_parameters(module) for name, module in method.parts().items()}
    if not parts:
        raise ThreecadError(f"method '{method_cls.name}' declares no parts (Method.parts) for its model card")
    return {
        "name": method_cls.name,
        "description": method_cls.description,
        "presets": {name: dict(values) for name, values in method_cls.presets.items()},
        "preset": preset,
        "config": config_dict(method.config),
        "input_size": method.config.image_size,
        "parts": parts,
        # parts may overlap (a whole network and the slice of it that runs): count each tensor once
        "total": count_parameters(torch.nn.ModuleList(method.parts().values())),
        "reference_parts": {name: count_parameters(module) for name, module in method.reference_parts().items()},
        "preprocess": method.preprocess().as_dict(),
        "postprocess": method.postprocess().as_dict(),
        "pretrained": [describe_weights(name, weights) for name, weights in method.pretrained()],
        "precision": method.config.precision,
        "setting": default_setting(method_cls, preset),
        "selection": selection_rule(method),
        "export": export_rule(method_cls),
        **method.card_details(),
    }


def paper_presets_markdown() -> str:
    """What every registered method's paper preset reads, computes in and keeps, as a Markdown
    table (the README's; a test keeps the two equal)."""
    from threecad.registry import available_methods

    lines = ["| method | input pipeline | precision | setting | selection | pretrained file |",
             "|---|---|---|---|---|---|"]
    for name, cls in available_methods().items():
        if isinstance(cls, Exception):
            continue
        card = model_card(cls, "paper")
        pre = card["preprocess"]
        pipeline = f"{pre['size']} px, {pre['library']}, {pre['colour']}, " + (
            f"shorter side {pre['resize_to']} + centre crop" if pre["geometry"] == "shorter_side_crop" else "squashed")
        files = ", ".join(f"`{Path(w['file']).name}`" if w["file"] else w["weights"] for w in card["pretrained"])
        lines.append(f"| `{name}` | {pipeline} | {card['precision']} | {card['setting']} | "
                     f"{card['selection'].split(' (')[0]} | {files or 'none'} |")
    return "\n".join(lines) + "\n"
