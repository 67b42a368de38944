"""The report's pictures as PNG data URIs: drawn here (the curves) or read from the run.

Why data URIs: the page is one file that opens offline, attached or archived. Figures are
matplotlib `Figure` objects on the Agg canvas (no pyplot state), as threecad.harness.losscurves.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from threecad.report.curves import PRO_LIMIT, CategoryCurves, Curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100
# Points kept per plotted curve: a pixel curve has a point per distinct score (millions on real
# data), far more than a 450 px panel can show, and each costs drawing time.
MAX_POINTS = 4000
LIMITS = (-0.02, 1.02)  # a little room: a perfect curve runs along the axes and would hide under them


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_file_uri(path: Path) -> tuple[str | None, str]:
    """(data URI, '') of a PNG the run wrote, or (None, why not)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    if not data.startswith(PNG_SIGNATURE):
        return None, f"{path.name} is not a PNG"
    return data_uri(data), ""


def figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return data_uri(buf.getvalue())


def _thin(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points, evenly along the curve's points, both ends kept."""
    n = len(curve.x)
    if n <= MAX_POINTS:
        return curve.x, curve.y
    keep = np.unique(np.linspace(0, n - 1, MAX_POINTS).round().astype(np.int64))
    return curve.x[keep], curve.y[keep]


def curves_figure(found: CategoryCurves, title: str, paper: bool):
    """ROC (image solid, pixel dashed) on the left, PRO on the right; None when there is no curve."""
    from matplotlib.figure import Figure

    if found.image_roc is None and found.pixel_roc is None and found.pro is None:
        return None
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle=":")
    for curve, style, name in ((found.image_roc, "-", "image"), (found.pixel_roc, "--", "pixel")):
        if curve is not None:
            left.plot(*_thin(curve), style, linewidth=1.6, label=f"{name} (AUROC {100 * curve.area:.1f})")
    left.set(xlim=LIMITS, ylim=LIMITS, xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    if found.pro is not None:
        x, y = _thin(found.pro)
        right.plot(x, y, color="#e16f24", linewidth=1.6,
                   label=f"PRO (AU-PRO@{PRO_LIMIT:g} {100 * found.pro.area:.1f}"
                         + (", MVTec definition)" if paper else ")"))
        right.axvspan(0, PRO_LIMIT, color="#e16f24", alpha=0.08, label=f"integrated: FPR \u2264 {PRO_LIMIT:g}")
    else:
        right.text(0.5, 0.5, "no PRO curve\n(see the note below)", ha="center", va="center", color="#57606a")
    right.set(xlim=LIMITS, ylim=LIMITS, xlabel="false-positive rate (pixels)", ylabel="mean region overlap",
              title="PRO")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right", frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
