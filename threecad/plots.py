"""Figures for `threecad stats --plot`: the paper's Figure 3 and more, readable at a glance.

Every figure is built on a matplotlib `Figure` (Agg canvas, no pyplot global state), has a
title, labelled axes and a legend where there is more than one series, and is written
atomically as PNG.
"""
from __future__ import annotations

import logging
import textwrap
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from threecad.fsutil import atomic_path
from threecad.masks import read_mask
from threecad.stats import DatasetStats, te_source_text

log = logging.getLogger(__name__)

DPI = 110
GOOD_COLOR = "#4c72b0"


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        # zlib level 2: photographs in the sample grids compress slowly at the default 6
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 2})
    return path


def _category_colors(categories: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def _small_multiples(values: dict[str, np.ndarray], bins: np.ndarray, *, title: str, xlabel: str,
                     marks: Sequence[tuple[float, str]] = (), path: Path) -> Path:
    """One log-x histogram per category, shared axes, median marked; the `all` panel first."""
    cats = list(values)
    rows, cols = _grid(len(cats))
    fig = Figure(figsize=(3.6 * cols, 2.7 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    colors = _category_colors(cats)
    for ax, cat in zip(axes.flat, cats):
        v = values[cat]
        ax.hist(v, bins=bins, color=colors[cat], alpha=0.85, edgecolor="white", linewidth=0.3)
        ax.set_xscale("log")
        if len(v):
            med = float(np.median(v))
            ax.axvline(med, color="black", linestyle="--", linewidth=1.2, label=f"median {med:.3g}")
        for (x, label), style in zip(marks, MARK_STYLES):  # each reference line its own style, as the legend says
            ax.axvline(x, color=style[0], linestyle=style[1], linewidth=1, label=label)
        ax.set_title(f"{cat}  ({len(v)} regions)", fontsize=10)
        ax.set_ylabel("regions")
        ax.tick_params(labelsize=8, labelbottom=True)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    for ax in axes.flat[len(cats):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(cats)]):
        if i + cols >= len(cats):  # no panel below this one
            ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _log_bins(values: np.ndarray, lo: float | None = None, n: int = 40) -> np.ndarray:
    positive = values[values > 0]
    if positive.size == 0:
        return np.logspace(-6, 0, n)
    low = lo if lo is not None else positive.min() / 1.05
    high = max(positive.max() * 1.05, low * 1.5)
    return np.logspace(np.log10(low), np.log10(high), n)


def _per_category(stats: DatasetStats, column: str) -> dict[str, np.ndarray]:
    regions = stats.regions
    cats = [c for c in stats.summary.index if c != "all"]
    out = {"all categories": regions[column].to_numpy(dtype=float)} if len(cats) > 1 else {}
    for cat in cats:
        out[cat] = regions.loc[regions["category"] == cat, column].to_numpy(dtype=float)
    return out


MARK_STYLES = (("dimgrey", ":"), ("tab:purple", "-."), ("tab:brown", (0, (5, 2))))


def plot_area_ratio(stats: DatasetStats, path: str | os.PathLike) -> Path:
    """The paper's Fig. 3a: region area / image area, log axis, one panel per category."""
    values = _per_category(stats, "area_ratio")
    bins = _log_bins(stats.regions["area_ratio"].to_numpy(dtype=float))
    return _small_multiples(values, bins, title="Defect region size: area ratio (region / image), log scale",
                            xlabel="area ratio (log)", marks=[(1e-3, "0.1%"), (1e-2, "1%")], path=Path(path))


def plot_aspect_ratio(stats: DatasetStats, path: str | os.PathLike) -> Path:
    """The paper's Fig. 3b: long/short side of each region's minimum-area rotated rectangle."""
    values = _per_category(stats, "aspect_ratio")
    bins = _log_bins(stats.regions["aspect_ratio"].to_numpy(dtype=float), lo=1.0)
    return _small_multiples(values, bins,
                            title="Defect region shape: aspect ratio of the min-area rotated rectangle",
                            xlabel="aspect ratio, long / short side (log)", path=Path(path))


def plot_ne_te(stats: DatasetStats, path: str | os.PathLike, ne_cap: int = 10) -> Path:
    """NE (regions per defective image) and TE (types per defective image) as grouped bars,
    share of each category's defective images; NE above `ne_cap` pooled into one bar."""
    images = stats.images.dropna(subset=["ne"])
    cats = [c for c in stats.summary.index if c != "all"]
    colors = _category_colors(cats)
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    ax_ne, ax_te = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    te_from = te_source_text(stats.te_source)
    specs = [
        (ax_ne, images["ne"].astype(int).clip(upper=ne_cap), ne_cap,
         "NE: defect regions per defective image\n(8-connected mask components)", "regions in the image"),
        (ax_te, images["te"].astype(int), None,
         "TE: defect types per defective image\n" + textwrap.fill(f"(types from {te_from})", 48),
         "defect types in the image"),
    ]
    for ax, series, cap, title, xlabel in specs:
        top = int(series.max()) if len(series) else 1
        ks = np.arange(min(1, int(series.min()) if len(series) else 1), top + 1)
        width = 0.8 / max(len(cats), 1)
        for j, cat in enumerate(cats):
            s = series[images["category"] == cat]
            share = s.value_counts(normalize=True).reindex(ks, fill_value=0.0).to_numpy()
            ax.bar(ks + (j - (len(cats) - 1) / 2) * width, 100 * share, width=width,
                   color=colors[cat], label=f"{cat} ({len(s)})")
        ax.set_xticks(ks)
        ax.set_xlim(ks[0] - 0.6, ks[-1] + 0.6)
        ax.set_xticklabels([f"{k}+" if cap is not None and k == cap and top >= cap else str(k) for k in ks])
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("% of the category's defective images")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax_ne.get_legend_handles_labels(), title="category\n(images)", fontsize=8,
               loc="outside right upper")
    fig.suptitle("Regions (NE) and types (TE) per defective image", fontsize=12)
    return _save(fig, Path(path))


def _thumbnail(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG decodes at a reduced scale; others ignore it
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return np.asarray(im)


def _pick_samples(stats: DatasetStats, category: str, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Up to n defective images, spread over the defect types, and as many good test images."""
    rng = np.random.default_rng(seed)
    imgs = stats.images[(stats.images["category"] == category) & (stats.images["status"] == "ok")]
    picks: list[int] = []
    by_type = {t: list(g.index) for t, g in imgs.groupby("defect_type", sort=True)}
    for t in by_type:
        rng.shuffle(by_type[t])
    while len(picks) < n and any(by_type.values()):
        for t in list(by_type):
            if by_type[t] and len(picks) < n:
                picks.append(by_type[t].pop())
    table = stats.table
    good = table[(table["category"] == category) & (table["label"] == 0)]
    # test images first (they are what a method is scored on), train images to fill the row
    order = [*rng.permutation(np.flatnonzero((good["split"] == "test").to_numpy())),
             *rng.permutation(np.flatnonzero((good["split"] != "test").to_numpy()))]
    good = good.iloc[order[:max(len(picks), 1)]]
    return imgs.loc[picks], good


def plot_samples(stats: DatasetStats, category: str, path: str | os.PathLike, n: int = 5,
                 seed: int = 0, thumb: int = 320) -> Path:
    """Good images (top) next to defective ones (bottom) with the mask outlined in red and
    each region boxed, so that defects of a few pixels can still be found."""
    from matplotlib.patches import Rectangle

    defects, good = _pick_samples(stats, category, n, seed)
    cols = max(len(defects), len(good), 1)
    fig = Figure(figsize=(2.9 * cols, 6.4), layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row in zip(axes[0], good.itertuples()):
        ax.imshow(_thumbnail(row.image_path, thumb))
        ax.set_title(f"good ({row.split})\n{Path(row.image_path).name}", fontsize=8)
    regions = stats.regions
    for ax, (idx, row) in zip(axes[1], defects.iterrows()):
        h, w = int(row["mask_height"]), int(row["mask_width"])
        ax.imshow(_thumbnail(row["image_path"], thumb), extent=(0, w, h, 0))
        mask = read_mask(row["mask_path"])
        # pixel centres at +0.5 so the outline sits on the pixel edges of the image below
        ax.contour(np.arange(w) + 0.5, np.arange(h) + 0.5, mask.astype(np.uint8), levels=[0.5],
                   colors="red", linewidths=1.2)
        pad = 0.03 * max(h, w)
        for r in regions[regions["image"] == idx].itertuples():
            ax.add_patch(Rectangle((r.x0 - pad, r.y0 - pad), r.x1 - r.x0 + 2 * pad, r.y1 - r.y0 + 2 * pad,
                                   fill=False, edgecolor="yellow", linewidth=0.9, linestyle="--"))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(f"{row['defect_type']}  NE={row['ne']} TE={row['te']}\n{Path(row['image_path']).name}",
                     fontsize=8)
    folder = stats.table.loc[stats.table["category"] == category, "folder"]
    name = f"{category} ({folder.iloc[0]})" if len(folder) and folder.iloc[0] != category else category
    fig.suptitle(f"{name}: good images (top), defective with mask outlined in red, "
                 "regions boxed in yellow (bottom)", fontsize=10)
    return _save(fig, Path(path))


def plot_all(stats: DatasetStats, out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Every figure into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if len(stats.regions):
        written.append(plot_area_ratio(stats, out_dir / "area_ratio.png"))
        written.append(plot_aspect_ratio(stats, out_dir / "aspect_ratio.png"))
        written.append(plot_ne_te(stats, out_dir / "ne_te.png"))
    else:
        log.warning("no defect regions: skipping the region figures")
    for cat in stats.summary.index:
        if cat != "all":
            written.append(plot_samples(stats, cat, out_dir / f"samples_{cat}.png", seed=seed))
    return written
