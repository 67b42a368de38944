"""Layout scan: a dataset root on disk -> the sample table.

The sample table (a pandas DataFrame) is the single description of a dataset on disk;
everything downstream (Dataset, stats, verify, splits) reads it and nothing else walks
the folders. The layout is MVTec-like; 3CAD masks carry the image's file name, MVTec AD
masks carry `<stem>_mask.png`. The naming is detected per category.

Columns: category (abbreviation), folder, dataset, split, label, defect_type,
image_path, mask_path (None for good images), height, width (from the file header,
<NA> when the header is unreadable).

Categories come in the catalog's order (3CAD: ACC, AI, AMF, ANMF, ANI, AP, CS, IS; then
MVTec AD's; then custom folders by name), whatever the folders' alphabetical order, so
every command lists them the same way. Mask headers are read too (a few bytes each): a
mask whose size is not its image's is an error here already, so that `layout_errors`
(what bench refuses to run on) holds every problem that would change results. A category
without training or test images, and a known category's folder that is empty, are errors
too (the Dataset refuses the first two on its own). Only regular files are read: a FIFO
named `x.png` would block a reader forever.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from threecad.catalog import KNOWN, Category, category_for_folder
from threecad.errors import DatasetError
from threecad.fsutil import NotRegularFile, open_regular, special_kind

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# Files that may sit beside the category folders without being a problem.
METADATA_SUFFIXES = {".txt", ".md", ".json", ".csv", ".sha256", ".yaml", ".yml", ".lock"}
COLUMNS = ["category", "folder", "dataset", "split", "label", "defect_type",
           "image_path", "mask_path", "height", "width"]
GOOD = "good"
# What `threecad synth` leaves at the root of a tree it made (verify, stats and bench read it).
SYNTHETIC_MARKER = "synthetic.json"
# Problems that change what a benchmark or a statistic would compute: a root with any of
# them is refused by bench (see layout_errors). The other errors (orphan masks, a mask
# beside a good image) are untidy but change no number.
RESULT_CHANGING = frozenset({"missing_mask", "unreadable_image", "unreadable_mask", "mask_size",
                             "unreadable_folder"})


@dataclass(frozen=True)
class Problem:
    """Something odd found on disk. `severity` is "error" or "warning"."""

    severity: str
    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.kind}: {self.path}: {self.message}"


@dataclass
class Scan:
    """The result of scanning a root: the sample table and what did not fit the layout."""

    root: Path
    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    mask_naming: dict[str, str] = field(default_factory=dict)  # category -> "same" | "_mask"
    categories: list[Category] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        """"3cad", "mvtec", "custom" or "mixed", from the categories found."""
        kinds = {c.dataset for c in self.categories}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "empty")


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str]:
    """((height, width), "") from the file header without decoding pixels, or (None, why)."""
    try:
        with open_regular(path) as fh:
            head = fh.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return (int(height), int(width)), ""
            from PIL import Image  # lazy: only for non-PNG files; PIL reads the header only

            fh.seek(0)
            with Image.open(fh) as im:
                return (im.height, im.width), ""
    except NotRegularFile as exc:
        return None, f"{exc.strerror}; not read"
    except OSError as exc:
        if exc.errno is not None and exc.strerror:
            return None, f"cannot read it: {exc.strerror.lower()}"
        return None, "header cannot be read; not a valid image"
    except Exception:  # noqa: BLE001 - any unreadable header is reported, not raised
        return None, "header cannot be read; not a valid image"


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) from the file header without decoding pixels; None if unreadable."""
    return read_header(path)[0]


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _listdir(path: Path, problems: list[Problem] | None = None) -> list[os.DirEntry]:
    """Visible entries of a folder, by name; a folder that cannot be read is an error
    problem (when `problems` is given) and lists as empty."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        if problems is not None:
            problems.append(Problem("error", "unreadable_folder", str(path),
                                    f"cannot read this folder: {_reason(exc)}; its files are left out"))
        return []


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if isinstance(exc.strerror, str) else str(exc)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder on the way cannot be searched: reported by _listdir
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _detect_mask_naming(gt_dir: Path) -> str:
    """"_mask" when the ground-truth files end in `_mask` (MVTec AD), else "same" (3CAD)."""
    names = [e.name for d in _listdir(gt_dir) if _is_dir(d) for e in _listdir(Path(d.path)) if _is_image(e.name)]
    if names and sum(Path(n).stem.endswith("_mask") for n in names) > len(names) / 2:
        return "_mask"
    return "same"


def _mask_name(image_name: str, naming: str) -> str:
    stem = Path(image_name).stem
    return f"{stem}_mask.png" if naming == "_mask" else image_name


def is_category_dir(path: Path) -> bool:
    """A folder with train/ or test/ inside; one that cannot be looked into counts as a
    category, so that it is reported as unreadable rather than ignored."""
    try:
        return (path / "train").is_dir() or (path / "test").is_dir()
    except OSError:
        return True


def catalog_order(categories: list[Category]) -> list[Category]:
    """Categories in the catalog's order (3CAD's, then MVTec AD's), custom ones last by name."""
    return sorted(categories, key=lambda c: (KNOWN.index(c), "") if c in KNOWN else (len(KNOWN), c.folder))


def layout_errors(scan: "Scan", kinds: frozenset[str] | None = RESULT_CHANGING) -> list[Problem]:
    """The scan's error problems that change results (missing, unreadable or wrongly sized
    masks, unreadable images or folders); `kinds=None` gives every error.

    This is what a benchmark must refuse to run on: each would silently change a metric.
    """
    return [p for p in scan.problems if p.severity == "error" and (kinds is None or p.kind in kinds)]


def require_readable(scan: "Scan", categories: list[Category] | None = None) -> None:
    """Raise DatasetError when a folder of the root (of `categories`, when given) could not
    be read: a command that would otherwise work on part of the data says so instead."""
    folders = None if categories is None else {c.folder.lower() for c in categories} | {
        c.abbreviation.lower() for c in categories}
    for p in scan.problems:
        if p.kind != "unreadable_folder":
            continue
        rel = Path(p.path).relative_to(scan.root).parts if Path(p.path) != scan.root else ()
        if folders is None or not rel or rel[0].lower() in folders:
            raise DatasetError(f"cannot read {p.path}: {p.message.split(': ', 1)[-1].split(';')[0]}; "
                               "fix its permissions (or leave its category out with --category)")


def scan_root(root: str | os.PathLike) -> Scan:
    """Scan a dataset root into a sample table; odd files are reported, not raised.

    Raises DatasetError only when the root is missing or holds no category folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist; create it with "
                           f"`threecad download` or `threecad synth --out {root}`, or pass --root")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    try:
        with os.scandir(root):
            pass
    except OSError as exc:
        raise DatasetError(f"cannot read dataset root {root}: {_reason(exc)}") from None
    rows: list[dict] = []
    problems: list[Problem] = []
    naming: dict[str, str] = {}
    categories: list[Category] = []
    for entry in _listdir(root, problems):
        path = Path(entry.path)
        if not _is_dir(entry):
            if Path(entry.name).suffix.lower() not in METADATA_SUFFIXES:
                problems.append(Problem("warning", "unexpected_file", str(path),
                                        "file beside the category folders is ignored"))
            continue
        if not is_category_dir(path):
            known = category_for_folder(entry.name)
            if known in KNOWN:  # an emptied or half-copied category, not a stray folder
                problems.append(Problem("error", "empty_category", str(path),
                                        f"the {known.abbreviation} folder has no train/ or test/ inside; "
                                        "its images are missing"))
            else:
                problems.append(Problem("warning", "unknown_folder", str(path),
                                        "no train/ or test/ inside; not a category, ignored"))
            continue
        cat = category_for_folder(entry.name)
        categories.append(cat)
        naming[cat.abbreviation] = _scan_category(path, cat, rows, problems)
    if not categories:
        raise DatasetError(f"no category folders (with train/ or test/ inside) in {root}; "
                           "is --root pointing at the folder that holds the categories?")
    categories = catalog_order(categories)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["label"] = table["label"].astype("int64")
    table["height"] = table["height"].astype("Int64")
    table["width"] = table["width"].astype("Int64")
    order = {c.abbreviation: i for i, c in enumerate(categories)}
    table = table.sort_values(["category", "split", "defect_type", "image_path"],
                              key=lambda s: s.map(order) if s.name == "category" else s)
    return Scan(root=root, table=table.reset_index(drop=True), problems=problems,
                mask_naming=naming, categories=categories)


def _scan_category(path: Path, cat: Category, rows: list[dict], problems: list[Problem]) -> str:
    try:
        os.scandir(path).close()
    except OSError as exc:
        problems.append(Problem("error", "unreadable_folder", str(path),
                                f"cannot read this folder: {_reason(exc)}; its files are left out"))
        return "same"
    gt_dir = path / "ground_truth"
    _listdir(gt_dir, problems)  # an unreadable ground_truth/ is reported once, here
    naming = _detect_mask_naming(gt_dir)
    # a category of one's own without ground_truth/ has image-level labels only: image metrics, no
    # pixel metrics (3CAD's and MVTec AD's categories always have masks: a missing one is an error)
    labels_only = cat.dataset == "custom" and not os.path.lexists(gt_dir)
    if labels_only:
        problems.append(Problem("warning", "image_labels_only", str(path),
                                "no ground_truth/ folder: image-level labels only; pixel metrics are not available"))
    used_masks: set[str] = set()
    first_row = len(rows)
    for split in ("train", "test"):
        split_dir = path / split
        if not split_dir.is_dir():
            continue  # reported below, as a split without images
        for type_entry in _listdir(split_dir, problems):
            if not _is_dir(type_entry):
                problems.append(Problem("warning", "unexpected_file", type_entry.path,
                                        f"files belong in {split}/<defect type>/, ignored"))
                continue
            defect_type = type_entry.name
            if split == "train" and defect_type != GOOD:
                problems.append(Problem("warning", "unknown_folder", type_entry.path,
                                        "train/ holds only good/; ignored"))
                continue
            for img in _listdir(Path(type_entry.path), problems):
                if _is_dir(img):
                    problems.append(Problem("warning", "unknown_folder", img.path, "nested folder ignored"))
                    continue
                if not _is_image(img.name):
                    problems.append(Problem("warning", "non_image", img.path, "not an image file, ignored"))
                    continue
                label = int(defect_type != GOOD)
                mask_path = None
                size, why = read_header(img.path)
                if size is None:
                    problems.append(Problem("error", "unreadable_image", img.path, why))
                if label and not labels_only:
                    candidate = gt_dir / defect_type / _mask_name(img.name, naming)
                    kind = _special(candidate)
                    if _is_file(candidate):
                        mask_path = str(candidate)
                        used_masks.add(mask_path)
                        _check_mask_header(mask_path, size, problems)
                    elif kind is not None:
                        used_masks.add(str(candidate))
                        problems.append(Problem("error", "missing_mask", img.path,
                                                f"its mask {candidate} is {kind}, not a regular file; not read"))
                    else:
                        problems.append(Problem("error", "missing_mask", img.path,
                                                f"no mask at {candidate}"))
                rows.append(dict(category=cat.abbreviation, folder=path.name, dataset=cat.dataset,
                                 split=split, label=label, defect_type=defect_type,
                                 image_path=img.path, mask_path=mask_path,
                                 height=size[0] if size else None, width=size[1] if size else None))
    for type_entry in _listdir(gt_dir):
        if not _is_dir(type_entry):
            continue
        for m in _listdir(Path(type_entry.path), problems):
            if not _is_dir(m) and _is_image(m.name) and m.path not in used_masks:
                kind = "mask_for_good" if type_entry.name == GOOD else "orphan_mask"
                problems.append(Problem("error", kind, m.path, "mask without a matching test image"))
    splits = {r["split"] for r in rows[first_row:]}
    if "train" not in splits:
        problems.append(Problem("error", "no_train_images", str(path / "train" / GOOD),
                                "no training image in this category; no method can be trained on it"))
    if "test" not in splits:
        problems.append(Problem("error", "no_test_images", str(path / "test"),
                                "no test image in this category; it cannot be evaluated"))
    return naming


def _special(path: Path) -> str | None:
    """What `path` is when it exists but is not a regular file or folder ("a FIFO", ...)."""
    try:
        kind = special_kind(path.stat().st_mode)
    except OSError:
        return None
    return None if kind == "a folder" else kind


def _check_mask_header(mask_path: str, image_hw: tuple[int, int] | None, problems: list[Problem]) -> None:
    """A mask whose header cannot be read, or whose size is not its image's, is an error."""
    size, why = read_header(mask_path)
    if size is None:
        problems.append(Problem("error", "unreadable_mask", mask_path, why))
    elif image_hw is not None and size != image_hw:
        problems.append(Problem("error", "mask_size", mask_path,
                                f"mask is {size[1]}x{size[0]} but its image is {image_hw[1]}x{image_hw[0]} "
                                "(WxH); masks must have their image's size"))


def fingerprint(table: pd.DataFrame, root: str | os.PathLike | None = None) -> str:
    """A short hash of the files in a table, their relative paths and sizes: what identifies
    a dataset across machines in results.json. (Caches are keyed on the files' bytes, see
    threecad.cache.content_key: sizes and mtimes can be kept while pixels change.)
    """
    h = hashlib.sha256()
    for col in ("image_path", "mask_path"):
        for p in table[col].dropna():
            st = os.stat(p)
            rel = os.path.relpath(p, root) if root else p
            # the trailing 0 stood for an mtime; kept so that recorded fingerprints stay the same
            h.update(f"{rel}\0{st.st_size}\0".encode() + b"0\n")
    return h.hexdigest()[:16]
