"""How each defect kind changes the pixels inside its footprint.

Effects work on a patch of the channels-first image in place and only where the
footprint is, weighted by a soft alpha that stays high up to the footprint's edge, so
that the ground-truth mask and the visible defect coincide.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

from threecad.synth.noise import smooth_noise

Effect = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], None]


def soft_alpha(mask: np.ndarray) -> np.ndarray:
    """1 in the middle of the footprint, about 0.7 at its rim, 0 outside."""
    m = mask.astype(np.float32)
    blur = ndimage.gaussian_filter(m, sigma=max(0.7, min(m.shape) / 40))
    return m * (0.4 + 0.6 * np.clip(blur * 1.6, 0, 1))


def _noise(rng, shape, cell) -> np.ndarray:
    return smooth_noise(rng, shape, max(1.5, cell))


def _size(mask: np.ndarray) -> float:
    return math.sqrt(max(1, int(mask.sum())))


def _gradient(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.gradient along rows and columns; zero along an axis one pixel long (tiny images)."""
    gy = np.gradient(a, axis=0) if a.shape[0] > 1 else np.zeros_like(a)
    gx = np.gradient(a, axis=1) if a.shape[1] > 1 else np.zeros_like(a)
    return gy, gx


def _shade(mask: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Relief shading of a raised (positive) footprint lit from a random direction, in -1..1."""
    height = ndimage.gaussian_filter(mask.astype(np.float32), sigma=max(0.8, sigma))
    gy, gx = _gradient(height)
    phi = rng.uniform(0, 2 * math.pi)
    s = gx * math.cos(phi) + gy * math.sin(phi)
    peak = float(np.abs(s).max())
    return s / peak if peak > 1e-6 else s


def scratch(rng, img, mask, a):
    sign = 1.0 if rng.random() < 0.65 else -1.0
    amount = rng.uniform(0.18, 0.38)
    img += (sign * amount) * a * (0.85 + 0.15 * _noise(rng, mask.shape, 3))


def upper_line(rng, img, mask, a):
    if rng.random() < 0.7:
        img *= 1 - a * rng.uniform(0.3, 0.5)
    else:
        img += a * rng.uniform(0.2, 0.35)


def bump(rng, img, mask, a):
    shade = _shade(mask, rng, _size(mask) / 4)
    img += a * (0.28 * shade + 0.06)


def deformation(rng, img, mask, a):
    """A dent: the surface pattern is pushed aside (a local warp), darkened where it sinks and
    shaded along its slopes.

    The warp alone (generator 2 before this change: a displacement of 0.15 of the dent's size, a
    faint shade) left Copper_Stator's only defect type all but invisible against its per-image
    winding texture at 128 px (PatchCore I-AUROC 0.42 there).
    """
    size = _size(mask)
    height = ndimage.gaussian_filter(mask.astype(np.float32), sigma=max(1.0, size / 4))
    gy, gx = _gradient(height)
    amp = size * rng.uniform(0.3, 0.45) / max(float(np.hypot(gy, gx).max()), 1e-6)
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float32)
    coords = [yy + gy * amp, xx + gx * amp]
    warped = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in img])
    img += (warped - img) * a
    img *= 1 - a * rng.uniform(0.3, 0.45) * (0.75 + 0.25 * _noise(rng, mask.shape, size / 4))
    img += a * 0.3 * _shade(mask, rng, size / 4)


def bruise(rng, img, mask, a):
    img *= 1 - a * (rng.uniform(0.25, 0.45) + 0.12 * _noise(rng, mask.shape, _size(mask) / 5))


def scrape(rng, img, mask, a):
    streak = _noise(rng, mask.shape, 2)
    img += a * (rng.uniform(0.12, 0.25) + 0.1 * streak)


def warping(rng, img, mask, a):
    if rng.random() < 0.7:
        img *= 1 - a * (rng.uniform(0.35, 0.6) + 0.1 * _noise(rng, mask.shape, 3))
    else:
        img += a * (rng.uniform(0.2, 0.35) + 0.08 * _noise(rng, mask.shape, 3))


TINTS = np.array([(1.12, 1.0, 0.76), (0.84, 0.9, 1.16), (0.92, 0.76, 0.6), (1.1, 0.92, 1.06)], np.float32)


def discoloration(rng, img, mask, a):
    tint = TINTS[rng.integers(len(TINTS))][:, None, None]
    k = a * rng.uniform(0.6, 1.0) * (0.85 + 0.15 * _noise(rng, mask.shape, _size(mask) / 3))
    img += img * (tint - 1) * k + k * rng.uniform(-0.06, 0.04)


def uneven(rng, img, mask, a):
    img *= 1 + a * 0.22 * _noise(rng, mask.shape, _size(mask) / 6)


def whitening(rng, img, mask, a):
    k = a * rng.uniform(0.35, 0.6) * (0.8 + 0.2 * _noise(rng, mask.shape, _size(mask) / 4))
    img += (0.93 - img) * k


def black_spots(rng, img, mask, a):
    img *= 1 - a * rng.uniform(0.7, 0.92)


def watermarks(rng, img, mask, a):
    img *= 1 - a * rng.uniform(0.18, 0.32)
    img += a * np.array([0.06, 0.045, 0.02], np.float32)[:, None, None]


def overwashing(rng, img, mask, a):
    grey = img.mean(axis=0, keepdims=True)
    target = grey * 0.75 + 0.25 + 0.06 * _noise(rng, mask.shape, 2)
    img += (target - img) * a * rng.uniform(0.6, 0.9)


def dirt(rng, img, mask, a):
    k = a * rng.uniform(0.5, 0.8) * np.clip(0.8 + 0.3 * _noise(rng, mask.shape, _size(mask) / 4), 0, 1)
    img *= 1 - k
    img += k * rng.uniform(0.08, 0.18) * np.array([0.55, 0.45, 0.3], np.float32)[:, None, None] / 0.55


def iron_core_airflow(rng, img, mask, a):
    k = a * rng.uniform(0.3, 0.5) * (0.8 + 0.25 * _noise(rng, mask.shape, 2))
    img *= 1 - k
    img += k * rng.uniform(0.1, 0.2) * np.array([0.7, 0.6, 0.9], np.float32)[:, None, None]


EFFECTS: dict[str, Effect] = {
    "scratch": scratch, "upper_line": upper_line, "bump": bump, "deformation": deformation,
    "bruise": bruise, "scrape": scrape, "outer_warping": warping, "inner_warping": warping,
    "discoloration": discoloration, "uneven": uneven, "whitening": whitening,
    "black_spots": black_spots, "watermarks": watermarks, "overwashing": overwashing,
    "dirt": dirt, "iron_core_airflow": iron_core_airflow,
}


def apply_effect(kind: str, rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
    """Change the (3, h, w) patch `img` in place where `mask` is set, as defect `kind` does."""
    a = soft_alpha(mask)[None]
    EFFECTS[kind](rng, img, mask, a)
