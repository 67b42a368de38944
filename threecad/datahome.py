"""Where downloaded data lives by default, so that every command and method agrees on it.

`$THREECAD_DATA_HOME` when set, else `~/threecad-data`; 3CAD goes to `<home>/3CAD`
(unless `$THREECAD_ROOT` names another root), DTD to `<home>/dtd`, MVTec AD to
`<home>/mvtec`. Nothing here touches the disk: callers decide whether a folder must exist.
"""
from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    env = os.environ.get("THREECAD_DATA_HOME")
    return Path(env).expanduser() if env else Path("~/threecad-data").expanduser()


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
