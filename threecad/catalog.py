"""The categories that threecad knows: the 8 of 3CAD (with the paper's Table 1) and the 15 of MVTec AD.

Every command that takes `--category` resolves names here, so the abbreviation and the
folder name are accepted in any case, and a typo gets the closest valid name suggested.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

import pandas as pd

from threecad.errors import ThreecadError


@dataclass(frozen=True)
class Category:
    abbreviation: str
    folder: str
    dataset: str  # "3cad", "mvtec" or "custom"

    def __str__(self) -> str:
        return self.abbreviation


THREECAD = (
    Category("ACC", "Aluminum_Camera_Cover", "3cad"),
    Category("AI", "Aluminum_Ipad", "3cad"),
    Category("AMF", "Aluminum_Middle_Frame", "3cad"),
    Category("ANMF", "Aluminum_New_Middle_Frame", "3cad"),
    Category("ANI", "Aluminum_New_Ipad", "3cad"),
    Category("AP", "Aluminum_Pc", "3cad"),
    Category("CS", "Copper_Stator", "3cad"),
    Category("IS", "Iron_Stator", "3cad"),
)

MVTEC = tuple(
    Category(name, name, "mvtec")
    for name in (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )
)

KNOWN = THREECAD + MVTEC

# Totals that the paper states; table1() is checked against them in the tests.
TOTAL_TRAIN = 10_493
TOTAL_TEST = 16_546
TOTAL_DEFECT_TYPES = 47


@lru_cache(maxsize=1)
def table1() -> pd.DataFrame:
    """The paper's Table 1, one row per 3CAD category, indexed by abbreviation."""
    with resources.files("threecad.data").joinpath("3cad_table1.csv").open() as fh:
        return pd.read_csv(fh).set_index("abbreviation")


def _names(cat: Category) -> set[str]:
    return {cat.abbreviation.lower(), cat.folder.lower()}


def custom_category(folder: str) -> Category:
    """A category folder that is in neither catalog (a user's own data)."""
    return Category(folder, folder, "custom")


def resolve_category(name: str, available: Sequence[Category] | None = None) -> Category:
    """Find a category by abbreviation or folder name, case-insensitive.

    `available` limits the search (for example to the categories found on disk); an
    unknown name raises a ThreecadError that suggests the closest valid name.
    """
    pool = list(available) if available is not None else list(KNOWN)
    key = name.strip().lower()
    for cat in pool:
        if key in _names(cat):
            return cat
    choices = sorted({n for cat in pool for n in (cat.abbreviation, cat.folder)})
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(key, [c.lower() for c in choices], n=1, cutoff=0.5)
        close = [next(c for c in choices if c.lower() == close[0])] if close else []
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(cat.abbreviation for cat in pool) or "none"
    raise ThreecadError(f"unknown category '{name}'.{hint} Valid: {listing}.")


def resolve_categories(values: Iterable[str] | str | None,
                       available: Sequence[Category] | None = None) -> list[Category]:
    """Resolve repeatable / comma-separated `--category` values; `all` (or nothing) is every one.

    With `available` given, `all` means every available category, in catalog order.
    The result keeps the order given and drops repeats.
    """
    if values is None:
        values = []
    elif isinstance(values, str):
        values = [values]
    tokens = [t.strip() for v in values for t in str(v).split(",")]
    if any(not t for t in tokens):  # read as nothing, an empty name would silently mean every category
        raise ThreecadError(f"category list {','.join(map(str, values))!r} holds an empty name; name categories "
                            "(ACC or ACC,CS) or pass `all`")
    pool = list(available) if available is not None else list(THREECAD)
    if not tokens or any(t.lower() == "all" for t in tokens):
        return pool
    out: list[Category] = []
    for token in tokens:
        cat = resolve_category(token, pool)
        if cat not in out:
            out.append(cat)
    return out


def category_for_folder(folder: str) -> Category:
    """The catalog entry for a folder on disk, or a custom category for an unknown one."""
    for cat in KNOWN:
        if folder.lower() in _names(cat):
            return cat
    return custom_category(folder)
