"""`threecad leaderboard`: show the results table, submit a run to it, keep its README current."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from threecad.leaderboard.schema import (
    DATASET_LABELS, DATASETS, METRICS, PROTOCOL_CAVEATS, PROTOCOLS, LeaderboardError, normalize_metric,
)
from threecad.leaderboard.store import (
    check_writable, default_csv_path, init_table, read_table, resolve_csv, submit_run, table_to_show,
    write_text_keeping_mode,
)

FORMATS = ("md", "plain", "csv", "html")


def csv_option(func):
    return click.option(
        "--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Leaderboard table to work on. Default: your table, <data home>/leaderboard/results.csv, which "
             "the first submit starts with the paper's numbers (`show` before that: the paper's packaged "
             "numbers). The repository's table: --csv leaderboard/results.csv.")(func)


def _metric(ctx, param, value):
    try:
        return None if value is None else normalize_metric(value)
    except LeaderboardError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(name="leaderboard")
def command() -> None:
    """The results table: the paper's numbers and every submitted run (values in percent)."""


@command.command()
@click.option("--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), default=None,
              help="Only this evaluation protocol (default: every protocol, one table each).")
@click.option("--metric", callback=_metric, default=None, metavar="METRIC",
              help=f"Only this metric: {', '.join(METRICS)} (P-AUROC spelling accepted).")
@click.option("--dataset", type=click.Choice(DATASETS, case_sensitive=False), default=None,
              help="Only this dataset (default: every dataset, one table each).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="md", show_default=True,
              help="md: Markdown, best in bold; plain: aligned text, best marked *; csv: wide CSV; "
                   "html: one self-contained page with sortable tables and bar charts.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (atomically) instead of standard output.")
@csv_option
def show(protocol, metric, dataset, fmt, out, csv_file) -> None:
    """Methods as rows, categories plus Mean as columns, sorted by Mean, best per column marked.

    \b
    Examples:
      threecad leaderboard show --protocol 3cad-paper --metric p_auroc
      threecad leaderboard show --format html --out leaderboard.html
    """
    from threecad.leaderboard.html import render_html
    from threecad.leaderboard.render import render_csv, render_markdown, render_plain
    from threecad.leaderboard.views import wide_tables

    table, origin, packaged = table_to_show(csv_file)
    if packaged:
        click.echo(f"note: you have no table yet; showing {origin} (`leaderboard submit RUN` starts yours; "
                   "--csv FILE shows another)", err=True)
    if out is not None:  # refuse a read-only --out before any work
        check_writable(out)
    tables = wide_tables(table, protocol=protocol and protocol.lower(), metric=metric,
                         dataset=dataset and dataset.lower())
    if fmt == "md":
        text = render_markdown(tables)
    elif fmt == "plain":
        text = render_plain(tables)
    elif fmt == "csv":
        text = render_csv(tables)
        # the CSV has no room for prose: the caveat goes to the terminal instead
        for proto in sorted({t.protocol for t in tables} & set(PROTOCOL_CAVEATS)):
            click.echo(f"note: {PROTOCOL_CAVEATS[proto]}", err=True)
    else:
        text = render_html(tables, origin=origin, n_rows=len(table))
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_keeping_mode(out, text)
        click.echo(f"wrote {out} ({len(tables)} table{'s' if len(tables) != 1 else ''})", err=True)


@command.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--replace", is_flag=True, help="Overwrite this run's rows if it was submitted before.")
@click.option("--create", is_flag=True, help="Start a new table at --csv when it does not exist "
                                             "(without it, a missing table is an error, not a new file).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The dataset the run was scored on: every metric is computed again from the run's stored "
                   "predictions and this root's masks, and its test images must be the ones the run saw.")
@csv_option
def submit(run_dir, replace, create, root, csv_file) -> None:
    """Add the rows of a finished run directory (`threecad bench --out RUN_DIR`) to the table.

    results.json is checked against the run's per-category records first: an unfinished run,
    a failed category or an altered value is refused. Each category and the Mean (recomputed)
    become rows, per metric, in percent. A run already in the table is refused unless --replace.
    Without --csv the rows go to your table in the data home (started on the first submit).

    \b
    Example:
      threecad leaderboard submit runs/cfrg --root ~/threecad-data/3CAD
    """
    path = resolve_csv(csv_file, must_exist=False)
    result = submit_run(run_dir, path, replace=replace, create=create, root=root)
    rows = result.added
    first = rows.iloc[0]
    verb = f"replaced {result.replaced} rows and added" if result.replaced else "added"
    where = f"new table {path}" if result.created else str(path)
    click.echo(f"{verb} {len(rows)} rows to {where}: {first['method']} [{first['variant']}], run "
               f"{result.run_id}, protocol {first['protocol']}, dataset {first['dataset']}")
    for note in result.notes:
        click.echo(f"note: {note}")
    grid = rows.pivot(index="metric", columns="category", values="value")
    order = [c for c in dict.fromkeys(rows["category"]) if c != "Mean"] + ["Mean"]
    grid = grid.reindex(index=[m for m in METRICS if m in grid.index], columns=order)
    grid = grid.map(lambda v: "" if not isinstance(v, str) else f"{float(v):.1f}")
    grid.index.name = grid.columns.name = None
    click.echo(grid.to_string())
    if first["protocol"] in PROTOCOL_CAVEATS:
        click.echo(f"note: {PROTOCOL_CAVEATS[first['protocol']]}")


@command.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The dataset the run was scored on (default: the root the run recorded).")
@click.option("--rerun", is_flag=True, help="Also load each checkpoint into the recorded method and config and "
                                            "predict the test set again: every metric must come out as recorded.")
@click.option("--tolerance", type=float, default=0.0, show_default=True,
              help="Largest metric difference --rerun accepts (0: exact, for the machine and threads that ran it).")
def audit(run_dir, root, rerun, tolerance) -> None:
    """Check that a run is what it says: summary against records, every metric computed again from
    the stored predictions and the root's masks, and with --rerun from the checkpoints.

    \b
    Example:
      threecad leaderboard audit runs/cfrg --rerun
    """
    from threecad.leaderboard.audit import audit_run

    audit_run(run_dir, root, rerun=rerun, tolerance=tolerance, echo=click.echo)
    click.echo(f"ok: {run_dir} holds what it says")


@command.command(name="render-readme")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="README to update. Default: README.md beside the table.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when the README is out of date.")
@csv_option
def render_readme_command(readme, check, csv_file) -> None:
    """Regenerate the tables between the marker comments of a README (the repository's page:
    `--csv leaderboard/results.csv`, whose README.md sits beside it).

    \b
    Example:
      threecad leaderboard render-readme --csv leaderboard/results.csv --check
    """
    from threecad.leaderboard.readme import render_readme

    path = resolve_csv(csv_file)
    readme = readme if readme is not None else path.parent / "README.md"
    changed = render_readme(readme, read_table(path), check=check)
    if check and changed:
        click.echo(f"{readme} is out of date with {path}; run `threecad leaderboard render-readme`.", err=True)
        sys.exit(1)
    click.echo(f"{readme} {'is up to date' if not changed else 'updated'}")


@command.command()
@click.option("--empty", is_flag=True, help="Only the header, without the paper's numbers.")
@click.option("--force", is_flag=True, help="Overwrite an existing table.")
@csv_option
def init(empty, force, csv_file) -> None:
    """Create a table seeded with the paper's published numbers (protocol 3cad-paper).

    \b
    Example:
      threecad leaderboard init --csv team-board.csv
    """
    path = Path(csv_file) if csv_file is not None else default_csv_path()
    n = init_table(path, with_paper=not empty, overwrite=force)
    click.echo(f"wrote {path} ({n} rows)")


@command.command()
@csv_option
def validate(csv_file) -> None:
    """Check the table against the schema; exit non-zero naming the first bad line and column.

    \b
    Example:
      threecad leaderboard validate --csv leaderboard/results.csv
    """
    path = resolve_csv(csv_file)
    table = read_table(path)
    n_runs = table.loc[table["source"] == "run", "reference"].nunique()
    datasets = ", ".join(DATASET_LABELS[d] for d in DATASETS if d in set(table["dataset"]))
    click.echo(f"ok: {path} has {len(table)} valid rows ({n_runs} submitted runs; datasets: {datasets or 'none'})")
