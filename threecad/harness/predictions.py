"""What each category was scored on, kept in the run: the evidence its numbers rest on.

Why: a metric that the submitter wrote can be edited; predictions let anyone compute it
again. For every test image the run keeps the image score the metrics used (float32, NaN
where the protocol scores the map itself), the map at the evaluation size as the metrics saw
it (float32, lossless: 16-bit quantisation was tried and moved exact ties between images,
which on near-constant maps changed a pixel AUROC by 0.14), the label, the defect type, the
path relative to the dataset root and the xxh3 digests of the image and mask files.
Computing the metrics again from these files gives the same numbers bit for bit.

Files, per category (`predictions/<ABBR>...`):
  <ABBR>.maps.npy   float32 (N, S, S), written as the test set streams through
  <ABBR>.npz        scores, labels, defect_types, paths, image_xxh3, mask_xxh3
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from threecad.fsutil import atomic_path

STORAGE = "float32, lossless"


def file_xxh3(path: str | os.PathLike | None) -> str:
    """xxh3-64 of a file's bytes ('' for no file: a good image without a mask)."""
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return ""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def maps_file(run_path: Path, abbr: str) -> Path:
    return Path(run_path) / "predictions" / f"{abbr}.maps.npy"


def index_file(run_path: Path, abbr: str) -> Path:
    return Path(run_path) / "predictions" / f"{abbr}.npz"


class PredictionWriter:
    """Streams one category's test predictions to disk, batch by batch; `close()` finishes the files."""

    def __init__(self, run_path: Path, abbr: str, test, eval_size: int):
        self.run_path, self.abbr = Path(run_path), abbr
        samples = test.samples
        self._masks = dict(zip(samples["image_path"].astype(str), samples["mask_path"]))
        self._root = Path(test.root)
        self._final = maps_file(run_path, abbr)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._final.with_name(f".{self._final.name}.tmp")
        self.maps = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.float32,
                                               shape=(len(test), eval_size, eval_size))
        self._n = 0
        self._rows: dict[str, list] = {k: [] for k in ("scores", "labels", "defect_types", "paths", "image_xxh3",
                                                       "mask_xxh3")}

    def add(self, maps: np.ndarray, scores: np.ndarray | None, labels, defect_types, paths) -> None:
        """Keep one batch (float32 maps as the metrics see them)."""
        n = len(maps)
        self.maps[self._n:self._n + n] = maps
        self._n += n
        rows = self._rows
        rows["scores"].extend([np.nan] * n if scores is None else np.asarray(scores, np.float32).tolist())
        rows["labels"].extend(int(v) for v in labels)
        rows["defect_types"].extend(str(t) for t in defect_types)
        for path in paths:
            rows["paths"].append(os.path.relpath(path, self._root))
            rows["image_xxh3"].append(file_xxh3(path))
            rows["mask_xxh3"].append(file_xxh3(self._masks.get(str(path))))

    def close(self) -> dict[str, Any]:
        """Finish both files (atomically); the record's `predictions` entry."""
        self.maps.flush()
        del self.maps
        os.replace(self._tmp, self._final)
        index = index_file(self.run_path, self.abbr)
        arrays = {"scores": np.asarray(self._rows["scores"], dtype=np.float32)}
        arrays["labels"] = np.asarray(self._rows["labels"], dtype=np.int8)
        arrays.update({k: np.asarray(self._rows[k], dtype=str) for k in ("defect_types", "paths", "image_xxh3",
                                                                          "mask_xxh3")})
        with atomic_path(index, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return {"maps": str(self._final.relative_to(self.run_path)), "index": str(index.relative_to(self.run_path)),
                "storage": STORAGE, "images": self._n,
                "bytes": self._final.stat().st_size + index.stat().st_size}

    def abort(self) -> None:
        """Drop the partial file (a failed evaluation leaves no predictions behind)."""
        if hasattr(self, "maps"):
            del self.maps
        self._tmp.unlink(missing_ok=True)


def load_predictions(run_path: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """A category's stored predictions: the index arrays plus `maps` (float32, memory-mapped)."""
    index = np.load(Path(run_path) / entry["index"], allow_pickle=False)
    out = {k: index[k] for k in index.files}
    out["maps"] = np.load(Path(run_path) / entry["maps"], mmap_mode="r", allow_pickle=False)
    return out
