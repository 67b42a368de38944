"""Ground-truth defect regions: 8-connected components of each mask, with sizes and size bins.

Why a module: AU-PRO, its size breakdown and region recall all weigh a defect pixel by
the region it belongs to.  Labelling is done once per batch and touches little beyond the
defect rows (3CAD defects are small): with numba, one compiled pass over the batch finds
runs of defect pixels and joins them (threecad.metrics.kernels.label_runs); without it,
scipy.ndimage.label runs on each band of defect rows, cropped to its defect columns.  Both
give the same regions, numbered the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from threecad.errors import ThreecadError
from threecad.metrics import kernels
from threecad.row_runs import flag_runs

#: 3x3 structuring element: diagonal neighbours join a region (8-connectivity), as in MVTec AD.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

#: Default area-ratio edges of the size breakdown: <0.1 %, 0.1-1 %, >=1 % of the image.
DEFAULT_SIZE_EDGES: tuple[float, ...] = (0.001, 0.01)


def check_size_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Validate area-ratio bin edges: strictly increasing, inside (0, 1)."""
    e = tuple(float(v) for v in edges)
    if any(not 0.0 < v < 1.0 for v in e) or any(b <= a for a, b in zip(e, e[1:])):
        raise ThreecadError(f"metrics: size_edges must increase strictly within (0, 1); got {e}")
    return e


def size_labels(edges: Sequence[float]) -> list[str]:
    """Readable names of the size bins, e.g. ['<0.1%', '0.1-1%', '>=1%']."""
    pct = [f"{100 * e:g}" for e in edges]
    if not pct:
        return ["all"]
    mids = [f"{a}-{b}%" for a, b in zip(pct, pct[1:])]
    return [f"<{pct[0]}%", *mids, f">={pct[-1]}%"]


@dataclass
class BatchRegions:
    """The defect regions of one batch of masks.

    `pixel_index` lists the defect pixels as flat indices into the batch (image-major,
    row-major, ascending); `pixel_region[i]` is the region (0..R-1) of pixel i.
    """

    pixel_index: np.ndarray   # (P,) int64
    pixel_region: np.ndarray  # (P,) int64
    area: np.ndarray          # (R,) int64 pixels per region
    image: np.ndarray         # (R,) int64 image of each region
    size_bin: np.ndarray      # (R,) int64 size-bin index of each region
    image_pixels: int         # H * W

    @property
    def n_regions(self) -> int:
        return len(self.area)

    def pixel_weight(self) -> np.ndarray:
        """1 / area of each defect pixel's region: summing it over covered pixels counts covered regions."""
        return 1.0 / self.area[self.pixel_region]

    def pixel_size_bin(self) -> np.ndarray:
        return self.size_bin[self.pixel_region]

    def half_cover_scores(self, values: np.ndarray) -> np.ndarray:
        """Per region, the ceil(A/2)-th largest score of its pixels.

        A region has at least half of its pixels at or above a threshold t exactly when
        this score is >= t; region recall is read off it.
        """
        if self.n_regions == 0:
            return values[:0]
        by_value = np.argsort(values)                  # ties may come in any order: only values are read
        region = self.pixel_region[by_value]
        if self.n_regions <= np.iinfo(np.uint16).max:
            region = region.astype(np.uint16)          # stable sort of 16-bit keys is a radix sort
        order = by_value[np.argsort(region, kind="stable")]
        start = np.cumsum(self.area) - self.area
        return values[order[start + self.area // 2]]


def rows_with_defect(masks: np.ndarray) -> np.ndarray:
    """(N, H) flags: does the row hold a defect pixel?  Reads 8 mask pixels per word when it can."""
    n, h, w = masks.shape
    if w % 8 == 0 and masks.flags.c_contiguous:
        return masks.view(np.uint64).reshape(n, h, w // 8).any(axis=2)
    return masks.any(axis=2)


def label_regions(masks: np.ndarray, size_edges: Sequence[float] = DEFAULT_SIZE_EDGES) -> BatchRegions:
    """8-connected regions of each boolean mask in an (N, H, W) batch."""
    n, h, w = masks.shape
    edges = np.asarray(size_edges, dtype=np.float64)
    if kernels.ENABLED and kernels.AVAILABLE:
        pixel_index, pixel_region, area, image = kernels.label_runs(masks)
        return BatchRegions(pixel_index=pixel_index, pixel_region=pixel_region, area=area, image=image,
                            size_bin=np.searchsorted(edges, area / float(h * w), side="right").astype(np.int64),
                            image_pixels=h * w)
    rows_any = rows_with_defect(masks)
    parts_pix, parts_area, parts_img = [], [], []
    total = 0
    for b in np.flatnonzero(rows_any.any(axis=1)):
        for r0, r1 in flag_runs(rows_any[b]):       # regions never cross a defect-free row
            band = masks[b, r0:r1]
            c = np.flatnonzero(band.any(axis=0))
            crop = band[:, c[0]:c[-1] + 1]
            lab, k = ndimage.label(crop, structure=EIGHT_CONNECTED)
            ids = lab[crop].astype(np.int64)        # row-major, same order as flatnonzero over the image
            parts_pix.append(ids - 1 + total)
            parts_area.append(np.bincount(ids, minlength=k + 1)[1:])
            parts_img.append(np.full(k, b, dtype=np.int64))
            total += k
    empty = np.zeros(0, dtype=np.int64)
    area = np.concatenate(parts_area).astype(np.int64) if parts_area else empty
    return BatchRegions(
        pixel_index=np.flatnonzero(masks),
        pixel_region=np.concatenate(parts_pix) if parts_pix else empty,
        area=area,
        image=np.concatenate(parts_img) if parts_img else empty,
        size_bin=np.searchsorted(edges, area / float(h * w), side="right").astype(np.int64),
        image_pixels=h * w,
    )
