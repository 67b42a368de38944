"""Middle frames (AMF, ANMF): a machined rail around a pocketed mid-plate."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import coverage, grid_coords, rounded_rect_sdf
from threecad.synth.pose import draw_pose
from threecad.synth.scene import Scene, chamfer, hole_disks, mix, mix_tinted, rgb
from threecad.synth.surface import (Color, Light, background, brushing, draw_light, grain, lighting,
                                    pick_color, tint)

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


def frame_layout(rng: np.random.Generator, palette, corner: bool, antenna: bool) -> FrameLayout:
    color = pick_color(rng, palette)
    rail, top = rng.uniform(0.12, 0.2), rng.uniform(0.06, 0.14)
    left = rng.uniform(0.06, 0.14) if corner else 0.0
    r_out, r_in = (rng.uniform(0.2, 0.35), rng.uniform(0.08, 0.2)) if corner else (0.0, 0.0)
    light_rail, light_plate = draw_light(rng, 0.15), draw_light(rng, 0.2)
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


def middle_frame(rng: np.random.Generator, h: int, w: int, lay: FrameLayout) -> Scene:
    pose = draw_pose(rng, h, w)
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    color = tint(rng, lay.color)
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
    lum_rail = (lighting(rng, yy, xx, h, w, lay.light_rail) + 0.05 * brushing(rng, (h, w), 1, s)
                + 0.22 * np.exp(-((inner_edge + rail_w * 0.5) / (rail_w * 0.22)) ** 2) - 0.08)
    far_y, far_x = pose.y(lay.far_y), pose.x(lay.far_x)
    milling = np.sin(2 * math.pi * np.sqrt((yy - far_y) ** 2 + (xx - far_x) ** 2)
                     / max(2.0, s / lay.milling))
    lum_plate = (0.72 * lighting(rng, yy, xx, h, w, lay.light_plate) + 0.03 * milling
                 + 0.02 * grain(rng, (h, w), s))
    img = rgb(background(rng, (h, w), s, 0.05), (1, 1, 1))
    img = mix_tinted(img, lum_rail, color, rail)
    img = mix_tinted(img, lum_plate, color, plate)
    shadow = np.exp(-((inner_edge - rail_w * 0.04) / max(1.5, s * 0.008)) ** 2) * plate
    img *= (1 - 0.5 * shadow)[None]
    img = mix(img, 0.93, chamfer(outline, max(1.5, s * 0.012)) * 0.8)
    # pockets: shallow milled rectangles on the plate, darker with a bright rim
    pocket_sdf = None
    for py, px, ph, pw in lay.pockets:
        d = rounded_rect_sdf(yy, xx, pose.y(py), pose.x(px), pose.size_y(ph), pose.size_x(pw), s * 0.03)
        pocket_sdf = d if pocket_sdf is None else np.minimum(pocket_sdf, d)
    pocket = coverage(pocket_sdf) * plate
    img *= (1 - 0.25 * pocket)[None]
    img = mix(img, 0.85, chamfer(pocket_sdf, max(1.2, s * 0.006)) * plate * 0.7)
    # screw holes: dark disks with a bright countersink
    holes = None
    if lay.holes:
        holes = hole_disks(yy, xx, [(pose.y(fy), pose.x(fx)) for fy, fx, _ in lay.holes],
                            [pose.size(r) for _, _, r in lay.holes])
        img = mix(img, 0.04, coverage(holes))
        img = mix(img, 0.9, chamfer(-holes, max(1.5, s * 0.012)) * plate * 0.8)
    part = outline < -0.5
    # plastic antenna breaks across the rail: dark, part of the frame, no defects drawn there
    for fx in lay.antennas:
        band = coverage(np.abs(xx - pose.x(fx)) - s * 0.012) * rail
        img = mix(img, 0.12, band)
        part &= ~(band > 0.01)
    if holes is not None:
        part &= holes > 0.5
    return Scene(img.astype(np.float32, copy=False), part, (-outline).astype(np.float32),
                 holes, streak_axis=1)


aluminum_middle_frame = middle_frame
aluminum_new_middle_frame = middle_frame
