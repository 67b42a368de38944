"""How a part's surface looks: its light, colour and texture.

The light's direction and the colour are layout draws (one per category); the jitter
about them and all fine texture are drawn anew for every image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import smooth_noise

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Light:
    """A category's light: gradient direction, hot spot (fractions of the image), falloff, strength."""

    phi: float
    hy: float
    hx: float
    falloff: float
    strength: float


def draw_light(rng: np.random.Generator, lo: float, hi: float | None = None) -> Light:
    strength = lo if hi is None else rng.uniform(lo, hi)
    return Light(rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8),
                 rng.uniform(1.5, 4.0), strength)


def lighting(rng: np.random.Generator, yy, xx, h: int, w: int, light: Light) -> np.ndarray:
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


def background(rng: np.random.Generator, shape, s: float, level: float) -> np.ndarray:
    out = smooth_noise(rng, shape, s / 4)  # level * (1 + 0.25 * noise), in place
    out *= 0.25
    out += 1.0
    out *= level
    return out.astype(np.float32, copy=False)


def pick_color(rng: np.random.Generator, palette: list[tuple[float, Color]]) -> Color:
    """The category's colour: one entry of the palette, by its weight (a layout draw)."""
    weights = np.array([p for p, _ in palette], float)
    return palette[int(rng.choice(len(palette), p=weights / weights.sum()))][1]


def tint(rng: np.random.Generator, color: Color) -> Color:
    """One image's colour: the category's, each channel jittered by up to 4%."""
    jitter = rng.uniform(0.96, 1.04, 3)
    return tuple(float(min(1.0, c * j)) for c, j in zip(color, jitter))


def brushing(rng: np.random.Generator, shape, axis: int, s: float) -> np.ndarray:
    """Streaks of brushed aluminium: fine across the grain, long along it."""
    fine, long_ = max(1.2, s / 700), s / rng.uniform(2.5, 6.0)
    if axis == 1:
        a = smooth_noise(rng, shape, fine, long_)
        b = smooth_noise(rng, shape, fine * 4, long_ * 2)
    else:
        a = smooth_noise(rng, shape, long_, fine)
        b = smooth_noise(rng, shape, long_ * 2, fine * 4)
    return 0.6 * a + 0.4 * b


def grain(rng: np.random.Generator, shape, s: float) -> np.ndarray:
    """Sandblasted / anodised grain: isotropic, a pixel or two across."""
    return smooth_noise(rng, shape, max(1.2, s / 600))
