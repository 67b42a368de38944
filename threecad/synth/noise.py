"""Cheap texture primitives: smooth noise made by upsampling a small random grid.

Upsampling a coarse grid with PIL's bicubic filter costs a few milliseconds even at
1024x1024, which keeps a full-scale synthetic run within minutes per thousand images.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float,
                 cell_x: float | None = None) -> np.ndarray:
    """Noise with features about `cell` pixels across (`cell_x` along columns if given).

    Roughly zero mean and unit standard deviation; an anisotropic cell gives streaks.
    """
    h, w = shape
    cell_x = cell if cell_x is None else cell_x
    gh = max(2, int(math.ceil(h / max(cell, 1.0))) + 1)
    gw = max(2, int(math.ceil(w / max(cell_x, 1.0))) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    im = Image.fromarray(grid).resize((int(w), int(h)), Image.BICUBIC)
    out = np.asarray(im, dtype=np.float32)
    std = float(out[::5, ::5].std())  # a sparse sample is enough to normalise, and 25x cheaper
    return out * np.float32(1.0 / std) if std > 1e-6 else out.copy()


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float,
                  octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Sum of smooth noise at halving cell sizes: cloudy, natural-looking variation."""
    total = np.zeros(shape, np.float32)
    amp, norm = 1.0, 0.0
    for i in range(octaves):
        total += amp * smooth_noise(rng, shape, max(cell / 2 ** i, 1.0))
        norm += amp * amp
        amp *= persistence
    return total / math.sqrt(norm)


def periodic_noise(rng: np.random.Generator, theta: np.ndarray, harmonics: int = 4) -> np.ndarray:
    """A smooth function of an angle (periodic in 2*pi): random low harmonics, unit-ish scale."""
    out = np.zeros_like(theta, dtype=np.float32)
    for k in range(1, harmonics + 1):
        out += (rng.normal() / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """t * t * (3 - 2 t) with t = clip((x - edge0) / (edge1 - edge0), 0, 1).

    Computed in place in one result and one scratch array: the same floating-point steps
    as the plain expression, without its five full-size temporaries.
    """
    t = np.subtract(x, edge0)
    t /= edge1 - edge0
    np.clip(t, 0.0, 1.0, out=t)
    k = np.multiply(t, 2.0)
    np.subtract(3.0, k, out=k)
    t *= t
    t *= k
    return t


def coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased fill from a signed distance (negative inside): 1 inside, 0 outside."""
    out = np.subtract(0.5, sdf)
    return np.clip(out, 0.0, 1.0, out=out)


def rounded_rect_sdf(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
                     half_h: float, half_w: float, radius: float) -> np.ndarray:
    """Signed distance to a rounded rectangle (negative inside)."""
    radius = min(radius, half_h, half_w)
    qy = np.abs(yy - cy) - (half_h - radius)
    qx = np.abs(xx - cx) - (half_w - radius)
    # outside + inside - radius, in place (the same steps as the plain expression)
    out = np.square(np.maximum(qy, 0)) + np.square(np.maximum(qx, 0))
    np.sqrt(out, out=out)
    inside = np.maximum(qy, qx)
    np.minimum(inside, 0, out=inside)
    out += inside
    out -= radius
    return out.astype(np.float32, copy=False)


def grid_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable pixel-centre coordinates: (h,1) rows and (1,w) columns, float32."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    return yy, xx
