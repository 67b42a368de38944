"""Defect-free images of the 8 3CAD parts, one renderer per category.

Each renderer draws the part with vectorised signed-distance geometry and cheap noise
(brushed or sandblasted aluminium, turning marks, chamfer highlights, copper windings,
iron laminations, lighting gradients) and returns a Scene: the image plus where the part
is and how far each pixel lies from the part's outline and from its holes, so that edge
defects (warping) can follow real edges.

A category is one product in a fixed pose, as in 3CAD, where every image of a category
shows the same back, cover or stator. So a renderer's random draws come in two sets
(generator version 2; version 1 drew a new layout for every image, so that no two good
images showed the same product and per-position models such as PaDiM could not work):

- the **layout**: geometry and material (which outline sides are in view and where, the
  corner radius, the openings, the vent slots, the camera bump, the middle frame's rail,
  pockets, screw holes and antenna breaks, the stators' radii and tooth phase, the colour
  from the palette, the brushing axis, the light's direction). It is drawn once per
  category from its own stream (seed, category index, plan._LAYOUT_STREAM), in fractions
  of the image height and width (lengths along one axis in fractions of that side, radii
  in fractions of the short side), so that images of different sizes show the same
  layout once resized to a square. A layout holds every edge its category's defects can
  ask for: the camera cover shows its outline and lens rim, and every shell an outline
  in view and an opening or a slot row, so that good and defective images show the same
  product (warping follows those edges). `render_scene` refuses a scene that lacks one.
- the **variation** of each image, from the image's own stream: a shift of up to 2% of
  each side (1% for round parts, which a fixture centres), a scale change of up to 2%, a
  rotation of up to 2 degrees for round parts (the tooth phase stays the layout's),
  lighting jitter about the category's light, colour jitter (+-4%) and all fine texture
  (grain, brushing, turning marks, windings' wobble, sensor noise).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from threecad.errors import ThreecadError
from threecad.synth.noise import (coverage, fractal_noise, grid_coords, periodic_noise,
                                  rounded_rect_sdf, smooth_noise, smoothstep)


Edges = frozenset[str]  # which edges a scene must show: "outer" (outline), "inner" (hole rim)
NO_EDGES: Edges = frozenset()
BAND = 64  # rows per step of the full-image blends: a band's temporaries stay in cache


@dataclass
class Scene:
    """A rendered good part and the geometry defects need."""

    image: np.ndarray  # (3, H, W) float32 in [0, 1], channels first for fast blending
    part: np.ndarray  # bool (H, W): where defects may sit
    outer: np.ndarray | None  # float32: pixels into the part from its outline (<= 0 off the part)
    inner: np.ndarray | None  # float32: pixels into the part from the outlines of its holes
    streak_axis: int = 1  # direction of brushing / machining: 1 along columns, 0 along rows
    center: tuple[float, float] | None = None  # centre of a round part (stators)


def _rgb(lum: np.ndarray, color) -> np.ndarray:
    """Channels-first (3, H, W) image from a luminance map and a colour: contiguous and fast."""
    lum = np.asarray(lum, np.float32)
    return lum[None] * np.asarray(color, np.float32)[:, None, None]


def _bbox(weight: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns that hold a non-zero weight, or None when there is none."""
    rows = np.flatnonzero(weight.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(weight[rows[0]:rows[-1] + 1].any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _mix(base: np.ndarray, top, weight: np.ndarray) -> np.ndarray:
    """Blend `top` (an image or a grey level) over `base` in place, float32 throughout.

    Only the rows and columns where the weight is non-zero are touched, which keeps the
    many small layers (bevels, holes, seams) cheap; the work goes in bands of BAND rows,
    so that the temporaries stay in cache (the arithmetic per pixel is unchanged).
    """
    weight = np.asarray(weight, np.float32)
    box = _bbox(weight)
    if box is None:
        return base
    scalar = np.isscalar(top) or np.ndim(top) == 0
    top = np.float32(top) if scalar else np.asarray(top, np.float32)
    rows, cols = box
    for r in range(rows.start, rows.stop, BAND):
        sl = (slice(r, min(r + BAND, rows.stop)), cols)
        wt = weight[sl][None]
        b = base[(slice(None),) + sl]
        if scalar:
            b += (top - b) * wt
        else:
            t = top[(slice(None),) + sl] - b
            t *= wt
            b += t
    return base


def _mix_tinted(base: np.ndarray, lum: np.ndarray, color, weight: np.ndarray) -> np.ndarray:
    """`_mix(base, _rgb(lum, color), weight)` without making the (3, H, W) layer: the same
    float32 arithmetic per pixel and channel, done only inside the weight's box."""
    lum = np.asarray(lum, np.float32)
    weight = np.asarray(weight, np.float32)
    box = _bbox(weight)
    if box is None:
        return base
    color = np.asarray(color, np.float32)
    rows, cols = box
    for r in range(rows.start, rows.stop, BAND):
        sl = (slice(r, min(r + BAND, rows.stop)), cols)
        wt = weight[sl]
        layer = lum[sl]
        for c in range(3):
            b = base[(c,) + sl]
            t = layer * color[c]
            t -= b
            t *= wt
            b += t
    return base


def _brushed(rng: np.random.Generator, shape, axis: int, s: float) -> np.ndarray:
    """Streaks of brushed aluminium: fine across the grain, long along it."""
    fine, long_ = max(1.2, s / 700), s / rng.uniform(2.5, 6.0)
    if axis == 1:
        a = smooth_noise(rng, shape, fine, long_)
        b = smooth_noise(rng, shape, fine * 4, long_ * 2)
    else:
        a = smooth_noise(rng, shape, long_, fine)
        b = smooth_noise(rng, shape, long_ * 2, fine * 4)
    return 0.6 * a + 0.4 * b


def _grain(rng: np.random.Generator, shape, s: float) -> np.ndarray:
    """Sandblasted / anodised grain: isotropic, a pixel or two across."""
    return smooth_noise(rng, shape, max(1.2, s / 600))


# --- per-image variation about the category's layout -----------------------------------------
SHIFT = 0.02  # largest shift of the part, as a fraction of each side
ROUND_SHIFT = 0.01  # the same for round parts, centred by their fixture (a stator's tooth is 0.05 wide)
SCALE = 0.02  # largest relative change of the part's size
ROTATE_DEG = 2.0  # largest rotation of round parts (camera cover, stators), degrees
MARGIN = 0.04  # room the layout keeps between features for the shift and scale above


@dataclass(frozen=True)
class Pose:
    """Where one image puts the category's layout: shift (pixels), scale, rotation (radians)."""

    h: int
    w: int
    dy: float = 0.0
    dx: float = 0.0
    k: float = 1.0
    rot: float = 0.0

    def y(self, fy: float) -> float:
        """Pixel row of a layout row given as a fraction of the height."""
        return self.h / 2 + (fy - 0.5) * self.h * self.k + self.dy

    def x(self, fx: float) -> float:
        return self.w / 2 + (fx - 0.5) * self.w * self.k + self.dx

    def size(self, fs: float) -> float:
        """Pixels of a layout length given as a fraction of the short side."""
        return fs * min(self.h, self.w) * self.k

    def size_y(self, fy: float) -> float:
        """Pixels of a vertical layout length given as a fraction of the height."""
        return fy * self.h * self.k

    def size_x(self, fx: float) -> float:
        return fx * self.w * self.k


def _pose(rng: np.random.Generator, h: int, w: int, rotate: bool = False) -> Pose:
    """One image's pose; `rotate`: a round part, which turns a little and shifts less."""
    shift = ROUND_SHIFT if rotate else SHIFT
    dy, dx = rng.uniform(-shift, shift) * h, rng.uniform(-shift, shift) * w
    k = 1.0 + rng.uniform(-SCALE, SCALE)
    rot = math.radians(rng.uniform(-ROTATE_DEG, ROTATE_DEG)) if rotate else 0.0
    return Pose(h, w, dy, dx, k, rot)


@dataclass(frozen=True)
class Light:
    """A category's light: gradient direction, hot spot (fractions of the image), falloff, strength."""

    phi: float
    hy: float
    hx: float
    falloff: float
    strength: float


def _draw_light(rng: np.random.Generator, lo: float, hi: float | None = None) -> Light:
    strength = lo if hi is None else rng.uniform(lo, hi)
    return Light(rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8),
                 rng.uniform(1.5, 4.0), strength)


def _lighting(rng: np.random.Generator, yy, xx, h: int, w: int, light: Light) -> np.ndarray:
    """A soft directional gradient plus a broad hot spot, as under a ring or bar light: the
    category's light, jittered a little per image."""
    phi = light.phi + rng.uniform(-0.25, 0.25)
    grad = ((xx - w / 2) / w * math.cos(phi) + (yy - h / 2) / h * math.sin(phi))
    hy, hx = (light.hy + rng.uniform(-0.05, 0.05)) * h, (light.hx + rng.uniform(-0.05, 0.05)) * w
    strength = light.strength * rng.uniform(0.85, 1.15)
    # 1 + strength * (grad + 0.8 * (spot - 0.5)) with spot = exp(-(dy^2 + dx^2) * k), in place
    spot = ((yy - hy) / h) ** 2 + ((xx - hx) / w) ** 2
    np.negative(spot, out=spot)
    spot *= light.falloff * rng.uniform(0.9, 1.1)
    np.exp(spot, out=spot)
    spot -= 0.5
    spot *= 0.8
    spot += grad
    spot *= strength
    spot += 1.0
    return spot.astype(np.float32, copy=False)


def _background(rng: np.random.Generator, shape, s: float, level: float) -> np.ndarray:
    out = smooth_noise(rng, shape, s / 4)  # level * (1 + 0.25 * noise), in place
    out *= 0.25
    out += 1.0
    out *= level
    return out.astype(np.float32, copy=False)



Color = tuple[float, float, float]


def _pick(rng: np.random.Generator, palette: list[tuple[float, Color]]) -> Color:
    """The category's colour: one entry of the palette, by its weight (a layout draw)."""
    weights = np.array([p for p, _ in palette], float)
    return palette[int(rng.choice(len(palette), p=weights / weights.sum()))][1]


def _tint(rng: np.random.Generator, color: Color) -> Color:
    """One image's colour: the category's, each channel jittered by up to 4%."""
    jitter = rng.uniform(0.96, 1.04, 3)
    return tuple(float(min(1.0, c * j)) for c, j in zip(color, jitter))


def _chamfer(sdf: np.ndarray, width: float) -> np.ndarray:
    """Weight of the bevel band just inside an outline (sdf negative inside)."""
    out = smoothstep(-width - 1.0, -width + 1.0, sdf)
    out *= coverage(sdf)
    return out.astype(np.float32, copy=False)


def _hole_disks(yy, xx, centers, radii):
    """Union signed distance of several disks (negative inside)."""
    sdf = None
    for (cy, cx), r in zip(centers, radii):
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - r
        sdf = d if sdf is None else np.minimum(sdf, d)
    return sdf



def _polar(pose: Pose):
    """Polar coordinates about the posed centre of a turned or wound part (camera covers,
    stators): the layout's centre is the image's, each image moves it a little."""
    h, w = pose.h, pose.w
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    cy, cx = pose.y(0.5), pose.x(0.5)
    r = (yy - cy) ** 2 + (xx - cx) ** 2
    np.sqrt(r, out=r)
    theta = np.arctan2(yy - cy, xx - cx)
    return s, yy, xx, cy, cx, r, theta


# --- aluminium camera cover: a turned, anodised ring around the lens hole -------------------
COVER_PALETTE = [(0.5, (0.70, 0.71, 0.73)), (0.35, (0.34, 0.35, 0.38)), (0.15, (0.30, 0.38, 0.55))]


@dataclass(frozen=True)
class CoverLayout:
    r_out: float  # outer radius, fraction of the short side
    r_in: float  # lens hole radius, fraction of r_out
    r_mid: float  # the machined groove, fraction of the way from r_in to r_out
    color: Color
    phi: float  # direction of the light
    turning: float  # turning marks per short side
    cham: float  # chamfer width, fraction of the short side


def _cover_layout(rng: np.random.Generator) -> CoverLayout:
    return CoverLayout(rng.uniform(0.41, 0.45), rng.uniform(0.42, 0.56), rng.uniform(0.35, 0.65),
                       _pick(rng, COVER_PALETTE), rng.uniform(0, 2 * math.pi), rng.uniform(250, 400),
                       rng.uniform(0.022, 0.035))


def camera_cover(rng: np.random.Generator, h: int, w: int, lay: CoverLayout) -> Scene:
    pose = _pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = _polar(pose)
    r_out = pose.size(lay.r_out)
    r_in = r_out * lay.r_in
    r_mid = r_in + (r_out - r_in) * lay.r_mid
    color = _tint(rng, lay.color)
    phi = lay.phi + rng.uniform(-0.15, 0.15)
    period = max(1.6, s / lay.turning)
    turning = np.sin(2 * math.pi * r / period + 1.5 * smooth_noise(rng, (h, w), s / 8))
    face = (0.92 + 0.13 * np.cos(theta - phi) + 0.035 * turning
            + 0.03 * smooth_noise(rng, (h, w), s / 6))
    face *= 1.0 - 0.55 * np.exp(-(((r - r_mid) / max(1.0, s / 300)) ** 2))  # machined groove
    ring = coverage(r - r_out) - coverage(r - r_in)
    cham = max(2.0, pose.size(lay.cham))
    outer_bevel = _chamfer(r - r_out, cham)
    inner_bevel = np.clip(smoothstep(r_in - 1, r_in + 1, r)
                          - smoothstep(r_in + cham - 1, r_in + cham + 1, r), 0, 1)
    spec = 1.25 + 0.35 * np.cos(2 * (theta - phi)) + 0.1 * turning
    img = _rgb(_background(rng, (h, w), s, 0.07), (1.0, 1.0, 1.02))
    lens = 0.035 + 0.05 * np.exp(-((r - r_in * 0.55) / (r_in * 0.08)) ** 2) * (1 + np.cos(theta - phi)) / 2
    img = _mix_tinted(img, lens, (0.9, 0.95, 1.1), coverage(r - r_in))
    img = _mix_tinted(img, face, color, ring)
    bevel_color = tuple(min(1.0, 0.45 + 0.55 * c) for c in color)
    img = _mix_tinted(img, spec * 0.7, bevel_color, np.maximum(outer_bevel, inner_bevel) * ring)
    part = (r < r_out - 0.5) & (r > r_in + 0.5)
    return Scene(img, part, (r_out - r).astype(np.float32), (r - r_in).astype(np.float32),
                 streak_axis=1, center=(cy, cx))


# --- shells: iPad and PC backs, sandblasted or brushed, with an outline and openings ---------
OUT_OF_VIEW = {"top": -0.6, "bottom": 1.6, "left": -0.6, "right": 1.6}  # sides the view does not show


@dataclass(frozen=True)
class SlotRow:
    """A row of vent slots; lengths along the row in fractions of that side, across it of the other."""

    n: int
    width: float
    length: float
    pitch: float
    horizontal: bool
    start: float
    mid: float


@dataclass(frozen=True)
class ShellLayout:
    color: Color
    axis: int  # brushing / grain direction
    light: Light
    top: float  # outline sides, fractions of the height and width (OUT_OF_VIEW when unseen)
    bottom: float
    left: float
    right: float
    corner: float  # corner radius, fraction of the short side
    holes: tuple[tuple[float, float, float], ...] = ()  # (row, column, radius / short side)
    slots: SlotRow | None = None
    bump: tuple[float, float, float] | None = None  # camera module: (row, column, half side), fractions

    def depth(self, fy: float, fx: float) -> float:
        """How far a layout point lies inside the outline, in short sides of a square image
        (the least it can be: a longer side only moves it deeper)."""
        cy, cx = (self.top + self.bottom) / 2, (self.left + self.right) / 2
        hh, hw = (self.bottom - self.top) / 2, (self.right - self.left) / 2
        r = min(self.corner, hh, hw)
        qy, qx = abs(fy - cy) - (hh - r), abs(fx - cx) - (hw - r)
        return -(math.hypot(max(qy, 0.0), max(qx, 0.0)) + min(max(qy, qx), 0.0) - r)


def _outline_sides(rng: np.random.Generator) -> dict[str, float]:
    """One or two sides of a big rounded rectangle in view (never none: warping needs one)."""
    sides = dict(OUT_OF_VIEW)
    n_edges = int(rng.choice([1, 1, 2]))
    first = str(rng.choice(["top", "bottom"]))
    chosen = [first] if n_edges == 1 and rng.random() < 0.5 else []
    if not chosen:
        chosen = [str(rng.choice(["left", "right"]))] + ([first] if n_edges > 1 else [])
    for side in chosen:
        m = rng.uniform(0.05, 0.16)
        sides[side] = 1 - m if side in ("bottom", "right") else m
    return sides


def _layout_openings(rng: np.random.Generator, lay: ShellLayout,
                     avoid: list[tuple[float, float, float]]) -> tuple[tuple[float, float, float], ...]:
    """Camera hole or microphone holes: disks well inside the outline, at least one."""
    holes: list[tuple[float, float, float]] = []
    for _ in range(int(rng.choice([1, 1, 2, 3]))):
        rad = rng.uniform(0.05, 0.1) if not holes else rng.uniform(0.015, 0.03)
        for _try in range(20):
            fy, fx = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85)
            far = all(math.hypot(fy - a, fx - b) > rad + q + 0.05 + MARGIN for a, b, q in holes + avoid)
            if lay.depth(fy, fx) > rad + 0.04 + MARGIN and far:
                holes.append((fy, fx, rad))
                break
    if not holes:  # the middle of the part in view
        fy = (max(lay.top, 0.0) + min(lay.bottom, 1.0)) / 2
        fx = (max(lay.left, 0.0) + min(lay.right, 1.0)) / 2
        holes.append((fy, fx, max(0.02, min(0.06, lay.depth(fy, fx) * 0.5))))
    return tuple(holes)


def _layout_slots(rng: np.random.Generator, lay: ShellLayout) -> SlotRow | None:
    """A row of vent slots well inside the outline, or None where the drawn row does not fit."""
    n = int(rng.integers(5, 14))
    width, length = rng.uniform(0.025, 0.04), rng.uniform(0.12, 0.22)
    pitch = width * rng.uniform(2.2, 3.2)
    horizontal = bool(rng.random() < 0.5)
    span = n * pitch
    if span > 0.85:
        n = max(2, int(0.85 / pitch))
        span = n * pitch
    start = rng.uniform(0.08, 0.92 - span) if span < 0.84 else 0.08
    mid = rng.uniform(0.3, 0.7)
    for pos in (start, start + span / 2, start + span):
        fy, fx = (mid, pos) if horizontal else (pos, mid)
        if lay.depth(fy, fx) < length / 2 + 0.04 + MARGIN:
            return None  # the row would cut the outline
    return SlotRow(n, width, length, pitch, horizontal, start, mid)


def _shell_layout(rng: np.random.Generator, palette, brushed: bool, slots: bool,
                  bump: bool) -> ShellLayout:
    """Outline in view, then the camera bump (if any), then slots or openings: always a rim."""
    color = _pick(rng, palette)
    axis = int(rng.random() < 0.75) if brushed else 1
    light = _draw_light(rng, 0.12, 0.25)
    lay = ShellLayout(color, axis, light, **_outline_sides(rng), corner=rng.uniform(0.08, 0.22))
    avoid: list[tuple[float, float, float]] = []
    if bump:
        for _ in range(20):
            half, fy, fx = rng.uniform(0.13, 0.2), rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)
            if lay.depth(fy, fx) > half * 1.6 + MARGIN:
                lay = replace(lay, bump=(fy, fx, half))
                avoid.append((fy, fx, half * 1.2 * math.sqrt(2)))
                break
    if slots and rng.random() < 0.7:
        for _ in range(10):
            row = _layout_slots(rng, lay)
            if row is not None:
                return replace(lay, slots=row)
    return replace(lay, holes=_layout_openings(rng, lay, avoid))


def _slot_sdf(yy, xx, pose: Pose, row: SlotRow) -> np.ndarray:
    """A row of stadium-shaped slots, by repeating one slot along the row."""
    if row.horizontal:
        a, b, along, across = xx - pose.x(row.start), yy - pose.y(row.mid), pose.w, pose.h
    else:
        a, b, along, across = yy - pose.y(row.start), xx - pose.x(row.mid), pose.h, pose.w
    pitch, width = row.pitch * along * pose.k, row.width * along * pose.k
    length = row.length * across * pose.k
    idx = np.clip(np.floor(a / pitch), 0, row.n - 1)
    local = a - (idx + 0.5) * pitch
    return rounded_rect_sdf(b, local, 0.0, 0.0, length / 2, width / 2, width / 2)


def _shell(rng: np.random.Generator, h: int, w: int, lay: ShellLayout, brushed: bool) -> Scene:
    """A shell surface: the category's outline, openings and bump, posed and lit per image."""
    pose = _pose(rng, h, w)
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = _tint(rng, lay.color)
    axis = lay.axis
    tex = _brushed(rng, (h, w), axis, s) if brushed else _grain(rng, (h, w), s)
    lum = _lighting(rng, yy, xx, h, w, lay.light) + (0.045 if brushed else 0.03) * tex
    lum += 0.03 * fractal_noise(rng, (h, w), s / 3, octaves=2)
    top, bottom = pose.y(lay.top), pose.y(lay.bottom)
    left, right = pose.x(lay.left), pose.x(lay.right)
    outline = rounded_rect_sdf(yy, xx, (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2,
                               (right - left) / 2, pose.size(lay.corner))
    holes = None
    if lay.slots is not None:
        holes = _slot_sdf(yy, xx, pose, lay.slots)
    elif lay.holes:
        holes = _hole_disks(yy, xx, [(pose.y(fy), pose.x(fx)) for fy, fx, _ in lay.holes],
                            [pose.size(r) for _, _, r in lay.holes])
    img = _rgb(_background(rng, (h, w), s, 0.06), (1.0, 1.0, 1.0))
    body = coverage(outline)
    if holes is not None:
        body = body * (1 - coverage(holes))
    img = _mix_tinted(img, lum, color, body)
    bevel_color = tuple(min(1.0, 0.5 + 0.5 * c) for c in color)
    glint = 1.1 + 0.25 * smooth_noise(rng, (h, w), s / 5)
    bevel = _chamfer(outline, max(2.0, s * 0.02))
    if holes is not None:
        bevel = np.maximum(bevel, _chamfer(-holes, max(1.5, s * 0.01)) * coverage(outline))
    img = _mix_tinted(img, glint * 0.8, bevel_color, bevel)
    part = outline < -0.5
    inner = None
    if holes is not None:
        part &= holes > 0.5
        inner = holes
    scene = Scene(img, part, (-outline).astype(np.float32), inner, streak_axis=axis)
    return _camera_bump(scene, pose, lay.bump) if lay.bump is not None else scene


AI_PALETTE = [(0.6, (0.74, 0.75, 0.77)), (0.4, (0.42, 0.43, 0.45))]
ANI_PALETTE = [(0.3, (0.80, 0.68, 0.63)), (0.25, (0.58, 0.67, 0.78)),
               (0.25, (0.45, 0.46, 0.48)), (0.2, (0.78, 0.79, 0.80))]
AP_PALETTE = [(0.7, (0.76, 0.77, 0.78)), (0.3, (0.50, 0.51, 0.53))]


def aluminum_ipad(rng: np.random.Generator, h: int, w: int, lay: ShellLayout) -> Scene:
    return _shell(rng, h, w, lay, brushed=False)


def aluminum_new_ipad(rng: np.random.Generator, h: int, w: int, lay: ShellLayout) -> Scene:
    return _shell(rng, h, w, lay, brushed=False)


def aluminum_pc(rng: np.random.Generator, h: int, w: int, lay: ShellLayout) -> Scene:
    return _shell(rng, h, w, lay, brushed=True)


def _camera_bump(scene: Scene, pose: Pose, bump: tuple[float, float, float]) -> Scene:
    """A raised camera module with lens rings (newer iPads), where the layout put it."""
    h, w = scene.part.shape
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    fy, fx, fhalf = bump
    hy, hx, cy, cx = pose.size_y(fhalf), pose.size_x(fhalf), pose.y(fy), pose.x(fx)
    half = min(hy, hx)
    lens_c = [(cy - hy * 0.45, cx - hx * 0.45), (cy + hy * 0.45, cx + hx * 0.45)]
    lens = _hole_disks(yy, xx, lens_c, [half * 0.32, half * 0.3])
    # the module's own layers are drawn in its box only: nothing outside it changes
    y0, y1 = max(0, int(cy - hy) - 4), min(h, int(math.ceil(cy + hy)) + 5)
    x0, x1 = max(0, int(cx - hx) - 4), min(w, int(math.ceil(cx + hx)) + 5)
    yy, xx, box_lens = yy[y0:y1], xx[:, x0:x1], lens[y0:y1, x0:x1]
    img = scene.image[:, y0:y1, x0:x1]
    sdf = rounded_rect_sdf(yy, xx, cy, cx, hy, hx, half * 0.45)
    raised = coverage(sdf)
    img *= (1.0 - 0.12 * raised)[None]
    _mix(img, 0.82, _chamfer(sdf, max(1.5, s * 0.01)) * 0.6)
    inner_lens = 0.05 + 0.1 * np.exp(-(np.minimum(*[np.sqrt((yy - a) ** 2 + (xx - b) ** 2)
                                                   for a, b in lens_c]) / (half * 0.12)) ** 2)
    _mix_tinted(img, inner_lens, (0.85, 0.9, 1.1), coverage(box_lens))
    _mix(img, 0.2, _chamfer(-box_lens, max(1.5, s * 0.012)) * coverage(sdf))
    scene.part &= lens > 1.5
    scene.inner = lens if scene.inner is None else np.minimum(scene.inner, lens)
    return scene


# --- middle frames: a machined rail around a pocketed mid-plate -----------------------------
AMF_PALETTE = [(1.0, (0.76, 0.77, 0.79))]
ANMF_PALETTE = [(0.4, (0.40, 0.41, 0.44)), (0.35, (0.42, 0.50, 0.62)), (0.25, (0.72, 0.70, 0.66))]


@dataclass(frozen=True)
class FrameLayout:
    color: Color
    corner: bool  # the view shows a corner of the frame (else a straight top rail)
    rail: float  # rail width, fraction of the height (top rail) and of the width (left rail)
    top: float  # outline, fraction of the height (and `left` of the width, with a corner)
    left: float
    r_out: float  # corner radii of the outline and the rail's inner edge, fractions of the short side
    r_in: float
    light_rail: Light
    light_plate: Light
    far_y: float  # centre of the milling arcs, fractions of the height and width
    far_x: float
    milling: float  # milling arcs per short side
    pockets: tuple[tuple[float, float, float, float], ...]  # (row, column, half height, half width)
    holes: tuple[tuple[float, float, float], ...]  # screw holes: (row, column, radius)
    antennas: tuple[float, ...]  # columns of the antenna breaks across the rail


def _frame_layout(rng: np.random.Generator, palette, corner: bool, antenna: bool) -> FrameLayout:
    color = _pick(rng, palette)
    rail, top = rng.uniform(0.12, 0.2), rng.uniform(0.06, 0.14)
    left = rng.uniform(0.06, 0.14) if corner else 0.0
    r_out, r_in = (rng.uniform(0.2, 0.35), rng.uniform(0.08, 0.2)) if corner else (0.0, 0.0)
    light_rail, light_plate = _draw_light(rng, 0.15), _draw_light(rng, 0.2)
    far_y, far_x, milling = rng.uniform(2, 4), rng.uniform(-1, 2), rng.uniform(60, 120)
    pockets = []
    for _ in range(int(rng.integers(1, 4))):
        ph, pw = rng.uniform(0.08, 0.2), rng.uniform(0.1, 0.3)
        pockets.append((rng.uniform(top + rail + ph + 0.03, 1 + ph * 0.5), rng.uniform(0, 1), ph, pw))
    holes = [(rng.uniform(top + rail * 1.6, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0.015, 0.03))
             for _ in range(int(rng.integers(1, 5)))]
    antennas = tuple(rng.uniform(0.2, 0.8) for _ in range(int(rng.integers(1, 3)))) if antenna else ()
    return FrameLayout(color, corner, rail, top, left, r_out, r_in, light_rail, light_plate, far_y,
                       far_x, milling, tuple(pockets), tuple(holes), antennas)


def _middle_frame(rng: np.random.Generator, h: int, w: int, lay: FrameLayout) -> Scene:
    pose = _pose(rng, h, w)
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = _tint(rng, lay.color)
    rail_w = pose.size_y(lay.rail)  # the top rail's; the left one's is pose.size_x(lay.rail)
    top = pose.y(lay.top)
    if lay.corner:
        cy, cx = pose.y(1.0), pose.x(1.0)  # the frame's far corner is out of view, bottom right
        left = pose.x(lay.left)
        outline = rounded_rect_sdf(yy, xx, cy, cx, cy - top, cx - left, pose.size(lay.r_out))
        inner_edge = rounded_rect_sdf(yy, xx, cy, cx, cy - top - rail_w,
                                      cx - left - pose.size_x(lay.rail), pose.size(lay.r_in))
    else:
        outline = (top - yy) * np.ones((1, w), np.float32)
        inner_edge = (top + rail_w - yy) * np.ones((1, w), np.float32)
    rail = coverage(outline) * (1 - coverage(inner_edge))
    plate = coverage(inner_edge)
    lum_rail = (_lighting(rng, yy, xx, h, w, lay.light_rail) + 0.05 * _brushed(rng, (h, w), 1, s)
                + 0.22 * np.exp(-((inner_edge + rail_w * 0.5) / (rail_w * 0.22)) ** 2) - 0.08)
    far_y, far_x = pose.y(lay.far_y), pose.x(lay.far_x)
    milling = np.sin(2 * math.pi * np.sqrt((yy - far_y) ** 2 + (xx - far_x) ** 2)
                     / max(2.0, s / lay.milling))
    lum_plate = (0.72 * _lighting(rng, yy, xx, h, w, lay.light_plate) + 0.03 * milling
                 + 0.02 * _grain(rng, (h, w), s))
    img = _rgb(_background(rng, (h, w), s, 0.05), (1, 1, 1))
    img = _mix_tinted(img, lum_rail, color, rail)
    img = _mix_tinted(img, lum_plate, color, plate)
    shadow = np.exp(-((inner_edge - rail_w * 0.04) / max(1.5, s * 0.008)) ** 2) * plate
    img *= (1 - 0.5 * shadow)[None]
    img = _mix(img, 0.93, _chamfer(outline, max(1.5, s * 0.012)) * 0.8)
    # pockets: shallow milled rectangles on the plate, darker with a bright rim
    pocket_sdf = None
    for py, px, ph, pw in lay.pockets:
        d = rounded_rect_sdf(yy, xx, pose.y(py), pose.x(px), pose.size_y(ph), pose.size_x(pw), s * 0.03)
        pocket_sdf = d if pocket_sdf is None else np.minimum(pocket_sdf, d)
    pocket = coverage(pocket_sdf) * plate
    img *= (1 - 0.25 * pocket)[None]
    img = _mix(img, 0.85, _chamfer(pocket_sdf, max(1.2, s * 0.006)) * plate * 0.7)
    # screw holes: dark disks with a bright countersink
    holes = None
    if lay.holes:
        holes = _hole_disks(yy, xx, [(pose.y(fy), pose.x(fx)) for fy, fx, _ in lay.holes],
                            [pose.size(r) for _, _, r in lay.holes])
        img = _mix(img, 0.04, coverage(holes))
        img = _mix(img, 0.9, _chamfer(-holes, max(1.5, s * 0.012)) * plate * 0.8)
    part = outline < -0.5
    # plastic antenna breaks across the rail: dark, part of the frame, no defects drawn there
    for fx in lay.antennas:
        band = coverage(np.abs(xx - pose.x(fx)) - s * 0.012) * rail
        img = _mix(img, 0.12, band)
        part &= ~(band > 0.01)
    if holes is not None:
        part &= holes > 0.5
    return Scene(img.astype(np.float32, copy=False), part, (-outline).astype(np.float32),
                 holes, streak_axis=1)


aluminum_middle_frame = _middle_frame
aluminum_new_middle_frame = _middle_frame


# --- stators: radial teeth; copper windings or bare iron laminations ------------------------
STATOR_R_OUT = 0.47  # outer radius, fraction of the short side (room for the shift and scale)


@dataclass(frozen=True)
class StatorLayout:
    r_yoke: float  # fractions of the short side
    r_bore: float
    phase: float  # angle of the first tooth, in tooth pitches
    weld: float  # angle of the first weld seam, in seam pitches
    light: Light


def _stator_layout(rng: np.random.Generator, yoke: tuple[float, float], bore: tuple[float, float],
                   light: float) -> StatorLayout:
    return StatorLayout(rng.uniform(*yoke), rng.uniform(*bore), rng.uniform(0, 1), rng.uniform(0, 1),
                        _draw_light(rng, light))


def copper_stator(rng: np.random.Generator, h: int, w: int, lay: StatorLayout) -> Scene:
    pose = _pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = _polar(pose)
    r_out, r_yoke, r_bore = pose.size(STATOR_R_OUT), pose.size(lay.r_yoke), pose.size(lay.r_bore)
    n = 18
    phase = (theta - pose.rot) * (n / (2 * math.pi)) + lay.phase
    frac = phase - np.floor(phase) - 0.5  # position across one winding, -0.5..0.5
    half_bundle = 0.41 + 0.02 * periodic_noise(rng, theta, 3)
    across = np.clip(np.abs(frac) / half_bundle, 0, 1)
    profile = np.sqrt(np.clip(1 - across ** 2, 0, 1))
    lo, hi = r_bore + 0.02 * s, r_yoke - 0.015 * s
    radial = np.clip(np.minimum(r - lo, hi - r) / (0.03 * s), 0, 1)
    bundle_cov = np.clip((half_bundle - np.abs(frac)) * (2 * math.pi * r / n) + 0.5, 0, 1) * \
        np.clip(np.minimum(r - lo, hi - r) + 0.5, 0, 1)
    pitch = max(2.5, s / 170)
    wobble = 0.35 * smooth_noise(rng, (h, w), s / 40)
    wire = 0.5 + 0.5 * np.cos(2 * math.pi * (r / pitch + wobble))
    lum = 0.3 + 0.7 * profile * np.sqrt(radial) * (0.55 + 0.45 * wire)
    lum *= _lighting(rng, yy, xx, h, w, lay.light)
    glint = (wire ** 6) * (profile ** 4) * 0.35
    copper = _rgb(lum, (0.80, 0.47, 0.24)) + _rgb(glint, (1.0, 0.85, 0.6))
    # iron yoke with concentric lamination lines, dark slots and bore
    lam = 0.48 + 0.04 * np.sin(2 * math.pi * r / max(2.0, s / 300)) + 0.03 * _grain(rng, (h, w), s)
    yoke = coverage(r - r_out) * (1 - coverage(r - r_yoke))
    img = _rgb(_background(rng, (h, w), s, 0.05), (1, 1, 1))
    img = _mix_tinted(img, lam, (0.55, 0.56, 0.58), yoke)
    slot = coverage(r - r_yoke) * (1 - coverage(r - r_bore))
    img = _mix_tinted(img, 0.09 + 0.05 * (1 - across), (1.0, 0.9, 0.8), slot)
    img = _mix(img, copper, bundle_cov)
    img = _mix(img, 0.85, _chamfer(r - r_out, max(1.5, s * 0.006)) * 0.7)
    part = bundle_cov > 0.99
    return Scene(img.astype(np.float32, copy=False), part, None, None, streak_axis=1, center=(cy, cx))


def iron_stator(rng: np.random.Generator, h: int, w: int, lay: StatorLayout) -> Scene:
    pose = _pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = _polar(pose)
    r_out, r_yoke, r_bore = pose.size(STATOR_R_OUT), pose.size(lay.r_yoke), pose.size(lay.r_bore)
    n = 36
    turned = theta - pose.rot
    phase = turned * (n / (2 * math.pi)) + lay.phase
    frac = phase - np.floor(phase) - 0.5
    arc = 2 * math.pi * r / n  # pixels per tooth pitch at this radius
    # a tooth is narrow along its length and wider at the shoe by the bore
    tooth_half = np.where(r < r_bore + 0.03 * s, np.float32(0.40), np.float32(0.22))
    tooth_sdf = (np.abs(frac) - tooth_half) * arc
    annulus = np.maximum(r - r_out, r_bore - r)
    slot_sdf = np.maximum(np.maximum(-tooth_sdf, r - r_yoke), r_bore + 0.012 * s - r)
    iron_sdf = np.maximum(annulus, -slot_sdf)
    iron = coverage(iron_sdf)
    lum = (0.9 * _lighting(rng, yy, xx, h, w, lay.light)
           + 0.035 * np.sin(2 * math.pi * r / max(2.0, s / 260))
           + 0.025 * _grain(rng, (h, w), s) + 0.02 * smooth_noise(rng, (h, w), s / 10))
    img = _rgb(_background(rng, (h, w), s, 0.05), (1, 1, 1))
    slot_fill = 0.05 + 0.03 * smooth_noise(rng, (h, w), s / 30)
    img = _mix_tinted(img, slot_fill, (1, 1, 1), coverage(slot_sdf) * (1 - coverage(annulus)))
    liner = np.clip(1 - np.abs(slot_sdf + max(1.5, s * 0.004)) / max(1.0, s * 0.004), 0, 1)
    img = _mix_tinted(img, np.full_like(r, 0.85), (0.95, 0.92, 0.78), liner * (1 - coverage(annulus)))
    img = _mix_tinted(img, lum, (0.56, 0.57, 0.6), iron)
    # weld seams across the outer rim
    weld_phase = turned * (6 / (2 * math.pi)) + lay.weld
    seam_px = np.abs(weld_phase - np.round(weld_phase)) * 2 * math.pi * r / 6  # pixels from a seam
    weld = np.clip(1 - seam_px / max(1.5, s * 0.006), 0, 1)
    weld *= smoothstep(r_out - 0.035 * s, r_out - 0.01 * s, r) * iron
    img = _mix_tinted(img, 0.3 + 0.1 * _grain(rng, (h, w), s), (0.9, 0.85, 0.8), weld)
    img = _mix(img, 0.85, _chamfer(iron_sdf, max(1.2, s * 0.004)) * 0.5)
    part = (iron_sdf < -0.5) & (weld < 0.05)
    return Scene(img.astype(np.float32, copy=False), part, (-iron_sdf).astype(np.float32), None,
                 streak_axis=1, center=(cy, cx))


@dataclass(frozen=True)
class Renderer:
    """A category's two halves: its layout (drawn once per category) and its image (per image)."""

    layout: Callable[[np.random.Generator], Any]
    draw: Callable[[np.random.Generator, int, int, Any], Scene]


RENDERERS: dict[str, Renderer] = {
    "ACC": Renderer(_cover_layout, camera_cover),
    "AI": Renderer(functools.partial(_shell_layout, palette=AI_PALETTE, brushed=False, slots=False,
                                     bump=False), aluminum_ipad),
    "AMF": Renderer(functools.partial(_frame_layout, palette=AMF_PALETTE, corner=False, antenna=False),
                    aluminum_middle_frame),
    "ANMF": Renderer(functools.partial(_frame_layout, palette=ANMF_PALETTE, corner=True, antenna=True),
                     aluminum_new_middle_frame),
    "ANI": Renderer(functools.partial(_shell_layout, palette=ANI_PALETTE, brushed=False, slots=False,
                                      bump=True), aluminum_new_ipad),
    "AP": Renderer(functools.partial(_shell_layout, palette=AP_PALETTE, brushed=True, slots=True,
                                     bump=False), aluminum_pc),
    "CS": Renderer(functools.partial(_stator_layout, yoke=(0.39, 0.42), bore=(0.19, 0.23), light=0.15),
                   copper_stator),
    "IS": Renderer(functools.partial(_stator_layout, yoke=(0.37, 0.40), bore=(0.23, 0.26), light=0.12),
                   iron_stator),
}


@functools.lru_cache(maxsize=64)
def category_layout(category: str, stream: tuple[int, ...]) -> Any:
    """The layout of `category` (abbreviation) drawn from the random stream `stream`
    (plan: (seed, category index, _LAYOUT_STREAM)); cached, as every image of the category
    asks for the same one. Layouts are frozen dataclasses: nothing can change a cached one."""
    return RENDERERS[category].layout(np.random.default_rng(np.random.SeedSequence(list(stream))))


def _has_edge(dist: np.ndarray | None, part: np.ndarray) -> bool:
    return dist is not None and bool(((dist > 0) & (dist <= 1.5) & part).any())


def render_scene(category: str, rng: np.random.Generator, h: int, w: int,
                 edges: Edges = NO_EDGES, layout: Any = None) -> Scene:
    """A defect-free image of `category` (abbreviation) at h x w pixels.

    `layout` is the category's (see `category_layout`); without one, a layout is drawn
    from `rng` first, as for a one-off image. `edges` ("outer", "inner") names the edges
    that the image's defects need in view; every layout of a category that has warping
    defects shows both, and a scene without one is an error rather than a silent change.
    """
    renderer = RENDERERS[category]
    scene = renderer.draw(rng, h, w, renderer.layout(rng) if layout is None else layout)
    if scene.image.dtype == np.float32:
        np.clip(scene.image, 0.0, 1.0, out=scene.image)
    else:
        scene.image = np.clip(scene.image, 0.0, 1.0).astype(np.float32)
    if not scene.part.any():  # a degenerate tiny layout: let defects go anywhere
        scene.part = np.ones((h, w), bool)
    for which in sorted(edges):
        if not _has_edge(scene.outer if which == "outer" else scene.inner, scene.part):
            raise ThreecadError(f"the {category} layout shows no {which} edge at {h}x{w} for "
                                f"{which}_warping defects")
    return scene
