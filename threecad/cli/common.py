"""Options shared by the subcommands, so that they mean the same everywhere."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.datahome import default_root  # noqa: F401 - re-exported for the subcommands


def root_option(**kwargs):
    return click.option(
        "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Dataset root (the folder holding the category folders). "
             "Default: $THREECAD_ROOT, else <data home>/3CAD (data home: $THREECAD_DATA_HOME, else "
             "~/threecad-data).", **kwargs)


def resolve_root(root: Path | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def _no_empty_names(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse an empty name (`--category ''`, `--category ,,`, `ACC,`): read as nothing, it
    would silently mean every category."""
    for value in values:
        if any(not name.strip() for name in value.split(",")):
            raise click.BadParameter(f"{value!r} holds an empty category name; name categories "
                                     "(ACC or ACC,CS) or pass `all`", ctx=ctx, param=param)
    return values


def category_option(**kwargs):
    return click.option(
        "--category", "categories", multiple=True, default=("all",), show_default=True,
        callback=_no_empty_names,
        help="Category by abbreviation or folder name, any case; repeatable or a comma "
             "list (ACC,CS); `all` is every category.", **kwargs)
