"""Write a synthetic 3CAD tree: plan, render in parallel, then publish it in one rename.

Everything goes into a hidden temporary folder beside `out`; only a complete tree is
renamed into place, so an interrupted run leaves no half-written dataset behind. Each
image is rendered from its own seed, so the bytes do not depend on the number of
workers or the order in which they finish.

A run killed outright (kill -9, power cut) cannot remove its temporary folder, so the
next run beside the same `out` removes those whose process is gone (the folder names
carry the process id and host). Before writing, the output size is estimated from the
plan and checked against the free disk space, so a full disk is a one-line refusal
rather than a half-written temporary tree.
"""
from __future__ import annotations

import ctypes
import json
import logging
import math
import multiprocessing as mp
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from PIL import Image
from tqdm import tqdm

from threecad.catalog import Category, resolve_categories, table1
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_json
from threecad.layout import SYNTHETIC_MARKER as MARKER
from threecad.synth.kinds import DEFECT_TYPES
from threecad.synth.plan import ImageJob, plan_category, scaled_count, test_good_floor, train_floor
from threecad.synth.render import render_job

log = logging.getLogger(__name__)

# 4: defect regions of at least 16 px (render.MIN_REGION_PIXELS; was 4); 3: deformations are
# visible dents (effects.py); 2: one product layout per category (see appearance.py); 1 drew a
# new layout per image.
GENERATOR_VERSION = "4"
DATASET_NAME = "3cad-synthetic"
SIDECAR = "defect_regions.csv"
SIDECAR_COLUMNS = ["image", "region", "defect_type", "y", "x", "area"]
PNG_COMPRESS_LEVEL = 1  # fast zlib: encoding would otherwise cost more than drawing
MIN_MAX_SIZE = 32
MAX_SCALE = 1.0  # Table 1's counts; nothing larger exists to imitate
# Floor of training images per category below scale 1.0 (Copper_Stator has 4 at 0.01).
DEFAULT_MIN_TRAIN = 16
# Floor of good test images per category below scale 1.0: at 0.01 some categories have 2,
# too few for an image AUROC to mean anything.
DEFAULT_MIN_TEST_GOOD = 8
# Bytes on disk per pixel at PNG level 1, measured: images 1.17-1.43 at native sizes (up to
# 2.0 at 32 px, where the per-file block below dominates anyway), masks under 0.01 (0.14
# at 32 px). Used only to refuse a run that cannot fit, never to size anything.
IMAGE_BYTES_PER_PIXEL = 1.5
MASK_BYTES_PER_PIXEL = 0.05
FILE_OVERHEAD_BYTES = 4096  # a file system block per file
DISK_MARGIN = 1.1
TEMP_TAGS = ("synth", "old")
# Below this many pixels in all, starting worker processes costs more than it saves.
INLINE_MAX_PIXELS = 6_000_000
# glibc malloc in the worker processes: blocks up to this size come from the heap, not from
# fresh mmap'd pages, and the heap keeps up to TRIM bytes free instead of handing them back.
# Drawing a 1024x1024 image makes and drops hundreds of 4-12 MB float arrays; with glibc's
# defaults most of them are new pages that the kernel must fault in and zero: a quarter
# of the drawing time (measured: benchmarks/synth.py). The pixels are unchanged.
WORKER_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
WORKER_TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)


def write_job(job: ImageJob, root: str) -> list[dict]:
    """Render one image, write it (and its mask) under `root`; return its sidecar rows."""
    out = render_job(job)
    cat_dir = Path(root) / job.folder
    Image.fromarray(out.image).save(cat_dir / job.relpath, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    if out.mask is None:
        return []
    Image.fromarray(out.mask).save(cat_dir / job.mask_relpath, format="PNG",
                                   compress_level=PNG_COMPRESS_LEVEL)
    return [dict(category=job.category, image=job.relpath, region=i, defect_type=r.defect_type,
                 y=r.y, x=r.x, area=r.area) for i, r in enumerate(out.regions, start=1)]


def _write_job_args(args: tuple[ImageJob, str]) -> list[dict]:
    return write_job(*args)


def tune_allocator() -> bool:
    """Let glibc's malloc keep image-sized blocks for reuse in this process (see
    WORKER_MMAP_THRESHOLD). Run in the worker processes only, never in the caller's.
    Returns False where there is no glibc `mallopt` (macOS, musl, Windows): nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD))


def _check_args(scale: float, seed: int, max_size: int | None, workers: int | None,
                min_train: int | None = None, min_test_good: int | None = None) -> None:
    if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
            or not 0 < scale <= MAX_SCALE):
        raise ThreecadError(f"--scale must be above 0 and at most {MAX_SCALE} (1.0 = the paper's "
                            f"27,039 images), got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ThreecadError(f"--seed must be a whole number >= 0, got {seed!r}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < MIN_MAX_SIZE):
        raise ThreecadError(f"--max-size must be at least {MIN_MAX_SIZE} pixels, got {max_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ThreecadError(f"--workers must be at least 1, got {workers!r}")
    if min_train is not None:
        most = int(table1()["train_good"].min())  # beyond it the floor would outgrow scale 1.0
        if isinstance(min_train, bool) or not isinstance(min_train, int) or not 0 <= min_train <= most:
            raise ThreecadError(f"--min-train must be a whole number from 0 to {most} (the smallest "
                                f"category's training images at scale 1.0), got {min_train!r}")
    if min_test_good is not None:
        most = int(table1()["test_good"].min())
        if (isinstance(min_test_good, bool) or not isinstance(min_test_good, int)
                or not 0 <= min_test_good <= most):
            raise ThreecadError(f"--min-test-good must be a whole number from 0 to {most} (the smallest "
                                f"category's good test images at scale 1.0), got {min_test_good!r}")


def _holds(out: Path, expected: dict) -> bool:
    """Whether `out` is a finished synthetic set with exactly this description (the tree lands
    with its synthetic.json in one rename, so a present marker means a complete tree)."""
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")) == json.loads(json.dumps(expected))
    except (OSError, ValueError):
        return False


def _prepare_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ThreecadError(f"--out {out} is a file; give a folder to write the dataset into")
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved in {Path(resolved.anchor), Path.home().resolve(), cwd} or resolved in cwd.parents:
        suggestion = out / "3cad-synthetic"
        raise ThreecadError(f"refusing to write the dataset into {out}: it is the root, home or "
                            f"current folder (or holds it); give a new folder such as {suggestion}")
    if any(out.iterdir()) and not force:
        raise ThreecadError(f"--out {out} is not empty; choose another folder or pass --force to replace it")


def plan(categories: Sequence[Category], scale: float, seed: int, max_size: int | None,
         min_train: int = 0, min_test_good: int = 0) -> list[ImageJob]:
    return [job for cat in categories
            for job in plan_category(cat, scale, seed, max_size, min_train, min_test_good)]


def estimate_bytes(jobs: Sequence[ImageJob]) -> int:
    """About how many bytes the tree of `jobs` takes on disk (a generous estimate)."""
    pixels = sum(j.pixels for j in jobs)
    mask_pixels = sum(j.pixels for j in jobs if j.regions)
    files = len(jobs) + sum(bool(j.regions) for j in jobs)
    return int(pixels * IMAGE_BYTES_PER_PIXEL + mask_pixels * MASK_BYTES_PER_PIXEL
               + files * FILE_OVERHEAD_BYTES)


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(path.anchor or ".")


def check_free_space(out: Path, jobs: Sequence[ImageJob], reclaimable: int = 0) -> None:
    """Refuse (one line) a tree that would not fit beside `out`."""
    need = estimate_bytes(jobs) * DISK_MARGIN
    where = _existing_ancestor(out.parent)
    try:
        free = shutil.disk_usage(where).free + reclaimable
    except OSError:  # no figure to compare with: let the writes report what goes wrong
        return
    if need > free:
        raise ThreecadError(f"--out {out}: the dataset needs about {_gb(need)} but {where} has "
                            f"{_gb(free)} free; free some space, choose another folder, or lower "
                            "--scale or --max-size")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except (OverflowError, ValueError):
        return False
    return True


def stale_temporaries(out: Path) -> list[Path]:
    """Temporary folders beside `out` left by synth runs on this host whose process is gone."""
    tags = "|".join(TEMP_TAGS)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:{tags})-(\d+)-[0-9a-f]{{8}}(?:-([A-Za-z0-9]+))?")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    stale = []
    for entry in sorted(entries):
        m = pattern.fullmatch(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir():
            continue
        if m.group(2) not in (None, _host_tag()):  # another machine's run on a shared disk
            continue
        if not _pid_alive(int(m.group(1))):
            stale.append(entry)
    return stale


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _remove_stale(stale: Sequence[Path]) -> None:
    if not stale:
        return
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    log.warning("removed %d temporary folder%s left by killed synth runs: %s", len(stale),
                "" if len(stale) == 1 else "s", ", ".join(p.name for p in stale))


def _run(jobs: list[ImageJob], root: Path, workers: int, progress: bool | None) -> list[dict]:
    rows: list[dict] = []
    # progress None: a bar only on a terminal (tqdm's disable=None)
    bar = tqdm(total=len(jobs), unit="img", desc="synth", disable=None if progress is None else not progress)
    try:
        total_pixels = sum(j.pixels for j in jobs)
        if workers == 1 or total_pixels <= INLINE_MAX_PIXELS or len(jobs) < 2:
            for job in jobs:
                rows += write_job(job, str(root))
                bar.update()
            return rows
        # spawn: safe even when the caller has threads (torch, a test runner) running
        ctx = mp.get_context("spawn")
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with ctx.Pool(processes=min(workers, len(jobs)), initializer=tune_allocator) as pool:
            for got in pool.imap_unordered(_write_job_args, ((j, str(root)) for j in jobs), chunksize=chunk):
                rows += got
                bar.update()
        return rows
    finally:
        bar.close()


def _write_sidecars(rows: list[dict], categories: Sequence[Category], root: Path) -> None:
    table = pd.DataFrame(rows, columns=["category"] + SIDECAR_COLUMNS)
    for cat in categories:
        part = table[table["category"] == cat.abbreviation][SIDECAR_COLUMNS]
        part = part.sort_values(["image", "region"]).reset_index(drop=True)
        part.to_csv(root / cat.folder / SIDECAR, index=False, lineterminator="\n")


def generate(out: str | os.PathLike, scale: float = 1.0, seed: int = 0,
             categories: Iterable[str] | str | None = None, max_size: int | None = None,
             workers: int | None = None, force: bool = False, progress: bool | None = None,
             min_train: int | None = None, min_test_good: int | None = None, reuse: bool = False) -> Path:
    """Write a synthetic 3CAD dataset to `out` and return its path.

    scale 1.0 (the largest) reproduces the paper's Table 1 (27,039 images, long side up to
    1024 px); smaller scales keep every category and defect type, and give each category at
    least `min_train` training images (default DEFAULT_MIN_TRAIN) and `min_test_good` good
    test images (default DEFAULT_MIN_TEST_GOOD); 0 turns a floor off, and neither applies
    at scale 1.0. Every image of a category shows the same product (one layout per
    category and seed), moved, lit and textured a little differently. `max_size` caps the
    long side.
    `categories` takes abbreviations or folder names (None or "all" = all 8). `workers`
    defaults to the CPU count. A non-empty `out` is refused unless `force`, which replaces
    it. The same arguments always give the same bytes, so with `reuse` an `out` that already holds
    the set these arguments make (its synthetic.json equal to the one they would write) is left as
    it is: a second `make demo` then writes nothing under a bench reading the first one's data.

    Large runs render in worker processes started with the "spawn" method (safe when the
    caller runs threads); a script calling this must do so under
    `if __name__ == "__main__":`, as multiprocessing requires.
    """
    _check_args(scale, seed, max_size, workers, min_train, min_test_good)
    cats = resolve_categories(categories)
    out = Path(out).expanduser()
    floor = DEFAULT_MIN_TRAIN if min_train is None else min_train
    good_floor = DEFAULT_MIN_TEST_GOOD if min_test_good is None else min_test_good
    jobs = plan(cats, float(scale), seed, max_size, floor, good_floor)
    if reuse and _holds(out, marker(cats, jobs, scale, seed, max_size, floor, good_floor)):
        log.info("synth: %s already holds this synthetic set; nothing written (--reuse)", out)
        return out
    _prepare_out(out, force)
    for name, value in (("--min-train", min_train), ("--min-test-good", min_test_good)):
        if value and scale >= MAX_SCALE:
            log.warning("%s is ignored at --scale 1.0: the full scale is Table 1 exactly", name)
    stale = stale_temporaries(out)
    check_free_space(out, jobs, reclaimable=sum(_tree_bytes(p) for p in stale))
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(stale)
    workers = workers or os.cpu_count() or 1
    tmp = _sibling(out, "synth")
    try:
        for d in sorted({(j.folder, str(Path(j.relpath).parent)) for j in jobs}
                        | {(j.folder, str(Path(j.mask_relpath).parent)) for j in jobs if j.regions}):
            (tmp / d[0] / d[1]).mkdir(parents=True, exist_ok=True)
        log.info("synth: %d images for %s into %s (%d workers)", len(jobs),
                 ",".join(c.abbreviation for c in cats), out, workers)
        rows = _run(jobs, tmp, workers, progress)
        _write_sidecars(rows, cats, tmp)
        atomic_write_json(tmp / MARKER, marker(cats, jobs, scale, seed, max_size, floor, good_floor))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def marker(categories: Sequence[Category], jobs: list[ImageJob], scale: float, seed: int,
           max_size: int | None, min_train: int = 0, min_test_good: int = 0) -> dict:
    """The contents of synthetic.json: how the tree was made, so tools can name it.

    `min_train` and `min_test_good` are recorded only when their floor added images, so
    that a tree a floor did not change is byte-identical to one written without it.
    """
    counts = {}
    for cat in categories:
        mine = [j for j in jobs if j.category == cat.abbreviation]
        counts[cat.abbreviation] = {
            "train_good": sum(j.split == "train" for j in mine),
            "test_good": sum(j.split == "test" and not j.regions for j in mine),
            "test_defect": sum(bool(j.regions) for j in mine),
            "defect_types": len(DEFECT_TYPES[cat.abbreviation]),
        }
    info = {"dataset": DATASET_NAME, "generator": "threecad.synth", "version": GENERATOR_VERSION,
            "seed": seed, "scale": float(scale), "max_size": max_size,
            "categories": [c.abbreviation for c in categories], "counts": counts}
    t1 = table1()
    if any(train_floor(scaled_count(int(t1.loc[c.abbreviation, "train_good"]), scale, 2), scale, min_train)
           for c in categories):
        info["min_train"] = min_train
    if any(test_good_floor(scaled_count(int(t1.loc[c.abbreviation, "test_good"]), scale, 1), scale,
                           min_test_good) for c in categories):
        info["min_test_good"] = min_test_good
    return info


def _sibling(out: Path, tag: str) -> Path:
    """A new hidden folder beside `out` (same file system, so renames are atomic).

    Made with os.mkdir, not mkdtemp, so that the published tree gets the usual
    permissions (umask) rather than mkdtemp's owner-only ones.
    """
    while True:
        path = out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}-{_host_tag()}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished tree into place; an old `out` is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = _sibling(out, "old")
        os.replace(out, old / "tree")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
