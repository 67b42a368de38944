"""Render one planned image: the part, its defect regions, the mask and the region list.

Regions are placed so that no two touch, not even at a corner: each region is then
exactly one 8-connected component of the mask, which is what lets statistics count NE
from the mask and TE from the sidecar and get the same answer. Every region is also
large enough to survive a nearest-neighbour resize to 256x256 (it holds a block of
ceil(H/256) x ceil(W/256) pixels) and covers at least MIN_REGION_FRACTION of the image and
at least MIN_REGION_PIXELS pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from threecad.errors import ThreecadError
from threecad.synth.appearance import category_layout, render_scene
from threecad.synth.effects import apply_effect
from threecad.synth.footprints import FOOTPRINTS, Canvas, Footprint
from threecad.synth.kinds import KIND_SIZES
from threecad.synth.plan import ImageJob

MIN_REGION_FRACTION = 1e-4  # 0.01% of the image: 105 px at 1024x1024
# A floor in pixels for small images (generator 4): 3CAD's smallest defects, 0.01 % of a
# 1,000-px photo, are about 100 px, but the same fraction of a 128-px image is under 2 px,
# a mark no method sees (at `synth --max-size 128`, 1-3 px "uneven" spots capped AMF's
# I-AUROC near 0.77 for every method). 16 px is 0.1 % at 128 px; from about 400 px up
# MIN_REGION_FRACTION is the larger floor, so full-size sets are unaffected by it.
MIN_REGION_PIXELS = 16
VISIBLE_AT = 256  # regions must survive a nearest-neighbour resize to this size
SENSOR_NOISE = 0.006  # camera noise, in units of full scale
_EIGHT = np.ones((3, 3), bool)
_TRIES = 48
_BAND = 64  # rows per step of the final conversion (keeps it in cache)


@dataclass(frozen=True)
class Region:
    defect_type: str
    y: int  # first pixel of the region in raster order (so regions sort like ndimage.label)
    x: int
    area: int


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8, 0 or 255; None for a good image
    regions: list[Region]


def image_rng(job: ImageJob) -> np.random.Generator:
    """The image's own stream: its pose, light and texture about the category's layout, its defects."""
    return np.random.default_rng(np.random.SeedSequence(list(job.seed)))


def _target_area(rng: np.random.Generator, kind: str, pixels: int) -> float:
    size = KIND_SIZES[kind]
    u = rng.random() ** size.skew
    return 10 ** (size.log_min + (size.log_max - size.log_min) * u) * pixels


class _Placer:
    """Keeps track of taken pixels (each region grown by one pixel) and places new regions."""

    def __init__(self, canvas: Canvas, min_area: int, block: tuple[int, int]):
        self.canvas = canvas
        self.h, self.w = canvas.h, canvas.w
        self.min_area = min_area
        self.block = block
        self.taken = np.zeros((self.h, self.w), bool)

    def _crop(self, fp: Footprint) -> tuple[np.ndarray, int, int] | None:
        m = fp.mask
        y0, x0 = fp.y0, fp.x0
        top, left = max(0, -y0), max(0, -x0)
        bottom = min(m.shape[0], self.h - y0)
        right = min(m.shape[1], self.w - x0)
        if bottom <= top or right <= left:
            return None
        m = m[top:bottom, left:right]
        y0, x0 = y0 + top, x0 + left
        m = m & self.canvas.part[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        return m, y0, x0

    def _one_piece(self, m: np.ndarray) -> np.ndarray:
        labels, n = ndimage.label(m, structure=_EIGHT)
        if n <= 1:
            return m
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return labels == int(np.argmax(sizes))

    def _visible(self, m: np.ndarray) -> bool:
        if self.block == (1, 1):
            return True
        return bool(ndimage.binary_erosion(m, structure=np.ones(self.block, bool)).any())

    def _trim(self, m: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, int, int]:
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        return m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], y0 + int(rows[0]), x0 + int(cols[0])

    def try_place(self, fp: Footprint | None) -> tuple[np.ndarray, int, int] | None:
        if fp is None:
            return None
        cropped = self._crop(fp)
        if cropped is None:
            return None
        m, y0, x0 = cropped
        if int(m.sum()) < self.min_area:
            return None
        m = self._one_piece(m)
        if int(m.sum()) < self.min_area or not self._visible(m):
            return None
        m, y0, x0 = self._trim(m, y0, x0)
        if (m & self.taken[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]).any():
            return None
        return m, y0, x0

    def fallback(self) -> tuple[np.ndarray, int, int]:
        """A small disk in the freest spot: used only when random placement keeps failing."""
        free = self.canvas.part & ~self.taken
        if not free.any():
            free = ~self.taken
        dist = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1]  # the border blocks too
        cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
        need = math.sqrt(self.min_area / math.pi) + 1
        radius = max(0.0, min(need, float(dist[cy, cx]) - 1.5))
        ri = int(math.ceil(radius))
        yy, xx = np.mgrid[-ri:ri + 1, -ri:ri + 1]
        disk = yy ** 2 + xx ** 2 <= radius ** 2 + 0.5
        y0, x0 = int(cy) - ri, int(cx) - ri
        top, left = max(0, -y0), max(0, -x0)
        disk = disk[top:min(disk.shape[0], self.h - y0), left:min(disk.shape[1], self.w - x0)]
        y0, x0 = y0 + top, x0 + left
        disk &= ~self.taken[y0:y0 + disk.shape[0], x0:x0 + disk.shape[1]]
        if not disk.any():
            raise ThreecadError(f"no room left for another defect region in a {self.h}x{self.w} "
                                "image; use a larger --max-size")
        return self._trim(self._one_piece(disk), y0, x0)

    def take(self, m: np.ndarray, y0: int, x0: int) -> None:
        """Mark the region and its 8-neighbourhood as taken."""
        ya, xa = max(0, y0 - 1), max(0, x0 - 1)
        yb, xb = min(self.h, y0 + m.shape[0] + 1), min(self.w, x0 + m.shape[1] + 1)
        grown = np.zeros((yb - ya, xb - xa), bool)
        grown[y0 - ya:y0 - ya + m.shape[0], x0 - xa:x0 - xa + m.shape[1]] = m
        self.taken[ya:yb, xa:xb] |= ndimage.binary_dilation(grown, structure=_EIGHT)


def render_job(job: ImageJob) -> Rendered:
    """Draw the image (and, for a defective one, its regions and mask) for one planned job."""
    rng = image_rng(job)
    h, w = job.height, job.width
    kinds = {t for t, _ in job.regions}
    edges = frozenset(e for e in ("outer", "inner") if f"{e}_warping" in kinds)
    layout = category_layout(job.category, job.layout_stream)  # the category's product, drawn once
    scene = render_scene(job.category, rng, h, w, edges, layout)
    img = scene.image
    regions: list[Region] = []
    mask = None
    if job.regions:
        block = (max(1, math.ceil(h / VISIBLE_AT)), max(1, math.ceil(w / VISIBLE_AT)))
        min_width = max(block) + (1 if max(block) > 1 else 0)
        canvas = Canvas(scene.part, scene.outer, scene.inner, scene.streak_axis, scene.center, min_width)
        canvas.edge_regions = {e: sum(c for t, c in job.regions if t == f"{e}_warping") for e in edges}
        min_area = max(MIN_REGION_PIXELS, math.ceil(MIN_REGION_FRACTION * h * w), block[0] * block[1])
        placer = _Placer(canvas, min_area, block)
        specs = [(t, _target_area(rng, t, h * w)) for t, count in job.regions for _ in range(count)]
        specs.sort(key=lambda s: -s[1])  # big ones first: they are the hardest to fit
        full = np.zeros((h, w), bool)
        for kind, area in specs:
            placed = None
            for attempt in range(_TRIES):
                # big draws shrink when they do not fit; draws at the floor grow, since a thin
                # footprint (a warped rim) can rasterise to fewer pixels than it was drawn for
                target = max(min_area * 1.2 * 1.25 ** (attempt // 8), area * 0.7 ** (attempt // 8))
                placed = placer.try_place(FOOTPRINTS[kind](rng, canvas, target))
                if placed is not None:
                    break
            if placed is None:
                placed = placer.fallback()
            m, y0, x0 = placed
            placer.take(m, y0, x0)
            full[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] |= m
            apply_effect(kind, rng, img[:, y0:y0 + m.shape[0], x0:x0 + m.shape[1]], m)
            first = int(np.flatnonzero(m.ravel())[0])
            fy, fx = divmod(first, m.shape[1])
            regions.append(Region(kind, y0 + fy, x0 + fx, int(m.sum())))
        regions.sort(key=lambda r: (r.y, r.x))
        mask = full.astype(np.uint8) * 255
    noise = rng.standard_normal((h, w), dtype=np.float32) * SENSOR_NOISE
    return Rendered(_finish(img, noise), mask, regions)


def _finish(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """(3, H, W) float image plus sensor noise -> (H, W, 3) uint8, rounded half up.

    Done a band of rows and a channel at a time, straight into the interleaved result:
    the float32 steps per pixel are those of the whole-image version, without its four
    full-size passes and the separate transpose.
    """
    _, h, w = img.shape
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, _BAND):
        rows = slice(r, min(r + _BAND, h))
        for c in range(3):
            ch = img[c, rows]
            ch += noise[rows]
            np.clip(ch, 0.0, 1.0, out=ch)
            ch *= 255.0
            ch += 0.5
            out[rows, :, c] = ch  # float -> uint8 truncates, as astype does
    return out
