"""The anomaly synthesizer: how each draw combines a Perlin mask and a texture with the image.

Why: the draws ("augmented", "release", "draem", "destseg"; see the package's docstring) differ
in their masks, texture picks and augmentations and in the order they take random numbers from
the one generator; that order is what makes a seed reproduce a reference's loader, so the draws
are kept together here, on top of the texture sources (`textures.TextureSource`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from threecad.anomaly_synthesis.draem_ops import BRIGHTNESS_SPACES, DRAEM_AUGMENTATIONS, draem_augmentation
from threecad.anomaly_synthesis.perlin import draem_masks, perlin_noise, rotate, rotate_zero_fill
from threecad.anomaly_synthesis.textures import TextureSource
from threecad.errors import ThreecadError

MAX_REDRAWS = 16
DRAWS = ("augmented", "release", "draem", "destseg")
REFERENCE_MASKS = ("draem", "destseg")  # draws whose masks are `draem_masks`
TEXTURE_AUGMENTATIONS = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize",
                         "posterize", "invert", "autocontrast", "rotate")
COLOURS = ("rgb", "bgr")


class AnomalySynthesizer(TextureSource):
    """Turns a batch of good images into synthetic anomalies and their masks.

    `image_size` is the side DTD images are decoded to (resized again if a batch comes at
    another size); masks and procedural textures are made at the batch's own size.
    `texture_source` says which source is in use ("dtd" or "procedural"); methods record
    it in their `info()`. `colour` is the channel order of the images, which textures follow.
    """

    def __init__(self, image_size: int, dtd_root: str | None = None, beta_max: float = 0.8,
                 perlin_min_scale: int = 0, perlin_max_scale: int = 5, threshold: float = 0.5,
                 seed: int = 0, draw: str = "augmented", keys: Sequence[str] | None = None,
                 colour: str = "rgb"):
        if not 0 <= perlin_min_scale <= perlin_max_scale:
            raise ValueError(f"perlin scales must satisfy 0 <= min <= max, got "
                             f"{perlin_min_scale}, {perlin_max_scale}")
        if not 0.0 <= beta_max <= 1.0:
            raise ValueError(f"beta_max must be in [0, 1], got {beta_max}")
        if draw not in DRAWS:
            raise ThreecadError(f"anomaly draw must be one of {', '.join(DRAWS)}, got '{draw}'")
        if colour not in COLOURS:
            raise ThreecadError(f"anomaly colour must be one of {', '.join(COLOURS)}, got '{colour}'")
        super().__init__(image_size, dtd_root, torch.Generator().manual_seed(int(seed)), draw, keys, colour)
        self.beta_max = float(beta_max)
        self.perlin_min_scale = int(perlin_min_scale)
        self.perlin_max_scale = int(perlin_max_scale)
        self.threshold = float(threshold)

    # ----------------------------------------------------------------- augmentations
    def _augment(self, tex: torch.Tensor) -> torch.Tensor:
        """Three distinct random augmentations per texture (DRAEM picks 3 of its list)."""
        n = tex.shape[0]
        dev = tex.device
        order = torch.rand(n, len(TEXTURE_AUGMENTATIONS), generator=self.generator).argsort(dim=1)
        chosen = torch.zeros(n, len(TEXTURE_AUGMENTATIONS), dtype=torch.bool)
        chosen.scatter_(1, order[:, :3], True)
        chosen = chosen.to(dev)
        x = tex

        def apply(k: int, y: torch.Tensor) -> torch.Tensor:
            return torch.where(chosen[:, k].view(n, 1, 1, 1), y.clamp(0, 1), x)

        x = apply(0, x.clamp_min(1e-6) ** self._rand(n, 1, 1, 1, low=0.5, high=2.0, device=dev))
        x = apply(1, x * self._rand(n, 1, 1, 1, low=0.8, high=1.2, device=dev)
                  + self._rand(n, 1, 1, 1, low=-0.12, high=0.12, device=dev))
        blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = apply(2, x + self._rand(n, 1, 1, 1, high=2.0, device=dev) * (x - blur))
        grey = x.mean(dim=1, keepdim=True)
        hue = self._rand(n, low=-math.pi, high=math.pi)
        x = apply(3, grey + self._rand(n, 1, 1, 1, low=0.0, high=2.0, device=dev)
                  * torch.einsum("nij,njhw->nihw", _hue_rotation(hue).to(dev), x - grey))
        x = apply(4, torch.where(x > self._rand(n, 1, 1, 1, low=0.3, high=0.9, device=dev), 1 - x, x))
        levels = (2 ** torch.randint(1, 5, (n, 1, 1, 1), generator=self.generator)).float().to(dev)
        x = apply(5, torch.floor(x * levels) / (levels - 1).clamp_min(1))
        x = apply(6, 1 - x)
        lo = x.flatten(2).amin(2)[..., None, None]
        hi = x.flatten(2).amax(2)[..., None, None]
        x = apply(7, (x - lo) / (hi - lo).clamp_min(1e-3))
        x = apply(8, rotate(x, self._rand(n, low=-math.pi / 4, high=math.pi / 4), "reflection"))
        return x

    def _draem_parameters(self, name: str) -> dict:
        """One draw of a DRAEM augmentation's parameters in the reference's ranges (imgaug 0.4.0's
        defaults where DRAEM gives none)."""
        def uniform(low: float, high: float) -> float:
            return float(self._rand(1, low=low, high=high))

        def integer(low: int, high: int) -> int:  # both ends included, as imgaug's DiscreteUniform
            return int(torch.randint(low, high + 1, (1,), generator=self.generator))

        if name == "gamma":  # GammaContrast((0.5, 2.0), per_channel=True)
            return {"gammas": [uniform(0.5, 2.0) for _ in range(3)]}
        if name == "brightness":  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)), random order
            return {"space": BRIGHTNESS_SPACES[integer(0, len(BRIGHTNESS_SPACES) - 1)], "mul": uniform(0.8, 1.2),
                    "add": uniform(-30.0, 30.0), "add_first": uniform(0.0, 1.0) < 0.5}
        if name == "sharpness":  # pillike.EnhanceSharpness(): factor (0, 2)
            return {"factor": uniform(0.0, 2.0)}
        if name == "hue_saturation":  # AddToHueAndSaturation((-50, 50), per_channel=True): two integers
            return {"hue": integer(-50, 50), "saturation": integer(-50, 50)}
        if name == "solarize":  # Solarize(0.5, threshold=(32, 128))
            return {"apply": uniform(0.0, 1.0) < 0.5, "threshold": uniform(32.0, 128.0)}
        if name == "posterize":  # Posterize(): 1..8 bits
            return {"bits": integer(1, 8)}
        if name == "autocontrast":  # pillike.Autocontrast(): cutoff 0..20 %
            return {"cutoff": integer(0, 20)}
        if name == "rotate":  # Affine(rotate=(-45, 45))
            return {"degrees": uniform(-45.0, 45.0)}
        return {}  # invert, equalize

    def _draem_augment(self, tex: torch.Tensor) -> torch.Tensor:
        """DRAEM's `randAugmenter` per texture: three distinct augmentations of its ten, in the
        drawn order, on the texture as uint8 (on the CPU)."""
        images = tex.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        out = []
        for img in images:
            for k in torch.randperm(len(DRAEM_AUGMENTATIONS), generator=self.generator)[:3].tolist():
                name = DRAEM_AUGMENTATIONS[k]
                img = draem_augmentation(name, img, **self._draem_parameters(name))
            out.append(torch.from_numpy(np.ascontiguousarray(img)))
        return torch.stack(out).to(tex.device).permute(0, 3, 1, 2).float().div_(255.0)

    # ----------------------------------------------------------------- masks
    def _release_masks(self, n: int, size: int, device: torch.device) -> torch.Tensor:
        """The release's masks: unrotated Perlin noise, rotated as an image (zero corners), > threshold."""
        lo, hi = self.perlin_min_scale, self.perlin_max_scale
        tx = torch.randint(lo, hi + 1, (n,), generator=self.generator)
        ty = torch.randint(lo, hi + 1, (n,), generator=self.generator)
        angle = self._rand(n, low=-math.pi / 2, high=math.pi / 2)
        noise = perlin_noise(2 ** tx, 2 ** ty, torch.zeros(n), size, self.generator, device)
        noise = rotate_zero_fill(noise.unsqueeze(1), angle)
        return (noise > self.threshold).float()

    def _masks(self, n: int, size: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.perlin_min_scale, self.perlin_max_scale
        masks = torch.zeros(n, size, size, device=device)
        todo = torch.arange(n)
        for _ in range(MAX_REDRAWS):
            k = len(todo)
            tx = torch.randint(lo, hi + 1, (k,), generator=self.generator)
            ty = torch.randint(lo, hi + 1, (k,), generator=self.generator)
            angle = self._rand(k, low=-math.pi / 2, high=math.pi / 2)
            noise = perlin_noise(2 ** tx, 2 ** ty, angle, size, self.generator, device)
            drawn = (noise > self.threshold).float()
            masks[todo.to(device)] = drawn
            empty = (drawn.flatten(1).amax(1) == 0).cpu()
            todo = todo[empty]
            if not len(todo):
                break
        return masks.unsqueeze(1)

    # ----------------------------------------------------------------- public
    def __call__(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N,3,S,S) in [0,1] on any device -> (anomalous (N,3,S,S) in [0,1], masks (N,1,S,S) 0/1).

        `keys` (the batch's image paths) fix each image's DTD texture under `draw="release"`.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected images (N,3,S,S), got {tuple(images.shape)}")
        n, _, size, _ = images.shape
        x = images.float()
        with torch.no_grad():
            if self.draw == "release":
                masks = self._release_masks(n, size, x.device)
                tex = self._textures(x, keys)
            elif self.draw in REFERENCE_MASKS:
                masks = draem_masks(n, size, self.generator, x.device, self.perlin_min_scale, self.perlin_max_scale,
                                    self.threshold)
                tex = self._textures(x)
                if self.draw == "draem":
                    tex = self._draem_augment(tex)
            else:
                masks = self._masks(n, size, x.device)
                tex = self._augment(self._textures(x))
            beta = self._rand(n, 1, 1, 1, high=self.beta_max, device=x.device)
            out = x * (1 - masks) + (1 - beta) * tex * masks + beta * x * masks
        return out.clamp_(0, 1).to(images.dtype), masks.to(images.dtype)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(N,3,3) rotations about the grey axis: a hue shift that keeps brightness."""
    c, s = angle.cos(), angle.sin()
    k = 1.0 / 3.0
    r = math.sqrt(1.0 / 3.0)
    m = torch.empty(angle.shape[0], 3, 3)
    m[:, 0, 0] = c + (1 - c) * k
    m[:, 0, 1] = k * (1 - c) - r * s
    m[:, 0, 2] = k * (1 - c) + r * s
    m[:, 1, 0] = k * (1 - c) + r * s
    m[:, 1, 1] = c + k * (1 - c)
    m[:, 1, 2] = k * (1 - c) - r * s
    m[:, 2, 0] = k * (1 - c) - r * s
    m[:, 2, 1] = k * (1 - c) + r * s
    m[:, 2, 2] = c + k * (1 - c)
    return m
