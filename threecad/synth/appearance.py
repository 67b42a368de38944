"""Defect-free images of the 8 3CAD parts, one renderer per category.

Each renderer draws the part with vectorised signed-distance geometry and cheap noise
(brushed or sandblasted aluminium, turning marks, chamfer highlights, copper windings,
iron laminations, lighting gradients) and returns a Scene: the image plus where the part
is and how far each pixel lies from the part's outline and from its holes, so that edge
defects (warping) can follow real edges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

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


def _lighting(rng: np.random.Generator, yy, xx, h: int, w: int, strength: float) -> np.ndarray:
    """A soft directional gradient plus a broad hot spot, as under a ring or bar light."""
    phi = rng.uniform(0, 2 * math.pi)
    grad = ((xx - w / 2) / w * math.cos(phi) + (yy - h / 2) / h * math.sin(phi))
    hy, hx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    # 1 + strength * (grad + 0.8 * (spot - 0.5)) with spot = exp(-(dy^2 + dx^2) * k), in place
    spot = ((yy - hy) / h) ** 2 + ((xx - hx) / w) ** 2
    np.negative(spot, out=spot)
    spot *= rng.uniform(1.5, 4.0)
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


def _pick(rng: np.random.Generator, palette: list[tuple[float, tuple[float, float, float]]]):
    weights = np.array([p for p, _ in palette], float)
    i = rng.choice(len(palette), p=weights / weights.sum())
    jitter = rng.uniform(0.96, 1.04, 3)
    return tuple(float(min(1.0, c * j)) for c, j in zip(palette[i][1], jitter))


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


def _polar(rng: np.random.Generator, h: int, w: int, jitter: float = 0.02):
    """Polar coordinates about the image centre moved by up to `jitter` of the short side:
    turned and wound parts (camera covers, stators) are round about a slightly off centre."""
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    cy = h / 2 + rng.uniform(-jitter, jitter) * s
    cx = w / 2 + rng.uniform(-jitter, jitter) * s
    r = (yy - cy) ** 2 + (xx - cx) ** 2
    np.sqrt(r, out=r)
    theta = np.arctan2(yy - cy, xx - cx)
    return s, yy, xx, cy, cx, r, theta


# --- aluminium camera cover: a turned, anodised ring around the lens hole -------------------
def camera_cover(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    s, yy, xx, cy, cx, r, theta = _polar(rng, h, w, jitter=0.03)
    r_out = s * rng.uniform(0.41, 0.46)
    r_in = r_out * rng.uniform(0.42, 0.56)
    r_mid = r_in + (r_out - r_in) * rng.uniform(0.35, 0.65)
    color = _pick(rng, [(0.5, (0.70, 0.71, 0.73)), (0.35, (0.34, 0.35, 0.38)),
                        (0.15, (0.30, 0.38, 0.55))])
    phi = rng.uniform(0, 2 * math.pi)
    period = max(1.6, s / rng.uniform(250, 400))
    turning = np.sin(2 * math.pi * r / period + 1.5 * smooth_noise(rng, (h, w), s / 8))
    face = (0.92 + 0.13 * np.cos(theta - phi) + 0.035 * turning
            + 0.03 * smooth_noise(rng, (h, w), s / 6))
    face *= 1.0 - 0.55 * np.exp(-(((r - r_mid) / max(1.0, s / 300)) ** 2))  # machined groove
    ring = coverage(r - r_out) - coverage(r - r_in)
    cham = max(2.0, s * rng.uniform(0.022, 0.035))
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
def _shell_outline(rng, yy, xx, h: int, w: int, s: float, n_edges: int):
    """A big rounded rectangle whose outline crosses the view on `n_edges` sides."""
    edges = {"top": -0.6 * h, "bottom": 1.6 * h, "left": -0.6 * w, "right": 1.6 * w}
    if n_edges:
        first = rng.choice(["top", "bottom"])
        chosen = [first] if n_edges == 1 and rng.random() < 0.5 else []
        if not chosen:
            chosen = [rng.choice(["left", "right"])] + ([first] if n_edges > 1 else [])
        for side in chosen:
            m = rng.uniform(0.05, 0.16)
            edges[side] = {"top": m * h, "bottom": (1 - m) * h, "left": m * w, "right": (1 - m) * w}[side]
    cy, cx = (edges["top"] + edges["bottom"]) / 2, (edges["left"] + edges["right"]) / 2
    return rounded_rect_sdf(yy, xx, cy, cx, (edges["bottom"] - edges["top"]) / 2,
                            (edges["right"] - edges["left"]) / 2, s * rng.uniform(0.08, 0.22))


def _openings(rng, scene_sdf, yy, xx, h, w, s, need: bool):
    """Camera hole or microphone holes on a shell: disks well inside the part.

    With `need`, there is always at least one (at the deepest point of the part if no
    random spot fits), so that rim defects have a rim to follow.
    """
    n = max(int(rng.choice([0, 1, 1, 2, 3])), int(need))
    centers, radii = [], []
    for _ in range(n):
        rad = s * (rng.uniform(0.05, 0.1) if not centers else rng.uniform(0.015, 0.03))
        for _try in range(20):
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            iy, ix = int(min(h - 1, cy)), int(min(w - 1, cx))
            far = all(math.hypot(cy - a, cx - b) > rad + q + 0.05 * s for (a, b), q in zip(centers, radii))
            if scene_sdf[iy, ix] < -(rad + 0.04 * s) and far:
                centers.append((cy, cx))
                radii.append(rad)
                break
    if need and not centers:
        iy, ix = np.unravel_index(int(np.argmin(scene_sdf)), scene_sdf.shape)
        centers.append((float(iy), float(ix)))
        radii.append(max(2.0, min(0.06 * s, -float(scene_sdf[iy, ix]) * 0.5)))
    return _hole_disks(yy, xx, centers, radii) if centers else None


def _shell(rng: np.random.Generator, h: int, w: int, palette, brushed: bool,
           slots: bool, edges: Edges) -> Scene:
    """A shell surface; `edges` asks for an outline in view ("outer") or an opening ("inner")."""
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = _pick(rng, palette)
    axis = int(rng.random() < 0.75)
    tex = _brushed(rng, (h, w), axis, s) if brushed else _grain(rng, (h, w), s)
    lum = _lighting(rng, yy, xx, h, w, rng.uniform(0.12, 0.25)) + (0.045 if brushed else 0.03) * tex
    lum += 0.03 * fractal_noise(rng, (h, w), s / 3, octaves=2)
    n_edges = int(rng.choice([0, 1, 1, 2]))
    outline = _shell_outline(rng, yy, xx, h, w, s, max(n_edges, int("outer" in edges)))
    # vent slots have long rims; a scene that must show a rim tries them first
    use_slots = slots and (rng.random() < 0.7 or "inner" in edges)
    holes = _slots(rng, yy, xx, h, w, s, outline) if use_slots else None
    if holes is None:
        holes = _openings(rng, outline, yy, xx, h, w, s, need="inner" in edges)
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
    return Scene(img, part, (-outline).astype(np.float32), inner, streak_axis=axis)


def _slots(rng, yy, xx, h, w, s, outline):
    """A row of vent slots (stadium shapes), by repeating one slot along the row."""
    n = int(rng.integers(5, 14))
    slot_w = s * rng.uniform(0.025, 0.04)
    slot_l = s * rng.uniform(0.12, 0.22)
    pitch = slot_w * rng.uniform(2.2, 3.2)
    horizontal = rng.random() < 0.5
    span = n * pitch
    along, across = (w, h) if horizontal else (h, w)
    if span > along * 0.85:
        n = max(2, int(along * 0.85 / pitch))
        span = n * pitch
    start = rng.uniform(0.08, 0.92 - span / along) * along if span < along * 0.84 else 0.08 * along
    mid = rng.uniform(0.3, 0.7) * across
    a = (xx if horizontal else yy) - start
    b = (yy if horizontal else xx) - mid
    idx = np.clip(np.floor(a / pitch), 0, n - 1)
    local = a - (idx + 0.5) * pitch
    sdf = rounded_rect_sdf(b, local, 0.0, 0.0, slot_l / 2, slot_w / 2, slot_w / 2)
    for pos in (start, start + span / 2, start + span):
        cy, cx = (mid, pos) if horizontal else (pos, mid)
        iy, ix = int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))
        if outline[iy, ix] > -(slot_l / 2 + 0.04 * s):
            return None  # the row would cut the outline: leave it out
    return sdf


def aluminum_ipad(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    return _shell(rng, h, w, [(0.6, (0.74, 0.75, 0.77)), (0.4, (0.42, 0.43, 0.45))],
                  brushed=False, slots=False, edges=edges)


def aluminum_new_ipad(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    palette = [(0.3, (0.80, 0.68, 0.63)), (0.25, (0.58, 0.67, 0.78)),
               (0.25, (0.45, 0.46, 0.48)), (0.2, (0.78, 0.79, 0.80))]
    scene = _shell(rng, h, w, palette, brushed=False, slots=False, edges=edges)
    return _camera_bump(rng, scene)


def aluminum_pc(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    return _shell(rng, h, w, [(0.7, (0.76, 0.77, 0.78)), (0.3, (0.50, 0.51, 0.53))],
                  brushed=True, slots=True, edges=edges)


def _camera_bump(rng: np.random.Generator, scene: Scene) -> Scene:
    """A raised camera module with lens rings near a corner (newer iPads), sometimes."""
    h, w = scene.part.shape
    if rng.random() < 0.4:
        return scene
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    half = s * rng.uniform(0.13, 0.2)
    cy = rng.uniform(0.25, 0.75) * h
    cx = rng.uniform(0.25, 0.75) * w
    y0, y1 = int(max(0, cy - half * 1.2)), int(min(h, cy + half * 1.2 + 1))
    x0, x1 = int(max(0, cx - half * 1.2)), int(min(w, cx + half * 1.2 + 1))
    if scene.outer[int(cy), int(cx)] < half * 1.6 or not scene.part[y0:y1, x0:x1].all():
        return scene  # too close to the outline or to another opening
    sdf = rounded_rect_sdf(yy, xx, cy, cx, half, half, half * 0.45)
    lens_c = [(cy - half * 0.45, cx - half * 0.45), (cy + half * 0.45, cx + half * 0.45)]
    lens = _hole_disks(yy, xx, lens_c, [half * 0.32, half * 0.3])
    img = scene.image
    raised = coverage(sdf)
    img *= (1.0 - 0.12 * raised)[None]
    img = _mix(img, 0.82, _chamfer(sdf, max(1.5, s * 0.01)) * 0.6)
    inner_lens = 0.05 + 0.1 * np.exp(-(np.minimum(*[np.sqrt((yy - a) ** 2 + (xx - b) ** 2)
                                                   for a, b in lens_c]) / (half * 0.12)) ** 2)
    img = _mix_tinted(img, inner_lens, (0.85, 0.9, 1.1), coverage(lens))
    img = _mix(img, 0.2, _chamfer(-lens, max(1.5, s * 0.012)) * coverage(sdf))
    scene.image = img
    scene.part &= lens > 1.5
    scene.inner = lens if scene.inner is None else np.minimum(scene.inner, lens)
    return scene


# --- middle frames: a machined rail around a pocketed mid-plate -----------------------------
def _middle_frame(rng: np.random.Generator, h: int, w: int, palette, corner: bool,
                  antenna: bool) -> Scene:
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = _pick(rng, palette)
    rail_w = s * rng.uniform(0.12, 0.2)
    top = s * rng.uniform(0.06, 0.14)
    if corner:
        left = s * rng.uniform(0.06, 0.14)
        outline = rounded_rect_sdf(yy, xx, h, w, h - top, w - left, s * rng.uniform(0.2, 0.35))
        inner_edge = rounded_rect_sdf(yy, xx, h, w, h - top - rail_w, w - left - rail_w,
                                      s * rng.uniform(0.08, 0.2))
    else:
        outline = (top - yy) * np.ones((1, w), np.float32)
        inner_edge = (top + rail_w - yy) * np.ones((1, w), np.float32)
    rail = coverage(outline) * (1 - coverage(inner_edge))
    plate = coverage(inner_edge)
    lum_rail = (_lighting(rng, yy, xx, h, w, 0.15) + 0.05 * _brushed(rng, (h, w), 1, s)
                + 0.22 * np.exp(-((inner_edge + rail_w * 0.5) / (rail_w * 0.22)) ** 2) - 0.08)
    far_y, far_x = rng.uniform(2, 4) * h, rng.uniform(-1, 2) * w
    milling = np.sin(2 * math.pi * np.sqrt((yy - far_y) ** 2 + (xx - far_x) ** 2)
                     / max(2.0, s / rng.uniform(60, 120)))
    lum_plate = 0.72 * _lighting(rng, yy, xx, h, w, 0.2) + 0.03 * milling + 0.02 * _grain(rng, (h, w), s)
    img = _rgb(_background(rng, (h, w), s, 0.05), (1, 1, 1))
    img = _mix_tinted(img, lum_rail, color, rail)
    img = _mix_tinted(img, lum_plate, color, plate)
    shadow = np.exp(-((inner_edge - rail_w * 0.04) / max(1.5, s * 0.008)) ** 2) * plate
    img *= (1 - 0.5 * shadow)[None]
    img = _mix(img, 0.93, _chamfer(outline, max(1.5, s * 0.012)) * 0.8)
    # pockets: shallow milled rectangles on the plate, darker with a bright rim
    pocket_sdf = None
    for _ in range(int(rng.integers(1, 4))):
        ph, pw = s * rng.uniform(0.08, 0.2), s * rng.uniform(0.1, 0.3)
        py = rng.uniform(top + rail_w + ph + 0.03 * s, h + ph * 0.5)
        px = rng.uniform(0, w)
        d = rounded_rect_sdf(yy, xx, py, px, ph, pw, s * 0.03)
        pocket_sdf = d if pocket_sdf is None else np.minimum(pocket_sdf, d)
    pocket = coverage(pocket_sdf) * plate
    img *= (1 - 0.25 * pocket)[None]
    img = _mix(img, 0.85, _chamfer(pocket_sdf, max(1.2, s * 0.006)) * plate * 0.7)
    # screw holes: dark disks with a bright countersink
    centers, radii = [], []
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(top + rail_w * 1.6, h * 0.95), rng.uniform(0.05, 0.95) * w
        if cy < h:
            centers.append((cy, cx))
            radii.append(s * rng.uniform(0.015, 0.03))
    holes = _hole_disks(yy, xx, centers, radii) if centers else None
    if holes is not None:
        img = _mix(img, 0.04, coverage(holes))
        img = _mix(img, 0.9, _chamfer(-holes, max(1.5, s * 0.012)) * plate * 0.8)
    part = outline < -0.5
    if antenna:
        # plastic antenna breaks across the rail: dark, part of the frame, no defects drawn there
        for _ in range(int(rng.integers(1, 3))):
            ax = rng.uniform(0.2, 0.8) * w
            band = coverage(np.abs(xx - ax) - s * 0.012) * rail
            img = _mix(img, 0.12, band)
            part &= ~(band > 0.01)
    if holes is not None:
        part &= holes > 0.5
    return Scene(img.astype(np.float32, copy=False), part, (-outline).astype(np.float32),
                 None if holes is None else holes, streak_axis=1)


def aluminum_middle_frame(rng: np.random.Generator, h: int, w: int,
                          edges: Edges = NO_EDGES) -> Scene:
    return _middle_frame(rng, h, w, [(1.0, (0.76, 0.77, 0.79))], corner=False, antenna=False)


def aluminum_new_middle_frame(rng: np.random.Generator, h: int, w: int,
                              edges: Edges = NO_EDGES) -> Scene:
    palette = [(0.4, (0.40, 0.41, 0.44)), (0.35, (0.42, 0.50, 0.62)), (0.25, (0.72, 0.70, 0.66))]
    return _middle_frame(rng, h, w, palette, corner=True, antenna=True)


# --- stators: radial teeth; copper windings or bare iron laminations ------------------------
def copper_stator(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    s, yy, xx, cy, cx, r, theta = _polar(rng, h, w)
    r_out, r_yoke, r_bore = s * 0.48, s * rng.uniform(0.39, 0.42), s * rng.uniform(0.19, 0.23)
    n = 18
    phase = theta * (n / (2 * math.pi)) + rng.uniform(0, 1)
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
    lum *= _lighting(rng, yy, xx, h, w, 0.15)
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


def iron_stator(rng: np.random.Generator, h: int, w: int, edges: Edges = NO_EDGES) -> Scene:
    s, yy, xx, cy, cx, r, theta = _polar(rng, h, w)
    r_out, r_yoke, r_bore = s * 0.48, s * rng.uniform(0.37, 0.40), s * rng.uniform(0.23, 0.26)
    n = 36
    phase = theta * (n / (2 * math.pi)) + rng.uniform(0, 1)
    frac = phase - np.floor(phase) - 0.5
    arc = 2 * math.pi * r / n  # pixels per tooth pitch at this radius
    # a tooth is narrow along its length and wider at the shoe by the bore
    tooth_half = np.where(r < r_bore + 0.03 * s, np.float32(0.40), np.float32(0.22))
    tooth_sdf = (np.abs(frac) - tooth_half) * arc
    annulus = np.maximum(r - r_out, r_bore - r)
    slot_sdf = np.maximum(np.maximum(-tooth_sdf, r - r_yoke), r_bore + 0.012 * s - r)
    iron_sdf = np.maximum(annulus, -slot_sdf)
    iron = coverage(iron_sdf)
    lum = (0.9 * _lighting(rng, yy, xx, h, w, 0.12) + 0.035 * np.sin(2 * math.pi * r / max(2.0, s / 260))
           + 0.025 * _grain(rng, (h, w), s) + 0.02 * smooth_noise(rng, (h, w), s / 10))
    img = _rgb(_background(rng, (h, w), s, 0.05), (1, 1, 1))
    slot_fill = 0.05 + 0.03 * smooth_noise(rng, (h, w), s / 30)
    img = _mix_tinted(img, slot_fill, (1, 1, 1), coverage(slot_sdf) * (1 - coverage(annulus)))
    liner = np.clip(1 - np.abs(slot_sdf + max(1.5, s * 0.004)) / max(1.0, s * 0.004), 0, 1)
    img = _mix_tinted(img, np.full_like(r, 0.85), (0.95, 0.92, 0.78), liner * (1 - coverage(annulus)))
    img = _mix_tinted(img, lum, (0.56, 0.57, 0.6), iron)
    # weld seams across the outer rim
    weld_phase = theta * (6 / (2 * math.pi)) + rng.uniform(0, 1)
    seam_px = np.abs(weld_phase - np.round(weld_phase)) * 2 * math.pi * r / 6  # pixels from a seam
    weld = np.clip(1 - seam_px / max(1.5, s * 0.006), 0, 1)
    weld *= smoothstep(r_out - 0.035 * s, r_out - 0.01 * s, r) * iron
    img = _mix_tinted(img, 0.3 + 0.1 * _grain(rng, (h, w), s), (0.9, 0.85, 0.8), weld)
    img = _mix(img, 0.85, _chamfer(iron_sdf, max(1.2, s * 0.004)) * 0.5)
    part = (iron_sdf < -0.5) & (weld < 0.05)
    return Scene(img.astype(np.float32, copy=False), part, (-iron_sdf).astype(np.float32), None,
                 streak_axis=1, center=(cy, cx))


RENDERERS: dict[str, Callable[..., Scene]] = {
    "ACC": camera_cover,
    "AI": aluminum_ipad,
    "AMF": aluminum_middle_frame,
    "ANMF": aluminum_new_middle_frame,
    "ANI": aluminum_new_ipad,
    "AP": aluminum_pc,
    "CS": copper_stator,
    "IS": iron_stator,
}


def render_scene(category: str, rng: np.random.Generator, h: int, w: int,
                 edges: Edges = NO_EDGES) -> Scene:
    """A defect-free image of `category` (abbreviation) at h x w pixels.

    `edges` ("outer", "inner") asks for a part outline or a hole rim in view, for images
    that will carry warping defects; parts that always show them ignore it.
    """
    scene = RENDERERS[category](rng, h, w, edges)
    if scene.image.dtype == np.float32:
        np.clip(scene.image, 0.0, 1.0, out=scene.image)
    else:
        scene.image = np.clip(scene.image, 0.0, 1.0).astype(np.float32)
    if not scene.part.any():  # a degenerate tiny layout: let defects go anywhere
        scene.part = np.ones((h, w), bool)
    return scene
