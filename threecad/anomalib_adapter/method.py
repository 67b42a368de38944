"""One anomalib image model as a threecad method: its own networks, transforms, trainer and maps.

The model is built when it is first needed (fit, a checkpoint, a model card), not when the
harness checks the settings: anything that fails in anomalib (a missing package, a download,
a CUDA-only op) then fails that (method, category) pair, recorded, and the study goes on.

Switched off: anomalib's post-processor (min-max normalisation of maps and scores with the
validation split's statistics, and the F1-optimal thresholds that make `pred_label` and
`pred_mask`), its evaluator and its visualiser. `predict` returns the map and score the
model's torch module computes, and threecad's metrics, protocols and pictures apply to them.
That map is anomalib's own: some models smooth it inside their forward (`smoothing()`), so
the harness adds no smoothing under `standard` (postprocess() is the identity) and the
release's sigma-4 blur under `3cad-paper`, as for every method.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from threecad.anomalib_adapter import training, weights
from threecad.anomalib_adapter.batches import ImageBatches
from threecad.anomalib_adapter.config import AnomalibConfig, constructor_kwargs
from threecad.errors import ThreecadError
from threecad.method import Method
from threecad.postprocess import PostProcess
from threecad.preprocess import Preprocess
from threecad.training import seed_everything

# What the maps of the models checked against threecad's own go through inside their forward
# (read in anomalib 2.7's anomaly map generators); other models: what `smoothing()` finds.
SMOOTHING = {
    "Patchcore": "patch scores upsampled (nearest) to the input, then a Gaussian blur sigma 4 (kernel 33, reflect)",
    "Padim": "distances upsampled (bilinear) to the input, then a Gaussian blur sigma 4 (kernel 33, reflect)",
    "ReverseDistillation": "1 - cosine per scale upsampled (bilinear, align_corners) and summed, then a Gaussian "
                           "blur sigma 4 (kernel 33, reflect)",
    "Fastflow": "none: -exp(-mean(z^2)/2) per scale upsampled (bilinear) and averaged",
    "Draem": "none: the discriminator's softmax anomaly channel",
}


class AnomalibMethod(Method):
    """The base of every `anomalib:NAME` method (threecad.anomalib_adapter.family makes one subclass per model)."""

    model_class: ClassVar[type]  # the anomalib AnomalibModule subclass
    arguments: ClassVar[dict[str, str]]  # config field -> constructor argument
    fixed_arguments: ClassVar[list[str]]  # constructor arguments no `--set` reaches
    export_refusal: ClassVar[str | None] = "an anomalib model exports through anomalib's own Engine.export"

    def __init__(self, config: AnomalibConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        self.module: Any = None  # the AnomalibModule, built by fit or load_state_dict
        self.card_model: Any = None  # the same, without weights, for the model card
        self.backbones: list[dict[str, str]] = []  # the weight files its backbones got
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ building
    def build(self, download: bool) -> tuple[Any, list[weights.Built]]:
        """The anomalib model with the adapter's components; its timm backbones as built (not yet loaded)."""
        kwargs = constructor_kwargs(self.config, self.arguments, self.model_class)
        with weights.timm_builds(self.config.weights, download) as created:
            module = self.model_class(pre_processor=self.pre_processor(), post_processor=False, evaluator=False,
                                      visualizer=False, **kwargs)
        return module, created

    def pre_processor(self):
        """The model's own pre-processor at the config's size; the Normalize statistics of the backbone's
        file where threecad supplies it (threecad.anomalib_adapter.weights)."""
        from torchvision.transforms.v2 import Normalize

        size = (self.config.image_size, self.config.image_size)
        try:
            pre = self.model_class.configure_pre_processor(image_size=size)
        except TypeError:  # a model whose pre-processor has a size of its own
            pre = self.model_class.configure_pre_processor()
        backbone = getattr(self.config, "backbone", None)
        if weights.threecad_supplies(backbone, self.config.weights):
            mean, std = weights.normalisation(backbone)
            for t in getattr(pre.transform, "transforms", [pre.transform]):
                if isinstance(t, Normalize):
                    t.mean, t.std = list(mean), list(std)
        return pre

    def ready(self) -> Any:
        if self.module is None:
            raise ThreecadError(f"{self.name}: predict called before fit or load_state_dict")
        return self.module

    # ------------------------------------------------------------------ the method contract
    def fit(self, train_loader, val_loader=None) -> None:
        if self.gradient_sync is not None:
            raise ThreecadError(f"{self.name} trains through Lightning's loop, not threecad's: --ddp cannot share "
                                "its fit; drop --ddp")
        seed_everything(self.config.seed)
        module, created = self.build(download=True)
        self.backbones = weights.load_backbones(created, self.config.weights)
        epochs, steps = getattr(self.config, "epochs", 1), getattr(self.config, "steps", 0)
        history = training.fit(module, ImageBatches(train_loader), self.device, epochs, steps, self.amp,
                               self.work_dir, self.epoch_hook)
        self.history = [h for h in history if len(h) > 1]
        self.module = module.to(self.device).eval()

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N,3,S,S) in [0,1] -> (the model's scores, its maps at S x S)."""
        module = self.ready()
        module.eval()
        x = module.pre_processor.transform(images.to(self.device)) if module.pre_processor else images
        with self.autocast():
            out = module.model(x)
        scores = out.pred_score.reshape(-1).float()
        maps = out.anomaly_map
        if maps is None:  # an image-level model: its score everywhere
            return scores, scores[:, None, None].expand(-1, *images.shape[-2:]).clone()
        maps = maps.float().reshape(len(images), 1, *maps.shape[-2:])
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return scores, maps[:, 0]

    def preprocess(self) -> Preprocess:
        return Preprocess(size=self.config.image_size)

    def postprocess(self) -> PostProcess:
        """None: the model's forward made its map and score (smoothed or not, `smoothing()`)."""
        return PostProcess()

    def state_dict(self) -> dict[str, Any]:
        module = self.ready()
        return {"model": {k: v.detach().cpu() for k, v in module.state_dict().items()}, "backbones": self.backbones}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "model" not in state:
            raise ThreecadError(f"this checkpoint has no 'model' entry: not a {self.name} state")
        module, _ = self.build(download=False)  # every tensor comes from the checkpoint
        module.load_state_dict(state["model"])
        self.backbones = list(state.get("backbones") or [])
        self.module = module.to(self.device).eval()

    def loss_history(self) -> list[dict[str, float]]:
        return list(self.history)

    # ------------------------------------------------------------------ the model card
    def card_module(self) -> Any:
        """The model for counting: built on the meta device where anomalib allows it, else on the CPU
        (no pretrained weights either way)."""
        if self.card_model is None:
            try:
                with torch.device("meta"):
                    self.card_model, _ = self.build(download=False)
            except Exception:  # noqa: BLE001 - some constructors compute on tensors; the CPU build counts the same
                self.card_model, _ = self.build(download=False)
        return self.card_model

    def parts(self) -> dict[str, nn.Module]:
        """The anomalib model's networks: its torch model's children, and any other child with parameters."""
        module = self.card_module()
        frozen = [m for m in module.modules() if type(m).__name__ == "TimmFeatureExtractor" and not m.requires_grad]
        for m in frozen:  # run under no_grad by anomalib: frozen, whatever requires_grad says
            m.requires_grad_(False)
        if not self.trains_by_gradient:
            module.requires_grad_(False)
        children = [(f"model.{n}", m) for n, m in module.model.named_children()]
        children += [(n, m) for n, m in module.named_children() if n not in ("model", "pre_processor")]
        return {n: m for n, m in children if any(True for _ in m.parameters())} or {"model": module.model}

    def smoothing(self) -> str:
        """What the model does to its map inside its forward, in words."""
        name = self.model_class.__name__
        if name in SMOOTHING:
            return SMOOTHING[name]
        blurs = [m for m in self.card_module().modules() if type(m).__name__ == "GaussianBlur2d"]
        if blurs:
            k = blurs[0].height
            return f"a Gaussian blur in its modules (kernel {k}, sigma about {(k - 1) / 8:g}, {blurs[0].border_type})"
        return "no blur module found (one written inline in its forward would not show here)"

    def card_details(self) -> dict[str, Any]:
        import anomalib

        module = self.card_module()
        transform = module.pre_processor.transform if module.pre_processor else None
        return {
            "anomalib": {"version": anomalib.__version__, "model": f"anomalib.models.{self.model_class.__name__}",
                         "arguments": {a: getattr(self.config, f) for f, a in self.arguments.items()},
                         "not settable": self.fixed_arguments,
                         "transform": " -> ".join(type(t).__name__ for t in getattr(transform, "transforms", [])) or
                         str(transform)},
            "notes": [
                "switched off: anomalib's post-processor (min-max normalisation of maps and scores, F1-optimal "
                "image and pixel thresholds), evaluator and visualiser; maps and scores are the torch model's",
                f"smoothing inside the model's forward: {self.smoothing()}",
                "trainer: Lightning with the model's trainer_arguments, configure_optimizers and callbacks; no "
                "validation loop, no early stopping (anomalib's examples stop on test anomalies)",
                "input: threecad's dataset resizes (PIL bilinear) to image_size; the model's transform then "
                "leaves the size as it is and normalises"],
        }

    def pretrained(self) -> list[tuple[str, str]]:
        return []  # timm names, not threecad backbones: card_details and info() name the files

    def info(self) -> dict[str, Any]:
        import anomalib

        facts: dict[str, Any] = {"anomalib": anomalib.__version__, "backbone_weights": self.backbones}
        if self.history:
            facts["final_train_losses"] = {k: v for k, v in self.history[-1].items() if k != "epoch"}
            facts["epochs_run"] = int(self.history[-1]["epoch"])
        return facts
