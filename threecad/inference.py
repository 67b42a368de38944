"""`threecad predict`: a run's model on new images, written as files a person or a line system reads.

Per image: the anomaly map (float32 `.npy`, or a 16-bit PNG whose scale is recorded), a
heat-map overlay PNG, the image score and the decision; for all of them `predictions.csv`
(path, score, decision, threshold). Maps and overlays share one colour scale: the range of
the category's stored test maps when the run kept them (so a colour means the same in every
picture), else the range of the maps of this call. An image that cannot be read is listed and
skipped; nothing is written outside the output folder.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_bytes, atomic_write_text
from threecad.saved_run import SavedModel

MAP_FORMATS = ("npy", "png16")
RESULTS_FILE = "predictions.csv"


@dataclass
class Outcome:
    scored: int = 0
    anomalous: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def output_names(images: Sequence[Path], folder: Path | None) -> list[str]:
    """A distinct relative name (no suffix) per image: its path under `folder`, or its file name
    (numbered when two share one)."""
    names, seen = [], set()
    for path in images:
        name = Path(os.path.relpath(path, folder)).with_suffix("").as_posix() if folder else Path(path).stem
        base, k = name, 1
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def map_scale(model: SavedModel, fallback: np.ndarray) -> tuple[float, float, str]:
    """(lo, hi, where the range comes from) for the colours and the 16-bit maps."""
    entry = model.record.get("predictions")
    maps_path = model.run.path / entry["maps"] if entry else None
    if maps_path is not None and maps_path.is_file():
        stored = np.load(maps_path, mmap_mode="r")
        lo, hi = float(stored.min()), float(stored.max())
        source = f"the range of the run's stored {model.category} test maps"
    else:
        lo, hi = float(fallback.min()), float(fallback.max())
        source = "the range of the maps of this call (the run kept no test maps)"
    return lo, (hi if hi > lo else lo + 1.0), source


def overlay_png(pixels: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> bytes:
    """The image (3, S, S) uint8 with the map in colour over it, at the map's size."""
    from matplotlib import colormaps
    from PIL import Image

    size = amap.shape[-1]
    image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    heat = colormaps["jet"](np.clip((amap - lo) / (hi - lo), 0, 1))[..., :3]
    blend = (0.5 * np.asarray(image, np.float32) / 255 + 0.5 * heat) * 255
    buf = io.BytesIO()
    Image.fromarray(blend.round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def map_bytes(amap: np.ndarray, fmt: str, lo: float, hi: float) -> bytes:
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, amap.astype(np.float32))
    else:
        from PIL import Image

        scaled = np.clip((amap - lo) / (hi - lo), 0, 1) * 65535
        Image.fromarray(scaled.round().astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def predict_images(model: SavedModel, images: Sequence[Path], out: Path, *, threshold: float,
                   how: str, folder: Path | None = None, maps: str = "npy", batch_size: int | None = None,
                   echo: Callable[[str], None] = lambda _: None) -> Outcome:
    """Score `images` and write every file under `out` (see the module docstring)."""
    from threecad.progress import progress

    if maps not in MAP_FORMATS:
        raise ThreecadError(f"--maps {maps}: choose one of {', '.join(MAP_FORMATS)}")
    names = output_names(images, folder)
    outcome = Outcome()
    rows: list[dict] = []
    batch_size = batch_size or model.config.batch_size
    scale = None
    batches = range(0, len(images), batch_size)
    for start in progress(batches, desc=f"predict {model.category}", unit="batch"):
        pixels, kept = [], []
        for path, name in zip(images[start:start + batch_size], names[start:start + batch_size]):
            try:
                pixels.append(model.read(path))
                kept.append((path, name))
            except ThreecadError as exc:
                outcome.unreadable.append((str(path), str(exc)))
        if not pixels:
            continue
        stack = np.stack(pixels)
        result = model.predict_pixels(stack)
        if scale is None:
            scale = map_scale(model, result.maps)
        lo, hi, _ = scale
        for (path, name), image, score, amap in zip(kept, stack, result.scores, result.maps):
            anomalous = bool(score > threshold)
            suffix = "npy" if maps == "npy" else "png"
            atomic_write_bytes(out / "maps" / f"{name}.{suffix}", map_bytes(amap, maps, lo, hi))
            atomic_write_bytes(out / "overlays" / f"{name}.png", overlay_png(image, amap, lo, hi))
            rows.append({"path": str(path), "score": f"{float(score):.9g}",
                         "decision": "anomalous" if anomalous else "good", "threshold": f"{threshold:.9g}"})
            outcome.scored += 1
            outcome.anomalous += anomalous
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["path", "score", "decision", "threshold"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / RESULTS_FILE, text.getvalue())
    lo, hi, source = scale if scale is not None else (0.0, 1.0, "no image was scored")
    atomic_write_text(out / "predict.json", json.dumps({
        "run": str(model.run.path), "run_id": model.run.spec.get("run_id"), "method": model.run.method,
        "category": model.category, "protocol": model.protocol, "eval_size": model.eval_size,
        "preprocess": model.preprocess.as_dict(), "postprocess": model.post.as_dict(),
        "threshold": threshold, "threshold_rule": how, "maps": maps,
        "map_scale": {"lo": lo, "hi": hi, "source": source,
                      "png16": "value = lo + pixel / 65535 * (hi - lo), clipped to [lo, hi]"},
        "scored": outcome.scored, "unreadable": [{"path": p, "why": w} for p, w in outcome.unreadable],
    }, indent=2) + "\n")
    return outcome
