"""Synthetic anomalies in the DRAEM style, shared by CFRG, DRAEM, DeSTSeg and RealNet.

A Perlin-noise mask (scale 2^t per axis, rotated, thresholded) cuts a texture into the
image: `x_a = x (1 - M) + (1 - b) tex M + b x M` with b ~ U[0, beta_max), as the 3CAD
release does. Textures come from DTD (the paper's source) when `dtd_root` holds
torchvision's DTD layout, otherwise from procedural families (fractal noise, stripes,
blobs, checkers, colour shifts of the image itself), so that training works with no
download. Either way each texture goes through three random photometric/geometric
augmentations, like DRAEM's.

Everything is batched in torch on the input's device. Random numbers are drawn from the
synthesizer's own CPU `torch.Generator` (small tensors: lattice gradients and per-sample
parameters) and moved to the device, so the same seed gives the same sequence of batches
on CPU and CUDA (up to floating point). Call it in the main process on whole batches: a
copy made by a DataLoader worker would repeat the same sequence in every worker.

Two ways to draw (`draw=`):
- "augmented" (default): every texture goes through three random augmentations (DRAEM's
  manner), DTD textures are picked at random, the Perlin field is evaluated at rotated
  coordinates (no empty corners), and empty masks are redrawn up to `MAX_REDRAWS` times, so
  an empty mask remains only with probability far below 1e-6 per sample.
- "release": as the 3CAD release's data loader draws: the texture of training image `idx`
  is DTD image `idx % len(DTD)` (DTD's `images/*/*.jpg` in sorted order; `idx` is the
  image's position among the sorted training paths, passed as `keys`), no augmentation,
  the Perlin field is rendered unrotated and then rotated as an image by up to 90 degrees
  with zero-filled corners (bilinear, like imgaug's Affine), and an empty mask is kept: that
  sample stays a good image with an all-zero mask (about 5 % of samples at 256 px).

Every sample is meant to be augmented either way (as the 3CAD release, unlike DRAEM's 50%
clean samples).

DTD is found in torchvision's layout (`<root>/dtd/dtd/images/<class>/*.jpg`) or as a plain
`<root>/images/<class>/*.jpg` (the release's `dtd_path`).

A method's config takes the settings from `SynthesisConfig` (fields, checks, the texture
folder and the synthesizer they describe), so that they are written once.
"""
from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from threecad.errors import ThreecadError

log = logging.getLogger(__name__)
_hinted_dtd: list[bool] = []  # the DTD hint has been logged in this process

MAX_REDRAWS = 16
DRAWS = ("augmented", "release")
TEXTURES = ("dtd", "procedural")  # a config's texture choice: DTD (procedural when absent) | procedural
DTD_SUFFIXES = (".jpg", ".jpeg", ".png")
PROCEDURAL_FAMILIES = ("noise", "stripes", "blobs", "checker", "color_shift")
TEXTURE_AUGMENTATIONS = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize",
                         "posterize", "invert", "autocontrast", "rotate")


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(res_x: torch.Tensor, res_y: torch.Tensor, angle: torch.Tensor, size: int,
                 generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched 2-D gradient (Perlin) noise, (N, size, size), roughly in [-1, 1].

    Sample i has `res_x[i]` x `res_y[i]` lattice cells across the image and is rotated by
    `angle[i]` radians about the centre. Rotation is done by evaluating the noise at
    rotated coordinates over a lattice large enough to cover them, so no corner is left
    empty (an image rotation would have to fill corners with a constant).
    """
    n = int(res_x.shape[0])
    rmax = int(max(int(res_x.max()), int(res_y.max()), 1))
    lat = 3 * rmax + 3  # rotated coordinates span [-0.21 r, 1.21 r]; offset r, +1 shift, +1 corner
    theta = torch.rand(n, lat * lat, generator=generator) * (2 * math.pi)
    shift = torch.rand(n, 2, generator=generator)  # random lattice phase
    grads = torch.stack((theta.cos(), theta.sin()), dim=-1).to(device)  # (N, L*L, 2)
    rx = res_x.to(device=device, dtype=torch.float32).view(n, 1, 1)
    ry = res_y.to(device=device, dtype=torch.float32).view(n, 1, 1)
    cos = angle.to(device=device, dtype=torch.float32).cos().view(n, 1, 1)
    sin = angle.to(device=device, dtype=torch.float32).sin().view(n, 1, 1)
    shift = shift.to(device)
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    u = (cos * xx - sin * yy + 0.5) * rx + rx + shift[:, 0].view(n, 1, 1)
    v = (sin * xx + cos * yy + 0.5) * ry + ry + shift[:, 1].view(n, 1, 1)
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    iu, iv = u0.long(), v0.long()

    def corner(du: int, dv: int) -> torch.Tensor:
        idx = ((iv + dv) * lat + (iu + du)).view(n, -1)
        g = torch.gather(grads, 1, idx.unsqueeze(-1).expand(-1, -1, 2)).view(n, size, size, 2)
        return g[..., 0] * (fu - du) + g[..., 1] * (fv - dv)

    wu, wv = _fade(fu), _fade(fv)
    top = torch.lerp(corner(0, 0), corner(1, 0), wu)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), wu)
    return math.sqrt(2.0) * torch.lerp(top, bottom, wv)


class AnomalySynthesizer:
    """Turns a batch of good images into synthetic anomalies and their masks.

    `image_size` is the side DTD images are decoded to (resized again if a batch comes at
    another size); masks and procedural textures are made at the batch's own size.
    `texture_source` says which source is in use ("dtd" or "procedural"); methods record
    it in their `info()`.
    """

    def __init__(self, image_size: int, dtd_root: str | None = None, beta_max: float = 0.8,
                 perlin_min_scale: int = 0, perlin_max_scale: int = 5, threshold: float = 0.5,
                 seed: int = 0, draw: str = "augmented", keys: Sequence[str] | None = None):
        if not 0 <= perlin_min_scale <= perlin_max_scale:
            raise ValueError(f"perlin scales must satisfy 0 <= min <= max, got "
                             f"{perlin_min_scale}, {perlin_max_scale}")
        if not 0.0 <= beta_max <= 1.0:
            raise ValueError(f"beta_max must be in [0, 1], got {beta_max}")
        if draw not in DRAWS:
            raise ThreecadError(f"anomaly draw must be one of {', '.join(DRAWS)}, got '{draw}'")
        self.draw = draw
        # the release's per-image texture: position among the sorted training paths
        self._key_index = {str(k): i for i, k in enumerate(sorted(str(k) for k in keys))} if keys else {}
        self.image_size = int(image_size)
        self.beta_max = float(beta_max)
        self.perlin_min_scale = int(perlin_min_scale)
        self.perlin_max_scale = int(perlin_max_scale)
        self.threshold = float(threshold)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._dtd: list[Path] = []
        if dtd_root is None:
            self.texture_source = "procedural"
            # once per process: a run builds one synthesizer per category
            level = logging.DEBUG if _hinted_dtd else logging.INFO
            log.log(level, "anomaly textures: procedural (%s); pass dtd_root to use DTD as the paper does",
                    ", ".join(PROCEDURAL_FAMILIES))
            _hinted_dtd.append(True)
        else:
            self._open_dtd(dtd_root)
            self.texture_source = "dtd"
            log.info("anomaly textures: DTD at %s (%d images)", dtd_root, len(self._dtd))

    # ----------------------------------------------------------------- textures
    def _open_dtd(self, root: str) -> None:
        images = find_dtd_images(root)
        if images is None:
            raise ThreecadError(
                f"DTD not found at {root}: expected {Path(root) / 'dtd' / 'dtd' / 'images'} (torchvision's "
                f"layout, as `threecad download --dataset dtd` writes) or {Path(root) / 'images'}; "
                "leave dtd_root unset to use procedural textures")
        self._dtd = sorted(p for p in images.glob("*/*") if p.suffix.lower() in DTD_SUFFIXES)
        if not self._dtd:
            raise ThreecadError(f"DTD at {images} holds no images (<class>/*.jpg); re-download it "
                                "(`threecad download --dataset dtd`) or leave dtd_root unset")

    def _texture_picks(self, n: int, keys: Sequence[str] | None) -> list[int]:
        if self.draw == "release" and keys is not None:
            return [self._key_index.get(str(k), zlib.crc32(str(k).encode())) % len(self._dtd) for k in keys]
        return torch.randint(len(self._dtd), (n,), generator=self.generator).tolist()

    def _dtd_textures(self, n: int, size: int, device: torch.device, keys: Sequence[str] | None) -> torch.Tensor:
        from PIL import Image

        out = []
        for k in self._texture_picks(n, keys):
            with Image.open(self._dtd[k]) as img:
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        return torch.stack(out).to(device).permute(0, 3, 1, 2).float().div_(255.0)

    def _rand(self, *shape: int, low: float = 0.0, high: float = 1.0, device=None) -> torch.Tensor:
        r = torch.rand(*shape, generator=self.generator) * (high - low) + low
        return r.to(device) if device is not None else r

    def _fractal(self, n: int, size: int, base_log2: tuple[int, int], octaves: int,
                 device: torch.device) -> torch.Tensor:
        """Sum of Perlin octaves, normalised per sample to [0, 1], (N, 1, S, S)."""
        start = torch.randint(base_log2[0], base_log2[1] + 1, (n,), generator=self.generator)
        angle = self._rand(n, low=-math.pi, high=math.pi)
        total = torch.zeros(n, size, size, device=device)
        for o in range(octaves):
            res = (2 ** (start + o)).clamp(max=size // 2)
            total += 0.5 ** o * perlin_noise(res, res, angle, size, self.generator, device)
        lo = total.flatten(1).amin(1).view(n, 1, 1)
        hi = total.flatten(1).amax(1).view(n, 1, 1)
        return ((total - lo) / (hi - lo).clamp_min(1e-6)).unsqueeze(1)

    def _two_colours(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self._rand(n, 3, 1, 1, device=device)
        c2 = self._rand(n, 3, 1, 1, device=device)
        return c1, c2

    def _coords(self, n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample randomly rotated coordinates in image units, (N, S, S) each."""
        angle = self._rand(n, low=-math.pi, high=math.pi, device=device).view(n, 1, 1)
        axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        return angle.cos() * xx - angle.sin() * yy, angle.sin() * xx + angle.cos() * yy

    def _procedural(self, family: str, images: torch.Tensor) -> torch.Tensor:
        n, _, size, _ = images.shape
        dev = images.device
        if family == "noise":  # cloudy colour fields with grain
            c1, c2 = self._two_colours(n, dev)
            field = self._fractal(n, size, (1, 4), 4, dev)
            grain = self._fractal(n, size, (5, 6), 2, dev) - 0.5
            amount = self._rand(n, 1, 1, 1, high=0.4, device=dev)
            return (c1 + (c2 - c1) * field + amount * grain).clamp(0, 1)
        if family == "stripes":  # parallel bands, wobbly, soft or hard edged
            c1, c2 = self._two_colours(n, dev)
            u, _ = self._coords(n, size, dev)
            freq = 2 ** self._rand(n, 1, 1, low=1.0, high=5.0, device=dev)
            phase = self._rand(n, 1, 1, device=dev)
            wobble = self._rand(n, 1, 1, high=0.3, device=dev) * (self._fractal(n, size, (1, 2), 2, dev)[:, 0] - 0.5)
            wave = torch.sin(2 * math.pi * (u * freq + phase + wobble))
            hardness = 2 ** self._rand(n, 1, 1, low=0.0, high=5.0, device=dev)
            s = torch.sigmoid(hardness * wave).unsqueeze(1)
            return c1 + (c2 - c1) * s
        if family == "blobs":  # round spots of random colours on a background
            k = 8
            bg = self._rand(n, 3, 1, 1, device=dev)
            centres = self._rand(n, k, 2, low=-0.5, high=0.5, device=dev)
            radii = self._rand(n, k, low=0.03, high=0.25, device=dev)
            colours = self._rand(n, k, 3, device=dev)
            axis = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size - 0.5
            yy, xx = torch.meshgrid(axis, axis, indexing="ij")
            d2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
            w = torch.exp(-d2 / (2 * radii[..., None, None] ** 2))  # (N, K, S, S)
            weight, which = w.max(dim=1)
            colour = torch.gather(colours, 1, which.view(n, -1, 1).expand(-1, -1, 3))
            colour = colour.view(n, size, size, 3).permute(0, 3, 1, 2)
            sharp = torch.sigmoid((weight - 0.5) * self._rand(n, 1, 1, low=4.0, high=40.0, device=dev))
            return bg + (colour - bg) * sharp.unsqueeze(1)
        if family == "checker":  # rotated checkerboards and grids
            c1, c2 = self._two_colours(n, dev)
            u, v = self._coords(n, size, dev)
            cells = 2 ** self._rand(n, 1, 1, low=1.0, high=4.5, device=dev)
            a = torch.sin(2 * math.pi * u * cells)
            b = torch.sin(2 * math.pi * v * cells)
            grid = self._rand(n, 1, 1, device=dev) < 0.5
            pattern = torch.where(grid, (a.abs().minimum(b.abs()) < 0.3).float(), (a * b > 0).float())
            return c1 + (c2 - c1) * pattern.unsqueeze(1)
        if family == "color_shift":  # the image itself, recoloured (discoloration-like)
            gain = self._rand(n, 3, 1, 1, low=0.3, high=1.7, device=dev)
            offset = self._rand(n, 3, 1, 1, low=-0.35, high=0.35, device=dev)
            shifted = images * gain + offset
            invert = self._rand(n, 1, 1, 1, device=dev) < 0.2
            return torch.where(invert, 1 - images, shifted).clamp(0, 1)
        raise ValueError(f"unknown texture family {family}")

    def _textures(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        n, _, size, _ = images.shape
        if self.texture_source == "dtd":
            tex = self._dtd_textures(n, self.image_size, images.device, keys)
            if self.image_size != size:
                tex = F.interpolate(tex, size=(size, size), mode="bilinear", align_corners=False)
            return tex
        family = torch.randint(len(PROCEDURAL_FAMILIES), (n,), generator=self.generator)
        tex = torch.empty_like(images)
        for f, name in enumerate(PROCEDURAL_FAMILIES):
            idx = (family == f).nonzero().flatten()
            if len(idx):
                idx_dev = idx.to(images.device)
                tex[idx_dev] = self._procedural(name, images[idx_dev]).to(tex.dtype)
        return tex

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
        x = apply(8, _rotate(x, self._rand(n, low=-math.pi / 4, high=math.pi / 4)))
        return x

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


def _rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle (radians) with reflected borders."""
    n = x.shape[0]
    c, s = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotate_zero_fill(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each (N,C,H,W) image about its centre by its angle (radians), bilinear, zeros outside."""
    n = x.shape[0]
    c, s = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def find_dtd_images(root: str | Path) -> Path | None:
    """DTD's `images` folder under `root`: torchvision's `<root>/dtd/dtd/images`, `<root>/dtd/images`
    or `<root>/images`; None when there is none."""
    root = Path(root).expanduser()
    for candidate in (root / "dtd" / "dtd" / "images", root / "dtd" / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    return None


_warned_no_dtd: set[str] = set()  # methods that have warned about a missing DTD in this process


def texture_root(textures: str, dtd_root: str | None, method: str) -> str | None:
    """Where a method's synthesizer takes its textures from: a DTD folder, or None (procedural).

    `textures="procedural"` asks for procedural textures. An explicit `dtd_root` must hold
    DTD (the synthesizer refuses it otherwise). Else DTD is looked for in the data home
    (`threecad download --dataset dtd`); when it is not there the run goes on with procedural
    textures and warns once per method and process, because such a run is not the paper's
    setting (methods record `texture_source` in their info).
    """
    from threecad.datahome import default_dtd_root

    if textures == "procedural":
        return None
    if dtd_root:
        return dtd_root
    home = default_dtd_root()
    if find_dtd_images(home) is not None:
        return str(home)
    if method not in _warned_no_dtd:
        log.warning("%s: DTD not found at %s (`threecad download --dataset dtd`); using procedural anomaly "
                    "textures, so this run is not the paper's setting (texture_source: procedural)", method, home)
        _warned_no_dtd.add(method)
    return None


@dataclass
class SynthesisConfig:
    """The anomaly-synthesis fields of a method's config, and their checks.

    A mixin for a `MethodConfig`: list it first (`class XConfig(SynthesisConfig, TrainedConfig)`),
    so that its fields follow the base's and its checks run after the base's. A method whose
    paper draws otherwise overrides a default in its own config (`draw: str = "release"`).
    """

    textures: str = "dtd"  # anomaly textures: "dtd" (the paper's; procedural when DTD is absent) | "procedural"
    dtd_root: str | None = None  # DTD folder; None = `threecad download --dataset dtd`'s folder
    draw: str = "augmented"  # how anomalies are drawn: "augmented" (DRAEM's) | "release" (the 3CAD release's)
    beta_max: float = 0.8  # anomaly opacity: x_a = x(1-M) + (1-b) tex M + b x M, b ~ U[0, beta_max)
    perlin_max_scale: int = 5  # Perlin lattice 2^t cells per axis, t in 0..perlin_max_scale

    def __post_init__(self) -> None:
        super().__post_init__()  # the config base's checks and the method's `validate`
        if self.textures not in TEXTURES:
            raise ThreecadError(f"config textures={self.textures}: must be one of {', '.join(TEXTURES)}")
        if self.draw not in DRAWS:
            raise ThreecadError(f"config draw={self.draw}: must be one of {', '.join(DRAWS)}")
        if not 0.0 <= self.beta_max <= 1.0:
            raise ThreecadError(f"config beta_max={self.beta_max}: must be in [0, 1]")
        if not 0 <= self.perlin_max_scale <= 8:
            raise ThreecadError(f"config perlin_max_scale={self.perlin_max_scale}: must be in 0..8")

    def dtd_folder(self, method: str) -> str | None:
        """The DTD folder the synthesizer reads, or None for procedural textures (`texture_root`)."""
        return texture_root(self.textures, self.dtd_root, method)

    def synthesizer(self, seed: int, dtd_root: str | None, keys: Sequence[str] | None = None) -> AnomalySynthesizer:
        """The synthesizer these settings describe, at the config's `image_size`."""
        return AnomalySynthesizer(self.image_size, dtd_root=dtd_root, beta_max=self.beta_max,
                                  perlin_max_scale=self.perlin_max_scale, seed=seed, draw=self.draw, keys=keys)
