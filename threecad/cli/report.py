"""`threecad report RUN`: (re)build a run's report.html."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the page here instead of RUN/report.html (the run is then left untouched).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset root for the ground-truth masks of the pixel curves (default: the root run.json "
                   "records; masks that are not the files the run saw are not used).")
def command(run: Path, out: Path | None, root: Path | None) -> None:
    """Write RUN/report.html: one self-contained page (opens offline) with the metrics table, ROC and
    PRO curves per category from the stored predictions, loss curves, the hardest test images, the
    config, the method's model card, hardware, versions, timings and the leaderboard variant.

    `threecad bench` writes it at the end of every run; run this to rebuild it.

    \b
    Example:
      threecad report runs/cfrg && chromium runs/cfrg/report.html
    """
    from threecad.report import write_report

    path = write_report(run, out, root)
    click.echo(f"report written: {path}")
