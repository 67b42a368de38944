"""Tiny methods for harness tests, registered through a real entry point by the tests.

`MeanDistance` scores each pixel by its distance to the mean training image: crude, but
it finds the tests' dark squares, so metrics are above chance and checkable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from threecad.method import Method, MethodConfig


@dataclass
class MeanDistanceConfig(MethodConfig):
    image_size: int = 32
    batch_size: int = 4
    fail_on: str = ""  # fail in fit when the training images' paths contain this
    log_file: str = ""  # append one line per fit, to count fits across processes
    predict_log: str = ""  # save each batch predict receives as PREFIX.<n>.pt (what the model saw)


class MeanDistance(Method):
    name = "meandist"
    description = "distance to the mean training image (test fixture)"
    config_class = MeanDistanceConfig
    presets = {"paper": {}, "cpu": {"image_size": 32}}

    def fit(self, train_loader, val_loader=None) -> None:
        total, n, paths = 0, 0, []
        for batch in train_loader:
            total = total + batch["image"].sum(0)
            n += len(batch["image"])
            paths += list(batch["path"])
        if self.config.fail_on and any(self.config.fail_on in p for p in paths):
            raise RuntimeError(f"planned failure on {self.config.fail_on}")
        if self.config.log_file:
            with open(self.config.log_file, "a") as fh:
                fh.write(Path(paths[0]).parts[-4] + "\n")
        self.mean = (total / n).to(self.device)

    def predict(self, images):
        if self.config.predict_log:
            self._calls = getattr(self, "_calls", 0) + 1
            torch.save(images.cpu(), f"{self.config.predict_log}.{self._calls:04d}.pt")
        maps = (images - self.mean).abs().mean(1)
        return maps.flatten(1).max(1).values, maps

    def state_dict(self):
        return {"mean": self.mean.cpu()}

    def load_state_dict(self, state):
        self.mean = state["mean"].to(self.device)


def write_distribution(site: Path) -> Path:
    """Make `site` hold a dist-info that registers MeanDistance under threecad.methods."""
    dist = site / "threecad_fake_methods-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: threecad-fake-methods\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[threecad.methods]\nmeandist = fake_methods:MeanDistance\n")
    return site


def pythonpath_with(site: Path) -> str:
    here = str(Path(__file__).parent)
    return os.pathsep.join([str(site), here, os.environ.get("PYTHONPATH", "")])
