"""What to draw: per category the images, their sizes and, for defective ones, the regions.

The plan follows the paper's Table 1. At `scale` 1.0 the counts (train, test good, test
defect), the number of defect types, the height and width ranges and the NE (regions per
defective image) and TE (types per defective image) ranges are reproduced exactly, with
both ends of every range reached. Smaller scales keep every category and every defect
type: at least 2 train images, 1 test-good image and one defective image per type.

Below scale 1.0 a floor of training images per category (`min_train`, 16 by default in
`generate`) keeps the smallest categories learnable: Copper_Stator has 4 training images
at scale 0.01. A floor of good test images (`min_test_good`, 8 by default in `generate`)
keeps an image AUROC meaningful: at scale 0.01 some categories have 2 good test images.
The extra images are appended after the scaled ones of their split, with their sizes
drawn from a stream of their own per floor, so every image the scale alone would give is
the same, byte for byte; the floors never apply at scale 1.0, which stays Table 1 exactly.

A defective image is filed under its dominant type: the type with the most regions. The
plan always gives that type strictly more regions than any other type in the image, so
the folder is never a tie. The plan is drawn from (seed, category) alone, and each image
from (seed, category, split, index), so it does not matter which process renders it.

Every image of a category shows the same product (generator version 2): its layout (the
part's geometry and material, see appearance.py) comes from the stream (seed, category,
_LAYOUT_STREAM), which `ImageJob.layout_stream` names; an image's own stream only moves,
lights and textures it a little. As in 3CAD, where a category is one product in one pose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threecad.catalog import THREECAD, Category, table1
from threecad.synth.kinds import DEFECT_TYPES

SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2}
_PLAN_STREAM = 99  # keeps the plan's random stream apart from the images'
_FLOOR_STREAM = 98  # sizes of the training images added by the floor, apart from the plan's
_LAYOUT_STREAM = 97  # the category's layout (the product every image shows), apart from both
_TEST_FLOOR_STREAM = 96  # sizes of the good test images added by their floor


@dataclass(frozen=True)
class ImageJob:
    """One image to render and where it goes."""

    category: str  # abbreviation
    folder: str  # category folder name
    split: str  # "train" or "test"
    label: str  # "good" or the dominant defect type
    name: str  # file name, the same for the image and its mask
    seed: tuple[int, int, int, int]  # (seed, category index, split code, index)
    height: int
    width: int
    regions: tuple[tuple[str, int], ...] = ()  # (defect type, regions of that type), dominant first

    @property
    def relpath(self) -> str:
        """Image path relative to the category folder (posix)."""
        return f"{self.split}/{self.label}/{self.name}"

    @property
    def mask_relpath(self) -> str:
        return f"ground_truth/{self.label}/{self.name}"

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def layout_stream(self) -> tuple[int, int, int]:
        """The random stream of the category's layout: the same for all its images."""
        return (self.seed[0], self.seed[1], _LAYOUT_STREAM)


def scaled_count(n: int, scale: float, minimum: int) -> int:
    """round(n * scale), half up, but at least `minimum`."""
    return max(minimum, int(math.floor(n * scale + 0.5)))


def _category_index(cat: Category) -> int:
    return [c.abbreviation for c in THREECAD].index(cat.abbreviation)


def _draw_sizes(rng: np.random.Generator, row, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Image sizes drawn uniformly inside Table 1's ranges."""
    hmin, hmax, wmin, wmax = (int(row[k]) for k in ("height_min", "height_max", "width_min", "width_max"))
    h = rng.integers(hmin, hmax + 1, n)
    if (hmin, hmax) == (wmin, wmax):  # square images (camera cover, stators)
        return h, h.copy()
    return h, rng.integers(wmin, wmax + 1, n)


def _sizes(rng: np.random.Generator, row, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Image sizes inside Table 1's ranges, with both ends of each range present."""
    hmin, hmax, wmin, wmax = (int(row[k]) for k in ("height_min", "height_max", "width_min", "width_max"))
    h, w = _draw_sizes(rng, row, n)
    if n >= 2:
        i, j = rng.choice(n, 2, replace=False)
        h[i], w[i], h[j], w[j] = hmin, wmin, hmax, wmax
    return h, w


def _cap(h: int, w: int, max_size: int | None) -> tuple[int, int]:
    if max_size is None or max(h, w) <= max_size:
        return h, w
    f = max_size / max(h, w)
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def _region_counts(rng: np.random.Generator, ne: int, te: int) -> list[int]:
    """Split `ne` regions over `te` types, the first (dominant) strictly ahead of the rest."""
    counts = [ne - (te - 1)] + [1] * (te - 1)
    for _ in range(int(rng.integers(0, ne + 1))):
        k = int(rng.integers(1, te)) if te > 1 else 0
        if k and counts[0] - 1 > max(max(counts[1:]), counts[k] + 1):
            counts[0] -= 1
            counts[k] += 1
    return counts


def _defect_regions(rng: np.random.Generator, abbr: str, n: int, row) -> list[tuple[tuple[str, int], ...]]:
    """For each of `n` defective images: (type, count) pairs, the dominant type first."""
    types = DEFECT_TYPES[abbr]
    k = len(types)
    ne_max, te_max = int(row["ne_max"]), int(row["te_max"])
    weights = 0.5 / k + 0.5 * rng.dirichlet(np.full(k, 1.5))
    # every type leads at least once (n >= k always), the rest follow the category's mix
    pool = np.concatenate([rng.permutation(k), rng.choice(k, max(0, n - k), p=weights)])
    primaries = [int(p) for p in rng.permutation(pool)[:n]]
    mean_extra = (ne_max - 1) / 5
    ne = 1 + np.minimum(ne_max - 1, rng.geometric(1 / (1 + mean_extra), n) - 1)
    te = np.ones(n, int)
    if te_max > 1:
        for i in range(n):
            if ne[i] >= 3 and rng.random() < 0.35:
                te[i] = int(rng.integers(2, min(te_max, ne[i] - 1) + 1))
    # both ends of the NE and TE ranges, on distinct images where there are enough
    forced = rng.choice(n, min(3, n), replace=False)
    if len(forced) >= 1:
        ne[forced[0]] = ne_max
        te[forced[0]] = min(te[forced[0]], max(1, ne_max - 1))
    if len(forced) >= 2:
        ne[forced[1]], te[forced[1]] = 1, 1
    if len(forced) >= 3 and te_max > 1:
        te[forced[2]] = te_max
        ne[forced[2]] = max(int(ne[forced[2]]), te_max + 1)
    plans = []
    for i in range(n):
        p = primaries[i]
        others = [j for j in range(k) if j != p]
        chosen = [p]
        if te[i] > 1:
            w = weights[others] / weights[others].sum()
            chosen += [int(j) for j in rng.choice(others, int(te[i]) - 1, replace=False, p=w)]
        counts = _region_counts(rng, int(ne[i]), int(te[i]))
        plans.append(tuple((types[j], c) for j, c in zip(chosen, counts)))
    return plans


def train_floor(n_train: int, scale: float, min_train: int) -> int:
    """Training images the floor adds to a category that has `n_train` at `scale` (0 at 1.0)."""
    return max(0, min_train - n_train) if scale < 1.0 else 0


def test_good_floor(n_good: int, scale: float, min_test_good: int) -> int:
    """Good test images the floor adds to a category that has `n_good` at `scale` (0 at 1.0)."""
    return max(0, min_test_good - n_good) if scale < 1.0 else 0


def _append(heights: np.ndarray, widths: np.ndarray, at: int,
            extra: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The sizes with `extra` (heights, widths) inserted before position `at`."""
    return (np.concatenate([heights[:at], extra[0], heights[at:]]),
            np.concatenate([widths[:at], extra[1], widths[at:]]))


def plan_category(cat: Category, scale: float, seed: int, max_size: int | None,
                  min_train: int = 0, min_test_good: int = 0) -> list[ImageJob]:
    """Every image of one category, in a fixed order: train, test good, test defective.

    Below scale 1.0 the category gets at least `min_train` training images and
    `min_test_good` good test images (see the module docstring); the images the scale
    alone gives are unchanged by the floors.
    """
    row = table1().loc[cat.abbreviation]
    ci = _category_index(cat)
    rng = np.random.default_rng(np.random.SeedSequence([seed, ci, _PLAN_STREAM]))
    n_types = len(DEFECT_TYPES[cat.abbreviation])
    n_train = scaled_count(int(row["train_good"]), scale, 2)
    n_good = scaled_count(int(row["test_good"]), scale, 1)
    n_def = scaled_count(int(row["test_defect"]), scale, n_types)
    heights, widths = _sizes(rng, row, n_train + n_good + n_def)
    regions = _defect_regions(rng, cat.abbreviation, n_def, row)
    n_extra = train_floor(n_train, scale, min_train)
    n_extra_good = test_good_floor(n_good, scale, min_test_good)
    if n_extra_good:  # first, at the later position, so that the train floor's index holds
        floor_rng = np.random.default_rng(np.random.SeedSequence([seed, ci, _TEST_FLOOR_STREAM]))
        extra = _draw_sizes(floor_rng, row, n_extra_good)
        heights, widths = _append(heights, widths, n_train + n_good, extra)
    if n_extra:
        floor_rng = np.random.default_rng(np.random.SeedSequence([seed, ci, _FLOOR_STREAM]))
        heights, widths = _append(heights, widths, n_train, _draw_sizes(floor_rng, row, n_extra))
    jobs: list[ImageJob] = []
    counters: dict[str, int] = {}
    k = 0
    for split, n in (("train", n_train + n_extra), ("test_good", n_good + n_extra_good),
                     ("test_defect", n_def)):
        for i in range(n):
            h, w = _cap(int(heights[k]), int(widths[k]), max_size)
            k += 1
            regs = regions[i] if split == "test_defect" else ()
            label = regs[0][0] if regs else "good"
            split_dir = "train" if split == "train" else "test"
            folder_key = f"{split_dir}/{label}"
            number = counters.get(folder_key, 0)
            counters[folder_key] = number + 1
            jobs.append(ImageJob(cat.abbreviation, cat.folder, split_dir, label, f"{number:06d}.png",
                                 (seed, ci, SPLIT_CODES[split], i), h, w, regs))
    return jobs
