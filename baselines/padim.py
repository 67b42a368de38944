"""PaDiM (Defard et al., ICPR 2021): one multivariate Gaussian per patch position.

Faithful to the paper's defaults in preset `paper`: WideResNet-50 layers 1-3 (strides 4,
8, 16), the deeper maps upsampled to the layer-1 grid and concatenated, a random subset
of 550 channels (100 for ResNet-18), per position the mean and covariance + 0.01 I of
the training embeddings, the Mahalanobis distance at test time, the map upsampled
bilinearly to the input. The harness smooths it (`postprocess()`: Gaussian sigma 4, border
`reflect`, as the reference's scipy gaussian_filter) and scores each image by the max of
the smoothed map.

PaDiM assumes aligned objects: one Gaussian per grid position. Where the normal layout
varies from image to image (holes or pockets at new places, a rotated stator), a normal
part at an unseen position is as far from its position's Gaussian as a defect, and the
image score (the map's max) lands on it. The first synthetic generator moved holes from
image to image and PaDiM did poorly there; since generator 2 a category is one part in a
fixed pose, as in 3CAD, and PaDiM does well (the README's Methods table gives the figures).

Input: 256x256 without the paper's 224 center crop, as the 3CAD runs do (the harness
evaluates every pixel of the full image). The covariance is accumulated batch by batch
around the first batch's mean (a shifted sum, exact and stable in float32), so training
never holds all embeddings. The checkpoint stores the precision matrices' lower
triangles: they are symmetric, and the full WideResNet model is 4096 x 550 x 550 floats.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from threecad.backbones import FeatureExtractor
from threecad.errors import ThreecadError
from threecad.method import Method, MethodConfig
from threecad.postprocess import PostProcess
from threecad.progress import progress
from threecad.threads import single_thread_on_cpu

log = logging.getLogger(__name__)

INVERT_BLOCK = 64  # grid positions whose covariances are inverted at once (float64)

# the paper's reduced dimensions per backbone; other backbones default to half their channels
PAPER_CHANNELS = {"wide_resnet50_2": 550, "resnet18": 100}


@dataclass
class PaDiMConfig(MethodConfig):
    backbone: str = "wide_resnet50_2"
    weights: str = "imagenet"
    strides: tuple[int, ...] = (4, 8, 16)
    n_features: int = 0  # random channel subset; 0 = the paper's number for the backbone
    epsilon: float = 0.01  # covariance regulariser (times identity)
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels (harness); 0 = none

    def validate(self) -> None:
        # a covariance regulariser <= 0 leaves a singular covariance to Cholesky, after the run has started
        if not isinstance(self.epsilon, (int, float)) or self.epsilon <= 0:
            raise ThreecadError(f"config epsilon={self.epsilon}: must be a number > 0 (the paper: 0.01)")
        if not isinstance(self.sigma, (int, float)) or self.sigma < 0:
            raise ThreecadError(f"config sigma={self.sigma}: must be >= 0 (0: no smoothing)")
        if not isinstance(self.n_features, int) or self.n_features < 0:
            raise ThreecadError(f"config n_features={self.n_features}: must be a whole number >= 0 "
                                "(0: the paper's number for the backbone)")


class PaDiM(Method):
    name = "padim"
    description = "PaDiM: a Gaussian per patch position over pretrained features, Mahalanobis distance"
    config_class = PaDiMConfig
    presets = {
        "paper": {},
        # offline ImageNet backbone, 128 px, sigma scaled with the image. Strides 8 and 16 only:
        # Lite0's stride-4 block has 24 low-level channels, and on the first synthetic generator
        # adding it lowered I-AUROC (with MobileNetV2 too).
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 128, "batch_size": 16,
                "strides": (8, 16), "n_features": 100, "sigma": 2.0},
    }

    def __init__(self, config: PaDiMConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        self.extractor = FeatureExtractor(config.backbone, config.strides, config.weights).to(self.device)
        total = sum(self.extractor.channels)
        wanted = config.n_features or PAPER_CHANNELS.get(config.backbone, total // 2)
        if not 0 < wanted <= total:
            raise ThreecadError(f"n_features={wanted} but {config.backbone} at strides {config.strides} "
                                f"has {total} channels; choose 1..{total}")
        gen = torch.Generator().manual_seed(config.seed)
        self.channel_index = torch.randperm(total, generator=gen)[:wanted].sort().values.to(self.device)
        self.mean: torch.Tensor | None = None  # (P, d)
        self.precision: torch.Tensor | None = None  # (P, d, d)
        self.grid: tuple[int, int] | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N,3,S,S) in [0,1] -> (N, d, h, w) float32 on the shallowest grid."""
        with self.autocast():
            maps = self.extractor(images)
        h, w = maps[0].shape[-2:]
        up = [m.float() if m.shape[-2:] == (h, w) else F.interpolate(m.float(), size=(h, w), mode="nearest")
              for m in maps]
        return torch.cat(up, 1).index_select(1, self.channel_index)

    def fit(self, train_loader, val_loader=None) -> None:
        count = 0
        shift = s1 = s2 = None
        with torch.inference_mode():
            for batch in progress(train_loader, desc="padim gaussians", unit="batch"):
                e = self.embed(batch["image"].to(self.device, non_blocking=True))
                n, d, h, w = e.shape
                e = e.permute(2, 3, 0, 1).reshape(h * w, n, d)  # (P, n, d)
                if shift is None:
                    self.grid = (h, w)
                    shift = e.mean(1, keepdim=True)
                    s1 = torch.zeros(h * w, d, device=e.device, dtype=torch.float64)
                    s2 = torch.zeros(h * w, d, d, device=e.device)
                c = e - shift
                s1 += c.sum(1).double()
                s2 += torch.bmm(c.transpose(1, 2), c)
                count += n
            if count < 2:
                raise ThreecadError(f"PaDiM needs at least 2 training images, got {count}")
            mean_c = (s1 / count).float()  # mean of shifted data
            # in place: the WideResNet covariances alone are 5 GB
            cov = s2.baddbmm_(mean_c[:, :, None], mean_c[:, None, :], alpha=-count).div_(count - 1)
            cov.diagonal(dim1=1, dim2=2).add_(self.config.epsilon)
            del s2
            # Inverted in float64, block by block, each precision written over its covariance: ill-conditioned
            # covariances (a few images, ImageNet-scale features) lose digits in float32; memory stays one
            # float32 array plus one block. Many small factorisations: one CPU thread each is faster than
            # thread hand-offs, and cholesky_solve against I is faster than cholesky_inverse on CPU.
            eye = torch.eye(cov.shape[-1], device=cov.device, dtype=torch.float64)
            with single_thread_on_cpu(cov.device):
                for i in range(0, cov.shape[0], INVERT_BLOCK):
                    block = cov[i:i + INVERT_BLOCK]
                    chol = torch.linalg.cholesky(block.double())  # reads the lower triangle only
                    inverse = torch.cholesky_solve(eye.expand_as(chol), chol)
                    block.copy_(0.5 * (inverse + inverse.transpose(1, 2)))  # exactly symmetric, as stored
            self.precision = cov
            self.mean = mean_c + shift[:, 0]
        log.info("padim: %d positions x %d dims from %d images", self.mean.shape[0], self.mean.shape[1], count)

    def parts(self) -> dict[str, torch.nn.Module]:
        return {self.extractor.part_name(): self.extractor}

    def card_details(self) -> dict[str, Any]:
        total = sum(self.extractor.channels)
        details = {
            "taps": self.extractor.describe_taps(self.config.image_size),
            "feature_dim": f"{len(self.channel_index)} of {total} channels (random subset, seed {self.config.seed})",
            "grid": f"stride {min(self.extractor.strides)}: deeper maps upsampled (nearest) to it",
            "gaussians": f"one per grid position, covariance + {self.config.epsilon:g} I",
            "notes": [
                "input: the whole image squashed to a square (3CAD's evaluation covers every pixel); the reference "
                "resizes the shorter side to 256 (Lanczos) and keeps the centre 224 x 224 "
                "(tests/test_golden_padim.py)",
                "precision: covariances accumulated in float32 and inverted by Cholesky in float64; the "
                "reference inverts a float32 copy of float64 covariances by LU. Where covariance + epsilon I is "
                "ill-conditioned each loses digits the other keeps (tests/test_golden_padim.py)"],
        }
        if self.config.backbone == "wide_resnet50_2":
            details["reference_backbone"] = ("the reference runs the whole WideResNet-50-2 (68,883,240 "
                                             "parameters); only conv1..layer3 reach its features")
        return details

    def postprocess(self) -> PostProcess:
        """The reference's scipy gaussian_filter (sigma 4, mode reflect), then the max of the map."""
        return PostProcess(sigma=self.config.sigma, mode="reflect", score="max")

    def predict(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        """-> (None: the harness scores by the max of the smoothed map, raw maps (N, S, S))."""
        if self.mean is None:
            raise ThreecadError("PaDiM.predict called before fit or load_state_dict")
        images = images.to(self.device, non_blocking=True)
        n, _, height, width = images.shape
        e = self.embed(images)
        _, d, h, w = e.shape
        if (h, w) != self.grid:
            raise ThreecadError(f"PaDiM was fitted on a {self.grid} feature grid, got {(h, w)}: "
                                f"predict at the training image size {self.config.image_size}")
        delta = e.permute(2, 3, 1, 0).reshape(h * w, d, n) - self.mean[:, :, None]  # (P, d, n)
        m2 = (delta * torch.bmm(self.precision, delta)).sum(1).clamp_min_(0)  # (P, n)
        dist = m2.sqrt().T.reshape(n, 1, h, w)
        maps = F.interpolate(dist, size=(height, width), mode="bilinear", align_corners=False)
        return None, maps[:, 0]

    def state_dict(self) -> dict[str, Any]:
        if self.mean is None:
            raise ThreecadError("PaDiM has nothing to save: call fit first")
        d = self.mean.shape[1]
        rows, cols = torch.tril_indices(d, d, device=self.precision.device)
        return {"mean": self.mean.cpu(), "precision_tril": self.precision[:, rows, cols].cpu(),
                "channel_index": self.channel_index.cpu(), "grid": list(self.grid)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mean, packed = state["mean"], state["precision_tril"]
        p, d = mean.shape
        if packed.shape != (p, d * (d + 1) // 2):
            raise ThreecadError(f"PaDiM checkpoint: precision of shape {tuple(packed.shape)} does not fit "
                                f"mean {tuple(mean.shape)}")
        rows, cols = torch.tril_indices(d, d)
        prec = torch.zeros(p, d, d, dtype=packed.dtype)
        prec[:, rows, cols] = packed
        prec[:, cols, rows] = packed
        self.mean = mean.to(self.device, torch.float32)
        self.precision = prec.to(self.device, torch.float32)
        self.channel_index = state["channel_index"].to(self.device)
        self.grid = tuple(int(v) for v in state["grid"])

    def info(self) -> dict[str, Any]:
        if self.mean is None:
            return {}
        return {"positions": int(self.mean.shape[0]), "feature_dim": int(self.mean.shape[1])}
