"""`ThreeCAD`: the torch Dataset over one category and split of a sample table.

Images are resized to a square without keeping the aspect ratio (as the 3CAD release
does), bilinearly with antialiasing; masks with nearest neighbour, so they stay binary.
Grey images are expanded to RGB. With the cache on (the default), the decoded, resized
uint8 samples are built once into a memory-mapped file (see threecad.cache) and every
later pass reads no PNG; without it every access decodes. Both paths run the same
preprocessing, so they return identical tensors.

The cache is built eagerly at construction, in parallel threads, with a progress bar:
the first epoch would decode every image anyway, an eager build uses every core even
with `num_workers=0`, and a cache that is either complete or absent needs no bookkeeping
shared between DataLoader workers.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from threecad.cache import CachedArray, cache_file, ensure_cache, resolve_cache_dir
from threecad.catalog import Category, resolve_category
from threecad.errors import DatasetError, ThreecadError
from threecad.layout import fingerprint, require_readable, scan_root
from threecad.masks import MaskError, read_mask
from threecad.splits import read_manifest, select_rows, table_categories, validate_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Part of every cache key: bump it when load_sample changes, so old caches are not reused.
# 2: masks read by threecad.masks (colour masks by their largest channel, size checked).
PREPROCESS_VERSION = 2


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits
        arr = np.asarray(im).astype(np.uint32)
        scale = 256 if arr.max(initial=0) > 255 else 1
        im = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def _load_image(path: str | os.PathLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, size, size) uint8 RGB and the image's own (height, width)."""
    try:
        with Image.open(path) as im:
            hw = (im.height, im.width)
            rgb = _to_rgb(im).resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image {path} ({exc}); run `threecad verify`") from exc
    return np.asarray(rgb).transpose(2, 0, 1), hw


def load_mask(path: str | os.PathLike | None, size: int,
              image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask -> (1, size, size) uint8 0/1, nearest; all zeros when there is none.

    Read by threecad.masks (the rule verify and stats use); `image_size` (height, width) of
    its image, when given, must be the mask's size, else a MaskError (a ThreecadError).
    """
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return np.zeros((1, size, size), np.uint8)
    try:
        mask = read_mask(path, expected_size=image_size)
    except MaskError as exc:
        raise MaskError(f"{exc}; run `threecad verify`", kind=exc.kind) from None
    resized = Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized)[None]


def load_sample(image_path: str, mask_path: str | None, size: int) -> np.ndarray:
    """Image and mask stacked as (4, size, size) uint8: what the cache stores per sample."""
    image, hw = _load_image(image_path, size)
    return np.concatenate([image, load_mask(mask_path, size, image_size=hw)])


class ThreeCAD(Dataset):
    """One category and split of a 3CAD-layout (or MVTec AD) dataset.

    Items are dicts: `image` float32 (3,S,S) in [0,1], `mask` float32 (1,S,S) 0/1,
    `label` int, `defect_type` str, `path` str. `transform` applies to the image tensor.
    `split="val"` and a restricted `split="train"` come from a manifest written by
    `threecad split`; `split="test"` is always the official test set.
    """

    def __init__(self, root: str | os.PathLike, category: str | Category, split: str = "train",
                 image_size: int = 256, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cache: bool | str | os.PathLike = True, table: pd.DataFrame | None = None,
                 manifest: str | os.PathLike | pd.DataFrame | None = None):
        if split not in SPLITS:
            raise ThreecadError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
        if not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ThreecadError(f"image_size must be a positive integer, got {image_size!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = int(image_size)
        self.transform = transform
        scan = None
        if table is None:
            scan = scan_root(self.root)
            table = scan.table
        name = category.abbreviation if isinstance(category, Category) else str(category)
        self.category = resolve_category(name, table_categories(table))
        if scan is not None:
            require_readable(scan, [self.category])  # a skipped folder would shrink the split
        self.samples = self._select(table, manifest).reset_index(drop=True)
        self._check_masks()
        self._paths = self.samples["image_path"].astype(str).tolist()
        self._masks = [m if isinstance(m, str) else None for m in self.samples["mask_path"]]
        self._labels = self.samples["label"].astype(int).tolist()
        self._types = self.samples["defect_type"].astype(str).tolist()
        self.cache_path: Path | None = None
        self._cached: CachedArray | None = None
        cache_dir = resolve_cache_dir(cache)
        if cache_dir is not None:
            self._build_cache(cache_dir)

    def _select(self, table: pd.DataFrame, manifest) -> pd.DataFrame:
        cat = self.category.abbreviation
        rows = table[table["category"] == cat]
        if self.split == "test":
            rows = rows[rows["split"] == "test"]
        elif manifest is None:
            if self.split == "val":
                raise ThreecadError(
                    f"split='val' needs a split manifest: create one with `threecad split --root {self.root}` "
                    "and pass manifest=<root>/split.csv (threecad.splits.find_manifest finds it)")
            rows = rows[rows["split"] == "train"]
        else:
            if isinstance(manifest, pd.DataFrame):
                source = "split manifest"
                manifest = validate_manifest(manifest, table)
            else:
                source = str(manifest)
                manifest = read_manifest(manifest, table)
            rows = select_rows(table, manifest, cat, self.split, source=source)
        if rows.empty:
            raise DatasetError(f"category {cat} has no {self.split} images under {self.root}; "
                               "run `threecad verify`")
        return rows

    def _check_masks(self) -> None:
        missing = self.samples[(self.samples["label"] == 1) & self.samples["mask_path"].isna()]
        if len(missing):
            raise DatasetError(f"{len(missing)} defective image(s) of {self.category} have no mask, "
                               f"e.g. {missing['image_path'].iloc[0]}; run `threecad verify`")

    def _build_cache(self, cache_dir: Path) -> None:
        fp = f"v{PREPROCESS_VERSION}-{fingerprint(self.samples, with_mtime=True)}"
        path = cache_file(cache_dir, fp, self.category.abbreviation, self.split, self.image_size)
        load = functools.partial(_load_index, self._paths, self._masks, self.image_size)
        s = self.image_size
        self.cache_path = ensure_cache(path, len(self), (4, s, s), load,
                                       desc=f"caching {self.category} {self.split} {s}px")
        self._cached = CachedArray(self.cache_path)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if self._cached is not None:
            sample = self._cached[index]
        else:
            sample = load_sample(self._paths[index], self._masks[index], self.image_size)
        image = torch.from_numpy(sample[:3]).float().div_(255.0)
        mask = torch.from_numpy(sample[3:]).float()
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "mask": mask, "label": self._labels[index],
                "defect_type": self._types[index], "path": self._paths[index]}

    def __repr__(self) -> str:
        cache = f", cache={self.cache_path}" if self.cache_path else ""
        return (f"ThreeCAD(root={self.root}, category={self.category}, split={self.split}, "
                f"image_size={self.image_size}, n={len(self)}{cache})")


def _load_index(paths: list[str], masks: list[str | None], size: int, index: int) -> np.ndarray:
    return load_sample(paths[index], masks[index], size)


class EvalView(Dataset):
    """A test split as the evaluation uses it: the image at the model's input size, the mask
    at the evaluation size.

    Why: a model must see test images resized from the originals the way its training images
    were (one antialiased resize to `image_size`), while the metrics are computed on masks at
    `eval_size`. Resizing an `eval_size` image once more to the model's size would feed the
    model a resampled copy (blurred when smaller, upsampled when larger: a 288 px model would
    see a 256 px image blown up) that its training never saw.
    """

    def __init__(self, model_view: ThreeCAD, eval_view: ThreeCAD):
        if model_view._paths != eval_view._paths:
            raise ThreecadError("EvalView: the two views must list the same images in the same order")
        self.model_view, self.eval_view = model_view, eval_view
        self.image_size, self.mask_size = model_view.image_size, eval_view.image_size
        self.category, self.split = eval_view.category, eval_view.split

    def __len__(self) -> int:
        return len(self.eval_view)

    def __getitem__(self, index: int) -> dict:
        item = self.eval_view[index]
        item["image"] = self.model_view[index]["image"]
        return item

    def __repr__(self) -> str:
        return (f"EvalView(category={self.category}, image_size={self.image_size}, "
                f"mask_size={self.mask_size}, n={len(self)})")
