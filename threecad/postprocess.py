"""A method's post-processing, declared as data and applied once by the harness.

Why: the 3CAD release blurs the raw map once and computes every number from it, while each
method's own paper smooths its maps its own way. So `Method.predict` returns the raw map,
the method says how it wants it smoothed and scored (`Method.postprocess()`), and the
harness applies that under the `standard` protocol, or the release's single sigma-4 blur
under `3cad-paper` (in the Evaluator). Nothing is smoothed twice.

Image-score rules, applied to the smoothed map when `predict` gives no scores:
- "max": the largest pixel (most methods);
- "mean_pool_max": the largest value of the map averaged over a `pool` x `pool` window
  (stride 1, `pool_pad` zeros around the map, counted in the mean, as torch's avg_pool2d
  does; DRAEM: 21 with padding 10; UniAD and RealNet: 16 without; CRAD: 32 without);
- "top_k_mean": the mean of the `top_k` largest pixels (DeSTSeg: 100).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from threecad.errors import ThreecadError
from threecad.smoothing import BORDER_MODES, gaussian_smooth

SCORE_RULES = ("max", "mean_pool_max", "top_k_mean")


@dataclass(frozen=True)
class PostProcess:
    sigma: float = 0.0  # Gaussian sigma in pixels of the map as predict returns it; 0 = none
    box: int = 0  # odd side of a mean filter applied first (zero padding counted, as avg_pool2d); 0 = none
    mode: str = "reflect"  # border mode, scipy's names ("reflect": scipy's default)
    score: str = "max"  # image-score rule (see the module docstring)
    pool: int = 0  # window of "mean_pool_max"
    pool_pad: int = 0  # zero padding of that window (counted in the mean)
    top_k: int = 0  # pixels of "top_k_mean"

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ThreecadError(f"post-processing sigma must be a finite number >= 0, got {self.sigma!r}")
        if not isinstance(self.box, int) or self.box < 0 or (self.box and self.box % 2 == 0):
            raise ThreecadError(f"post-processing box must be 0 or an odd number of pixels, got {self.box!r}")
        if self.mode not in BORDER_MODES:
            raise ThreecadError(f"post-processing border mode must be one of {', '.join(BORDER_MODES)}, "
                                f"got {self.mode!r}")
        if self.score not in SCORE_RULES:
            raise ThreecadError(f"image-score rule must be one of {', '.join(SCORE_RULES)}, got {self.score!r}")
        if self.score == "mean_pool_max" and (self.pool < 1 or not 0 <= self.pool_pad <= self.pool // 2):
            raise ThreecadError(f"mean_pool_max needs a pool >= 1 and 0 <= pool_pad <= pool // 2, "
                                f"got pool {self.pool}, pool_pad {self.pool_pad}")
        if self.score == "top_k_mean" and self.top_k < 1:
            raise ThreecadError(f"top_k_mean needs top_k >= 1, got {self.top_k}")

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, H, W) raw maps -> smoothed maps (the same tensor when box and sigma are 0)."""
        if self.box:
            maps = F.avg_pool2d(maps[:, None], self.box, stride=1, padding=self.box // 2)[:, 0]
        return gaussian_smooth(maps, self.sigma, mode=self.mode)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, H, W) smoothed maps -> (N,) image scores under this rule."""
        if self.score == "mean_pool_max":
            if self.pool > min(maps.shape[-2:]) + 2 * self.pool_pad:
                raise ThreecadError(f"mean_pool_max window {self.pool} is larger than the {tuple(maps.shape[-2:])} map")
            pooled = F.avg_pool2d(maps[:, None], self.pool, stride=1, padding=self.pool_pad)
            return pooled.flatten(1).amax(dim=1)
        flat = maps.flatten(1)
        if self.score == "top_k_mean":
            return flat.topk(min(self.top_k, flat.shape[1]), dim=1).values.mean(dim=1)
        return flat.amax(dim=1)

    def apply(self, maps: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps and the method's own scores (or None) -> (scores, smoothed maps)."""
        smoothed = self.smooth(maps)
        return (scores if scores is not None else self.image_scores(smoothed)), smoothed

    def as_dict(self) -> dict:
        out = {"sigma": self.sigma, "mode": self.mode, "score": self.score}
        if self.box:
            out["box"] = self.box
        if self.score == "mean_pool_max":
            out.update(pool=self.pool, pool_pad=self.pool_pad)
        if self.score == "top_k_mean":
            out["top_k"] = self.top_k
        return out
