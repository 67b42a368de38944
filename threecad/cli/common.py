"""Options shared by the subcommands, so that they mean the same everywhere."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.datahome import default_root  # noqa: F401 - re-exported for the subcommands


def root_option(**kwargs):
    return click.option(
        "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Dataset root (the folder holding the category folders). "
             "Default: $THREECAD_ROOT, else ~/threecad-data/3CAD.", **kwargs)


def resolve_root(root: Path | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def category_option(**kwargs):
    return click.option(
        "--category", "categories", multiple=True, default=("all",), show_default=True,
        help="Category by abbreviation or folder name, any case; repeatable or a comma "
             "list (ACC,CS); `all` is every category.", **kwargs)
