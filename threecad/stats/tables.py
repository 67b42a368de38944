"""The tables `threecad stats` reports, built from the mask results: one row per defective
image, per region, per category (Table 1's fields and more) and per defect type."""
from __future__ import annotations

import numpy as np
import pandas as pd

from threecad.catalog import table1
from threecad.stats.measure import REGION_FIELDS, MaskResult

OVERALL = "all"
UNREADABLE = "unreadable mask "  # how a mask that cannot be read is listed among the problems
# The Table 1 columns that are compared with the measured figures, in the paper's order.
TABLE1_FIELDS = ("train_good", "test_all", "test_good", "test_defect", "defect_types",
                 "height_min", "height_max", "width_min", "width_max",
                 "ne_min", "ne_max", "te_min", "te_max")


def image_and_region_tables(defective: pd.DataFrame, with_mask: pd.Series,
                            results: list[MaskResult], problems: list[str]):
    """(images, regions, runs): one row per defective image and per region of its mask, and
    the pixel runs of each image whose regions' boxes overlap; mask problems go to `problems`."""
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
            problems.append(f"{UNREADABLE}{mask_paths[i]}: {res.error}")
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


def summary_table(table: pd.DataFrame, images: pd.DataFrame, regions: pd.DataFrame,
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


def defect_type_table(images: pd.DataFrame, regions: pd.DataFrame) -> pd.DataFrame:
    """Per category and region type: images, regions and median region size and aspect."""
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

