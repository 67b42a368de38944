"""Per-region defect types from the synthetic set's `defect_regions.csv` sidecars: TE per
image, and each region's type from the sidecar row whose pixel lies in it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from threecad.errors import DatasetError

SIDECAR_NAME = "defect_regions.csv"
SIDECAR_COLUMNS = ("image", "region", "defect_type", "y", "x", "area")


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


def apply_sidecars(sidecars: dict[str, tuple[Path, pd.DataFrame]], images: pd.DataFrame,
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

