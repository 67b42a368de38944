"""What an installed 3CAD or MVTec AD root may hold: the requested dataset's own categories,
and in them only the layout's files. Everything else is extra, left out and listed.

A category folder holds `train/good/<image>`, `test/<type>/<image>` and
`ground_truth/<type>/<mask image>` (and the synthetic set's `defect_regions.csv`, which
`stats` reads); the root beside the categories holds only threecad's own records (the file
manifest, the synthetic marker). Hidden entries (`.DS_Store`, `._000.png`), readmes,
licences, notes, stray folders: extra, at any depth. This is stricter than the layout scan,
which ignores hidden files, text files beside the categories and whatever sits in a category
beside train/, test/ and ground_truth/.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from threecad.catalog import MVTEC, THREECAD, category_for_folder
from threecad.errors import DatasetError
from threecad.layout import IMAGE_SUFFIXES, SYNTHETIC_MARKER, is_category_dir
from threecad.manifest import MANIFEST_NAME
from threecad.stats.sidecar import SIDECAR_NAME

_RECORDS = {MANIFEST_NAME, SYNTHETIC_MARKER}  # beside the categories
_SPLITS = ("train", "test", "ground_truth")
_NAMES = {"3cad": "3CAD", "mvtec": "MVTec AD"}
_CATALOG = {"3cad": THREECAD, "mvtec": MVTEC}
_OWNER = {"3cad": "3CAD's", "mvtec": "MVTec AD's", "custom": "in neither catalog"}


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _visible_dir(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.is_dir()


def category_folders(dataset_dir: Path) -> list[Path]:
    """The folders that the layout scan reads as categories (train/ or test/ inside)."""
    return [Path(e.path) for e in _entries(dataset_dir) if _visible_dir(e) and is_category_dir(Path(e.path))]


def check_categories(dataset: str, dataset_dir: Path) -> None:
    """Refuse a download whose categories are not all the requested dataset's own (3CAD
    installed as MVTec AD, or the reverse), naming what was found."""
    wrong: dict[str, list[str]] = defaultdict(list)
    for folder in category_folders(dataset_dir):
        owner = category_for_folder(folder.name).dataset
        if owner != dataset:
            wrong[owner].append(folder.name)
    if not wrong:
        return
    name = _NAMES[dataset]
    found = "; ".join(f"{', '.join(folders)} ({_OWNER[owner]})" for owner, folders in sorted(wrong.items()))
    others = [f"--dataset {d}" for d in _NAMES if d in wrong]
    hint = (f"use {' or '.join(others)} for that dataset" if others
            else "your own data needs no download: pass its folder as --root")
    raise DatasetError(f"--dataset {dataset}, but the download holds categories that are not {name}'s: {found}; "
                       f"{name}'s are {', '.join(c.folder for c in _CATALOG[dataset])}; {hint}; nothing installed")


def extra_entries(dataset_dir: Path) -> list[Path]:
    """Every file or folder under `dataset_dir` that is not part of the dataset (a folder is
    listed once, not what it holds), in path order."""
    extra: list[Path] = []
    for entry in _entries(dataset_dir):
        path = Path(entry.path)
        if entry.name in _RECORDS and entry.is_file():
            continue
        if _visible_dir(entry) and is_category_dir(path):
            extra.extend(_category_extras(path))
        else:
            extra.append(path)
    return sorted(extra, key=lambda p: p.relative_to(dataset_dir).as_posix())


def _category_extras(category: Path) -> list[Path]:
    extra: list[Path] = []
    for entry in _entries(category):
        if entry.name == SIDECAR_NAME and entry.is_file():
            continue
        if not (_visible_dir(entry) and entry.name in _SPLITS):
            extra.append(Path(entry.path))
            continue
        for sub in _entries(Path(entry.path)):
            if not _visible_dir(sub) or (entry.name == "train" and sub.name != "good"):
                extra.append(Path(sub.path))
                continue
            extra.extend(Path(f.path) for f in _entries(Path(sub.path)) if not _is_image_file(f))
    return extra


def _is_image_file(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
