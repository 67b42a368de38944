"""Writes part.png, the raw image of the golden weight-transfer tests (run once; the PNG is committed).

Why these features: a non-square size (300 x 260) so that the resize squashes it as a 3CAD
image is squashed; fine stripes and speckle so that resizing with and without antialiasing
give clearly different pixels; unequal channels so that swapped RGB/BGR shows; and a dark
scratch with a bright dent as the anomaly.
Run:  .venv/bin/python tests/golden/raw/make_raw.py
"""
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 260, 300


def make() -> np.ndarray:
    rng = np.random.default_rng(26)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    base = 0.5 + 0.15 * np.sin(2 * np.pi * xx / 97) * np.cos(2 * np.pi * yy / 71)
    base += 0.06 * np.sin(2 * np.pi * (xx + 0.3 * yy) / 3.1)  # fine machining stripes
    img = np.stack([0.9 * base, base, 1.1 * base - 0.05], axis=-1)
    img += 0.012 * rng.standard_normal((H, W, 3))
    scratch = np.abs((yy - 90) - 0.45 * (xx - 120)) < 1.5  # a thin dark scratch
    img[scratch & (xx > 120) & (xx < 220)] = 0.08
    dent = (yy - 185) ** 2 + (xx - 70) ** 2 < 11 ** 2  # a bright dent
    img[dent] += 0.35
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


if __name__ == "__main__":
    out = Path(__file__).with_name("part.png")
    Image.fromarray(make()).save(out, optimize=True)
    print(out, out.stat().st_size, "bytes")
