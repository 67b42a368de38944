"""`ThreeCAD`: the torch Dataset over one category and split of a sample table.

Images are resized to a square without keeping the aspect ratio (as the 3CAD release
does), bilinearly with antialiasing; masks with nearest neighbour, so they stay binary.
Grey images are expanded to RGB. With the cache on (the default), the decoded, resized
uint8 samples are built once into a memory-mapped file (see threecad.cache) and every
later pass reads no PNG; without it every access decodes. Both paths run the same
preprocessing, so they return identical tensors.

The cache is keyed on the bytes of every image and mask (threecad.cache.content_key), read
at each construction: a file rewritten in place, same size and mtime, is never served
stale. It is built eagerly at construction, in parallel threads, with a progress bar:
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

from threecad.cache import CachedArray, cache_file, content_key, ensure_cache, resolve_cache_dir
from threecad.catalog import Category, resolve_category
from threecad.errors import DatasetError, ThreecadError
from threecad.fsutil import open_regular
from threecad.layout import require_readable, scan_root
from threecad.masks import MaskError, read_mask
from threecad.preprocess import Preprocess
from threecad.splits import read_manifest, select_rows, table_categories, validate_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Part of every cache key: bump it when load_sample changes, so old caches are not reused.
# 2: masks read by threecad.masks (colour masks by their largest channel, size checked).
# 3: a sample is the image and the mask flattened (the mask may be at another size).
PREPROCESS_VERSION = 3


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB as every method reads it (16-bit grey keeps its top 8 bits)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits
        arr = np.asarray(im).astype(np.uint32)
        scale = 256 if arr.max(initial=0) > 255 else 1
        im = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, pre: Preprocess) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, size, size) uint8 through the method's pipeline, and the image's own (height, width)."""
    try:
        with open_regular(path) as fh, Image.open(fh) as im:
            hw = (im.height, im.width)
            image = pre.image(to_rgb(im))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image {path} ({exc}); run `threecad verify`") from exc
    return image, hw


def load_mask(path: str | os.PathLike | None, pre: Preprocess, size: int,
              image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask -> (1, size, size) uint8 0/1 in the image's geometry; zeros when there is none.

    Read by threecad.masks (the rule verify and stats use); `image_size` (height, width) of
    its image, when given, must be the mask's size, else a MaskError (a ThreecadError).
    """
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return np.zeros((1, size, size), np.uint8)
    try:
        mask = read_mask(path, expected_size=image_size)
    except MaskError as exc:
        raise MaskError(f"{exc}; run `threecad verify`", kind=exc.kind) from None
    return pre.mask(mask, size)


def load_sample(image_path: str, mask_path: str | None, pre: Preprocess | int,
                mask_size: int | None = None) -> np.ndarray:
    """Image and mask flattened into one uint8 vector (3*S*S + M*M): what the cache stores
    per sample. `pre` is the pipeline (an int: the default one at that size)."""
    pre = pre if isinstance(pre, Preprocess) else Preprocess(size=int(pre))
    image, hw = load_image(image_path, pre)
    mask = load_mask(mask_path, pre, mask_size or pre.size, image_size=hw)
    return np.concatenate([image.ravel(), mask.ravel()])


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
                 manifest: str | os.PathLike | pd.DataFrame | None = None, preprocess: Preprocess | None = None,
                 mask_size: int | None = None):
        if split not in SPLITS:
            raise ThreecadError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
        if not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ThreecadError(f"image_size must be a positive integer, got {image_size!r}")
        if preprocess is not None and preprocess.size != image_size:
            raise ThreecadError(f"preprocess size {preprocess.size} is not image_size {image_size}")
        if mask_size is not None and (not isinstance(mask_size, (int, np.integer)) or mask_size < 1):
            raise ThreecadError(f"mask_size must be a positive integer, got {mask_size!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = int(image_size)
        self.mask_size = int(mask_size or image_size)
        self.preprocess = preprocess or Preprocess(size=self.image_size)
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
        if len(missing) and not self.labels_only:
            raise DatasetError(f"{len(missing)} defective image(s) of {self.category} have no mask, "
                               f"e.g. {missing['image_path'].iloc[0]}; run `threecad verify`")

    @property
    def labels_only(self) -> bool:
        """A category of one's own without ground_truth/: image-level labels only (threecad.layout),
        so its defective images have no masks and pixel metrics are not available."""
        gt = Path(self.root) / self.category.folder / "ground_truth"
        return self.category.dataset == "custom" and not gt.exists()

    def _build_cache(self, cache_dir: Path) -> None:
        pipeline = "-".join(filter(None, (self.preprocess.key(),
                                          f"mask{self.mask_size}" if self.mask_size != self.image_size else "")))
        files = [p for pair in zip(self._paths, self._masks) for p in pair]
        fp = "-".join(filter(None, (f"v{PREPROCESS_VERSION}", pipeline, content_key(files))))
        path = cache_file(cache_dir, fp, self.category.abbreviation, self.split, self.image_size)
        load = functools.partial(_load_index, self._paths, self._masks, self.preprocess, self.mask_size)
        s, m = self.image_size, self.mask_size
        self.cache_path = ensure_cache(path, len(self), (3 * s * s + m * m,), load,
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
            sample = load_sample(self._paths[index], self._masks[index], self.preprocess, self.mask_size)
        s, m = self.image_size, self.mask_size
        image = torch.from_numpy(sample[:3 * s * s].reshape(3, s, s)).float().div_(255.0)
        mask = torch.from_numpy(sample[3 * s * s:].reshape(1, m, m)).float()
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "mask": mask, "label": self._labels[index],
                "defect_type": self._types[index], "path": self._paths[index]}

    def __repr__(self) -> str:
        cache = f", cache={self.cache_path}" if self.cache_path else ""
        masks = f", mask_size={self.mask_size}" if self.mask_size != self.image_size else ""
        return (f"ThreeCAD(root={self.root}, category={self.category}, split={self.split}, "
                f"image_size={self.image_size}{masks}, n={len(self)}{cache})")


def _load_index(paths: list[str], masks: list[str | None], pre: Preprocess, mask_size: int,
                index: int) -> np.ndarray:
    return load_sample(paths[index], masks[index], pre, mask_size)
