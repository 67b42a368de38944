"""Stators (CS, IS): radial teeth around a bore, with copper windings or bare iron laminations."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import coverage, periodic_noise, smooth_noise, smoothstep
from threecad.synth.pose import draw_pose, polar
from threecad.synth.scene import Scene, chamfer, mix, mix_tinted, rgb
from threecad.synth.surface import Light, background, draw_light, grain, lighting

STATOR_R_OUT = 0.47  # outer radius, fraction of the short side (room for the shift and scale)


@dataclass(frozen=True)
class StatorLayout:
    r_yoke: float  # fractions of the short side
    r_bore: float
    phase: float  # angle of the first tooth, in tooth pitches
    weld: float  # angle of the first weld seam, in seam pitches
    light: Light


def stator_layout(rng: np.random.Generator, yoke: tuple[float, float], bore: tuple[float, float],
                   light: float) -> StatorLayout:
    return StatorLayout(rng.uniform(*yoke), rng.uniform(*bore), rng.uniform(0, 1), rng.uniform(0, 1),
                        draw_light(rng, light))


def copper_stator(rng: np.random.Generator, h: int, w: int, lay: StatorLayout) -> Scene:
    pose = draw_pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = polar(pose)
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
    lum *= lighting(rng, yy, xx, h, w, lay.light)
    glint = (wire ** 6) * (profile ** 4) * 0.35
    copper = rgb(lum, (0.80, 0.47, 0.24)) + rgb(glint, (1.0, 0.85, 0.6))
    # iron yoke with concentric lamination lines, dark slots and bore
    lam = 0.48 + 0.04 * np.sin(2 * math.pi * r / max(2.0, s / 300)) + 0.03 * grain(rng, (h, w), s)
    yoke = coverage(r - r_out) * (1 - coverage(r - r_yoke))
    img = rgb(background(rng, (h, w), s, 0.05), (1, 1, 1))
    img = mix_tinted(img, lam, (0.55, 0.56, 0.58), yoke)
    slot = coverage(r - r_yoke) * (1 - coverage(r - r_bore))
    img = mix_tinted(img, 0.09 + 0.05 * (1 - across), (1.0, 0.9, 0.8), slot)
    img = mix(img, copper, bundle_cov)
    img = mix(img, 0.85, chamfer(r - r_out, max(1.5, s * 0.006)) * 0.7)
    part = bundle_cov > 0.99
    return Scene(img.astype(np.float32, copy=False), part, None, None, streak_axis=1, center=(cy, cx))


def iron_stator(rng: np.random.Generator, h: int, w: int, lay: StatorLayout) -> Scene:
    pose = draw_pose(rng, h, w, rotate=True)
    s, yy, xx, cy, cx, r, theta = polar(pose)
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
    lum = (0.9 * lighting(rng, yy, xx, h, w, lay.light)
           + 0.035 * np.sin(2 * math.pi * r / max(2.0, s / 260))
           + 0.025 * grain(rng, (h, w), s) + 0.02 * smooth_noise(rng, (h, w), s / 10))
    img = rgb(background(rng, (h, w), s, 0.05), (1, 1, 1))
    slot_fill = 0.05 + 0.03 * smooth_noise(rng, (h, w), s / 30)
    img = mix_tinted(img, slot_fill, (1, 1, 1), coverage(slot_sdf) * (1 - coverage(annulus)))
    liner = np.clip(1 - np.abs(slot_sdf + max(1.5, s * 0.004)) / max(1.0, s * 0.004), 0, 1)
    img = mix_tinted(img, np.full_like(r, 0.85), (0.95, 0.92, 0.78), liner * (1 - coverage(annulus)))
    img = mix_tinted(img, lum, (0.56, 0.57, 0.6), iron)
    # weld seams across the outer rim
    weld_phase = turned * (6 / (2 * math.pi)) + lay.weld
    seam_px = np.abs(weld_phase - np.round(weld_phase)) * 2 * math.pi * r / 6  # pixels from a seam
    weld = np.clip(1 - seam_px / max(1.5, s * 0.006), 0, 1)
    weld *= smoothstep(r_out - 0.035 * s, r_out - 0.01 * s, r) * iron
    img = mix_tinted(img, 0.3 + 0.1 * grain(rng, (h, w), s), (0.9, 0.85, 0.8), weld)
    img = mix(img, 0.85, chamfer(iron_sdf, max(1.2, s * 0.004)) * 0.5)
    part = (iron_sdf < -0.5) & (weld < 0.05)
    return Scene(img.astype(np.float32, copy=False), part, (-iron_sdf).astype(np.float32), None,
                 streak_axis=1, center=(cy, cx))
