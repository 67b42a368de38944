"""The shape of one defect region, per kind: where it sits and which pixels it covers.

Scratches are thin, long, gently curved strokes that taper at the ends; upper lines are
straight and steady; black spots are tiny round blobs; dirt, bruises and discolouration
are irregular blobs; scrapes, iron-core airflow and overwashing are fringed streaks
along the grain (or the stator's radius); warping is a strip that follows the part's
outline or a hole's rim; watermarks are irregular, sometimes open, rings.

Every generator returns a boolean patch and the patch's top-left corner in the image;
the caller crops it to the image and the part, keeps one 8-connected piece and checks
that it does not touch another region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from threecad.synth.noise import periodic_noise, smooth_noise


@dataclass
class Footprint:
    mask: np.ndarray  # bool patch
    y0: int  # image row of the patch's first row (may be negative before cropping)
    x0: int


class Canvas:
    """What footprints need to know about the image: size, the part, its edges, the grain."""

    def __init__(self, part: np.ndarray, outer: np.ndarray | None, inner: np.ndarray | None,
                 streak_axis: int, center: tuple[float, float] | None, min_width: int):
        self.part = part
        self.h, self.w = part.shape
        self.s = min(self.h, self.w)
        self.outer, self.inner = outer, inner
        self.streak_axis = streak_axis
        self.center = center
        self.min_width = min_width
        self._part_idx: np.ndarray | None = None
        self._edge_idx: dict[str, np.ndarray] = {}
        # how many regions will share each edge, so that one strip leaves room for the rest
        self.edge_regions: dict[str, int] = {}

    def random_point(self, rng: np.random.Generator) -> tuple[int, int]:
        """A random pixel of the part."""
        if self._part_idx is None:
            self._part_idx = np.flatnonzero(self.part)
        i = int(self._part_idx[rng.integers(len(self._part_idx))])
        return divmod(i, self.w)

    def _edge(self, which: str) -> np.ndarray:
        if which not in self._edge_idx:
            dist = self.outer if which == "outer" else self.inner
            self._edge_idx[which] = (np.empty(0, np.intp) if dist is None
                                     else np.flatnonzero((dist > 0) & (dist <= 1.5) & self.part))
        return self._edge_idx[which]

    def edge_point(self, rng: np.random.Generator, which: str) -> tuple[int, int] | None:
        """A random pixel on the part just inside its outline ("outer") or a hole's rim ("inner")."""
        idx = self._edge(which)
        if len(idx) == 0:
            return None
        return divmod(int(idx[rng.integers(len(idx))]), self.w)

    def edge_length(self, which: str) -> float:
        """Approximate length in pixels of the outline or of all rims (the edge band is ~1.5 px)."""
        return len(self._edge(which)) / 1.5

    def grain_angle(self, rng: np.random.Generator, spread: float) -> float:
        base = 0.0 if self.streak_axis == 1 else math.pi / 2
        return base + rng.uniform(-spread, spread) + (math.pi if rng.random() < 0.5 else 0.0)

    def radial_angle(self, y: float, x: float) -> float:
        if self.center is None:
            return 0.0
        return math.atan2(y - self.center[0], x - self.center[1])


def _centered(mask: np.ndarray, cy: int, cx: int) -> Footprint:
    return Footprint(mask, cy - mask.shape[0] // 2, cx - mask.shape[1] // 2)


def blob_mask(rng: np.random.Generator, area: float, aspect: float, angle: float,
              rough: float, fringe: float = 0.0) -> np.ndarray:
    """An irregular ellipse of about `area` pixels; `fringe` adds streaks along its long axis."""
    a = math.sqrt(area * aspect / math.pi)
    b = a / aspect
    half = int(math.ceil(a * (1 + 1.5 * rough + fringe) + 2))
    v = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = v[:, None], v[None, :]
    ca, sa = math.cos(angle), math.sin(angle)
    p = xx * ca + yy * sa  # along the long axis
    q = -xx * sa + yy * ca  # across
    d = np.sqrt((p / a) ** 2 + (q / b) ** 2)
    if rough > 0:
        d += rough * smooth_noise(rng, d.shape, max(2.0, b * 0.9))
    if fringe > 0:
        knots = np.linspace(-half * 1.5, half * 1.5, max(4, int(3 * half / max(1.0, b * 0.25))))
        wiggle = rng.standard_normal(len(knots)).astype(np.float32)
        d += fringe * np.interp(q, knots, wiggle).astype(np.float32) * np.clip(np.abs(p) / a, 0, 1.5)
    return d < 1.0


def stroke_mask(rng: np.random.Generator, length: float, width: float, angle: float,
                curvature: float, taper: bool) -> np.ndarray:
    """A curved stroke: points every 0.7 px along a smooth path, stamped with disks."""
    step = 0.7
    n = max(2, int(length / step))
    t = np.arange(n, dtype=np.float64) * step
    wobble = 0.08 * np.sin(2 * math.pi * t / max(length, 1.0) * rng.uniform(0.5, 2.0) + rng.uniform(0, 6.3))
    theta = angle + curvature * (t - length / 2) + wobble
    y = np.cumsum(np.sin(theta) * step)
    x = np.cumsum(np.cos(theta) * step)
    r_full = max(0.0, (width - 1) / 2)
    if taper:
        ends = np.minimum(t, length - t) / max(length * 0.2, 1.0)
        radius = np.round(r_full * np.clip(0.35 + ends, 0, 1))
    else:
        radius = np.full(n, round(r_full))
    pad = int(r_full) + 2
    yi = np.round(y - y.min()).astype(int) + pad
    xi = np.round(x - x.min()).astype(int) + pad
    mask = np.zeros((yi.max() + pad + 1, xi.max() + pad + 1), bool)
    for rad in np.unique(radius):
        sel = radius == rad
        ri = int(rad)
        oy, ox = np.mgrid[-ri:ri + 1, -ri:ri + 1]
        keep = oy ** 2 + ox ** 2 <= rad * rad + rad  # a round stamp
        oy, ox = oy[keep], ox[keep]
        mask[(yi[sel][:, None] + oy[None, :]).ravel(), (xi[sel][:, None] + ox[None, :]).ravel()] = True
    return mask


def _stroke_width(canvas: Canvas, rng: np.random.Generator, lo: float, hi: float) -> int:
    return int(max(canvas.min_width, round(canvas.s * rng.uniform(lo, hi))))


def scratch(rng, canvas: Canvas, area: float) -> Footprint | None:
    width = _stroke_width(canvas, rng, 0.002, 0.005)
    length = min(area / width, canvas.s * 0.7)
    along = rng.random() < 0.5
    angle = canvas.grain_angle(rng, 0.35) if along else rng.uniform(0, 2 * math.pi)
    curvature = rng.uniform(-1.2, 1.2) / max(length, 1.0)
    mask = stroke_mask(rng, length, width, angle, curvature, taper=True)
    return _centered(mask, *canvas.random_point(rng))


def upper_line(rng, canvas: Canvas, area: float) -> Footprint | None:
    width = _stroke_width(canvas, rng, 0.003, 0.006)
    length = min(area / width, canvas.s * 0.8)
    mask = stroke_mask(rng, length, width, canvas.grain_angle(rng, 0.08), 0.0, taper=False)
    return _centered(mask, *canvas.random_point(rng))


def _blob_kind(aspect: tuple[float, float], rough: tuple[float, float], fringe: float = 0.0,
               along_grain: bool = False, radial: bool = False):
    def make(rng, canvas: Canvas, area: float) -> Footprint | None:
        cy, cx = canvas.random_point(rng)
        if radial and canvas.center is not None:
            angle = canvas.radial_angle(cy, cx) + rng.uniform(-0.2, 0.2)
        elif along_grain:
            angle = canvas.grain_angle(rng, 0.25)
        else:
            angle = rng.uniform(0, math.pi)
        mask = blob_mask(rng, area, rng.uniform(*aspect), angle, rng.uniform(*rough), fringe)
        return _centered(mask, cy, cx)
    return make


def _warping(which: str):
    def make(rng, canvas: Canvas, area: float) -> Footprint | None:
        point = canvas.edge_point(rng, which)
        if point is None:
            return None
        cy, cx = point
        depth = max(canvas.min_width * 1.5, math.sqrt(area) * rng.uniform(0.12, 0.3))
        share = max(1, canvas.edge_regions.get(which, 1))
        half_len = min(area / depth / 2, 0.35 * canvas.edge_length(which) / share)
        half = int(math.ceil(half_len + depth * 2 + 2))
        y0, x0 = max(0, cy - half), max(0, cx - half)
        y1, x1 = min(canvas.h, cy + half + 1), min(canvas.w, cx + half + 1)
        dist = (canvas.outer if which == "outer" else canvas.inner)[y0:y1, x0:x1]
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        wavy = depth * (1 + 0.4 * smooth_noise(rng, dist.shape, max(2.0, depth * 1.5)))
        mask = (dist > 0) & (dist < wavy) & (yy ** 2 + xx ** 2 < half_len ** 2)
        return Footprint(mask, y0, x0)
    return make


def watermarks(rng, canvas: Canvas, area: float) -> Footprint | None:
    ratio = rng.uniform(0.15, 0.35)  # ring width / radius
    radius = math.sqrt(area / (2 * math.pi * ratio))
    width = max(float(canvas.min_width), ratio * radius)
    half = int(math.ceil(radius * 1.5 + width + 2))
    v = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = v[:, None], v[None, :]
    phi = np.arctan2(yy, xx)
    squash = rng.uniform(0.7, 1.0)
    rho = np.sqrt((yy / squash) ** 2 + xx ** 2)
    ring_r = radius * (1 + 0.15 * periodic_noise(rng, phi, 4))
    ring_w = width / 2 * np.clip(1 + 0.4 * periodic_noise(rng, phi, 5), 0.5, 2.0)
    mask = np.abs(rho - ring_r) < np.maximum(ring_w, canvas.min_width / 2)
    if rng.random() < 0.4:  # an open ring: a gap where the drop ran off
        start = rng.uniform(-math.pi, math.pi)
        gap = rng.uniform(0.5, 1.8)
        mask &= np.mod(phi - start, 2 * math.pi) > gap
    return _centered(mask, *canvas.random_point(rng))


FOOTPRINTS: dict[str, Callable[[np.random.Generator, Canvas, float], Footprint | None]] = {
    "scratch": scratch,
    "upper_line": upper_line,
    "black_spots": _blob_kind((1.0, 1.5), (0.05, 0.15)),
    "bump": _blob_kind((1.0, 1.5), (0.02, 0.08)),
    "bruise": _blob_kind((1.0, 2.2), (0.15, 0.3)),
    "dirt": _blob_kind((1.0, 2.5), (0.25, 0.4)),
    "discoloration": _blob_kind((1.0, 2.5), (0.2, 0.35)),
    "uneven": _blob_kind((1.0, 2.0), (0.25, 0.4)),
    "deformation": _blob_kind((1.0, 2.0), (0.08, 0.18)),
    "whitening": _blob_kind((1.2, 3.0), (0.25, 0.4)),
    "scrape": _blob_kind((4.0, 9.0), (0.15, 0.3), fringe=0.25, along_grain=True),
    "overwashing": _blob_kind((1.5, 4.0), (0.25, 0.4), fringe=0.3, along_grain=True),
    "iron_core_airflow": _blob_kind((3.5, 7.0), (0.2, 0.35), fringe=0.35, radial=True),
    "outer_warping": _warping("outer"),
    "inner_warping": _warping("inner"),
    "watermarks": watermarks,
}
