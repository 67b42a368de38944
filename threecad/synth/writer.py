"""Write a synthetic 3CAD tree: plan, render in parallel, then publish it in one rename.

Everything goes into a hidden temporary folder beside `out`; only a complete tree is
renamed into place, so an interrupted run leaves no half-written dataset behind. Each
image is rendered from its own seed, so the bytes do not depend on the number of
workers or the order in which they finish.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from PIL import Image
from tqdm import tqdm

from threecad.catalog import Category, resolve_categories
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_json
from threecad.synth.kinds import DEFECT_TYPES
from threecad.synth.plan import ImageJob, plan_category
from threecad.synth.render import render_job

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
DATASET_NAME = "3cad-synthetic"
MARKER = "synthetic.json"
SIDECAR = "defect_regions.csv"
SIDECAR_COLUMNS = ["image", "region", "defect_type", "y", "x", "area"]
PNG_COMPRESS_LEVEL = 1  # fast zlib: encoding would otherwise cost more than drawing
MIN_MAX_SIZE = 32
# Below this many pixels in all, starting worker processes costs more than it saves.
INLINE_MAX_PIXELS = 6_000_000


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


def _check_args(scale: float, seed: int, max_size: int | None, workers: int | None) -> None:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ThreecadError(f"--scale must be a number above 0 (1.0 = the paper's counts), got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ThreecadError(f"--seed must be a whole number >= 0, got {seed!r}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < MIN_MAX_SIZE):
        raise ThreecadError(f"--max-size must be at least {MIN_MAX_SIZE} pixels, got {max_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ThreecadError(f"--workers must be at least 1, got {workers!r}")


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


def plan(categories: Sequence[Category], scale: float, seed: int, max_size: int | None) -> list[ImageJob]:
    return [job for cat in categories for job in plan_category(cat, scale, seed, max_size)]


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
        with ctx.Pool(processes=min(workers, len(jobs))) as pool:
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
             workers: int | None = None, force: bool = False, progress: bool | None = None) -> Path:
    """Write a synthetic 3CAD dataset to `out` and return its path.

    scale 1.0 reproduces the paper's Table 1 (27,039 images, long side up to 1024 px);
    smaller scales keep every category and defect type. `max_size` caps the long side.
    `categories` takes abbreviations or folder names (None or "all" = all 8). `workers`
    defaults to the CPU count. A non-empty `out` is refused unless `force`, which replaces
    it. The same arguments always give the same bytes.

    Large runs render in worker processes started with the "spawn" method (safe when the
    caller runs threads); a script calling this must do so under
    `if __name__ == "__main__":`, as multiprocessing requires.
    """
    _check_args(scale, seed, max_size, workers)
    cats = resolve_categories(categories)
    out = Path(out).expanduser()
    _prepare_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = plan(cats, float(scale), seed, max_size)
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
        atomic_write_json(tmp / MARKER, marker(cats, jobs, scale, seed, max_size))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def marker(categories: Sequence[Category], jobs: list[ImageJob], scale: float, seed: int,
           max_size: int | None) -> dict:
    """The contents of synthetic.json: how the tree was made, so tools can name it."""
    counts = {}
    for cat in categories:
        mine = [j for j in jobs if j.category == cat.abbreviation]
        counts[cat.abbreviation] = {
            "train_good": sum(j.split == "train" for j in mine),
            "test_good": sum(j.split == "test" and not j.regions for j in mine),
            "test_defect": sum(bool(j.regions) for j in mine),
            "defect_types": len(DEFECT_TYPES[cat.abbreviation]),
        }
    return {"dataset": DATASET_NAME, "generator": "threecad.synth", "version": GENERATOR_VERSION,
            "seed": seed, "scale": float(scale), "max_size": max_size,
            "categories": [c.abbreviation for c in categories], "counts": counts}


def _sibling(out: Path, tag: str) -> Path:
    """A new hidden folder beside `out` (same file system, so renames are atomic).

    Made with os.mkdir, not mkdtemp, so that the published tree gets the usual
    permissions (umask) rather than mkdtemp's owner-only ones.
    """
    while True:
        path = out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
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
