"""`threecad split`: write a validation / k-shot split manifest for a dataset root."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.cli.common import category_option, resolve_root, root_option


@click.command("split")
@root_option()
@category_option()
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1,
              show_default=True, help="Fraction of train/good held out for validation, per category.")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Keep only K training images per category (k-shot); default: all that remain.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Seed of the random split (0 or more).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest CSV to write. Default: <root>/split.csv, which commands pick up.")
def command(root: Path | None, categories: tuple[str, ...], val_fraction: float,
            shots: int | None, seed: int, out: Path | None) -> None:
    """Carve a validation set (and k-shot training subsets) from train/good.

    The official test set is never touched: the manifest lists training images only.

    \b
    Examples:
      threecad split --root demo-data                          # <root>/split.csv, 10 % held out
      threecad split --root demo-data --shots 8 --out 8shot.csv   # then: bench --split 8shot.csv
    """
    from threecad.catalog import resolve_categories
    from threecad.fsutil import check_writable
    from threecad.layout import catalog_order, require_readable, scan_root
    from threecad.splits import MANIFEST_NAME, make_split, summarize, write_manifest

    root = resolve_root(root)
    scan = scan_root(root)
    chosen = catalog_order(resolve_categories(categories, scan.categories))
    require_readable(scan, chosen)  # a folder left out would silently shrink the split
    target = out if out is not None else root / MANIFEST_NAME
    check_writable(target)
    manifest = make_split(scan.table, val_fraction=val_fraction, shots=shots, seed=seed,
                          categories=chosen)
    path = write_manifest(manifest, target)
    summary = summarize(manifest, scan.table)
    click.echo(summary.to_string(index=False))
    click.echo(f"wrote {path} ({int(summary['train'].sum())} train, {int(summary['val'].sum())} val; "
               f"seed {seed})")
