"""Which defect types each synthetic category has, and how large each kind tends to be.

The 47 type names are the paper's defect kinds in snake_case; each category gets as many
as Table 1 lists, chosen to fit the part (edge warping on parts with rings and holes,
iron core airflow on the iron stator, washing marks on stators and new frames).
"""
from __future__ import annotations

from dataclasses import dataclass

# abbreviation -> defect type folder names; counts are Table 1's `defect_types` column.
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "ACC": ("bump", "scratch", "bruise", "upper_line", "scrape", "outer_warping",
            "inner_warping", "discoloration", "black_spots", "dirt"),
    "AI": ("scratch", "bruise", "dirt"),
    "AMF": ("scratch", "bruise", "deformation", "uneven", "black_spots"),
    "ANMF": ("scratch", "bruise", "bump", "deformation", "watermarks", "overwashing"),
    "ANI": ("scratch", "bruise", "discoloration", "watermarks"),
    "AP": ("bump", "scratch", "bruise", "upper_line", "scrape", "outer_warping",
           "inner_warping", "discoloration", "uneven", "deformation", "whitening",
           "black_spots", "watermarks", "dirt"),
    "CS": ("deformation",),
    "IS": ("iron_core_airflow", "black_spots", "whitening", "overwashing"),
}


@dataclass(frozen=True)
class KindSize:
    """Range of a region's area as log10 of the fraction of the image area.

    Draws lean towards the small end (`skew` > 1), so that most regions stay under 1%
    of the image and many under 0.1%, as in 3CAD.
    """

    log_min: float
    log_max: float
    skew: float = 1.6


KIND_SIZES: dict[str, KindSize] = {
    "black_spots": KindSize(-4.0, -3.2),
    "scratch": KindSize(-3.3, -2.2),
    "upper_line": KindSize(-3.4, -2.4),
    "bump": KindSize(-3.9, -2.6),
    "bruise": KindSize(-3.8, -2.3),
    "dirt": KindSize(-3.8, -2.4),
    "scrape": KindSize(-3.3, -1.9),
    "outer_warping": KindSize(-3.4, -2.0),
    "inner_warping": KindSize(-3.4, -2.0),
    "discoloration": KindSize(-3.2, -1.6),
    "uneven": KindSize(-3.2, -1.7),
    "deformation": KindSize(-3.1, -1.6),
    "iron_core_airflow": KindSize(-3.3, -2.0),
    "whitening": KindSize(-3.3, -1.8),
    "watermarks": KindSize(-3.0, -1.8),
    "overwashing": KindSize(-2.9, -1.5),
}

ALL_KINDS = tuple(KIND_SIZES)
