"""Shared fixtures: tiny datasets written with PIL, so that tests need no download and no synth."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, give each worker its share of the cores (and its subprocesses too).

    Two workers each running torch with a thread per core oversubscribe a 2-core machine, and
    OpenMP's spinning threads then make a 10 s test take 2 minutes (measured: DeSTSeg's cpu
    preset test, 10 s alone, 119 s in the suite).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)


_share_cores_between_workers()


@pytest.fixture(autouse=True)
def _own_data_home(tmp_path_factory, monkeypatch):
    """Every test gets an empty data home (datasets, the user's leaderboard table) of its own, unless it
    sets one: nothing a test writes by default lands in ~/threecad-data, and nothing there changes a test."""
    if "THREECAD_DATA_HOME" not in os.environ:
        monkeypatch.setenv("THREECAD_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


def make_tiny_dataset(root: Path, categories=("Aluminum_Camera_Cover", "Copper_Stator"),
                      n_train: int = 6, n_good: int = 3, n_defect: int = 3, size: int = 64,
                      mask_naming: str = "same", defect_types=("scratch", "bump"), seed: int = 0) -> Path:
    """Write an MVTec-like tree: bright noisy texture, defects are dark squares.

    mask_naming "same" is 3CAD's (mask has the image's file name), "_mask" is MVTec AD's.
    """
    rng = np.random.default_rng(seed)

    def texture() -> np.ndarray:
        base = 150 + rng.normal(0, 8, (size, size, 3))
        return np.clip(base, 0, 255).astype(np.uint8)

    for folder in categories:
        cat = root / folder
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            Image.fromarray(texture()).save(cat / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            Image.fromarray(texture()).save(cat / "test" / "good" / f"{i:03d}.png")
        for t, dtype in enumerate(defect_types):
            (cat / "test" / dtype).mkdir(parents=True, exist_ok=True)
            (cat / "ground_truth" / dtype).mkdir(parents=True, exist_ok=True)
            for i in range(n_defect):
                img = texture()
                mask = np.zeros((size, size), np.uint8)
                y, x = rng.integers(4, size - 16, 2)
                s = int(rng.integers(4, 12))
                img[y:y + s, x:x + s] = 30
                mask[y:y + s, x:x + s] = 255
                name = f"{i:03d}.png"
                Image.fromarray(img).save(cat / "test" / dtype / name)
                mname = name if mask_naming == "same" else f"{i:03d}_mask.png"
                Image.fromarray(mask).save(cat / "ground_truth" / dtype / mname)
    return root


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """Two 3CAD categories (ACC, CS), 64x64, 3CAD mask naming."""
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def tiny_mvtec_root(tmp_path: Path) -> Path:
    """Two MVTec AD categories with `_mask` naming."""
    return make_tiny_dataset(tmp_path / "mvtec", categories=("bottle", "screw"), mask_naming="_mask")
