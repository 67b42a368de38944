"""CFRG on the threecad harness: `threecad bench --method cfrg`.

Preset `paper` is the official release (WideResNet-50 teacher, EfficientNet-B0 student,
batch 32, 50 epochs, Adam 5e-4 betas (0.5, 0.999), x0.2 at 80% and 90% of the epochs,
256x256 inputs, AMP). Preset `cpu` swaps in an offline-pretrained small teacher and
small inputs so that a category trains in well under a minute on two cores.

Unlike the release, model selection never looks at the test set: the last epoch by
default, or (`select=val`) the epoch with the lowest total loss on the validation split's
good images turned into synthetic anomalies with a fixed seed. That criterion is the
training objective on held-out images, so it rewards both halves of the task (recovering
normal features, finding anomalies); the mean anomaly score of good images alone would
reward a network that flags nothing.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F

from baselines.reverse_distillation import cosine_distance, random_teacher, scores_from_maps, upsampled_sum
from cfrg.losses import discrimination_loss, recovery_loss, segmentation_loss
from cfrg.network import CFRGNet
from threecad.training import LoopResult, check_selection, multistep_scheduler, seed_everything, train_epochs
from threecad.errors import ThreecadError
from threecad.smoothing import gaussian_smooth
from threecad.method import Method, MethodConfig

log = logging.getLogger(__name__)

MAP_SOURCES = ("recovery", "student")


@dataclass
class CFRGConfig(MethodConfig):
    image_size: int = 256  # inputs resized to a square, as the release
    batch_size: int = 32
    seed: int = 42
    teacher: str = "wide_resnet50_2"  # frozen, tapped at strides 4/8/16
    weights: str = "imagenet"  # teacher weights: imagenet | none | PATH to a state dict
    student: str = "efficientnet_b0"  # random init, tapped at strides 4/8/16
    epochs: int = 50
    lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # fractions of the epochs where lr *= lr_gamma
    lr_gamma: float = 0.2
    bottleneck_blocks: int = 3
    decoder_blocks: tuple[int, ...] = (3, 4, 6)
    dtd_root: str | None = None  # DTD for anomaly textures (the paper's); None = procedural textures
    beta_max: float = 0.8  # anomaly opacity: x_a = x(1-M) + (1-b) tex M + b x M, b ~ U[0, beta_max)
    perlin_max_scale: int = 5  # Perlin lattice 2^t cells per axis, t in 0..perlin_max_scale
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels
    # Ablations (the paper's Table 6)
    recovery_guidance: bool = True  # False: segmentation input without the (1 - cos(T_a, R)) factor
    segmentation: bool = True  # False: no fine stage, map from the feature discrepancies only
    map_source: str = "recovery"  # "student": maps from 1 - cos(T, S) instead of 1 - cos(T, R)
    select: str = "last"  # last epoch, or "val": lowest loss on synthetic anomalies of the val split


class CFRG(Method):
    name = "cfrg"
    description = "CFRG (3CAD paper): coarse-to-fine detection with recovery guidance"
    config_class = CFRGConfig
    presets = {
        "paper": {},
        # Offline-pretrained EfficientNet-Lite0 teacher (no download; measured better than
        # MobileNetV2 here), 128 px, a one-block recovery branch, small batches for more steps.
        "cpu": {"teacher": "efficientnet_lite0", "image_size": 128, "batch_size": 4, "epochs": 40,
                "lr": 5e-3, "sigma": 2.0, "bottleneck_blocks": 1,
                "decoder_blocks": (1, 1, 1), "perlin_max_scale": 4},
    }

    def __init__(self, config: CFRGConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        check_selection(config.select)
        if config.map_source not in MAP_SOURCES:
            raise ThreecadError(f"map_source must be one of {', '.join(MAP_SOURCES)}, got '{config.map_source}'")
        self.work_dir = None  # set by the harness: where the epoch checkpoint lives
        recovery = config.recovery_guidance or config.map_source == "recovery"
        with torch.random.fork_rng(devices=[]):  # the same initial weights for the same seed
            torch.manual_seed(config.seed)
            self.net = CFRGNet(config.teacher, config.weights, config.student, recovery=recovery,
                               recovery_guidance=config.recovery_guidance, segmentation=config.segmentation,
                               bottleneck_blocks=config.bottleneck_blocks,
                               decoder_blocks=config.decoder_blocks).to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.texture_source: str | None = None
        self._loop: LoopResult | None = None

    # ------------------------------------------------------------------ training
    def _synthesizer(self, seed: int):
        from threecad.anomaly_synthesis import AnomalySynthesizer

        cfg = self.config
        return AnomalySynthesizer(cfg.image_size, dtd_root=cfg.dtd_root, beta_max=cfg.beta_max,
                                  perlin_max_scale=cfg.perlin_max_scale, seed=seed)

    def losses(self, normal: torch.Tensor, anomalous: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three losses (and their sum `loss`) for a batch of normal images and their anomalous versions."""
        net = self.net
        with self.autocast():
            with torch.no_grad():  # one teacher pass over both batches
                both = net.teacher(torch.cat([normal, anomalous]))
            t_normal = [f[: len(normal)] for f in both]
            t_anom = [f[len(normal):] for f in both]
            student = net.student_features(anomalous)
            recovered = net.recover(t_anom) if net.has_recovery else None
            logits = net.segment(t_anom, student, recovered) if net.has_segmentation else None
        out = {"dis": discrimination_loss(t_anom, student, masks)}
        if recovered is not None:
            out["rec"] = recovery_loss(t_normal, recovered)
        if logits is not None:
            out["seg"] = segmentation_loss(logits, masks)
        out["loss"] = sum(out.values())
        return out

    def fit(self, train_loader, val_loader=None) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        synth = self._synthesizer(cfg.seed)
        self.texture_source = synth.texture_source
        log.info("cfrg: teacher %s, anomaly textures: %s", cfg.teacher, self.texture_source)
        params = self.net.trainable
        optimizer = torch.optim.Adam(params.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        scheduler = multistep_scheduler(optimizer, cfg.epochs, cfg.lr_milestones, cfg.lr_gamma)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def step(batch: dict) -> dict[str, torch.Tensor]:
            normal = batch["image"]
            anomalous, masks = synth(normal)
            return self.losses(normal, anomalous.contiguous(memory_format=fmt), masks)

        val_synth = self._synthesizer(cfg.seed + 1) if cfg.select == "val" else None

        def validate(batches: Iterable[dict]) -> float:
            val_synth.generator.manual_seed(cfg.seed + 1)  # the same anomalies at every epoch
            total, n = 0.0, 0
            for batch in batches:
                anomalous, masks = val_synth(batch["image"])
                losses = self.losses(batch["image"], anomalous.contiguous(memory_format=fmt), masks)
                total += float(losses["loss"]) * len(masks)
                n += len(masks)
            return total / max(n, 1)

        self._loop = train_epochs(params, optimizer, scheduler, scaler, step, train_loader,
                                  epochs=cfg.epochs, device=self.device, channels_last=self.channels_last,
                                  work_dir=self.work_dir, select=cfg.select, validate=validate,
                                  val_loader=val_loader, generators={"synthesizer": synth.generator},
                                  desc="cfrg")
        self.net.eval()

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        use_student = self.config.map_source == "student"
        with self.autocast():
            out = self.net(images, need_student=use_student)
        source = out.student if use_student else out.recovered
        size = images.shape[-1]
        maps = upsampled_sum([cosine_distance(t, f) for t, f in zip(out.teacher, source)], size)
        if out.logits is not None:
            seg = torch.sigmoid(out.logits.float())
            if seg.shape[-1] != size:
                seg = F.interpolate(seg, size=(size, size), mode="bilinear", align_corners=True)
            maps = maps + seg[:, 0]
        maps = gaussian_smooth(maps, self.config.sigma)
        return scores_from_maps(maps), maps

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        state = {"config": dataclasses.asdict(self.config), "model": self.net.trainable.state_dict(),
                 "texture_source": self.texture_source}
        if random_teacher(self.config.weights):  # then part of the model, not rebuilt from a file
            state["teacher"] = self.net.teacher.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.trainable.load_state_dict(state["model"])
        if "teacher" in state:
            self.net.teacher.load_state_dict(state["teacher"])
        self.texture_source = state.get("texture_source")
        self.net.eval()

    def info(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {
            "teacher": cfg.teacher, "student": cfg.student, "teacher_channels": list(self.net.teacher.channels),
            "texture_source": self.texture_source, "parameters": self.net.parameter_counts(),
            "ablation": {"recovery_guidance": cfg.recovery_guidance, "segmentation": cfg.segmentation,
                         "map_source": cfg.map_source}}
        if self._loop is not None:
            out.update(selected_epoch=self._loop.selected_epoch, selection=cfg.select,
                       resumed_after_epoch=self._loop.resumed_after, final_train_losses=self._loop.last_losses)
        return out
