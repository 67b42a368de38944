"""Validation and k-shot splits of the official training set, as a manifest CSV.

Why: model selection on the test set (what the official CFRG release does) inflates
results; a validation set carved from `train/good` avoids it, and k-shot subsets measure
few-shot behaviour. The official train/test assignment never changes: a manifest lists
training images only, and one that lists a test image is refused.

Manifest columns: `category` (abbreviation), `image` (posix path relative to the dataset
root), `subset` (`train` or `val`). Categories are split independently, each with its own
seeded stream, so a category's split does not depend on which other categories were asked
for; the k-shot subsets are nested (the 1-shot image is among the 2-shot images) and
disjoint from the validation images.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from threecad.catalog import Category, category_for_folder, resolve_category
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST_NAME = "split.csv"
MANIFEST_COLUMNS = ["category", "image", "subset"]
SUBSETS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 42


def relative_images(table: pd.DataFrame) -> pd.Series:
    """Each row's image as a posix path relative to the dataset root.

    The layout fixes the last four parts (`<Category>/<split>/<type>/<file>`), so no root
    is needed and the manifest stays valid when the dataset moves.
    """
    return table["image_path"].map(lambda p: "/".join(Path(p).parts[-4:]))


def table_categories(table: pd.DataFrame) -> list[Category]:
    """The catalog entries of the categories in a sample table, in table order."""
    return [category_for_folder(f) for f in pd.unique(table["folder"])]


def find_manifest(root: str | os.PathLike) -> Path | None:
    """`<root>/split.csv` when it exists (the default place `threecad split` writes to)."""
    path = Path(root).expanduser() / MANIFEST_NAME
    return path if path.is_file() else None


def _category_rng(seed: int, category: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(category.encode())])


def make_split(table: pd.DataFrame, val_fraction: float = DEFAULT_VAL_FRACTION,
               shots: int | None = None, seed: int = DEFAULT_SEED,
               categories: list[Category] | None = None) -> pd.DataFrame:
    """Carve a validation set and (optionally) a k-shot training subset from train/good.

    Per category: round(val_fraction * n) images go to `val` (at least one when the
    fraction is positive and the category has two or more images; at least one image is
    always left for training); of the rest, the first `shots` of a seeded permutation (all
    of them when `shots` is None) go to `train`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ThreecadError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shots is not None and shots < 1:
        raise ThreecadError(f"--shots must be at least 1, got {shots}")
    if int(seed) < 0:  # numpy's seed sequences take non-negative integers only
        raise ThreecadError(f"--seed must be 0 or more, got {seed}")
    cats = categories if categories is not None else table_categories(table)
    rels = relative_images(table)
    frames = []
    for cat in cats:
        is_train = (table["category"] == cat.abbreviation) & (table["split"] == "train")
        images = np.array(sorted(rels[is_train]), dtype=object)
        n = len(images)
        if n == 0:
            log.warning("category %s has no training images; left out of the split", cat)
            continue
        order = images[_category_rng(seed, cat.abbreviation).permutation(n)]
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
        val, rest = order[:n_val], order[n_val:]
        if shots is not None:
            if shots > len(rest):
                raise ThreecadError(
                    f"category {cat} has {len(rest)} training images after the validation split; "
                    f"--shots {shots} asks for more (lower --shots or --val-fraction)")
            rest = rest[:shots]
        frames.append(pd.DataFrame({"category": cat.abbreviation,
                                    "image": np.concatenate([np.sort(rest), np.sort(val)]),
                                    "subset": ["train"] * len(rest) + ["val"] * len(val)}))
    if not frames:
        raise ThreecadError("no training images in the chosen categories; nothing to split")
    return pd.concat(frames, ignore_index=True)[MANIFEST_COLUMNS]


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the manifest CSV atomically (a reader sees the old file or the new one)."""
    path = Path(path).expanduser()
    atomic_write_text(path, manifest[MANIFEST_COLUMNS].to_csv(index=False))
    return path


def read_manifest(path: str | os.PathLike, table: pd.DataFrame) -> pd.DataFrame:
    """Read a manifest CSV and check it against the dataset's sample table."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ThreecadError(f"split manifest {path} does not exist; create it with `threecad split`")
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ThreecadError(f"split manifest {path} is not a readable CSV ({exc})") from exc
    return validate_manifest(manifest, table, source=str(path))


def validate_manifest(manifest: pd.DataFrame, table: pd.DataFrame,
                      source: str = "split manifest") -> pd.DataFrame:
    """Check a manifest; return it with categories normalised to abbreviations.

    Refused: missing columns, unknown categories, subsets other than train/val, images not
    in the dataset, test images (the official test set never enters a split), an image
    filed under another category, and repeated images.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ThreecadError(f"{source}: missing column(s) {', '.join(missing)}; "
                            f"a manifest has columns {', '.join(MANIFEST_COLUMNS)}")
    manifest = manifest[MANIFEST_COLUMNS].astype(str).reset_index(drop=True)
    available = table_categories(table)
    resolved: dict[str, str] = {}
    rels = relative_images(table)
    where = dict(zip(rels, zip(table["split"], table["category"])))
    for i, (cat, image, subset) in enumerate(manifest.itertuples(index=False)):
        line = f"{source} line {i + 2}"
        if cat not in resolved:
            try:
                resolved[cat] = resolve_category(cat, available).abbreviation
            except ThreecadError as exc:
                raise ThreecadError(f"{line}: {exc}") from None
        if subset not in SUBSETS:
            raise ThreecadError(f"{line}: subset '{subset}' is not one of {', '.join(SUBSETS)}")
        found = where.get(image)
        if found is None:
            if "/test/" in f"/{image}":
                raise ThreecadError(f"{line}: lists test image {image}; the official test set "
                                    "never enters a split")
            raise ThreecadError(f"{line}: image {image} is not in the dataset (moved or deleted?); "
                                "re-run `threecad split`")
        split, owner = found
        if split != "train":
            raise ThreecadError(f"{line}: lists test image {image}; the official test set "
                                "never enters a split")
        if owner != resolved[cat]:
            raise ThreecadError(f"{line}: image {image} belongs to category {owner}, not {resolved[cat]}")
    manifest["category"] = manifest["category"].map(resolved)
    repeated = manifest["image"][manifest["image"].duplicated()]
    if len(repeated):
        raise ThreecadError(f"{source}: image {repeated.iloc[0]} is listed more than once")
    return manifest


def select_rows(table: pd.DataFrame, manifest: pd.DataFrame, category: str, subset: str,
                source: str = "split manifest") -> pd.DataFrame:
    """The table rows of one category that the (validated) manifest puts in `subset`."""
    chosen = manifest[manifest["category"] == category]
    if chosen.empty:
        raise ThreecadError(f"{source} has no rows for category {category}; "
                            f"re-run `threecad split` including it")
    wanted = set(chosen.loc[chosen["subset"] == subset, "image"])
    if not wanted:
        raise ThreecadError(f"{source} has no '{subset}' images for category {category}"
                            + ("; re-run `threecad split` with --val-fraction above 0" if subset == "val" else ""))
    rows = table[(table["category"] == category) & (table["split"] == "train")]
    return rows[relative_images(rows).isin(wanted)]


def summarize(manifest: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per category: official training images, and how many the manifest puts in train / val."""
    counts = (manifest.groupby(["category", "subset"]).size().unstack(fill_value=0)
              .reindex(columns=list(SUBSETS), fill_value=0))
    official = table[table["split"] == "train"].groupby("category").size()
    order = [c for c in pd.unique(manifest["category"])]
    out = pd.DataFrame({"category": order,
                        "official_train": [int(official.get(c, 0)) for c in order],
                        "train": [int(counts.loc[c, "train"]) for c in order],
                        "val": [int(counts.loc[c, "val"]) for c in order]})
    return out
