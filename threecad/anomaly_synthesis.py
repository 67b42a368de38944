"""Synthetic anomalies in the DRAEM style, shared by CFRG, DRAEM, DeSTSeg and RealNet.

A Perlin-noise mask (scale 2^t per axis, rotated, thresholded) cuts a texture into the
image: `x_a = x (1 - M) + (1 - b) tex M + b x M` with b ~ U[0, beta_max), as the 3CAD
release does. Textures come from DTD (the paper's source) when `dtd_root` holds
torchvision's DTD layout, otherwise from procedural families (fractal noise, stripes,
blobs, checkers, colour shifts of the image itself), so that training works with no
download.

Everything is batched in torch on the input's device, except the "draem" draw's texture
augmentations (uint8 image operations, on the CPU as the reference's). Random numbers are
drawn from the synthesizer's own CPU `torch.Generator` (small tensors: lattice gradients and
per-sample parameters) and moved to the device, so the same seed gives the same sequence of
batches on CPU and CUDA (up to floating point). Call it in the main process on whole batches:
a copy made by a DataLoader worker would repeat the same sequence in every worker.

Ways to draw (`draw=`):
- "augmented" (default): every texture goes through three random augmentations (DRAEM's
  manner, in torch), DTD textures are picked at random, the Perlin field is evaluated at
  rotated coordinates (no empty corners), and empty masks are redrawn up to `MAX_REDRAWS`
  times, so an empty mask remains only with probability far below 1e-6 per sample.
- "release": as the 3CAD release's data loader draws: the texture of training image `idx`
  is DTD image `idx % len(DTD)` (DTD's `images/*/*.jpg` in sorted order; `idx` is the
  image's position among the sorted training paths, passed as `keys`), no augmentation,
  the Perlin field is rendered unrotated and then rotated as an image by up to 90 degrees
  with zero-filled corners (bilinear, like imgaug's Affine), and an empty mask is kept: that
  sample stays a good image with an all-zero mask.
- "draem": as DRAEM's training loader (VitjanZ/DRAEM `data_loader.py`, also RealNet's DTD
  anomalies): the Perlin field of `perlin.rand_perlin_2d_np` (lattice aligned with the image,
  no random phase), rotated as an image (zero corners), empty masks kept (`draem_masks`); a
  random DTD image read and resized with OpenCV, then three of DRAEM's ten imgaug augmentations
  in a random order with the reference's ranges (`DRAEM_AUGMENTATIONS`, `draem_augmentation`).
- "destseg": as DeSTSeg's loader (apple/ml-destseg `data_utils.perlin_noise`): the "draem"
  draw's masks, a random DTD image read with PIL (bilinear), no augmentation.

Every sample is meant to be augmented (as the 3CAD release; DRAEM's and RealNet's 50% clean
samples are drawn by those methods around the synthesizer).

DTD is found in torchvision's layout (`<root>/dtd/dtd/images/<class>/*.jpg`) or as a plain
`<root>/images/<class>/*.jpg` (the release's `dtd_path`). Textures come in the channel
order of the images (`colour`: "rgb", or "bgr" for a method that reads as OpenCV does).

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
from threecad.preprocess import _cv2

log = logging.getLogger(__name__)
_hinted_dtd: list[bool] = []  # the DTD hint has been logged in this process

MAX_REDRAWS = 16
DRAWS = ("augmented", "release", "draem", "destseg")
REFERENCE_MASKS = ("draem", "destseg")  # draws whose masks are `draem_masks`
TEXTURES = ("dtd", "procedural")  # a config's texture choice: DTD (procedural when absent) | procedural
DTD_SUFFIXES = (".jpg", ".jpeg", ".png")
PROCEDURAL_FAMILIES = ("noise", "stripes", "blobs", "checker", "color_shift")
TEXTURE_AUGMENTATIONS = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize",
                         "posterize", "invert", "autocontrast", "rotate")
DRAEM_AUGMENTATIONS = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize",
                       "posterize", "invert", "autocontrast", "equalize", "rotate")
COLOURS = ("rgb", "bgr")


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


def lattice_perlin(angles: torch.Tensor, res_rows: torch.Tensor, res_cols: torch.Tensor, size: int) -> torch.Tensor:
    """DRAEM's `rand_perlin_2d_np`, batched: (N, size, size).

    Sample i has `res_rows[i]` x `res_cols[i]` lattice cells; pixel (r, c) lies at
    (r res_rows / size, c res_cols / size) in cell units, so lattice points fall on pixels
    (where the noise is 0) and there is no random phase. `angles` (N, L, L) holds the angle of
    the gradient (cos, sin) at lattice point (a, b) in [:, a, b], its cosine paired with the row
    offset as in the reference (L > every resolution; each sample uses its first res + 1 rows and
    columns). Rows and columns interpolate independently, so the noise is two matrix products
    per gradient component: (row weights) @ gradients @ (column weights)^T.
    """
    n, lat = angles.shape[0], angles.shape[-1]
    device = angles.device

    def weights(res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, size, L): each pixel's interpolation weights on its cell's two lattice lines, and
        those weights times the pixel's offset from each line."""
        t = torch.arange(size, device=device, dtype=torch.float32).view(1, size)
        t = t * res.to(device=device, dtype=torch.float32).view(n, 1) / size
        cell = t.floor()
        f = t - cell
        w = _fade(f)
        idx = cell.long().unsqueeze(-1)
        lerp = torch.zeros(n, size, lat, device=device)
        lerp.scatter_(2, idx, (1 - w).unsqueeze(-1)).scatter_(2, idx + 1, w.unsqueeze(-1))
        ramp = torch.zeros(n, size, lat, device=device)
        ramp.scatter_(2, idx, ((1 - w) * f).unsqueeze(-1)).scatter_(2, idx + 1, (w * (f - 1)).unsqueeze(-1))
        return lerp, ramp

    row_lerp, row_ramp = weights(res_rows)
    col_lerp, col_ramp = weights(res_cols)
    along_rows = row_ramp @ angles.cos() @ col_lerp.transpose(1, 2)
    along_cols = row_lerp @ angles.sin() @ col_ramp.transpose(1, 2)
    return math.sqrt(2.0) * (along_rows + along_cols)


def draem_masks(n: int, size: int, generator: torch.Generator, device: torch.device | str = "cpu",
                min_scale: int = 0, max_scale: int = 5, threshold: float = 0.5) -> torch.Tensor:
    """The masks of DRAEM's `augment_image` (and of RealNet's and DeSTSeg's loaders), (N,1,size,size)
    0/1: `rand_perlin_2d_np` with 2^t cells per axis, t in min_scale..max_scale, rotated as an image
    by U(-90, 90) degrees (zero corners), > threshold; an empty mask is kept."""
    rows = 2 ** torch.randint(min_scale, max_scale + 1, (n,), generator=generator)
    cols = 2 ** torch.randint(min_scale, max_scale + 1, (n,), generator=generator)
    lat = int(max(rows.max(), cols.max())) + 1
    angles = torch.rand(n, lat, lat, generator=generator) * (2 * math.pi)
    turn = torch.rand(n, generator=generator) * math.pi - math.pi / 2
    noise = lattice_perlin(angles.to(device), rows, cols, size)
    return (rotate_zero_fill(noise.unsqueeze(1), turn) > threshold).float()


class AnomalySynthesizer:
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
        self.draw = draw
        self.colour = colour
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
        """DTD images in the images' channel order: read and resized with OpenCV under the
        "draem" draw (as DRAEM and RealNet read them), else with PIL (bilinear)."""
        from PIL import Image

        out = []
        for k in self._texture_picks(n, keys):
            if self.draw == "draem":
                cv2 = _cv2()
                img = cv2.imread(str(self._dtd[k]), cv2.IMREAD_COLOR)
                if img is None:
                    raise ThreecadError(f"cannot read the DTD image {self._dtd[k]}; re-download DTD "
                                        "(`threecad download --dataset dtd`)")
                img = cv2.resize(img, (size, size))
                img = img if self.colour == "bgr" else img[..., ::-1]
            else:
                with Image.open(self._dtd[k]) as pil:
                    img = np.array(pil.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
                img = img[..., ::-1] if self.colour == "bgr" else img
            out.append(torch.from_numpy(np.ascontiguousarray(img)))
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


def draem_augmentation(name: str, image: np.ndarray, **params) -> np.ndarray:
    """One of DRAEM's imgaug augmentations (`DRAEM_AUGMENTATIONS`) of an (H, W, 3) uint8 image
    with its parameters given (`AnomalySynthesizer` draws them); written to give imgaug 0.4.0's
    output, which treats the array as RGB whatever its channel order (as in the reference), and
    takes real parameters in float32 as imgaug samples them."""
    from PIL import Image, ImageEnhance, ImageOps

    if name == "gamma":  # 255 (v / 255)^gamma per channel, truncated
        ramp = np.linspace(0, 1.0, 256, dtype=np.float32)
        tables = [np.clip(ramp ** np.float32(g) * 255, 0, 255).astype(np.uint8) for g in params["gammas"]]
        return np.stack([table[image[..., c]] for c, table in enumerate(tables)], axis=-1)
    if name == "brightness":  # multiply and add (lookup tables) on one colour space's brightness channel
        cv2 = _cv2()
        forward, back, channel = _brightness_space(params["space"])
        converted = cv2.cvtColor(image, forward)
        levels = np.arange(256)
        mul = np.clip(levels.astype(np.float32) * np.float32(params["mul"]), 0, 255).astype(np.uint8)
        add = np.clip(levels + int(np.clip(np.round(np.float32(params["add"])), -255, 255)), 0, 255).astype(np.uint8)
        first, second = (add, mul) if params["add_first"] else (mul, add)
        converted[..., channel] = second[first[converted[..., channel]]]
        return cv2.cvtColor(converted, back)
    if name == "sharpness":
        return np.array(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(float(np.float32(params["factor"]))))
    if name == "hue_saturation":  # OpenCV's HSV: hue 0..179, the shift scaled from 0..255 as imgaug does
        cv2 = _cv2()
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
        hue = int((np.array([params["hue"]], dtype=np.float32) / 255.0 * 180.0)[0])
        hsv[..., 0] = (hsv[..., 0] + hue) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + int(params["saturation"]), 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if name == "solarize":  # values at or above the threshold inverted, when applied at all
        if not params["apply"]:
            return image
        return np.where(image >= int(np.float32(params["threshold"])), 255 - image, image).astype(np.uint8)
    if name == "posterize":  # the top `bits` bits kept
        return image & np.uint8((0xFF << (8 - int(params["bits"]))) & 0xFF)
    if name == "invert":
        return 255 - image
    if name == "autocontrast":  # per channel, `cutoff` % of the pixels clipped at each end
        return np.array(ImageOps.autocontrast(Image.fromarray(image), cutoff=float(params["cutoff"])))
    if name == "equalize":
        return _equalize(image)
    if name == "rotate":  # about the centre, bilinear, black corners
        cv2 = _cv2()
        height, width = image.shape[:2]
        return cv2.warpAffine(image, _imgaug_rotation(params["degrees"], height, width)[:2], (width, height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    raise ValueError(f"unknown DRAEM augmentation {name}")


BRIGHTNESS_SPACES = ("YCrCb", "HSV", "HLS", "Lab", "Luv", "YUV")  # imgaug's WithBrightnessChannels choices


def _brightness_space(space: str) -> tuple[int, int, int]:
    """(conversion from RGB, conversion back, brightness channel) of one of `BRIGHTNESS_SPACES`."""
    cv2 = _cv2()
    return {"YCrCb": (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0), "HSV": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
            "HLS": (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1), "Lab": (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
            "Luv": (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0), "YUV": (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0)}[space]


def _equalize(image: np.ndarray) -> np.ndarray:
    """imgaug's Equalize for images of 64 x 64 and larger: PIL's lookup table per channel, except
    that the step leaves out bin 255 (PIL: the last non-empty bin)."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        step = int(hist[:-1].sum()) // 255
        if np.count_nonzero(hist) <= 1 or not step:
            out[..., c] = channel
            continue
        lut = (step // 2 + np.concatenate(([0], np.cumsum(hist)[:-1]))) // step
        out[..., c] = np.minimum(lut, 255).astype(np.uint8)[channel]
    return out


def _imgaug_rotation(degrees: float, height: int, width: int) -> np.ndarray:
    """imgaug's Affine(rotate=degrees) matrix (3 x 3, source to output pixels), composed in its order
    from the angle in float32 as imgaug samples it. The entries stay float64, as under the reference's
    NumPy 1 (under NumPy 2 imgaug rounds them to float32, which moves a few pixels by one level)."""
    def rotation(rad: float) -> np.ndarray:
        return np.array([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0], [0.0, 0.0, 1.0]])

    def shift(x: float, y: float) -> np.ndarray:
        return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])

    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    matrix = shift(-cx, -cy)
    # its shear-along-y step: a quarter turn (imgaug's 3.141592 / 2) there and back around a zero shear
    for step in (rotation(-3.141592 / 2), rotation(3.141592 / 2), rotation(float(np.deg2rad(np.float32(degrees)))),
                 shift(cx, cy)):
        matrix = step @ matrix
    return matrix


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
    draw: str = "augmented"  # how anomalies are drawn: "augmented" | "release" (3CAD's) | "draem" | "destseg"
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
        """The synthesizer these settings describe, at the config's `image_size`, with textures in
        the config's channel order (`colour`, RGB for a config without one)."""
        return AnomalySynthesizer(self.image_size, dtd_root=dtd_root, beta_max=self.beta_max,
                                  perlin_max_scale=self.perlin_max_scale, seed=seed, draw=self.draw, keys=keys,
                                  colour=getattr(self, "colour", "rgb"))
