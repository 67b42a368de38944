"""Where one image puts its category's layout: the per-image shift, scale and rotation.

A layout is given in fractions of the image's sides, so that images of different sizes
show the same product; a Pose turns those fractions into pixels for one image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.synth.noise import grid_coords

SHIFT = 0.02  # largest shift of the part, as a fraction of each side
ROUND_SHIFT = 0.01  # the same for round parts, centred by their fixture (a stator's tooth is 0.05 wide)
SCALE = 0.02  # largest relative change of the part's size
ROTATE_DEG = 2.0  # largest rotation of round parts (camera cover, stators), degrees
MARGIN = 0.04  # room the layout keeps between features for the shift and scale above


@dataclass(frozen=True)
class Pose:
    """Where one image puts the category's layout: shift (pixels), scale, rotation (radians)."""

    h: int
    w: int
    dy: float = 0.0
    dx: float = 0.0
    k: float = 1.0
    rot: float = 0.0

    def y(self, fy: float) -> float:
        """Pixel row of a layout row given as a fraction of the height."""
        return self.h / 2 + (fy - 0.5) * self.h * self.k + self.dy

    def x(self, fx: float) -> float:
        return self.w / 2 + (fx - 0.5) * self.w * self.k + self.dx

    def size(self, fs: float) -> float:
        """Pixels of a layout length given as a fraction of the short side."""
        return fs * min(self.h, self.w) * self.k

    def size_y(self, fy: float) -> float:
        """Pixels of a vertical layout length given as a fraction of the height."""
        return fy * self.h * self.k

    def size_x(self, fx: float) -> float:
        return fx * self.w * self.k


def draw_pose(rng: np.random.Generator, h: int, w: int, rotate: bool = False) -> Pose:
    """One image's pose; `rotate`: a round part, which turns a little and shifts less."""
    shift = ROUND_SHIFT if rotate else SHIFT
    dy, dx = rng.uniform(-shift, shift) * h, rng.uniform(-shift, shift) * w
    k = 1.0 + rng.uniform(-SCALE, SCALE)
    rot = math.radians(rng.uniform(-ROTATE_DEG, ROTATE_DEG)) if rotate else 0.0
    return Pose(h, w, dy, dx, k, rot)


def polar(pose: Pose):
    """Polar coordinates about the posed centre of a turned or wound part (camera covers,
    stators): the layout's centre is the image's, each image moves it a little."""
    h, w = pose.h, pose.w
    s = min(h, w)
    yy, xx = grid_coords(h, w)
    cy, cx = pose.y(0.5), pose.x(0.5)
    r = (yy - cy) ** 2 + (xx - cx) ** 2
    np.sqrt(r, out=r)
    theta = np.arctan2(yy - cy, xx - cx)
    return s, yy, xx, cy, cx, r, theta
