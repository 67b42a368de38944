"""Names that enter the leaderboard: one display spelling per method, and only safe characters.

A method appears on the board under the spelling the paper prints (`PatchCore`, `RD++`),
whatever case its registry name or a hand-edited row uses, so that the rows of one method
read alike and sort together. Names of runs (method, preset, run id) are restricted to a
small character set: the CSV is opened in spreadsheets, where a cell starting with `=`,
`+`, `-` or `@` is a formula (`=HYPERLINK(...)`), and the page and the README quote them.
"""
from __future__ import annotations

import re

# The paper's spelling of every method it compares, plus the baselines that ship with threecad.
# Keys are lower case with `-`, `_` and spaces removed; registry aliases map to the same name.
_DISPLAY: dict[str, str] = {
    "patchcore": "PatchCore",
    "padim": "PaDiM",
    "rd": "RD",
    "reversedistillation": "RD",
    "rd++": "RD++",
    "rdpp": "RD++",
    "cfrg": "CFRG",
    "draem": "DRAEM",
    "destseg": "DeSTSeg",
    "simplenet": "SimpleNet",
    "realnet": "RealNet",
    "fastflow": "FastFlow",
    "uniad": "UniAD",
    "crad": "CRAD",
    "efficientad": "EfficientAD",
}

SAFE_CHARACTERS = "letters, digits, '.', '_', '+', '-', '=', ',' and spaces"
_SAFE = re.compile(r"[A-Za-z0-9._+\-=, ]+")
# Characters that make a spreadsheet read a cell as a formula (tab and CR too, by OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _key(name: str) -> str:
    return re.sub(r"[-_ ]", "", name.strip().lower())


def display_name(method: str) -> str:
    """The leaderboard spelling of a method: the paper's for known methods, else as given."""
    return _DISPLAY.get(_key(method), method.strip())


def is_known_method(method: str) -> bool:
    """Whether the method has a display spelling of its own (the paper's or a shipped baseline's)."""
    return _key(method) in _DISPLAY


def unsafe_reason(value: str) -> str | None:
    """Why `value` may not be a method, preset or run id on the board, or None when it may."""
    if not value.strip():
        return "is empty"
    if value != value.strip():
        return "starts or ends with a space"
    if value.startswith(FORMULA_STARTS):
        return f"starts with '{value[0]}', which spreadsheets read as a formula"
    bad = sorted(set(_SAFE.sub("", value)))
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        return f"contains {shown}; allowed: {SAFE_CHARACTERS}, not starting with = + - @"
    return None


def formula_reason(value: str) -> str | None:
    """Why a free-text cell (hardware, category of a custom dataset) is unsafe, or None."""
    if value.startswith(FORMULA_STARTS):
        return f"starts with {value[0]!r}, which spreadsheets read as a formula"
    return None
