"""What a renderer returns, and the float32 layer blending every renderer composes with.

The parts are drawn as many small layers (bevels, holes, seams) over a full image;
blending each only inside its weight's box, in bands of rows, keeps that cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import coverage, smoothstep

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


def rgb(lum: np.ndarray, color) -> np.ndarray:
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


def mix(base: np.ndarray, top, weight: np.ndarray) -> np.ndarray:
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


def mix_tinted(base: np.ndarray, lum: np.ndarray, color, weight: np.ndarray) -> np.ndarray:
    """`mix(base, rgb(lum, color), weight)` without making the (3, H, W) layer: the same
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


def chamfer(sdf: np.ndarray, width: float) -> np.ndarray:
    """Weight of the bevel band just inside an outline (sdf negative inside)."""
    out = smoothstep(-width - 1.0, -width + 1.0, sdf)
    out *= coverage(sdf)
    return out.astype(np.float32, copy=False)


def hole_disks(yy, xx, centers, radii):
    """Union signed distance of several disks (negative inside)."""
    sdf = None
    for (cy, cx), r in zip(centers, radii):
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - r
        sdf = d if sdf is None else np.minimum(sdf, d)
    return sdf
