"""Where downloaded data lives by default, so that every command and method agrees on it.

`$THREECAD_DATA_HOME` when set, else `~/threecad-data`; 3CAD goes to `<home>/3CAD`
(unless `$THREECAD_ROOT` names another root), DTD to `<home>/dtd`, MVTec AD to
`<home>/mvtec`. Nothing here writes: callers decide whether a folder must exist. A data
home that is a file (or lies under one) is refused here, in one line, since every later
step would fail on it with a less helpful error.
"""
from __future__ import annotations

import os
from pathlib import Path

from threecad.errors import ThreecadError

DATA_HOME_ENV = "THREECAD_DATA_HOME"


def data_home() -> Path:
    """`$THREECAD_DATA_HOME`, else ~/threecad-data; ThreecadError when it cannot be a folder."""
    env = os.environ.get(DATA_HOME_ENV)
    home = Path(env).expanduser() if env else Path("~/threecad-data").expanduser()
    where = f"${DATA_HOME_ENV}" if env else "the data home"
    probe = home
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():  # a file, or a link to one or to nowhere
        what = "is" if probe == home else f"lies under {probe}, which is"
        raise ThreecadError(f"{where} {home} {what} not a folder; point ${DATA_HOME_ENV} at a folder "
                            "(or remove the file)")
    return home


def default_root() -> Path:
    """The 3CAD root: `$THREECAD_ROOT` when set, else `<data home>/3CAD`."""
    env = os.environ.get("THREECAD_ROOT")
    return Path(env).expanduser() if env else data_home() / "3CAD"


def default_dtd_root() -> Path:
    """Where `threecad download --dataset dtd` installs DTD and methods look for it."""
    return data_home() / "dtd"


def default_mvtec_root() -> Path:
    """Where `threecad download --dataset mvtec` installs MVTec AD."""
    return data_home() / "mvtec"
