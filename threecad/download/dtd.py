"""DTD (Describable Textures Dataset): where it comes from, what a good copy looks like, and
the layout it is installed in.

The installed layout is torchvision's, so that `torchvision.datasets.DTD(root)` and
`AnomalySynthesizer(dtd_root=root)` read it as it is, and a copy that torchvision itself
downloaded into the same root is recognised:

    <root>/MANIFEST.sha256.json          sha256 and size of every file, and the provenance
    <root>/dtd/dtd/images/<class>/*.jpg  5,640 images in 47 class folders (official release)
    <root>/dtd/dtd/labels/*.txt          split files (train1.txt ... test10.txt), "<class>/<file>" a line
    <root>/dtd/dtd/imdb/imdb.mat         kept when the source has it

(torchvision adds `dtd/` for its dataset folder, and the official archive wraps everything
in one more `dtd/`.) The root defaults to `threecad.datahome.default_dtd_root()`.

Checksums: the VGG page publishes none for dtd-r1.0.1.tar.gz; torchvision's DTD class
carries its MD5 (`OFFICIAL_MD5`), which is what an official download is checked against.
The archive's sha256 is recorded in the manifest whatever the source.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from threecad.errors import DatasetError
from threecad.manifest import read_manifest, size_mismatch

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
OFFICIAL_MD5 = "fff73e5086ae6bdbea199a49dfb8a4c1"  # as torchvision.datasets.DTD publishes it
INSTALL_SUBDIR = ("dtd", "dtd")  # <root>/dtd/dtd holds images/ and labels/ (torchvision's layout)
SPLIT_FILES = ("train1.txt", "val1.txt", "test1.txt")  # what the texture loader reads
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
KNOWN_DIRS = {"images", "labels", "imdb"}


@dataclass
class DTDCheck:
    """What a DTD folder holds: images per class, the split files, and anything else."""

    folder: Path
    n_images: int = 0
    n_classes: int = 0
    extra: list[Path] = field(default_factory=list)  # files and folders that are not DTD's


def data_dir(root: Path) -> Path:
    """The folder holding images/ and labels/ inside an installed root."""
    return root.joinpath(*INSTALL_SUBDIR)


def find_dtd_dir(folder: Path, max_depth: int = 3) -> Path:
    """The shallowest folder under `folder` that has images/ or labels/ (the DTD data folder).

    Covers the official archive (`dtd/images`), a torchvision root (`dtd/dtd/images`) and a
    mirror that holds `images/` at its top.
    """
    level = [folder]
    for _ in range(max_depth + 1):
        hits = [d for d in level if (d / "images").is_dir() or (d / "labels").is_dir()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(str(h.relative_to(folder)) for h in hits)
            raise DatasetError(f"the download holds several DTD folders ({names}); give one of them")
        level = sorted(sub for d in level for sub in d.iterdir()
                       if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."))
        if not level:
            break
    parquet = sorted(p.name for p in folder.rglob("*.parquet"))
    if parquet:
        raise DatasetError(f"the download holds parquet rows ({parquet[0]}, ...), not DTD's files; "
                           "mirrors in parquet form are not supported yet: use --source url (the official "
                           "archive) or --source path")
    raise DatasetError(f"no DTD layout in the download (no folder with images/<class>/*.jpg and labels/, at "
                       f"the top or up to {max_depth} levels down); check that it is the DTD archive")


def check_dtd(folder: Path, where: str) -> DTDCheck:
    """Refuse a DTD folder without images, without the split files, or whose split files
    name images that are not there; list what does not belong (not refused here).

    `folder` is usually a temporary copy, gone by the time a refusal is read: messages name
    `where` (what the user gave: the --path folder, the archive) and paths inside it.
    """
    images, labels = folder / "images", folder / "labels"
    check = DTDCheck(folder)
    check.extra = sorted(p for p in folder.iterdir() if p.name not in KNOWN_DIRS or not p.is_dir())
    present: set[str] = set()
    if images.is_dir():
        for cls in sorted(images.iterdir()):
            if not cls.is_dir():
                check.extra.append(cls)
                continue
            n_before = len(present)
            for f in sorted(cls.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    present.add(f"{cls.name}/{f.name}")
                else:
                    check.extra.append(f)
            check.n_classes += len(present) > n_before
    check.n_images = len(present)
    if not present:
        raise DatasetError(f"no DTD images in {where}: 0 image files under images/<class>/ "
                           f"({'no images/ folder' if not images.is_dir() else 'images/ is empty'}); "
                           "nothing installed")
    if not labels.is_dir():
        raise DatasetError(f"DTD in {where} has {len(present)} images but no labels/ folder (the split files "
                           "torchvision's DTD reads); use the official archive; nothing installed")
    for name in SPLIT_FILES:
        path = labels / name
        if not path.is_file():
            raise DatasetError(f"DTD split file labels/{name} is missing in {where}; use the official archive; "
                               "nothing installed")
        listed = [ln.strip() for ln in path.read_text("utf-8", "replace").splitlines() if ln.strip()]
        missing = [ln for ln in listed if ln not in present]
        if missing:
            raise DatasetError(f"labels/{name} in {where} lists {len(missing)} image(s) that are not in images/ "
                               f"(first: {missing[0]}); the download is incomplete; nothing installed")
    _check_decodes(images, sorted(present), where)
    return check


def _check_decodes(images: Path, rels: list[str], where: str) -> None:
    from PIL import Image, UnidentifiedImageError

    for rel in rels:
        try:
            with Image.open(images / rel) as im:
                im.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            # PIL's own text names the file, that is the temporary copy
            reason = ("not an image file" if isinstance(exc, UnidentifiedImageError)
                      else getattr(exc, "strerror", None) or str(exc))
            raise DatasetError(f"DTD image images/{rel} in {where} does not decode ({reason}); the download is "
                               "damaged; nothing installed") from exc


def remove_extra(check: DTDCheck) -> list[str]:
    """Delete the extra entries from the (temporary) copy; returns them relative to it."""
    out = []
    for p in check.extra:
        out.append(p.relative_to(check.folder).as_posix() + ("/" if p.is_dir() else ""))
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return out


def root_state(root: Path) -> tuple[str, str]:
    """("absent" | "empty" | "complete" | "incomplete", detail), without decoding images."""
    if not root.exists():
        return "absent", ""
    if not root.is_dir():
        from threecad.errors import ThreecadError

        raise ThreecadError(f"--root {root} is a file, not a folder; choose another --root")
    if not any(root.iterdir()):
        return "empty", ""
    folder = data_dir(root)
    images = folder / "images"
    n = sum(1 for f in images.glob("*/*") if f.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else 0
    if not n:
        return "incomplete", f"0 images under {images}"
    for name in SPLIT_FILES:
        if not (folder / "labels" / name).is_file():
            return "incomplete", f"labels/{name} is missing"
    manifest = read_manifest(root)
    problem = size_mismatch(root, manifest) if manifest is not None else None
    if problem:
        return "incomplete", problem
    return "complete", f"{n} images" + (", manifest sizes match" if manifest else "")
