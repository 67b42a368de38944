"""DeSTSeg (Zhang et al., CVPR 2023) on the harness: `threecad bench --method destseg`.

A frozen ImageNet teacher and a randomly initialised student of the same architecture (its
encoder to stride 32, then a decoder of residual blocks back to the teacher's three taps)
are trained as a *denoising* pair: the student sees a synthetic anomaly and must give the
teacher's features of the clean image. A segmentation network (two residual blocks and an
ASPP head) then learns to find the anomaly from the product of their L2-normalised
features. The map is the segmentation's sigmoid at stride 4, upsampled bilinearly to the
input; the image score is the mean of its `top_k` (the reference: 100) largest pixels, declared
in `postprocess` and applied by the harness.

Preset `paper` is apple/ml-destseg's MVTec setting: ResNet-18 teacher (strides 4/8/16),
256 px, ImageNet normalisation, batch 32 with incomplete batches dropped, 5000 steps with no
learning-rate schedule: steps 0..999 train the student only (SGD lr 0.4, momentum 0.9, weight
decay 1e-4; loss: for each tap, 1 - cos summed over the batch and averaged over pixels, as the
reference sums it), steps 1000..4999 the segmentation network only (SGD momentum 0.9, weight
decay 1e-4, lr 0.1 for the residual blocks and 0.01 for the head; loss: focal (gamma 4) + L1
against the anomaly mask resized bilinearly to the output and binarised at 0.5). The two
reference optimisers are one SGD here with three parameter groups: a group whose parameters
get no gradient in a phase is skipped by SGD, so each phase updates exactly what the reference
updates. The student runs in eval mode (running BatchNorm statistics) during phase 2, as in
the reference. Anomalies are DRAEM's Perlin masks with an unaugmented random DTD texture on
every sample, empty masks kept (preset `paper`: the synthesizer's `draw="destseg"`, as its
reference draws them; preset `cpu`: `draw="release"` without keys); DTD comes
from `dtd_root` or `threecad download --dataset dtd`, else procedural textures with one warning
and `texture_source: procedural`.

Steps, not epochs: the harness loop (`threecad.training.train_epochs`) is epoch-based, so an
"epoch" here is a run of whole passes over the training set of at least `steps_per_checkpoint`
steps; the epoch checkpoint (and `--resume`) lands on those boundaries, and the last epoch
stops at `steps`. The step counter travels in the checkpointed state.

Model selection: the last step (as the reference, which evaluates on the test set only to log).

Teacher weights: torchvision's `resnet18-f37072fd.pth`; the reference's timm 0.6.12 loads
`resnet18-5c106cde.pth` for `resnet18`. Whether the two files hold the same tensors is not yet
checked (the model card says so); `weights=PATH` loads the reference's file.

Departures: the reference's per-category rotations of MVTec's normal images (90-degree turns
and +-5 degrees for some categories) are left out: 3CAD categories are aligned parts and the
reference defines none for them. Preset `cpu` uses the offline EfficientNet-Lite0 as teacher
and a randomly initialised Lite0 as student encoder (the student mirrors the teacher, as in the
reference), a narrower segmentation network, 128 px, procedural textures and a few hundred steps.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threecad.anomaly_synthesis import SynthesisConfig
from threecad.backbones import BACKBONES, FeatureExtractor, random_weights
from threecad.errors import ThreecadError
from threecad.losses import binary_focal_loss
from threecad.postprocess import PostProcess
from threecad.trained import TrainedConfig, TrainedMethod, TrainingSetup, length, seeded_weights
from threecad.training import multistep_scheduler

log = logging.getLogger(__name__)

MAP_SOURCES = ("segmentation", "dest")
REFERENCE_TEACHER_FILE = "resnet18-5c106cde.pth"  # what the reference's timm 0.6.12 loads for resnet18


@dataclass
class DeSTSegConfig(SynthesisConfig, TrainedConfig):
    image_size: int = 256  # inputs resized to a square, as the reference (256x256)
    batch_size: int = 32  # incomplete batches are dropped (the reference's drop_last)
    seed: int = 42
    teacher: str = "resnet18"  # frozen, tapped at strides 4/8/16; the student is a random copy to stride 32
    weights: str = "imagenet"  # teacher weights: imagenet | none | PATH to a state dict
    steps: int = length(5000)  # optimisation steps in all
    student_steps: int = length(1000, "half")  # the first steps train the student; the rest the segmentation network
    lr_student: float = 0.4
    lr_seg_res: float = 0.1  # segmentation residual blocks
    lr_seg_head: float = 0.01  # segmentation ASPP head
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 4.0  # focal-loss exponent
    seg_channels: int = 256  # width of the segmentation network
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    draw: str = "destseg"  # the reference's draw (threecad.anomaly_synthesis); the cpu preset: "release"
    top_k: int = 100  # image score: mean of the top_k largest map pixels (at image_size)
    map_source: str = "segmentation"  # "dest": the product over taps of 1 - cos (the reference's DeST map)
    steps_per_checkpoint: int = length(250, "one")  # epoch checkpoint at least this often (rounded up to whole passes)

    def validate(self) -> None:
        if self.map_source not in MAP_SOURCES:
            raise ThreecadError(f"config map_source={self.map_source}: must be one of {', '.join(MAP_SOURCES)}")
        if self.batch_size < 2:
            raise ThreecadError(f"config batch_size={self.batch_size}: must be at least 2 (the ASPP's pooled "
                                "branch has BatchNorm over one value per image)")
        if self.steps < 1:
            raise ThreecadError(f"config steps={self.steps}: must be at least 1")
        if not 0 <= self.student_steps <= self.steps:
            raise ThreecadError(f"config student_steps={self.student_steps}: must be between 0 and steps={self.steps}")
        for name in ("lr_student", "lr_seg_res", "lr_seg_head", "momentum", "weight_decay", "gamma"):
            if getattr(self, name) < 0:
                raise ThreecadError(f"config {name}={getattr(self, name)}: must be >= 0")
        if self.seg_channels < 1:
            raise ThreecadError(f"config seg_channels={self.seg_channels}: must be a positive integer")
        if not self.aspp_rates or any(r < 1 for r in self.aspp_rates):
            raise ThreecadError(f"config aspp_rates={self.aspp_rates}: must be positive dilation rates")
        if self.top_k < 1:
            raise ThreecadError(f"config top_k={self.top_k}: must be a positive integer")
        if self.steps_per_checkpoint < 1:
            raise ThreecadError(f"config steps_per_checkpoint={self.steps_per_checkpoint}: must be at least 1")


# --------------------------------------------------------------------------- networks
def residual_stage(cin: int, cout: int, blocks: int = 2) -> nn.Sequential:
    """`blocks` ResNet basic blocks, the first projecting cin -> cout with a 1x1 conv + BN shortcut."""
    from torchvision.models.resnet import BasicBlock

    shortcut = None
    if cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, downsample=shortcut)]
    layers += [BasicBlock(cout, cout) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _kaiming(module: nn.Module) -> None:
    """He init (fan-out) for convolutions, BatchNorm at 1/0: what the reference applies to its decoders."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a global-pool branch and one dilated 3x3 branch per rate,
    concatenated and fused by a 3x3 conv (each conv with BatchNorm and ReLU)."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]):
        super().__init__()
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(cin, cout, 1))
        self.branches = nn.ModuleList(_conv_bn_relu(cin, cout, 1 if r == 1 else 3, r) for r in rates)
        self.fuse = _conv_bn_relu((1 + len(rates)) * cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pooled(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([pooled] + [b(x) for b in self.branches], dim=1))


class SegmentationNet(nn.Module):
    """Residual blocks (kaiming init, as the reference) then the ASPP head (PyTorch's default init:
    the reference creates it after its init loop) -> one sigmoid channel."""

    def __init__(self, cin: int, width: int = 256, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.res = residual_stage(cin, width)
        _kaiming(self.res)
        self.head = nn.Sequential(ASPP(width, width, rates), _conv_bn_relu(width, width, 3), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N,1,h,w); the sigmoid is applied by the caller in float32."""
        return self.head(self.res(x))


class StudentNet(nn.Module):
    """A randomly initialised copy of the teacher to stride 32, then a decoder of residual stages
    (c4 -> c4 -> c3 -> c2 -> c1, bilinear upsampling between them) that outputs the teacher's taps."""

    def __init__(self, backbone: str, teacher_channels: Sequence[int]):
        super().__init__()
        self.encoder = FeatureExtractor(backbone, strides=(32,), weights="none", trainable=True)
        if backbone.startswith("resnet"):  # timm's ResNet init: the last BatchNorm of each block at zero
            for m in self.encoder.modules():
                if hasattr(m, "bn2") and hasattr(m, "conv2") and not hasattr(m, "bn3"):
                    nn.init.zeros_(m.bn2.weight)
        c1, c2, c3 = teacher_channels
        c4 = self.encoder.channels[0]
        self.decoder = nn.ModuleList([residual_stage(c4, c4), residual_stage(c4, c3),
                                      residual_stage(c3, c2), residual_stage(c2, c1)])
        _kaiming(self.decoder)

    def forward(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """images (N,3,S,S) in [0,1], `sizes` the teacher's map sizes shallow first -> 3 maps, shallow first."""
        x = self.decoder[0](self.encoder(images)[0])
        out = []
        for stage, size in zip(self.decoder[1:], reversed(sizes)):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            out.append(x)
        return out[::-1]


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / (||x|| + eps) over channels, in float32 (the reference's normalisation)."""
    x = x.float()
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class DeSTSegNet(nn.Module):
    """Teacher, student and segmentation network; `trainable` is what the optimiser and checkpoint hold."""

    def __init__(self, teacher: str, weights: str, seg_channels: int, rates: Sequence[int]):
        super().__init__()
        self.teacher = FeatureExtractor(teacher, strides=(4, 8, 16), weights=weights)
        self.student = StudentNet(teacher, self.teacher.channels)
        self.segmentation = SegmentationNet(sum(self.teacher.channels), seg_channels, rates)
        # steps done travel with the weights in the epoch checkpoint (resume continues the count)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [l2_normalize(f) for f in self.teacher(images)]

    def student_features(self, images: torch.Tensor, sizes) -> list[torch.Tensor]:
        return [l2_normalize(f) for f in self.student(images, sizes)]

    def segment(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        """Seg logits (N,1,h,w) from the negated product of normalised features, at the first tap's size."""
        size = teacher[0].shape[-2:]
        x = torch.cat([F.interpolate(-t * s, size=size, mode="bilinear", align_corners=False)
                       for t, s in zip(teacher, student)], dim=1)
        return self.segmentation(x)


def cosine_distances(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per tap, 1 - cos between normalised features, (N,1,h,w)."""
    return [1 - (t * s).sum(dim=1, keepdim=True) for t, s in zip(teacher, student)]


def denoising_loss(distances: list[torch.Tensor]) -> torch.Tensor:
    """The reference's cosine loss: per tap, 1 - cos summed over the batch and averaged over pixels."""
    return sum(d.sum() / (d.shape[-2] * d.shape[-1]) for d in distances)


def segmentation_losses(probs: torch.Tensor, masks: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """Focal + L1 of sigmoid probabilities (N,1,h,w) against masks (N,1,S,S) resized and binarised."""
    target = F.interpolate(masks.float(), size=probs.shape[-2:], mode="bilinear", align_corners=False)
    target = (target >= 0.5).float()
    return {"focal": binary_focal_loss(probs, target, gamma=gamma), "l1": F.l1_loss(probs, target)}


# --------------------------------------------------------------------------- step-counted loader
class _StepLoader:
    """The batches of one "epoch": `passes` whole passes over the loader (incomplete batches
    dropped), ending early once `total` steps are done.

    `done` is read from the model's step counter at each epoch start, so a resumed run continues
    the count.
    """

    def __init__(self, loader, full: int, per_pass: int, passes: int, total: int, net: DeSTSegNet):
        self._loader, self.full, self.passes, self.total, self.net = loader, full, passes, total, net
        self.per_pass = per_pass
        self.step = 0  # the global step of the batch being yielded

    def __len__(self) -> int:
        return self.per_pass * self.passes

    def __iter__(self) -> Iterator[dict]:
        done = int(self.net.steps_done)
        for _ in range(self.passes):
            for batch in self._loader:
                if done >= self.total:
                    return
                if len(batch["image"]) < self.full:  # the reference's drop_last
                    continue
                self.step = done
                yield batch
                done += 1


def _drops_last(loader) -> bool:
    return bool(getattr(loader, "drop_last", False))


# --------------------------------------------------------------------------- the method
class DeSTSeg(TrainedMethod):
    name = "destseg"
    description = "DeSTSeg (CVPR 2023): denoising student-teacher with a segmentation network"
    config_class = DeSTSegConfig
    presets = {
        "paper": {},
        # Offline EfficientNet-Lite0 teacher and a random Lite0 student encoder (no download), 128 px,
        # batch 4, a 64-wide segmentation network, procedural textures, 150 + 150 steps. Student lr
        # 0.1 instead of 0.4: a more cautious step for a from-scratch Lite0 (ReLU6, depthwise
        # convolutions) on a loss summed over the batch; its training loss falls steadily. top_k 25
        # keeps the reference's fraction of the map (100 of 256x256 pixels) at 128 px. Not 96 px:
        # on an earlier synthetic set (generator 2) both ACC and AI scored clearly lower there.
        "cpu": {"teacher": "efficientnet_lite0", "image_size": 128, "batch_size": 4, "steps": 300,
                "student_steps": 150, "lr_student": 0.1, "seg_channels": 64, "textures": "procedural",
                "top_k": 25, "steps_per_checkpoint": 100, "draw": "release"},
    }

    def __init__(self, config: DeSTSegConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        with seeded_weights(config.seed):
            self.net = DeSTSegNet(config.teacher, config.weights, config.seg_channels,
                                  config.aspp_rates).to(self.device)
        self.net.eval()
        self.texture_source: str | None = None
        self._recent: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ training
    def optimizer(self) -> torch.optim.SGD:
        """One SGD with the reference's three parameter groups (student; segmentation res; head)."""
        cfg, net = self.config, self.net
        return torch.optim.SGD([
            {"params": list(net.student.parameters()), "lr": cfg.lr_student},
            {"params": list(net.segmentation.res.parameters()), "lr": cfg.lr_seg_res},
            {"params": list(net.segmentation.head.parameters()), "lr": cfg.lr_seg_head},
        ], lr=cfg.lr_seg_head, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def losses(self, normal: torch.Tensor, anomalous: torch.Tensor, masks: torch.Tensor,
               phase: str) -> dict[str, torch.Tensor]:
        """The losses of one step; phase "student" (denoising) or "segmentation"; `loss` is what steps."""
        net = self.net
        if phase == "student":
            net.student.train()
            net.segmentation.eval()
            with self.autocast():
                teacher = net.teacher_features(normal)  # the clean image's features are the target
                student = net.student_features(anomalous, [t.shape[-2:] for t in teacher])
            cos = denoising_loss(cosine_distances(teacher, student))
            return {"cosine": cos, "loss": cos}
        net.student.eval()
        net.segmentation.train()
        with self.autocast():
            teacher = net.teacher_features(anomalous)
            with torch.no_grad():  # only the segmentation network steps in this phase
                student = net.student_features(anomalous, [t.shape[-2:] for t in teacher])
            logits = net.segment(teacher, student)
        out = segmentation_losses(torch.sigmoid(logits.float()), masks, self.config.gamma)
        out["loss"] = out["focal"] + out["l1"]
        return out

    def training_setup(self, train_loader, val_loader=None) -> TrainingSetup:
        cfg = self.config
        full = int(getattr(train_loader, "batch_size", None) or cfg.batch_size)
        n_images = len(train_loader.dataset) if hasattr(train_loader, "dataset") else None
        if n_images is not None and n_images < full:
            raise ThreecadError(f"batch_size={full} is larger than the {n_images} training images; DeSTSeg "
                                "drops incomplete batches as its reference does: lower it with --set batch_size=N")
        self._synth = cfg.synthesizer(cfg.seed, cfg.dtd_folder(self.name))
        self.texture_source = self._synth.texture_source
        log.info("destseg: teacher %s, anomaly textures: %s", cfg.teacher, self.texture_source)
        # full batches in one pass over the training set
        per_pass = len(train_loader) if n_images is None or _drops_last(train_loader) else n_images // full
        passes = max(1, math.ceil(cfg.steps_per_checkpoint / max(per_pass, 1)))
        self._steps = _StepLoader(train_loader, full, per_pass, passes, cfg.steps, self.net)
        epochs = math.ceil(cfg.steps / len(self._steps))
        optimizer = self.optimizer()
        scheduler = multistep_scheduler(optimizer, epochs, (), 1.0)  # the reference has no schedule
        self._recent = {}
        return TrainingSetup(_Trainable(self.net), optimizer, scheduler, epochs, batches=self._steps,
                             generators={"synthesizer": self._synth.generator})

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.config
        step = self._steps.step
        normal = batch["image"]
        anomalous, masks = self._synth(normal)
        phase = "student" if step < cfg.student_steps else "segmentation"
        out = self.losses(normal, anomalous, masks, phase)
        self.net.steps_done += 1
        for key, value in out.items():
            if key != "loss":
                recent = self._recent.setdefault(key, [])
                recent.append(float(value.detach()))
                del recent[:-50]
        if (step + 1) % 50 == 0 or step + 1 == cfg.student_steps:
            log.debug("step %d/%d (%s): %s", step + 1, cfg.steps, phase, ", ".join(
                f"{k} {sum(v) / len(v):.4f}" for k, v in self._recent.items()))
        return out

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        net = self.net
        net.eval()
        size = images.shape[-2:]
        with self.autocast():
            teacher = net.teacher_features(images)
            student = net.student_features(images, [t.shape[-2:] for t in teacher])
            if self.config.map_source == "dest":
                dists = [F.interpolate(d, size=teacher[0].shape[-2:], mode="bilinear", align_corners=False)
                         for d in cosine_distances(teacher, student)]
                maps = torch.cat(dists, dim=1).prod(dim=1, keepdim=True).float()
            else:
                maps = torch.sigmoid(net.segment(teacher, student).float())
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return None, maps[:, 0]

    def postprocess(self) -> PostProcess:
        return PostProcess(sigma=0.0, mode="reflect", score="top_k_mean", top_k=self.config.top_k)

    # ------------------------------------------------------------------ model card
    def parts(self) -> dict[str, nn.Module]:
        return {f"teacher ({self.config.teacher}, used part)": self.net.teacher,
                "student": self.net.student, "segmentation": self.net.segmentation}

    def card_details(self) -> dict[str, Any]:
        from threecad.model_card import count_parameters

        cfg, net = self.config, self.net
        side = cfg.image_size // 4
        sub = {"student encoder": net.student.encoder, "student decoder": net.student.decoder,
               "segmentation res": net.segmentation.res, "segmentation head": net.segmentation.head}
        return {
            "taps": {"teacher": net.teacher.describe_taps(cfg.image_size),
                     "student_encoder": net.student.encoder.describe_taps(cfg.image_size)},
            "subparts": {name: count_parameters(m)["trainable"] for name, m in sub.items()},
            "shapes": {"segmentation_input": [sum(net.teacher.channels), side, side],
                       "segmentation_output": [1, side, side]},
            "schedule": {"steps": cfg.steps, "student_steps": cfg.student_steps, "batch_size": cfg.batch_size},
            "anomalies": {"textures": cfg.textures, "draw": cfg.draw},
            "notes": [
                "student encoder random init (timm's: He fan-out, last BatchNorm of each block at zero); "
                "decoders and segmentation residual blocks He-initialised, ASPP head PyTorch's default",
                "denoising loss sums 1 - cos over the batch (mean over pixels), as the reference",
                "the reference's per-category rotations of MVTec normal images are not applied "
                "(3CAD categories have none)",
                self._teacher_weights_note()],
        }

    def _teacher_weights_note(self) -> str:
        cfg = self.config
        reference = f"the reference (timm 0.6.12's resnet18, pretrained=True) loads {REFERENCE_TEACHER_FILE}"
        if cfg.teacher == "resnet18" and cfg.weights.lower() == "imagenet":
            ours = BACKBONES["resnet18"].weights_url.rsplit("/", 1)[1]
            return (f"teacher weights: threecad loads torchvision's {ours}; {reference}. Whether the two files hold "
                    "the same tensors is not yet checked (pending: neither file was at hand to compare; if they "
                    "differ, weights=PATH loads the reference's)")
        return f"teacher weights: {cfg.teacher} with weights={cfg.weights}; {reference}"

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        state = {"config": dataclasses.asdict(self.config), "model": self.net.trainable_state(),
                 "texture_source": self.texture_source}
        if random_weights(self.config.weights):  # then part of the model, not rebuilt from a file
            state["teacher"] = self.net.teacher.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing, unexpected = self.net.load_state_dict(dict(state["model"]), strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ThreecadError(f"destseg checkpoint does not fit this config: missing {missing[:3]}, "
                                f"unexpected {list(unexpected)[:3]}")
        if "teacher" in state:
            self.net.teacher.load_state_dict(state["teacher"])
        self.texture_source = state.get("texture_source")
        self.net.eval()

    def info(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {
            "teacher": cfg.teacher, "teacher_channels": list(self.net.teacher.channels),
            "texture_source": self.texture_source, "anomaly_draw": cfg.draw,
            "steps_done": int(self.net.steps_done), "selection": "last step", "map_source": cfg.map_source,
            "final_losses_last_50_steps": {k: sum(v) / len(v) for k, v in self._recent.items() if v}}
        if self.loop is not None:
            out.update(checkpoint_epochs=self.loop.epochs, resumed_after_epoch=self.loop.resumed_after)
        return out


class _Trainable(nn.Module):
    """The student, the segmentation network and the step counter: what the epoch checkpoint holds."""

    def __init__(self, net: DeSTSegNet):
        super().__init__()
        self.student = net.student
        self.segmentation = net.segmentation
        self._net = [net]  # not a submodule: the frozen teacher stays out of the checkpoint

    def state_dict(self, *args, **kwargs):
        return self._net[0].trainable_state()

    def load_state_dict(self, state, strict: bool = True):
        return self._net[0].load_state_dict(dict(state), strict=False)

    def train(self, mode: bool = True) -> "_Trainable":
        return self  # each step sets the modes of its phase (the student is in eval mode in phase 2)
