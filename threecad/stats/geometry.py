"""Geometry of one defect region: its convex hull and minimum-area rotated rectangle.

Defect regions are small, so the hull is a monotone chain in Python below a few dozen points
and qhull above; the rectangle tries every hull edge direction at once with numpy.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

# Below this many points a monotone chain in Python beats qhull's fixed set-up cost; most
# defect regions are small, so this is the common case.
_SMALL_HULL = 48


def _cross(o: tuple, a: tuple, b: tuple) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _monotone_chain(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex-hull vertices, counter-clockwise (Andrew's monotone chain); collinear points
    give their two ends, a single point itself."""
    pts = sorted(set(map(tuple, points)))
    if len(pts) <= 2:
        return pts
    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and _cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex-hull vertices of (N, 2) points; for collinear points (a line, one pixel) the
    two ends, so that the callers need no special case."""
    if len(points) <= _SMALL_HULL:
        return np.array(_monotone_chain(points.tolist()), dtype=np.float64).reshape(-1, 2)
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        span = points[np.argmax(np.abs(points - points[0]).sum(axis=1))] - points[0]
        t = points @ span
        return points[[int(np.argmin(t)), int(np.argmax(t))]]


def min_area_rect(points: np.ndarray) -> tuple[float, float, float]:
    """(long side, short side, angle of the long side in degrees [0, 180)) of the rotated
    rectangle of a set of pixel centres, each side lengthened by one pixel.

    The rectangle is the minimum-area one around the centres; the optimum has a side along
    a convex-hull edge, so every edge direction is tried at once with numpy (hulls of
    digital regions are small). The added pixel makes a single pixel 1 x 1, a one-pixel-wide
    line of n pixels n x 1 and an axis-aligned w x h block exactly w x h. Ties (squares,
    lines) go to the smaller lengthened area, then to the axis-aligned or the first edge,
    so results are deterministic. `points` are (N, 2) as (y, x).
    """
    hull = _hull(np.asarray(points, dtype=np.float64)[:, ::-1])  # (x, y) from here on
    edges = hull[np.r_[1:len(hull), 0]] - hull
    theta = np.concatenate(([0.0], np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)))
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    extent_u = np.ptp(hull[:, 0] * cos + hull[:, 1] * sin, axis=1)   # along the edge direction
    extent_v = np.ptp(hull[:, 1] * cos - hull[:, 0] * sin, axis=1)   # across it
    area = extent_u * extent_v
    tied = np.flatnonzero(area <= area.min() + 1e-9 * max(1.0, area.min()))
    best = int(tied[np.argmin(((extent_u + 1) * (extent_v + 1))[tied])])
    eu, ev, t = float(extent_u[best]) + 1, float(extent_v[best]) + 1, float(theta[best])
    if eu >= ev:
        return eu, ev, float(np.degrees(t)) % 180.0
    return ev, eu, float(np.degrees(t) + 90.0) % 180.0


def region_row_ends(region: np.ndarray) -> np.ndarray:
    """Centres (y, x) of the left- and right-most pixel of each row of a region's box.

    Their convex hull is the hull of all the region's pixel centres (a connected region has
    a pixel in every row of its box), at 2 points a row instead of 1 a pixel.
    """
    rows = np.arange(region.shape[0], dtype=np.float64)
    first = np.argmax(region, axis=1).astype(np.float64)
    last = region.shape[1] - 1 - np.argmax(region[:, ::-1], axis=1).astype(np.float64)
    return np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])

