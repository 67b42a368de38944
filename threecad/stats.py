"""Dataset statistics: the paper's Table 1 and Figure 3 for any root, measured from the masks.

Why this module exists: the paper's dataset analysis (counts, size ranges, regions and types
per defective image, region size and shape) should be reproducible on the real 3CAD, on
MVTec AD and on the synthetic set, and fast enough to run on 27k images without thinking.

How it is fast: only masks are decoded (image sizes come from the sample table, which read
them from the file headers); each mask is cropped to its non-zero box before labelling; the
per-file result is cached in one sqlite file keyed by path, size and mtime (a changed file
is recomputed); uncached files are spread over a process pool.

Conventions, stated once:
- A mask pixel is a defect under threecad.masks' rule (> 127 on the 8-bit scale; colour
  masks by their largest channel; see that module), the same in verify and the Dataset.
  A mask whose size is not its image's is not measured (status "mask_size").
- Regions are 8-connected components (NE = number of components of the mask).
- Area ratio = region pixels / mask pixels (height x width of the mask).
- The rotated bounding rectangle is the minimum-area rectangle around the region's pixel
  *centres* (rotating calipers over the convex-hull edges), each side then lengthened by one
  pixel for the pixels' own extent: a single pixel is 1 x 1 (aspect 1), a one-pixel-wide line
  of n pixels is n x 1 (aspect n), an axis-aligned w x h block exactly w x h, and a digital
  bar rotated by any angle comes out close to its own length and width (pixel corners
  instead would add about 1.4 px to both sides of a 45-degree bar).
  Aspect ratio = long side / short side.
- TE (types per defective image) comes from the per-region labels in
  `<root>/<Folder>/defect_regions.csv` when that sidecar exists, else from the folder name
  (so TE = 1); `te_source` says which.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from threecad.catalog import resolve_categories, table1
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import Scan, catalog_order, require_readable
from threecad.masks import MaskError, read_mask, read_mask_box  # noqa: F401 - read_mask re-exported

log = logging.getLogger(__name__)

SIDECAR_NAME = "defect_regions.csv"
SYNTHETIC_MARKER = "synthetic.json"
SIDECAR_COLUMNS = ("image", "region", "defect_type", "y", "x", "area")
# Bump when the per-file analysis changes, so that old cache rows are recomputed.
ANALYSIS_VERSION = 4  # 4: masks read by threecad.masks (colour masks by their largest channel)
# One row per region in MaskResult.regions; bbox is [y0, y1) x [x0, x1); (py, px) is the
# region's first pixel in raster order; angle is the long side's direction in degrees [0, 180).
REGION_FIELDS = ("area", "y0", "x0", "y1", "x1", "rect_long", "rect_short", "angle", "py", "px")
_EIGHT = np.ones((3, 3), dtype=bool)
OVERALL = "all"
# The Table 1 columns that are compared with the measured figures, in the paper's order.
TABLE1_FIELDS = ("train_good", "test_all", "test_good", "test_defect", "defect_types",
                 "height_min", "height_max", "width_min", "width_max",
                 "ne_min", "ne_max", "te_min", "te_max")


# --------------------------------------------------------------------------- geometry

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


# --------------------------------------------------------------------------- one mask

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


def _empty_regions() -> np.ndarray:
    return np.zeros((0, len(REGION_FIELDS)), dtype=np.float64)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flags, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


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
        row_runs = _runs(sub.any(axis=1))
        for ra, rb in row_runs:
            col_runs = _runs(sub[ra:rb].any(axis=0))
            for ca, cb in col_runs:
                box = (y0 + ra, y0 + rb, x0 + ca, x0 + cb)
                if len(row_runs) == 1 and len(col_runs) == 1:
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
            runs.append(_row_runs(labels[sl] == k, len(rows) - n + k - 1, y0 + sl[0].start, x0 + sl[1].start))
    if not rows:
        return MaskResult(height, width, _empty_regions())
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


def _row_runs(region: np.ndarray, index: int, y0: int, x0: int) -> np.ndarray:
    """(index, y, x_start, x_stop) for each horizontal run of True in a region's box."""
    padded = np.zeros((region.shape[0], region.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = region
    ys, starts = np.nonzero(np.diff(padded, axis=1) == 1)
    _, stops = np.nonzero(np.diff(padded, axis=1) == -1)
    return np.stack([np.full(ys.size, index), ys + y0, starts + x0, stops + x0], axis=1).astype(np.int32)


def analyze_mask(path: str | os.PathLike) -> MaskResult:
    """analyze_mask_array on a file; an unreadable file gives a result carrying the error."""
    try:
        height, width, y0, x0, crop = read_mask_box(path)  # the reader verify and the Dataset use
    except MaskError as exc:  # reported per file, the run goes on
        return MaskResult(0, 0, _empty_regions(), error=str(exc))
    except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
        return MaskResult(0, 0, _empty_regions(), error=f"{type(exc).__name__}: {exc}")
    if crop is None:
        return MaskResult(height, width, _empty_regions())
    return _analyze(crop, y0, x0, height, width)


def _analyze_chunk(paths: list[str]) -> list[MaskResult]:
    return [analyze_mask(p) for p in paths]


# --------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """`$THREECAD_CACHE`, else ~/.cache/threecad."""
    env = os.environ.get("THREECAD_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/threecad").expanduser()


class MaskCache:
    """Per-file MaskResults in one sqlite file, keyed by absolute path, size and mtime.

    sqlite because it is in the standard library, takes concurrent readers and writers
    (two `threecad stats` runs at once) and updates single rows without rewriting the file.
    One table per ANALYSIS_VERSION, so that results of an older analysis are never read.
    """

    TABLE = f"masks_v{ANALYSIS_VERSION}"

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "stats_masks.sqlite"
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, height INTEGER, width INTEGER, regions BLOB, runs BLOB, error TEXT)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ThreecadError(f"cannot open the stats cache in {directory}: {exc}; set "
                                "$THREECAD_CACHE to a writable folder or pass --no-cache") from exc

    def lookup(self, keys: dict[str, tuple[int, int]]) -> dict[str, MaskResult]:
        """The cached results whose (size, mtime_ns) still match `keys` (path -> key)."""
        found: dict[str, MaskResult] = {}
        cur = self._db.execute(f"SELECT path, size, mtime_ns, height, width, regions, runs, error "
                               f"FROM {self.TABLE}")
        for path, size, mtime_ns, height, width, regions, runs, error in cur:
            if keys.get(path) == (size, mtime_ns):
                found[path] = MaskResult(
                    height, width, np.frombuffer(regions, dtype=np.float64).reshape(-1, len(REGION_FIELDS)),
                    error, np.frombuffer(runs, dtype=np.int32).reshape(-1, 4))
        return found

    def store(self, items: Iterable[tuple[str, tuple[int, int], MaskResult]]) -> None:
        rows = [(p, k[0], k[1], r.height, r.width,
                 np.ascontiguousarray(r.regions, dtype=np.float64).tobytes(),
                 np.ascontiguousarray(r.runs, dtype=np.int32).tobytes(), r.error)
                for p, k, r in items]
        if rows:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- many masks

def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def analyze_masks(paths: Sequence[str], *, workers: int | None = None, cache: bool = True,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> list[MaskResult]:
    """MaskResult for each path, in order: cached where the file is unchanged, the rest
    computed over a process pool (`workers` processes; 1 computes in this process)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    abs_paths = [os.path.abspath(p) for p in paths]
    keys = {p: _file_key(p) for p in abs_paths}
    results: dict[str, MaskResult] = {}
    for p, k in keys.items():
        if k is None:
            results[p] = MaskResult(0, 0, _empty_regions(), error="file not found")
    store = MaskCache(cache_dir) if cache else None
    try:
        if store is not None:
            results.update(store.lookup({p: k for p, k in keys.items() if k is not None}))
        todo = sorted(p for p in keys if p not in results)
        log.info("stats: %d masks, %d cached, %d to compute", len(keys), len(keys) - len(todo), len(todo))
        batch: list[tuple[str, tuple[int, int], MaskResult]] = []
        last_store = time.monotonic()
        for path, res in zip(todo, _compute(todo, workers, progress)):
            results[path] = res
            if store is not None:
                batch.append((path, keys[path], res))
                # store as we go, so that an interrupted run keeps what it did
                if len(batch) >= 2000 or time.monotonic() - last_store > 10:
                    store.store(batch)
                    batch, last_store = [], time.monotonic()
        if store is not None:
            store.store(batch)
    finally:
        if store is not None:
            store.close()
    return [results[p] for p in abs_paths]


def _compute(todo: list[str], workers: int, progress: bool) -> Iterator[MaskResult]:
    """analyze_mask over `todo`, in order, with a progress bar; in this process for few files."""
    from tqdm.auto import tqdm

    if workers == 1 or len(todo) < 4 * workers:
        with tqdm(total=len(todo), desc="masks", unit="mask", disable=None if progress else True,
                  leave=False) as bar:
            for p in todo:
                yield analyze_mask(p)
                bar.update(1)
        return
    chunk = max(1, min(64, len(todo) // (workers * 8)))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    # fork (where there is one) starts workers in milliseconds with the imports done; the
    # pool is made before the progress bar starts its monitor thread.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(processes=min(workers, len(chunks))) as pool, \
            tqdm(total=len(todo), desc="masks", unit="mask", disable=None if progress else True,
                 leave=False) as bar:
        for part in pool.imap(_analyze_chunk, chunks):
            yield from part
            bar.update(len(part))


# --------------------------------------------------------------------------- the dataset

@dataclass
class DatasetStats:
    """Everything `threecad stats` reports; the tables are plain DataFrames.

    images: one row per defective test image (NE, TE, mask size, problems).
    regions: one row per defect region (area, area ratio, rotated rectangle, types).
    summary: one row per category plus `all` (Table 1 fields and more).
    defect_types: per category and region defect type, counts and median region size.
    comparison: the paper's Table 1 next to the measured figures (3CAD roots only).
    """

    root: Path
    dataset: str
    table: pd.DataFrame
    images: pd.DataFrame
    regions: pd.DataFrame
    summary: pd.DataFrame
    defect_types: pd.DataFrame
    te_source: dict[str, str]
    comparison: pd.DataFrame | None = None
    synthetic: dict | None = None  # the root's synthetic.json, when threecad.synth made it
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """A JSON-ready dict: per category and `overall`, the summary, NE/TE histograms and
        per-type figures (each has `n_regions`)."""
        def clean(v):
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.floating, float)):
                return None if not np.isfinite(v) else float(v)
            if v is pd.NA:
                return None
            return v

        def block(cat: str) -> dict:
            row = self.summary.loc[cat]
            out = {k: clean(v) for k, v in row.items()}
            imgs = self.images if cat == OVERALL else self.images[self.images["category"] == cat]
            for col in ("ne", "te"):
                vals = imgs[col].dropna().astype(int)
                out[f"{col}_hist"] = {str(k): int(v) for k, v in vals.value_counts().sort_index().items()}
            types = self.defect_types if cat == OVERALL else self.defect_types[self.defect_types["category"] == cat]
            out["by_defect_type"] = {
                (t.region_type if cat != OVERALL else f"{t.category}/{t.region_type}"):
                    {k: clean(getattr(t, k)) for k in ("n_images", "n_regions", "median_area_px",
                                                       "median_area_ratio", "median_aspect_ratio")}
                for t in types.itertuples()}
            return out

        data = {
            "root": str(self.root),
            "dataset": self.dataset,
            "conventions": {
                "connectivity": 8,
                "mask_threshold": ">127",
                "area_ratio": "region pixels / mask pixels",
                "aspect_ratio": "long/short side of the minimum-area rotated rectangle, "
                                "around pixel centres, each side + 1 pixel (a single pixel is 1x1)",
            },
            "te_source": self.te_source,
            "synthetic": self.synthetic,
            "categories": {c: block(c) for c in self.summary.index if c != OVERALL},
            "overall": block(OVERALL),
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
        }
        if self.comparison is not None:
            data["table1_comparison"] = [{k: clean(v) for k, v in r.items()}
                                         for r in self.comparison.to_dict("records")]
        return data


def load_sidecar(category_dir: Path) -> pd.DataFrame | None:
    """The synthetic set's per-region type labels for one category, or None when absent."""
    path = category_dir / SIDECAR_NAME
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
        raise DatasetError(f"cannot read {path}: {exc}; delete it or regenerate it "
                           "with `threecad synth`") from exc
    missing = [c for c in SIDECAR_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path} lacks column(s) {', '.join(missing)}; expected "
                           f"{', '.join(SIDECAR_COLUMNS)}")
    df["image"] = df["image"].astype(str)
    df["defect_type"] = df["defect_type"].astype(str)
    return df


def compute_stats(scan: Scan, categories: Sequence[str] | str | None = None, *,
                  workers: int | None = None, cache: bool = True,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DatasetStats:
    """Measure a scanned root: counts, sizes, NE/TE, regions; Table 1 next to it on 3CAD."""
    start = time.perf_counter()
    cats = catalog_order(resolve_categories(categories, available=scan.categories))  # the paper's order
    require_readable(scan, cats)
    names = [c.abbreviation for c in cats]
    table = scan.table[scan.table["category"].isin(names)].reset_index(drop=True)
    problems: list[str] = []

    defective = table[(table["split"] == "test") & (table["label"] == 1)].reset_index(drop=True)
    with_mask = defective["mask_path"].notna()
    results = analyze_masks(defective.loc[with_mask, "mask_path"].tolist(), workers=workers,
                            cache=cache, cache_dir=cache_dir, progress=progress)
    images, regions, runs = _image_and_region_tables(defective, with_mask, results, problems)

    te_source: dict[str, str] = {}
    sidecars: dict[str, tuple[Path, pd.DataFrame]] = {}
    folders = table.drop_duplicates("category").set_index("category")["folder"]
    for cat in cats:
        category_dir = scan.root / folders.get(cat.abbreviation, cat.folder)
        sidecar = load_sidecar(category_dir)
        te_source[cat.abbreviation] = "sidecar" if sidecar is not None else "folder"
        if sidecar is not None:
            sidecars[cat.abbreviation] = (category_dir, sidecar)
    if sidecars:
        _apply_sidecars(sidecars, images, regions, runs, problems)

    summary = _summary(table, images, regions, names, te_source)
    types = _defect_type_table(images, regions)
    comparison = table1_comparison(summary) if scan.dataset == "3cad" else None
    return DatasetStats(root=scan.root, dataset=scan.dataset, table=table, images=images,
                        regions=regions, summary=summary, defect_types=types,
                        te_source=te_source, comparison=comparison,
                        synthetic=_synthetic_marker(scan.root), problems=problems,
                        seconds=time.perf_counter() - start)


def _synthetic_marker(root: Path) -> dict | None:
    """The `synthetic.json` that threecad.synth leaves at the root, if any (and readable)."""
    path = root / SYNTHETIC_MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _image_and_region_tables(defective: pd.DataFrame, with_mask: pd.Series,
                             results: list[MaskResult], problems: list[str]):
    images = defective[["category", "defect_type", "image_path", "mask_path", "height", "width"]].copy()
    n = len(images)
    mask_h = np.full(n, np.nan)
    mask_w = np.full(n, np.nan)
    ne = np.full(n, np.nan)
    status = np.array(["missing_mask"] * n, dtype=object)
    idx = np.flatnonzero(with_mask.to_numpy())
    blocks, owners = [], []
    runs: dict[int, np.ndarray] = {}
    heights = images["height"].to_numpy(dtype=float, na_value=np.nan)
    widths = images["width"].to_numpy(dtype=float, na_value=np.nan)
    mask_paths = images["mask_path"].to_numpy()
    for i, res in zip(idx.tolist(), results):
        if res.error is not None:
            status[i] = "unreadable_mask"
            problems.append(f"unreadable mask {mask_paths[i]}: {res.error}")
            continue
        if not np.isnan(heights[i]) and (heights[i], widths[i]) != (res.height, res.width):
            # threecad.masks refuses such a mask (the Dataset raises, verify reports an error)
            status[i] = "mask_size"
            problems.append(f"mask {mask_paths[i]} is {res.width}x{res.height} but its image is "
                            f"{int(widths[i])}x{int(heights[i])} (WxH); not measured")
            continue
        mask_h[i], mask_w[i], ne[i] = res.height, res.width, res.n_regions
        status[i] = "ok" if res.n_regions else "empty_mask"
        blocks.append(res.regions)
        owners.append(np.full(res.n_regions, i))
        if len(res.runs):
            runs[i] = res.runs
    image_paths = images["image_path"].to_numpy()
    for i in np.flatnonzero(status == "missing_mask"):
        problems.append(f"no mask for defective image {image_paths[i]}")
    for i in np.flatnonzero(status == "empty_mask"):
        problems.append(f"empty mask (no defect pixel) {mask_paths[i]}")
    images["mask_height"] = pd.array(mask_h, dtype="Float64").astype("Int64")
    images["mask_width"] = pd.array(mask_w, dtype="Float64").astype("Int64")
    images["ne"] = pd.array(ne, dtype="Float64").astype("Int64")
    images["te"] = pd.array(np.where(np.isnan(ne), np.nan, 1.0), dtype="Float64").astype("Int64")
    images["status"] = status

    arr = np.concatenate(blocks) if blocks else np.zeros((0, len(REGION_FIELDS)))
    owner = np.concatenate(owners).astype(int) if owners else np.zeros(0, dtype=int)
    regions = pd.DataFrame(arr, columns=list(REGION_FIELDS))
    for col in ("area", "y0", "x0", "y1", "x1", "py", "px"):
        regions[col] = regions[col].astype(np.int64)
    regions.insert(0, "image", owner)
    regions.insert(1, "region", _rank_within(owner))
    regions.insert(0, "category", images["category"].to_numpy()[owner])
    regions.insert(1, "defect_type", images["defect_type"].to_numpy()[owner])
    regions["region_type"] = regions["defect_type"]
    regions["area_ratio"] = regions["area"] / (mask_h[owner] * mask_w[owner])
    regions["aspect_ratio"] = regions["rect_long"] / regions["rect_short"]
    return images, regions, runs


def _rank_within(owner: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal (sorted) owner ids."""
    if owner.size == 0:
        return owner.copy()
    starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    return np.arange(owner.size) - np.repeat(starts, np.diff(np.r_[starts, owner.size]))


def _relative_image_keys(images: pd.DataFrame, dirs: dict[str, Path]) -> dict[str, int]:
    """`category/posix path relative to the category folder` -> image row, for the
    images of the categories in `dirs`."""
    prefixes = {cat: str(d) + os.sep for cat, d in dirs.items()}
    keys: dict[str, int] = {}
    for i, (cat, path) in enumerate(zip(images["category"].to_numpy(), images["image_path"].to_numpy())):
        prefix = prefixes.get(cat)
        if prefix is None:
            continue
        path = str(path)
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, dirs[cat])
        keys[f"{cat}/{rel.replace(os.sep, '/')}"] = i
    return keys


def _apply_sidecars(sidecars: dict[str, tuple[Path, pd.DataFrame]], images: pd.DataFrame,
                    regions: pd.DataFrame, runs: dict[int, np.ndarray], problems: list[str]) -> None:
    """TE per image from the sidecars' types, and each region's type from the sidecar row
    whose pixel (y, x) lies in it (boxes first; pixel runs where boxes overlap).
    One vectorised pass over all categories; disagreements with the masks become problems."""
    dirs = {cat: d for cat, (d, _) in sidecars.items()}
    index_of = _relative_image_keys(images, dirs)
    side = pd.concat([df[list(SIDECAR_COLUMNS)].assign(category=cat) for cat, (_, df) in sidecars.items()],
                     ignore_index=True)
    side["image_idx"] = (side["category"] + "/" + side["image"]).map(index_of)

    def report(rows: pd.Series, message: str) -> None:
        for cat, n in side.loc[rows[rows].index, "category"].value_counts(sort=False).items():
            problems.append(f"{dirs[cat] / SIDECAR_NAME}: {n} {message}")

    unknown = side["image_idx"].isna()
    if unknown.any():
        report(unknown, "row(s) name images that are not defective test images here, e.g. "
               + side.loc[unknown, "image"].iloc[0])
    side = side[~unknown].astype({"image_idx": int})

    te = side.groupby("image_idx")["defect_type"].nunique()
    measured = (images["status"] == "ok").to_numpy()
    te_arr = images["te"].to_numpy(dtype=float, na_value=np.nan)
    listed = te.index.to_numpy()
    ok = measured[listed]
    te_arr[listed[ok]] = te.to_numpy()[ok]
    images["te"] = pd.array(te_arr, dtype="Float64").astype("Int64")
    in_scope = images["category"].isin(list(sidecars)).to_numpy() & measured
    no_rows = in_scope & ~np.isin(np.arange(len(images)), listed)
    if no_rows.any():
        for cat, n in images.loc[no_rows, "category"].value_counts(sort=False).items():
            problems.append(f"{dirs[cat] / SIDECAR_NAME}: no rows for {n} defective image(s), TE from "
                            "the folder for them")

    # Candidates for each sidecar point: regions of its image whose box holds it.
    reg = regions.loc[regions["image"].isin(side["image_idx"].unique()),
                      ["image", "y0", "y1", "x0", "x1", "py", "px"]]
    reg = reg.rename(columns={"image": "image_idx"}).rename_axis("row").reset_index()
    pairs = side.drop(columns=["image", "category"]).rename_axis("side_row").reset_index().merge(
        reg, on="image_idx")
    pairs = pairs[(pairs["y"] >= pairs["y0"]) & (pairs["y"] < pairs["y1"])
                  & (pairs["x"] >= pairs["x0"]) & (pairs["x"] < pairs["x1"])]
    n_cand = pairs.groupby("side_row")["row"].transform("size")
    chosen = pairs.loc[n_cand == 1, ["side_row", "row"]]
    if (n_cand > 1).any():
        chosen = pd.concat([chosen, _resolve_by_runs(pairs[n_cand > 1], regions, runs)], ignore_index=True)
    chosen = chosen.drop_duplicates("side_row")
    matched = side.index.isin(chosen["side_row"])
    if not matched.all():
        report(pd.Series(~matched, index=side.index),
               "row(s) whose pixel (y, x) is not on a defect region of the mask")
    twice = chosen["row"].duplicated()
    if twice.any():
        report(pd.Series(side.index.isin(chosen.loc[twice, "side_row"]), index=side.index),
               "region(s) named by more than one row; the first row's type is used")
    chosen = chosen[~twice]
    rows, side_rows = chosen["row"].to_numpy(), chosen["side_row"].to_numpy()
    differ = regions.loc[rows, "area"].to_numpy() != side.loc[side_rows, "area"].to_numpy()
    if differ.any():
        report(pd.Series(side.index.isin(side_rows[differ]), index=side.index),
               "region(s) whose listed area is not the area measured in the mask")
    region_type = regions["region_type"].to_numpy(dtype=object).copy()
    region_type[rows] = side.loc[side_rows, "defect_type"].to_numpy()
    regions["region_type"] = region_type


def _resolve_by_runs(pairs: pd.DataFrame, regions: pd.DataFrame,
                     runs: dict[int, np.ndarray]) -> pd.DataFrame:
    """For points inside several regions' boxes, keep the region whose pixel runs hold the
    point (every such region has its runs: its box overlaps another one's)."""
    within_image = regions["region"].to_numpy()
    keep = []
    for p in pairs.itertuples(index=False):
        r = runs.get(p.image_idx)
        if r is None:
            continue
        r = r[(r[:, 0] == within_image[p.row]) & (r[:, 1] == p.y)]
        if ((r[:, 2] <= p.x) & (p.x < r[:, 3])).any():
            keep.append((p.side_row, p.row))
    return pd.DataFrame(keep, columns=["side_row", "row"], dtype="int64")


class _Columns:
    """The columns that the summary reads, as numpy arrays (float with NaN for missing), so
    that a category's figures are a few numpy reductions over index arrays: pandas
    filtering and grouping cost more than the warm run's whole budget."""

    def __init__(self, table: pd.DataFrame, images: pd.DataFrame, regions: pd.DataFrame):
        split, label = table["split"].to_numpy(), table["label"].to_numpy()
        self.t_category = table["category"].to_numpy()
        self.train_good = (split == "train") & (label == 0)
        self.test = split == "test"
        self.test_good = self.test & (label == 0)
        self.test_defect = self.test & (label == 1)
        self.defect_type = table["defect_type"].to_numpy()
        self.height = table["height"].to_numpy(dtype=float, na_value=np.nan)
        self.width = table["width"].to_numpy(dtype=float, na_value=np.nan)
        self.i_category = images["category"].to_numpy()
        self.ne = images["ne"].to_numpy(dtype=float, na_value=np.nan)
        self.te = images["te"].to_numpy(dtype=float, na_value=np.nan)
        self.status = images["status"].to_numpy()
        self.r_category = regions["category"].to_numpy()
        self.ratio = regions["area_ratio"].to_numpy(dtype=float)
        self.aspect = regions["aspect_ratio"].to_numpy(dtype=float)


def _int_range(values: np.ndarray) -> tuple:
    v = values[~np.isnan(values)]
    return (int(v.min()), int(v.max())) if v.size else (pd.NA, pd.NA)


def _figures(c: _Columns, t: np.ndarray, i: np.ndarray, r: np.ndarray, n_types: int, te_source: str) -> dict:
    """The summary row of the files selected by the boolean arrays t (table), i (images), r (regions)."""
    row = {"train_good": int(c.train_good[t].sum()), "test_all": int(c.test[t].sum()),
           "test_good": int(c.test_good[t].sum()), "test_defect": int(c.test_defect[t].sum()),
           "defect_types": n_types}
    row["height_min"], row["height_max"] = _int_range(c.height[t])
    row["width_min"], row["width_max"] = _int_range(c.width[t])
    row["ne_min"], row["ne_max"] = _int_range(c.ne[i])
    row["te_min"], row["te_max"] = _int_range(c.te[i])
    ne, ratio, aspect, status = c.ne[i], c.ratio[r], c.aspect[r], c.status[i]
    ne = ne[~np.isnan(ne)]
    some = ratio.size > 0
    row.update({
        "te_source": te_source,
        "n_regions": int(ratio.size),
        "ne_mean": float(ne.mean()) if ne.size else np.nan,
        "area_ratio_min": float(ratio.min()) if some else np.nan,
        "area_ratio_median": float(np.median(ratio)) if some else np.nan,
        "area_ratio_max": float(ratio.max()) if some else np.nan,
        "share_below_1pct": float((ratio < 0.01).mean()) if some else np.nan,
        "share_below_0.1pct": float((ratio < 0.001).mean()) if some else np.nan,
        "aspect_ratio_median": float(np.median(aspect)) if some else np.nan,
        "aspect_ratio_max": float(aspect.max()) if some else np.nan,
        "empty_masks": int((status == "empty_mask").sum()),
        "missing_masks": int((status == "missing_mask").sum()),
        "unreadable_masks": int((status == "unreadable_mask").sum()),
        "mask_size_mismatches": int((status == "mask_size").sum()),
    })
    return row


def _summary(table: pd.DataFrame, images: pd.DataFrame, regions: pd.DataFrame,
             names: list[str], te_source: dict[str, str]) -> pd.DataFrame:
    """One row per category (in `names` order) and the `all` row: Table 1's fields and more."""
    c = _Columns(table, images, regions)
    rows, total_types = [], 0
    for cat in names:
        t = c.t_category == cat
        n_types = len(set(c.defect_type[t & c.test_defect].tolist()))
        total_types += n_types
        rows.append(_figures(c, t, c.i_category == cat, c.r_category == cat, n_types, te_source[cat]))
    sources = set(te_source.values())
    # Overall defect types: the sum over categories (the paper's 47), since a "scratch" of
    # one part is a different class from a "scratch" of another.
    rows.append(_figures(c, np.ones(len(table), bool), np.ones(len(images), bool), np.ones(len(regions), bool),
                         total_types, sources.pop() if len(sources) == 1 else "mixed"))
    summary = pd.DataFrame(rows, index=pd.Index([*names, OVERALL], name="category"))
    for col in ("height_min", "height_max", "width_min", "width_max", "ne_min", "ne_max", "te_min", "te_max"):
        summary[col] = summary[col].astype("Int64")
    return summary


def _defect_type_table(images: pd.DataFrame, regions: pd.DataFrame) -> pd.DataFrame:
    cols = ["category", "region_type", "n_images", "n_regions", "median_area_px",
            "median_area_ratio", "median_aspect_ratio"]
    if regions.empty:
        return pd.DataFrame(columns=cols)
    g = regions.groupby(["category", "region_type"], sort=False)
    out = pd.DataFrame({
        "n_images": g["image"].nunique(),
        "n_regions": g.size(),
        "median_area_px": g["area"].median(),
        "median_area_ratio": g["area_ratio"].median(),
        "median_aspect_ratio": g["aspect_ratio"].median(),
    }).reset_index()
    order = {c: i for i, c in enumerate(dict.fromkeys(images["category"]))}
    return out.sort_values(["category", "region_type"], key=lambda s: s.map(order) if s.name == "category" else s,
                           ignore_index=True)[cols]


def table1_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Long form: category, field, paper, measured, match; one row per Table 1 figure of
    each measured 3CAD category, plus totals of the counts over those categories."""
    paper = table1()
    cats = [c for c in summary.index if c != OVERALL and c in paper.index]
    fields = list(TABLE1_FIELDS)
    published = paper.loc[cats, fields].to_dict("index")
    measured = summary.loc[cats, fields].to_dict("index")

    def value(v):
        return None if v is None or pd.isna(v) else int(v)

    rows = [(c, f, value(published[c][f]), value(measured[c][f])) for c in cats for f in fields]
    if len(cats) > 1:
        for f in ("train_good", "test_all", "test_good", "test_defect", "defect_types"):
            rows.append((OVERALL, f, sum(int(published[c][f]) for c in cats),
                         sum(int(measured[c][f]) for c in cats)))
    df = pd.DataFrame(rows, columns=["category", "field", "paper", "measured"])
    df["paper"] = df["paper"].astype("Int64")
    df["measured"] = df["measured"].astype("Int64")
    df["match"] = (df["paper"] == df["measured"]).fillna(False).astype(bool)
    return df


def te_source_text(te_source: dict[str, str]) -> str:
    """"sidecar" / "folder names" / "sidecar (ACC, AI), folder names (IS)"."""
    names = {"sidecar": "defect_regions.csv", "folder": "folder names"}
    groups: dict[str, list[str]] = {}
    for cat, src in te_source.items():
        groups.setdefault(names.get(src, src), []).append(cat)
    if len(groups) == 1:
        return next(iter(groups))
    return ", ".join(f"{src} ({', '.join(cats)})" for src, cats in groups.items())


def format_summary(stats: DatasetStats) -> str:
    """The terminal table: one line per category and the total."""
    s = stats.summary

    def rng(lo, hi) -> str:
        if pd.isna(lo):
            return "-"
        return f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}"

    view = pd.DataFrame({
        "train good": s["train_good"],
        "test good": s["test_good"],
        "test defect": s["test_defect"],
        "types": s["defect_types"],
        "height": [rng(a, b) for a, b in zip(s["height_min"], s["height_max"])],
        "width": [rng(a, b) for a, b in zip(s["width_min"], s["width_max"])],
        "NE": [rng(a, b) for a, b in zip(s["ne_min"], s["ne_max"])],
        "TE": [rng(a, b) for a, b in zip(s["te_min"], s["te_max"])],
        "TE from": s["te_source"],
        "regions": s["n_regions"],
        "area % (median)": [f"{100 * v:.3f}" if pd.notna(v) else "-" for v in s["area_ratio_median"]],
        "<0.1%": [f"{100 * v:.0f}%" if pd.notna(v) else "-" for v in s["share_below_0.1pct"]],
        "aspect (median)": [f"{v:.2f}" if pd.notna(v) else "-" for v in s["aspect_ratio_median"]],
    }, index=s.index)
    return view.to_string()


def format_defect_types(stats: DatasetStats) -> str:
    t = stats.defect_types
    if t.empty:
        return "(no defect regions)"
    view = t.assign(median_area_ratio=[f"{100 * v:.4f}%" for v in t["median_area_ratio"]],
                    median_area_px=[f"{v:.0f}" for v in t["median_area_px"]],
                    median_aspect_ratio=[f"{v:.2f}" for v in t["median_aspect_ratio"]])
    view.columns = ["category", "type", "images", "regions", "median px", "median area", "median aspect"]
    return view.to_string(index=False)


def format_comparison(stats: DatasetStats) -> str:
    """Table 1 against the measured figures: fields down, categories across; a cell shows the
    measured value, and `measured ! paper` where the two differ."""
    c = stats.comparison
    if c is None or c.empty:
        return ""
    cell = [str(m) if ok else f"{'n/a' if pd.isna(m) else m} ! {p}"
            for m, p, ok in zip(c["measured"], c["paper"], c["match"])]
    grid = c.assign(cell=cell).pivot(index="field", columns="category", values="cell")
    grid = grid.reindex(index=[f for f in TABLE1_FIELDS if f in grid.index],
                        columns=list(dict.fromkeys(c["category"]))).fillna("")
    grid.index.name = None
    grid.columns.name = None
    n_diff = int((~c["match"]).sum())
    head = (f"Table 1 of the paper vs measured: {len(c) - n_diff} of {len(c)} figures match"
            + (f"; {n_diff} differ, shown as `measured ! paper`" if n_diff else ""))
    lines = [head, grid.to_string()]
    synth = stats.synthetic or {}
    if synth.get("scale") is not None and n_diff:
        lines.append(f"(a synthetic set made at scale {synth['scale']}, max size {synth.get('max_size')}: "
                     "counts and sizes follow Table 1 only at scale 1 without a size cap)")
    if "folder" in stats.te_source.values() and (c.loc[c["field"] == "te_max", "match"] == False).any():  # noqa: E712
        lines.append("(TE from folder names is always 1; the paper counts types per image)")
    return "\n".join(lines)


def write_tables(stats: DatasetStats, out_dir: str | os.PathLike) -> list[Path]:
    """CSV tables into out_dir: summary, defect_types, images, regions, table1_comparison."""
    from threecad.fsutil import atomic_write_text, ensure_dir

    out_dir = ensure_dir(out_dir)
    tables = {
        "summary.csv": stats.summary.reset_index(),
        "defect_types.csv": stats.defect_types,
        "images.csv": stats.images,
        "regions.csv": stats.regions.assign(image_path=stats.images["image_path"].to_numpy()[
            stats.regions["image"].to_numpy()]).drop(columns=["image"]),
    }
    if stats.comparison is not None:
        tables["table1_comparison.csv"] = stats.comparison
    written = []
    for name, df in tables.items():
        atomic_write_text(out_dir / name, df.to_csv(index=False))
        written.append(out_dir / name)
    return written
