"""The named choices of a benchmark run: its evaluation protocol and its training setting.

The metrics, the harness, the command line and the leaderboard all check these names;
they are defined here once, in a module without heavy imports, so that the command line
and the leaderboard can offer them without loading torch. What each protocol computes is
`threecad.metrics.protocols`; what each setting runs is `threecad.harness`.
"""
from __future__ import annotations

STANDARD = "standard"
PAPER = "3cad-paper"
PROTOCOLS = (STANDARD, PAPER)

PER_CATEGORY = "per-category"  # one model per category
UNIFIED = "unified"  # one model fitted on the union of the categories' training images
SETTINGS = (PER_CATEGORY, UNIFIED)


def default_setting(method_cls, preset: str, ddp: bool = False) -> str:
    """The setting a run takes when --setting is not given: its paper's for the paper preset
    (one model for all categories for UniAD and CRAD), per category otherwise and under --ddp
    (which shares one category's fit)."""
    if preset == "paper" and method_cls.unified_by_default and not ddp:
        return UNIFIED
    return PER_CATEGORY
