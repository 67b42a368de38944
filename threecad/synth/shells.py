"""Shells (AI, ANI, AP): iPad and PC backs, sandblasted or brushed, with an outline and openings.

The layout keeps every opening, slot row and camera bump well inside the outline in
view, so that each image shows an outer and an inner edge for warping defects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from threecad.synth.noise import coverage, fractal_noise, grid_coords, rounded_rect_sdf, smooth_noise
from threecad.synth.pose import MARGIN, Pose, draw_pose
from threecad.synth.scene import Scene, chamfer, hole_disks, mix, mix_tinted, rgb
from threecad.synth.surface import (Color, Light, background, brushing, draw_light, grain, lighting,
                                    pick_color, tint)

OUT_OF_VIEW = {"top": -0.6, "bottom": 1.6, "left": -0.6, "right": 1.6}  # sides the view does not show
AI_PALETTE = [(0.6, (0.74, 0.75, 0.77)), (0.4, (0.42, 0.43, 0.45))]
ANI_PALETTE = [(0.3, (0.80, 0.68, 0.63)), (0.25, (0.58, 0.67, 0.78)),
               (0.25, (0.45, 0.46, 0.48)), (0.2, (0.78, 0.79, 0.80))]
AP_PALETTE = [(0.7, (0.76, 0.77, 0.78)), (0.3, (0.50, 0.51, 0.53))]


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


def shell_layout(rng: np.random.Generator, palette, brushed: bool, slots: bool,
                  bump: bool) -> ShellLayout:
    """Outline in view, then the camera bump (if any), then slots or openings: always a rim."""
    color = pick_color(rng, palette)
    axis = int(rng.random() < 0.75) if brushed else 1
    light = draw_light(rng, 0.12, 0.25)
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
    pose = draw_pose(rng, h, w)
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = tint(rng, lay.color)
    axis = lay.axis
    tex = brushing(rng, (h, w), axis, s) if brushed else grain(rng, (h, w), s)
    lum = lighting(rng, yy, xx, h, w, lay.light) + (0.045 if brushed else 0.03) * tex
    lum += 0.03 * fractal_noise(rng, (h, w), s / 3, octaves=2)
    top, bottom = pose.y(lay.top), pose.y(lay.bottom)
    left, right = pose.x(lay.left), pose.x(lay.right)
    outline = rounded_rect_sdf(yy, xx, (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2,
                               (right - left) / 2, pose.size(lay.corner))
    holes = None
    if lay.slots is not None:
        holes = _slot_sdf(yy, xx, pose, lay.slots)
    elif lay.holes:
        holes = hole_disks(yy, xx, [(pose.y(fy), pose.x(fx)) for fy, fx, _ in lay.holes],
                            [pose.size(r) for _, _, r in lay.holes])
    img = rgb(background(rng, (h, w), s, 0.06), (1.0, 1.0, 1.0))
    body = coverage(outline)
    if holes is not None:
        body = body * (1 - coverage(holes))
    img = mix_tinted(img, lum, color, body)
    bevel_color = tuple(min(1.0, 0.5 + 0.5 * c) for c in color)
    glint = 1.1 + 0.25 * smooth_noise(rng, (h, w), s / 5)
    bevel = chamfer(outline, max(2.0, s * 0.02))
    if holes is not None:
        bevel = np.maximum(bevel, chamfer(-holes, max(1.5, s * 0.01)) * coverage(outline))
    img = mix_tinted(img, glint * 0.8, bevel_color, bevel)
    part = outline < -0.5
    inner = None
    if holes is not None:
        part &= holes > 0.5
        inner = holes
    scene = Scene(img, part, (-outline).astype(np.float32), inner, streak_axis=axis)
    return _camera_bump(scene, pose, lay.bump) if lay.bump is not None else scene



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
    lens = hole_disks(yy, xx, lens_c, [half * 0.32, half * 0.3])
    # the module's own layers are drawn in its box only: nothing outside it changes
    y0, y1 = max(0, int(cy - hy) - 4), min(h, int(math.ceil(cy + hy)) + 5)
    x0, x1 = max(0, int(cx - hx) - 4), min(w, int(math.ceil(cx + hx)) + 5)
    yy, xx, box_lens = yy[y0:y1], xx[:, x0:x1], lens[y0:y1, x0:x1]
    img = scene.image[:, y0:y1, x0:x1]
    sdf = rounded_rect_sdf(yy, xx, cy, cx, hy, hx, half * 0.45)
    raised = coverage(sdf)
    img *= (1.0 - 0.12 * raised)[None]
    mix(img, 0.82, chamfer(sdf, max(1.5, s * 0.01)) * 0.6)
    inner_lens = 0.05 + 0.1 * np.exp(-(np.minimum(*[np.sqrt((yy - a) ** 2 + (xx - b) ** 2)
                                                   for a, b in lens_c]) / (half * 0.12)) ** 2)
    mix_tinted(img, inner_lens, (0.85, 0.9, 1.1), coverage(box_lens))
    mix(img, 0.2, chamfer(-box_lens, max(1.5, s * 0.012)) * coverage(sdf))
    scene.part &= lens > 1.5
    scene.inner = lens if scene.inner is None else np.minimum(scene.inner, lens)
    return scene
