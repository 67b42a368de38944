"""What `threecad stats` prints and writes: terminal tables and CSV files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from threecad.stats.tables import TABLE1_FIELDS

if TYPE_CHECKING:
    from threecad.stats.compute import DatasetStats


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
