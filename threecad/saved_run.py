"""A finished benchmark run, opened for use: its results as a table, and each category's model
rebuilt from the checkpoint and config the run recorded.

Why: what a run trained should be usable on new images and compute exactly what was
benchmarked. A `SavedModel` reads images through the method's declared preprocess (the
dataset's own reader), predicts, applies the run protocol's treatment and the resize to the
evaluation grid with the very function the benchmark scored its test set with
(`threecad.harness.evaluation.score_batch`), and ranks images by the score the protocol ranks
them by. Decision thresholds come from the scores of held-out good training images that the
run recorded (`threshold_calibration`), never from the test set.

    run = threecad.load_run("runs/patchcore")
    run.results                     # one row per category and metric (pandas)
    model = run.model("ACC")
    out = model.predict(["a.png", "b.png"])   # out.scores (N,), out.maps (N, S, S)
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from threecad.errors import ThreecadError

DEFAULT_FPR = 0.01


def recorded_config(data: dict[str, Any]):
    """(method class, config) as a run's run.json or results.json records them; a field the method
    does not have, or a value it refuses, is an error."""
    from threecad.registry import load_method

    method_cls = load_method(str(data.get("method")))
    fields = {f.name for f in dataclasses.fields(method_cls.config_class)}
    config = data.get("config") or {}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ThreecadError(f"the recorded config has fields {method_cls.name} does not have: {unknown[:5]}")
    try:
        built = method_cls.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    except (TypeError, ValueError) as exc:
        raise ThreecadError(f"the recorded config is not a valid {method_cls.name} config: {exc}") from None
    return method_cls, built


def threshold_at(scores: Sequence[float], fpr: float = DEFAULT_FPR) -> float:
    """The (1 - fpr) quantile of good images' scores, the largest of them when there are fewer than
    1/fpr: above it an image is called anomalous."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - fpr, method="higher"))


@dataclass
class Prediction:
    """What a model says of a batch of images, as the benchmark scored its test images."""

    scores: np.ndarray  # (N,) float32: the image score the run's protocol ranks by
    maps: np.ndarray  # (N, S, S) float32 at the run's evaluation size, post-processed as the run's protocol says
    paths: list[str]  # what each row was read from ('' for an array given directly)


class SavedModel:
    """One category's model of a run."""

    def __init__(self, run: "SavedRun", category: str, device: str = "cpu"):
        import torch

        from threecad.harness.fitting import new_method
        from threecad.integrity import load_checked

        self.run, self.category = run, category
        self.record = run.record(category)
        if self.record.get("status") != "ok":
            raise ThreecadError(f"{run.path}: {category} did not finish ({self.record.get('error', 'failed')}); "
                                "there is no model to load")
        self.device = torch.device(device)
        method_cls, config = recorded_config(run.spec)
        self.method = new_method(method_cls, config, self.device, work_dir=None)
        self.method.load_state_dict(load_checked(run.path / self.record["checkpoint"], map_location=self.device))
        self.config = config
        self.preprocess = self.method.preprocess()
        self.post = self.method.postprocess()
        self.protocol = str(run.spec["protocol"])
        self.eval_size = int(run.spec["eval_size"])

    # ------------------------------------------------------------------ reading images
    def read(self, image) -> np.ndarray:
        """One image (a path, a PIL image, or an (H, W, 3) uint8 array) -> (3, S, S) uint8 through the
        method's declared preprocess, as the dataset reads test images."""
        from PIL import Image

        from threecad.dataset import load_image, to_rgb

        if isinstance(image, (str, Path)):
            return load_image(image, self.preprocess)[0]
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ThreecadError(f"an image array must be (H, W, 3) uint8, not {image.shape} {image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ThreecadError(f"cannot read an image from a {type(image).__name__}: give paths, PIL images or "
                                "(H, W, 3) uint8 arrays")
        return self.preprocess.image(to_rgb(image))

    # ------------------------------------------------------------------ predicting
    def predict(self, images: Sequence | Any, batch_size: int | None = None) -> Prediction:
        """Scores and maps of `images` (paths, PIL images or uint8 arrays; one or a list)."""
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        batch_size = batch_size or self.config.batch_size
        scores, maps, paths = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = np.stack([self.read(im) for im in chunk])
            out = self.predict_pixels(pixels)
            scores.append(out.scores)
            maps.append(out.maps)
            paths += [str(im) if isinstance(im, (str, Path)) else "" for im in chunk]
        if not scores:
            return Prediction(np.zeros(0, np.float32), np.zeros((0, self.eval_size, self.eval_size), np.float32), [])
        return Prediction(np.concatenate(scores), np.concatenate(maps), paths)

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """(N, 3, S, S) uint8 images already through the preprocess -> scores and maps."""
        import torch

        from threecad.harness.evaluation import score_batch
        from threecad.metrics.protocols import ranking_scores

        x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0).to(self.device)
        scores, maps = score_batch(self.method, self.post, self.protocol, x, self.eval_size)
        ranked = np.asarray(ranking_scores(self.protocol, scores, maps), dtype=np.float32)
        return Prediction(ranked, maps.numpy().astype(np.float32, copy=False), [""] * len(pixels))

    # ------------------------------------------------------------------ deciding
    def threshold(self, fpr: float = DEFAULT_FPR) -> float:
        """The score above which an image is called anomalous: the (1 - fpr) quantile of the held-out
        good images' scores the run recorded (the largest of them when there are fewer than 1/fpr)."""
        if not 0 <= fpr < 1 or math.isnan(fpr):
            raise ThreecadError(f"--fpr {fpr}: must be in [0, 1)")
        held_out = self.record.get("threshold_calibration")
        if not held_out or not held_out.get("scores"):
            raise ThreecadError(f"{self.run.path}: {self.category} has no held-out good images to set a threshold "
                                "from (the run had no validation split: `threecad split` makes one); pass --threshold")
        return threshold_at(held_out["scores"], fpr)


class SavedRun:
    """A run directory written by `threecad bench`."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not (self.path / "run.json").is_file():
            raise ThreecadError(f"{self.path} is not a run directory (no run.json); pass the --out folder of "
                                "`threecad bench`")
        self.spec = _read_json(self.path / "run.json")
        results = self.path / "results.json"
        self.summary = _read_json(results) if results.is_file() else {}

    @property
    def method(self) -> str:
        return str(self.spec["method"])

    @property
    def categories(self) -> list[str]:
        """The categories with a record, in the run's order."""
        listed = list((self.summary.get("categories") or {}).keys())
        found = sorted(p.stem for p in (self.path / "categories").glob("*.json"))
        return listed + [c for c in found if c not in listed]

    @property
    def results(self) -> pd.DataFrame:
        """One row per category and metric: category, metric, value (a fraction), status."""
        rows = []
        for abbr in self.categories:
            record = self.record(abbr)
            for metric, value in (record.get("metrics") or {}).items():
                rows.append({"category": abbr, "metric": metric, "value": value, "status": record.get("status")})
        return pd.DataFrame(rows, columns=["category", "metric", "value", "status"])

    def record(self, category: str) -> dict[str, Any]:
        path = self.path / "categories" / f"{category}.json"
        if not path.is_file():
            known = ", ".join(self.categories) or "none"
            raise ThreecadError(f"{self.path} has no category {category!r} (it has: {known})")
        return _read_json(path)

    def model(self, category: str, device: str = "cpu") -> SavedModel:
        return SavedModel(self, category, device)


def load_run(path: str | Path) -> SavedRun:
    """Open a run directory (the --out folder of `threecad bench`)."""
    return SavedRun(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ThreecadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ThreecadError(f"{path} is not a JSON object")
    return data


def image_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Every image file under `folder`, recursively, sorted; regular files only (a FIFO is never read)."""
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in wanted and p.is_file())
