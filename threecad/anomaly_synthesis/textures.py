"""Where anomaly textures come from: DTD (the papers' source) or procedural families.

Why: finding and reading DTD (each reference reads it its own way), the fallback to procedural
textures when it is absent, and the procedural families themselves are one concern, apart from
how a draw combines textures with masks (`synthesizer`).
"""
from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from threecad.anomaly_synthesis.perlin import perlin_noise
from threecad.errors import ThreecadError
from threecad.preprocess import opencv

log = logging.getLogger("threecad.anomaly_synthesis")  # the name its log lines carried before the split
WARNED_NO_DTD: set[str] = set()  # methods already warned that DTD is absent (once per process)
_hinted_dtd: list[bool] = []  # the DTD hint has been logged in this process

TEXTURES = ("dtd", "procedural")  # a config's texture choice: DTD (procedural when absent) | procedural
DTD_SUFFIXES = (".jpg", ".jpeg", ".png")
PROCEDURAL_FAMILIES = ("noise", "stripes", "blobs", "checker", "color_shift")


def find_dtd_images(root: str | Path) -> Path | None:
    """DTD's `images` folder under `root`: torchvision's `<root>/dtd/dtd/images`, `<root>/dtd/images`
    or `<root>/images`; None when there is none."""
    root = Path(root).expanduser()
    for candidate in (root / "dtd" / "dtd" / "images", root / "dtd" / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    return None


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
    if method not in WARNED_NO_DTD:
        log.warning("%s: DTD not found at %s (`threecad download --dataset dtd`); using procedural anomaly "
                    "textures, so this run is not the paper's setting (texture_source: procedural)", method, home)
        WARNED_NO_DTD.add(method)
    return None


class TextureSource:
    """The textures of an `AnomalySynthesizer` (its base): DTD images, picked and read as the
    draw's reference does, or procedural families, all drawn from `generator`.

    `texture_source` says which source is in use ("dtd" or "procedural"); textures come in the
    channel order `colour`, DTD images decoded at `image_size`.
    """

    def __init__(self, image_size: int, dtd_root: str | None, generator: torch.Generator, draw: str,
                 keys: Sequence[str] | None, colour: str):
        self.draw = draw
        self.colour = colour
        # the release's per-image texture: position among the sorted training paths
        self._key_index = {str(k): i for i, k in enumerate(sorted(str(k) for k in keys))} if keys else {}
        self.image_size = int(image_size)
        self.generator = generator
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
                cv2 = opencv()
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

