"""The regions of one mask: 8-connected labelling inside boxes cut along empty rows and
columns, then per region its area, box, first pixel and rotated rectangle."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from threecad.masks import MaskError, read_mask_box
from threecad.row_runs import flag_runs, row_runs
from threecad.stats.geometry import min_area_rect, region_row_ends

# One row per region in MaskResult.regions; bbox is [y0, y1) x [x0, x1); (py, px) is the
# region's first pixel in raster order; angle is the long side's direction in degrees [0, 180).
REGION_FIELDS = ("area", "y0", "x0", "y1", "x1", "rect_long", "rect_short", "angle", "py", "px")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class MaskResult:
    """What one mask file holds: its size and one row of REGION_FIELDS per region.

    `runs` holds the pixels, as (region, y, x_start, x_stop) row runs, of just the regions
    whose box overlaps another region's box: only there can a point inside a box belong to
    another region, and with the runs the sidecar's points are placed without the mask.
    """

    height: int
    width: int
    regions: np.ndarray  # (n_regions, len(REGION_FIELDS)) float64
    error: str | None = None
    runs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int32))

    @property
    def n_regions(self) -> int:
        return int(self.regions.shape[0])


def empty_regions() -> np.ndarray:
    return np.zeros((0, len(REGION_FIELDS)), dtype=np.float64)


def _separated_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, y1, x0, x1) that together hold every defect pixel, such that no region
    crosses from one box to another (recursive cuts along empty rows and columns).

    Why: masks are mostly empty and their regions far apart, so labelling a few small boxes
    is much cheaper than labelling the whole (or even the non-zero-bounding) array.
    """
    boxes = []
    stack = [(0, mask.shape[0], 0, mask.shape[1])]
    while stack:
        y0, y1, x0, x1 = stack.pop()
        sub = mask[y0:y1, x0:x1]
        band_runs = flag_runs(sub.any(axis=1))
        for ra, rb in band_runs:
            col_runs = flag_runs(sub[ra:rb].any(axis=0))
            for ca, cb in col_runs:
                box = (y0 + ra, y0 + rb, x0 + ca, x0 + cb)
                if len(band_runs) == 1 and len(col_runs) == 1:
                    boxes.append(box)  # no empty row or column left inside: label it
                else:
                    stack.append(box)
    return boxes


def _measure_region(region: np.ndarray, area: int, y0: int, x0: int) -> tuple:
    h, w = region.shape
    if area == h * w:  # a filled axis-aligned box is its own minimum rectangle
        long_side, short_side = float(max(h, w)), float(min(h, w))
        angle = 0.0 if w >= h else 90.0
    else:
        long_side, short_side, angle = min_area_rect(region_row_ends(region))
    first_x = int(np.argmax(region[0]))
    return (area, y0, x0, y0 + h, x0 + w, long_side, short_side, angle, y0, x0 + first_x)


def analyze_mask_array(mask: np.ndarray) -> MaskResult:
    """Regions of one binary mask: 8-connected labelling, then per region its area, box,
    first pixel and minimum-area rotated rectangle; regions in raster order of first pixel."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return _analyze(mask, 0, 0, *mask.shape)


def _analyze(mask: np.ndarray, oy: int, ox: int, height: int, width: int) -> MaskResult:
    """analyze_mask_array for the part `mask` of a height x width mask that sits at (oy, ox)."""
    rows: list[tuple] = []
    runs: list[np.ndarray] = []
    for y0, y1, x0, x1 in _separated_boxes(mask):
        box = mask[y0:y1, x0:x1]
        y0, x0 = y0 + oy, x0 + ox  # from here on in the coordinates of the whole mask
        n_pixels = int(np.count_nonzero(box))
        if n_pixels == box.size:
            rows.append(_measure_region(box, n_pixels, y0, x0))
            continue
        labels, n = ndimage.label(box, structure=_EIGHT)
        if n == 1:
            rows.append(_measure_region(box, n_pixels, y0, x0))
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        slices = ndimage.find_objects(labels)
        for k, sl in enumerate(slices, start=1):
            rows.append(_measure_region(labels[sl] == k, int(areas[k]),
                                        y0 + sl[0].start, x0 + sl[1].start))
        for k in _overlapping_boxes(slices):
            sl = slices[k - 1]
            runs.append(_pixel_runs(labels[sl] == k, len(rows) - n + k - 1, y0 + sl[0].start, x0 + sl[1].start))
    if not rows:
        return MaskResult(height, width, empty_regions())
    out = np.array(rows, dtype=np.float64)
    order = np.lexsort((out[:, 9], out[:, 8]))  # by first pixel: y, then x
    run_table = np.concatenate(runs) if runs else np.zeros((0, 4), dtype=np.int32)
    if len(run_table):
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        run_table[:, 0] = rank[run_table[:, 0]]
    return MaskResult(height, width, out[order], runs=run_table)


def _overlapping_boxes(slices: list[tuple[slice, slice]]) -> list[int]:
    """Labels (1-based) of the regions whose bounding box overlaps another one's."""
    box = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in slices])
    overlap = ((box[:, None, 0] < box[None, :, 1]) & (box[None, :, 0] < box[:, None, 1])
               & (box[:, None, 2] < box[None, :, 3]) & (box[None, :, 2] < box[:, None, 3]))
    np.fill_diagonal(overlap, False)
    return (np.flatnonzero(overlap.any(axis=1)) + 1).tolist()


def _pixel_runs(region: np.ndarray, index: int, y0: int, x0: int) -> np.ndarray:
    """The MaskResult.runs rows (index, y, x_start, x_stop) of a region's box at (y0, x0)."""
    ys, starts, stops = row_runs(region)
    return np.stack([np.full(ys.size, index), ys + y0, starts + x0, stops + x0], axis=1).astype(np.int32)


def analyze_mask(path: str | os.PathLike) -> MaskResult:
    """analyze_mask_array on a file; an unreadable file gives a result carrying the error."""
    try:
        height, width, y0, x0, crop = read_mask_box(path)  # the reader verify and the Dataset use
    except MaskError as exc:  # reported per file, the run goes on
        return MaskResult(0, 0, empty_regions(), error=str(exc))
    except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
        return MaskResult(0, 0, empty_regions(), error=f"{type(exc).__name__}: {exc}")
    if crop is None:
        return MaskResult(height, width, empty_regions())
    return _analyze(crop, y0, x0, height, width)

