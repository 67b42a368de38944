"""Pictures of a category's hardest test images: the highest-scored good ones (false alarms)
and the lowest-scored defective ones (misses), with the anomaly map over the image and
the ground-truth outline. Only k of each are kept while streaming, at a small size."""
from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from threecad.fsutil import atomic_path

THUMB = 160


class HardestImages:
    def __init__(self, k: int = 6):
        self.k = k
        self._good: list = []  # min-heap on score: keeps the k highest
        self._bad: list = []   # min-heap on -score: keeps the k lowest
        self._tie = itertools.count()
        self.map_min = float("inf")
        self.map_max = float("-inf")

    def update(self, images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor,
               scores: torch.Tensor, labels: torch.Tensor, paths: list[str]) -> None:
        """images (N,3,H,W) in [0,1]; maps and masks (N,H,W); all on the CPU."""
        if self.k <= 0:
            return
        self.map_min = min(self.map_min, float(maps.min()))
        self.map_max = max(self.map_max, float(maps.max()))
        for i in range(len(paths)):
            s = float(scores[i])
            heap, key = (self._bad, -s) if int(labels[i]) else (self._good, s)
            if len(heap) < self.k or key > heap[0][0]:
                item = (key, next(self._tie), self._thumb(images[i], maps[i], masks[i]), s, paths[i])
                (heapq.heapreplace if len(heap) >= self.k else heapq.heappush)(heap, item)

    @staticmethod
    def _thumb(image, amap, mask):
        img = F.interpolate(image[None].float(), size=(THUMB, THUMB), mode="bilinear", antialias=True)[0]
        m = F.interpolate(amap[None, None].float(), size=(THUMB, THUMB), mode="bilinear")[0, 0]
        g = F.interpolate(mask[None, None].float(), size=(THUMB, THUMB), mode="nearest")[0, 0]
        return img.permute(1, 2, 0).clamp(0, 1).numpy(), m.numpy(), g.numpy() > 0.5

    def render(self, path: str | Path, title: str, threshold: float | None = None) -> None:
        """The picture; with `threshold` (set on held-out good images, threecad predict's default) each
        score is also given as a multiple of it, which says more than a raw score in the method's units."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        good = sorted(self._good, key=lambda t: -t[3])
        bad = sorted(self._bad, key=lambda t: t[3])
        cols = max(len(good), len(bad), 1)
        fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 5.2), squeeze=False)
        span = max(self.map_max - self.map_min, 1e-12)
        for row, (items, label) in enumerate([(good, "good, highest score"), (bad, "defective, lowest score")]):
            for c in range(cols):
                ax = axes[row][c]
                ax.axis("off")
                if c >= len(items):
                    continue
                _, _, (img, amap, gt), score, p = items[c]
                ax.imshow(img)
                ax.imshow((amap - self.map_min) / span, cmap="jet", alpha=0.45, vmin=0, vmax=1)
                if gt.any():
                    ax.contour(gt.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
                relative = f" = {score / threshold:.2f} x thr" if threshold and threshold > 0 else ""
                ax.set_title(f"{Path(p).parent.name}/{Path(p).name}\nscore {score:.3g}{relative}", fontsize=7)
            axes[row][0].text(-0.08, 0.5, label, transform=axes[row][0].transAxes, rotation=90,
                              va="center", ha="right", fontsize=9)
        note = f"; thr: threshold {threshold:.3g}, 1 % of held-out good images above it" if threshold else ""
        fig.suptitle(f"{title}   (green: ground truth{note})", fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.93, 1))
        bar = fig.add_axes((0.945, 0.15, 0.012, 0.7))
        scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(self.map_min, self.map_min + span),
                                             cmap="jet")
        fig.colorbar(scale, cax=bar).ax.tick_params(labelsize=7)
        bar.set_title("map", fontsize=7)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
