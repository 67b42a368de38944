"""`threecad synth`: write the built-in synthetic 3CAD (layout, counts and look of the real one)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from threecad.cli.common import category_option


@click.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create; it becomes the dataset root (refused if not empty, see --force).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Fraction of the paper's image counts, above 0 and at most 1.0. 1.0 "
                   "reproduces Table 1 exactly (27,039 images, about 25 GB); 0.01 makes ~300 "
                   "images, still with every category and defect type.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed, same arguments: byte-identical files.")
@category_option()
@click.option("--max-size", type=int, default=None,
              help="Cap the long side of every image at PX pixels (Table 1's sizes otherwise; "
                   "at least 32).")
@click.option("--min-train", type=int, default=None, metavar="N",
              help="Below --scale 1.0, give every category at least N training images (default "
                   "16: Copper_Stator has 4 at scale 0.01, too few to learn from); the images "
                   "the scale gives are unchanged, the extra ones are appended. 0 turns it off. "
                   "Never applied at --scale 1.0, which stays Table 1 exactly.")
@click.option("--min-test-good", type=int, default=None, metavar="N",
              help="Below --scale 1.0, give every category at least N good test images (default "
                   "8: some categories have 2 at scale 0.01, too few for an image AUROC); "
                   "appended like --min-train's. 0 turns it off. Never applied at --scale 1.0.")
@click.option("--workers", type=int, default=None,
              help="Processes that render images. Default: the number of CPUs.")
@click.option("--force", is_flag=True, help="Replace --out if it is not empty.")
@click.option("--reuse", is_flag=True,
              help="Leave --out as it is when it already holds the set these arguments make (same synthetic.json); "
                   "write it otherwise. `make demo` uses it, so a second demo never rewrites the data under a "
                   "running one.")
def command(out: Path, scale: float, seed: int, categories: tuple[str, ...], max_size: int | None,
            min_train: int | None, min_test_good: int | None, workers: int | None, force: bool,
            reuse: bool) -> None:
    """Write a synthetic 3CAD dataset.

    The tree has 3CAD's layout (<Folder>/train/good, test/<type>, ground_truth/<type> with
    the image's file name), a defect_regions.csv per category (one row per defect region:
    its type, a pixel inside it and its area) and synthetic.json describing the run.
    An image with several defect types is filed under the type with the most regions.
    Every image of a category shows the same product (one layout per category and seed).

    \b
    Examples:
      threecad synth --out demo-data --scale 0.01 --max-size 256   # the demo's set, seconds
      threecad synth --out synth-3cad --scale 1.0                   # Table 1's counts, about 25 GB
    """
    from threecad.fsutil import WriteError, check_writable, write_error
    from threecad.layout import SYNTHETIC_MARKER
    from threecad.wording import plural
    from threecad.synth import generate  # lazy: keeps `threecad --help` fast

    started = time.perf_counter()
    marker = out.expanduser() / SYNTHETIC_MARKER
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    if not out.expanduser().exists():
        check_writable(out, folder=True)  # refuse before rendering anything
    try:
        root = generate(out, scale=scale, seed=seed, categories=categories, max_size=max_size,
                        workers=workers, force=force, progress=None, min_train=min_train,
                        min_test_good=min_test_good, reuse=reuse)
    except WriteError:
        raise
    except OSError as exc:  # the tree is built beside --out and moved into place
        raise write_error(out, exc) from None
    if before is not None and marker.stat().st_mtime_ns == before:
        click.echo(f"{root} already holds this synthetic set (same arguments); nothing written (--reuse)")
        return
    info = json.loads((root / SYNTHETIC_MARKER).read_text())
    counts = info["counts"]
    n_train = sum(c["train_good"] for c in counts.values())
    n_good = sum(c["test_good"] for c in counts.values())
    n_defect = sum(c["test_defect"] for c in counts.values())
    click.echo(f"wrote {n_train + n_good + n_defect} images ({n_train} train, {n_good} test good, "
               f"{n_defect} test defective) for {plural(len(counts), 'category')} to {root} "
               f"in {time.perf_counter() - started:.1f}s")
