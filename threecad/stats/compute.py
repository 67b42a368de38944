"""The entry: measure a scanned root into a DatasetStats (tables, problems, JSON form)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from threecad.catalog import resolve_categories
from threecad.fsutil import open_regular
from threecad.layout import SYNTHETIC_MARKER, Scan, catalog_order, require_readable
from threecad.stats.pool import analyze_masks
from threecad.stats.sidecar import apply_sidecars, load_sidecar
from threecad.stats.tables import (OVERALL, UNREADABLE, defect_type_table, image_and_region_tables,
                                   summary_table, table1_comparison)


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

    @property
    def unreadable(self) -> list[str]:
        """The masks that could not be read, each as "PATH: why"; they are not measured."""
        return [p[len(UNREADABLE):] for p in self.problems if p.startswith(UNREADABLE)]

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
    images, regions, runs = image_and_region_tables(defective, with_mask, results, problems)

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
        apply_sidecars(sidecars, images, regions, runs, problems)

    summary = summary_table(table, images, regions, names, te_source)
    types = defect_type_table(images, regions)
    comparison = table1_comparison(summary) if scan.dataset == "3cad" else None
    return DatasetStats(root=scan.root, dataset=scan.dataset, table=table, images=images,
                        regions=regions, summary=summary, defect_types=types,
                        te_source=te_source, comparison=comparison,
                        synthetic=_synthetic_marker(scan.root), problems=problems,
                        seconds=time.perf_counter() - start)


def _synthetic_marker(root: Path) -> dict | None:
    """The `synthetic.json` that threecad.synth leaves at the root, if any (and readable)."""
    try:
        with open_regular(root / SYNTHETIC_MARKER) as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):  # absent, not a regular file, not JSON
        return None
    return data if isinstance(data, dict) else None

