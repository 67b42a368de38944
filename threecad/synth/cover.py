"""The aluminium camera cover (ACC): a turned, anodised ring around the lens hole."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import coverage, smooth_noise, smoothstep
from threecad.synth.pose import draw_pose, polar
from threecad.synth.scene import Scene, chamfer, mix_tinted, rgb
from threecad.synth.surface import Color, background, pick_color, tint

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


def cover_layout(rng: np.random.Generator) -> CoverLayout:
    return CoverLayout(rng.uniform(0.41, 0.45), rng.uniform(0.42, 0.56), rng.uniform(0.35, 0.65),
                       pick_color(rng, COVER_PALETTE), rng.uniform(0, 2 * math.pi), rng.uniform(250, 400),
                       rng.uniform(0.022, 0.035))


def camera_cover(rng: np.random.Generator, h: int, w: int, lay: CoverLayout) -> Scene:
    pose = draw_pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = polar(pose)
    r_out = pose.size(lay.r_out)
    r_in = r_out * lay.r_in
    r_mid = r_in + (r_out - r_in) * lay.r_mid
    color = tint(rng, lay.color)
    phi = lay.phi + rng.uniform(-0.15, 0.15)
    period = max(1.6, s / lay.turning)
    turning = np.sin(2 * math.pi * r / period + 1.5 * smooth_noise(rng, (h, w), s / 8))
    face = (0.92 + 0.13 * np.cos(theta - phi) + 0.035 * turning
            + 0.03 * smooth_noise(rng, (h, w), s / 6))
    face *= 1.0 - 0.55 * np.exp(-(((r - r_mid) / max(1.0, s / 300)) ** 2))  # machined groove
    ring = coverage(r - r_out) - coverage(r - r_in)
    cham = max(2.0, pose.size(lay.cham))
    outer_bevel = chamfer(r - r_out, cham)
    inner_bevel = np.clip(smoothstep(r_in - 1, r_in + 1, r)
                          - smoothstep(r_in + cham - 1, r_in + cham + 1, r), 0, 1)
    spec = 1.25 + 0.35 * np.cos(2 * (theta - phi)) + 0.1 * turning
    img = rgb(background(rng, (h, w), s, 0.07), (1.0, 1.0, 1.02))
    lens = 0.035 + 0.05 * np.exp(-((r - r_in * 0.55) / (r_in * 0.08)) ** 2) * (1 + np.cos(theta - phi)) / 2
    img = mix_tinted(img, lens, (0.9, 0.95, 1.1), coverage(r - r_in))
    img = mix_tinted(img, face, color, ring)
    bevel_color = tuple(min(1.0, 0.45 + 0.55 * c) for c in color)
    img = mix_tinted(img, spec * 0.7, bevel_color, np.maximum(outer_bevel, inner_bevel) * ring)
    part = (r < r_out - 0.5) & (r > r_in + 0.5)
    return Scene(img, part, (r_out - r).astype(np.float32), (r - r_in).astype(np.float32),
                 streak_axis=1, center=(cy, cx))
