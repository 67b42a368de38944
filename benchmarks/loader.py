"""Loader throughput, cold (PNG decode + resize on every access) vs warm (memory-mapped cache).

Both run in this process on the same files, through the same DataLoader settings, so the
ratio is what the cache buys per epoch. The one-off cache build is timed too.

    .venv/bin/python benchmarks/loader.py [--images 64] [--side 1024] [--size 256] [--workers 0]

Data: `threecad.synth.generate` when that module provides it, else the test suite's
noise-texture generator (noise compresses badly, so its PNGs are large and slow to decode:
a pessimistic stand-in for real 3CAD photographs of up to 1024x1024).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from threecad.dataset import ThreeCAD

log = logging.getLogger("benchmarks.loader")
FOLDER = "Aluminum_Camera_Cover"


def make_data(root: Path, images: int, side: int) -> str:
    """Write one category with `images` training images; returns where they came from."""
    try:
        synth = importlib.import_module("threecad.synth")
        generate = getattr(synth, "generate")
    except (ImportError, AttributeError):
        generate = None
    if generate is not None:
        try:
            generate(root, scale=images / 784, seed=0, categories=["ACC"], max_size=side, min_train=0)
            return "threecad.synth.generate"
        except TypeError as exc:  # signature not the one assumed here
            log.warning("threecad.synth.generate not usable here (%s); using the test generator", exc)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_dataset

    make_tiny_dataset(root, categories=(FOLDER,), n_train=images, n_good=1, n_defect=1,
                      size=side, defect_types=("scratch",))
    return f"tests/conftest.make_tiny_dataset ({side}x{side} noise)"


def one_pass(ds: ThreeCAD, batch_size: int, workers: int) -> float:
    """Images per second over one full pass."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    seen = 0
    checksum = 0.0
    for batch in loader:
        seen += len(batch["image"])
        checksum += float(batch["image"][:, :, 0, 0].sum())  # touch the data
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images to generate")
    parser.add_argument("--side", type=int, default=1024, help="side of the generated PNGs")
    parser.add_argument("--size", type=int, default=256, help="Dataset image_size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--epochs", type=int, default=2, help="passes measured per mode (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="threecad-loader-") as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        t0 = time.perf_counter()
        source = make_data(root, args.images, args.side)
        print(f"data: {source}, {args.images} images, written in {time.perf_counter() - t0:.1f}s")
        cold_ds = ThreeCAD(root, "ACC", split="train", image_size=args.size, cache=False)
        cold = max(one_pass(cold_ds, args.batch_size, args.workers) for _ in range(args.epochs))
        t0 = time.perf_counter()
        warm_ds = ThreeCAD(root, "ACC", split="train", image_size=args.size, cache=cache,
                           table=cold_ds.samples)
        build = len(warm_ds) / (time.perf_counter() - t0)
        warm = max(one_pass(warm_ds, args.batch_size, args.workers) for _ in range(args.epochs))
        for a, b in ((cold_ds[0], warm_ds[0]), (cold_ds[-1], warm_ds[-1])):
            assert torch.equal(a["image"], b["image"]), "cache and decoding disagree"
    print(f"image_size {args.size}, batch {args.batch_size}, DataLoader workers {args.workers}")
    print(f"{'mode':<28}{'images/s':>10}")
    print(f"{'cold (decode + resize)':<28}{cold:>10.1f}")
    print(f"{'cache build (threads)':<28}{build:>10.1f}")
    print(f"{'warm (memmap cache)':<28}{warm:>10.1f}")
    print(f"warm / cold = {warm / cold:.1f}x; build / cold = {build / cold:.2f}x")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
