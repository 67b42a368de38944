"""`threecad stats`: the dataset's statistics (Table 1, NE/TE, region size and shape) and figures."""
from __future__ import annotations

import time
from pathlib import Path

import click

from threecad.cli.common import category_option, resolve_root, root_option


@click.command("stats")
@root_option()
@category_option()
@click.option("--plot", is_flag=True,
              help="Write PNG figures (area ratio, aspect ratio, NE/TE, sample grids) into --out "
                   "(default ./threecad-stats).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the CSV tables (summary, defect_types, images, regions, table1_comparison) "
                   "and the figures.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write everything as JSON (per category and overall; n_regions, NE/TE histograms).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for the masks not yet cached. Default: every available core.")
@click.option("--no-cache", is_flag=True,
              help="Recompute every mask and leave the cache ($THREECAD_CACHE, else $XDG_CACHE_HOME/threecad, "
                   "else ~/.cache/threecad) alone.")
@click.option("--skip-unreadable", is_flag=True,
              help="Measure the other masks when some cannot be read; those are listed first and left "
                   "out of every figure. Without it, a mask that cannot be read is an error (exit 2) and "
                   "nothing is written.")
def command(root: Path | None, categories: tuple[str, ...], plot: bool, out_dir: Path | None,
            json_path: Path | None, workers: int | None, no_cache: bool, skip_unreadable: bool) -> None:
    """Measure a dataset root: counts, sizes, regions (NE) and types (TE) per defective image,
    defect size and shape; on a 3CAD root, next to the paper's Table 1.

    A mask that cannot be read stops the command (exit 2) unless --skip-unreadable.

    \b
    Example:
      threecad stats --root ~/threecad-data/3CAD --plot
    """
    started = time.perf_counter()
    from threecad.errors import DatasetError
    from threecad.fsutil import atomic_write_json, check_writable
    from threecad.layout import scan_root
    from threecad import stats as st
    from threecad.wording import plural

    if plot and out_dir is None:
        out_dir = Path("threecad-stats")
    if out_dir is not None:  # refuse before the work (and before any write)
        check_writable(out_dir, folder=True)
    if json_path is not None:
        check_writable(json_path)
    scan = scan_root(resolve_root(root))
    result = st.compute_stats(scan, categories, workers=workers, cache=not no_cache)
    unreadable = result.unreadable
    if unreadable and not skip_unreadable:
        raise DatasetError(f"{plural(len(unreadable), 'mask')} cannot be read, first {unreadable[0]}; fix or "
                           "remove them, or pass --skip-unreadable to measure without them")
    if unreadable:
        click.echo(f"{plural(len(unreadable), 'unreadable mask')} left out (--skip-unreadable):")
        for line in unreadable[:10]:
            click.echo(f"  {line}")
        if len(unreadable) > 10:
            click.echo(f"  ... {len(unreadable) - 10} more (all of them in --json)")
        click.echo("")

    click.echo(f"{scan.root} ({scan.dataset}); NE = 8-connected mask regions; "
               f"area = region / image; aspect = min-area rotated rectangle, long / short")
    click.echo(st.format_summary(result))
    click.echo("")
    click.echo(f"Per defect type (region types from {st.te_source_text(result.te_source)})")
    click.echo(st.format_defect_types(result))
    comparison = st.format_comparison(result)
    if comparison:
        click.echo("")
        click.echo(comparison)
    if scan.problems or result.problems:
        click.echo("")
        click.echo(f"{plural(len(scan.problems), 'layout problem')} (see `threecad verify`), "
                   f"{plural(len(result.problems), 'mask problem')}" + (":" if result.problems else ""))
        for line in result.problems[:10]:
            click.echo(f"  {line}")
        if len(result.problems) > 10:
            click.echo(f"  ... {len(result.problems) - 10} more (all of them in --json)")

    if out_dir is not None:
        written = st.write_tables(result, out_dir)
        if plot:
            from threecad.plots import plot_all

            written += plot_all(result, out_dir)
        click.echo(f"\nwrote {plural(len(written), 'file')} to {out_dir}")
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
        click.echo(f"wrote {json_path}")
    click.echo(f"({time.perf_counter() - started:.1f} s)")  # the whole command, figures included
