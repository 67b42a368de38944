"""Per-method cost on the synthetic set, and PatchCore's coreset + scoring against a naive version.

Part 1 runs each method's `cpu` preset through the benchmark harness (the same code path
as `threecad bench`), so fit seconds, inference images/s (steady state, after a warm-up
batch) and peak host/device memory are measured exactly as in a run directory; I-AUROC
is printed alongside so that a fast but useless setting shows.

Part 2 takes PatchCore's own patch features of one category and times, in this process
on the same inputs, threecad's greedy coreset (one matrix-vector product per step) and
chunked nearest-neighbour scoring against a naive implementation that materialises the
full pairwise distance matrices (N x N for the coreset, test x bank for scoring). Both
see the same randomly projected features and the same first point, so their selections
must agree; the ratio is naive time / threecad time.

Part 3 (with --anomalib-python PY, the python of a separate venv holding anomalib 2.x,
which is never a threecad dependency): PatchCore in the `paper` architecture (WideResNet-50
layer2+layer3, 10 % coreset) with random weights (no download on either side), on the same
category's images at the same size, batch size and thread count, through threecad's
PatchCore and through anomalib's PatchcoreModel (benchmarks/anomalib_worker.py, in its own
process). Prints fit seconds and steady-state inference images/s side by side.

    .venv/bin/python benchmarks/methods.py --root SYNTH [--methods patchcore,padim] [--category ACC,CS]
        [--device cpu] [--naive-max-patches 12000] [--anomalib-python /path/to/venv/bin/python]

Without --root, a small synthetic set is written to a temporary folder by
`threecad.synth.generate` (or the test suite's noise generator when that is unavailable).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from baselines.patchcore import PatchCore, greedy_coreset, nearest_neighbors
from threecad.dataset import ThreeCAD
from threecad.harness import devices
from threecad.harness.runner import BenchSpec, run_benchmark
from threecad.method import build_config
from threecad.registry import available_methods

log = logging.getLogger("benchmarks.methods")


def make_data(root: Path) -> str:
    """A small synthetic set when none is given; returns where it came from."""
    try:
        generate = getattr(importlib.import_module("threecad.synth"), "generate")
    except (ImportError, AttributeError):
        generate = None
    if generate is not None:
        try:
            generate(root, scale=0.02, seed=0, categories=["ACC", "CS"], max_size=256)
            return "threecad.synth.generate (scale 0.02, ACC and CS)"
        except TypeError as exc:
            log.warning("threecad.synth.generate not usable here (%s); using the test generator", exc)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_dataset

    make_tiny_dataset(root, n_train=60, n_good=20, n_defect=10, size=256)
    return "tests/conftest.make_tiny_dataset (256 px noise with dark squares)"


def method_table(root: Path, methods: list[str], categories: list[str], device: str, work: Path) -> pd.DataFrame:
    rows = []
    for name in methods:
        spec = BenchSpec(method=name, root=root, categories=tuple(categories), preset="cpu", device=device,
                         out=work / name, pictures=0)
        results, code = run_benchmark(spec, echo=lambda msg: log.info("%s", msg))
        for abbr, rec in results["categories"].items():
            if rec.get("status") != "ok":
                rows.append({"method": name, "category": abbr, "status": rec.get("error", "failed")})
                continue
            rows.append({"method": name, "category": abbr, "status": "ok",
                         "n_train": rec["n_train"], "n_test": rec["n_test"],
                         "fit_s": rec["timings"]["fit_s"],
                         "infer_img_per_s": rec["timings"]["infer_images_per_s"],
                         "peak_host_mb": rec["memory"]["peak_host_rss_mb"],
                         "peak_device_mb": rec["memory"]["peak_device_mb"],
                         "i_auroc": rec["metrics"].get("i_auroc")})
    return pd.DataFrame(rows)


def naive_coreset(x: torch.Tensor, n_select: int, first: int) -> torch.Tensor:
    """Greedy k-center from the full N x N distance matrix (the straightforward way)."""
    full = torch.cdist(x, x)
    selected = [first]
    min_d = full[first].clone()
    for _ in range(n_select - 1):
        nxt = int(torch.argmax(min_d))
        selected.append(nxt)
        torch.minimum(min_d, full[nxt], out=min_d)
    return torch.tensor(selected)


def _timed(fn, device: torch.device):
    devices.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    devices.synchronize(device)
    return out, time.perf_counter() - t0


def coreset_comparison(root: Path, category: str, device: torch.device, max_patches: int) -> pd.DataFrame:
    config = build_config(PatchCore, "cpu")
    method = PatchCore(config, device=device)
    train = ThreeCAD(root, category, "train", image_size=config.image_size)
    test = ThreeCAD(root, category, "test", image_size=config.image_size)
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=config.batch_size)  # noqa: E731
    with torch.inference_mode():
        feats = torch.cat([method.embed(b["image"].to(device)).permute(0, 2, 3, 1).flatten(0, 2)
                           for b in loader(train)])
        queries = torch.cat([method.embed(b["image"].to(device)).permute(0, 2, 3, 1).flatten(0, 2)
                             for b in loader(test)])
    if feats.shape[0] > max_patches:  # the naive N x N matrix must fit in memory
        keep = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))[:max_patches]
        feats = feats[keep.to(device)]
    n, d = feats.shape
    gen = torch.Generator().manual_seed(config.seed)
    proj = (torch.randn(d, config.projection_dim, generator=gen) / config.projection_dim ** 0.5).to(device)
    x = feats @ proj
    n_select = max(1, round(config.coreset_ratio * n))
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        fast_idx, t_fast = _timed(lambda: greedy_coreset(x, n_select, torch.Generator().manual_seed(1),
                                                         projection_dim=0), device)
        slow_idx, t_slow = _timed(lambda: naive_coreset(x, n_select, first), device)
        agree = float((fast_idx.cpu() == slow_idx).float().mean())
        bank = feats[fast_idx]
        (fast_d, _), s_fast = _timed(lambda: nearest_neighbors(queries, bank, 1), device)
        slow_d, s_slow = _timed(lambda: torch.cdist(queries, bank).min(1).values, device)
        err = float((fast_d[:, 0] - slow_d).abs().max())
    return pd.DataFrame([
        {"step": "coreset", "inputs": f"{n} patches x {config.projection_dim} dims -> {n_select}",
         "threecad_s": t_fast, "naive_s": t_slow, "ratio": t_slow / t_fast,
         "naive_matrix_mb": n * n * 4 / 2**20, "check": f"same selection {100 * agree:.1f}%"},
        {"step": "scoring", "inputs": f"{queries.shape[0]} test patches vs {bank.shape[0]} x {d}",
         "threecad_s": s_fast, "naive_s": s_slow, "ratio": s_slow / s_fast,
         "naive_matrix_mb": queries.shape[0] * bank.shape[0] * 4 / 2**20, "check": f"max |d diff| {err:.1e}"},
    ])


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def anomalib_comparison(root: Path, category: str, python: str, image_size: int, n_images: int,
                        work: Path) -> pd.DataFrame:
    """threecad vs anomalib PatchCore (paper architecture, random weights) on the same images, CPU."""
    batch = 8
    config = build_config(PatchCore, "paper", {"weights": "none", "image_size": str(image_size),
                                               "batch_size": str(batch)})
    stack = lambda ds: torch.stack([ds[i]["image"] for i in range(min(len(ds), n_images))])  # noqa: E731
    train = stack(ThreeCAD(root, category, "train", image_size=image_size))
    test = stack(ThreeCAD(root, category, "test", image_size=image_size))
    data = work / "anomalib_images.npz"
    np.savez(data, train=((train - IMAGENET_MEAN) / IMAGENET_STD).numpy(),
             test=((test - IMAGENET_MEAN) / IMAGENET_STD).numpy())
    threads = torch.get_num_threads()

    method = PatchCore(config, device="cpu")
    t0 = time.perf_counter()
    method.fit([{"image": train[i:i + batch]} for i in range(0, len(train), batch)])
    fit_s = time.perf_counter() - t0
    timed = n_timed = 0
    post = method.postprocess()
    with torch.inference_mode():
        for k, i in enumerate(range(0, len(test), batch)):
            t = time.perf_counter()
            scores, maps = method.predict(test[i:i + batch])
            post.apply(maps, scores)  # the harness's smoothing, as anomalib's forward blurs its map
            if k > 0:  # the first batch warms up, as in the harness
                timed += time.perf_counter() - t
                n_timed += len(test[i:i + batch])
    ours = {"implementation": "threecad PatchCore", "fit_s": fit_s, "infer_img_per_s": n_timed / timed,
            "bank": "x".join(map(str, method.memory_bank.shape))}

    out = work / "anomalib_result.json"
    cmd = [python, str(Path(__file__).with_name("anomalib_worker.py")), "--data", str(data), "--out", str(out),
           "--ratio", str(config.coreset_ratio), "--batch-size", str(batch), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"anomalib worker failed ({' '.join(cmd)}):\n{tail}")
    theirs = json.loads(out.read_text())
    rows = [ours, {"implementation": f"anomalib {theirs['anomalib']} PatchcoreModel", "fit_s": theirs["fit_s"],
                   "infer_img_per_s": theirs["infer_images_per_s"], "bank": "x".join(map(str, theirs["bank"]))}]
    table = pd.DataFrame(rows)
    table["infer_speed_vs_anomalib"] = table["infer_img_per_s"] / theirs["infer_images_per_s"]
    table["fit_speed_vs_anomalib"] = theirs["fit_s"] / table["fit_s"]
    print(f"\nPatchCore, WideResNet-50 layer2+layer3 (random weights), {len(train)} train / {len(test)} test "
          f"images of {category} at {image_size} px, batch {batch}, {threads} threads, CPU")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="synthetic dataset (threecad synth --out ...)")
    parser.add_argument("--methods", default="",
                        help="comma list; default every registered method; none: only the anomalib comparison")
    parser.add_argument("--category", default="all", help="comma list of categories, or all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-max-patches", type=int, default=12000,
                        help="subsample train patches so the naive N x N matrix fits in memory")
    parser.add_argument("--anomalib-python", default=None,
                        help="python of a separate venv with anomalib 2.x: add its PatchCore side by side")
    parser.add_argument("--anomalib-size", type=int, default=224, help="image size of that comparison")
    parser.add_argument("--anomalib-images", type=int, default=48,
                        help="at most this many train and test images in that comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    device = devices.pick_device(args.device)
    devices.configure_threads(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "synth"
            print(f"data: {make_data(root)}")
        registered = available_methods()
        names = [m for m in args.methods.split(",") if m] or [
            n for n, cls in registered.items() if isinstance(cls, type) and "cpu" in cls.presets]
        cats = [c for c in args.category.split(",") if c]
        if args.methods == "none":  # only part 3
            names = []
        pd.set_option("display.width", 200)
        if names:
            table = method_table(root, names, cats, str(device), Path(tmp) / "runs")
            print(f"\nmethods, cpu preset, on {root} [{devices.hardware(device)}]")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if "patchcore" in names:
            done = table[(table["method"] == "patchcore") & (table["status"] == "ok")]
            first_cat = done.sort_values("n_train", ascending=False)["category"].iloc[0]  # the most patches
            print(f"\nPatchCore coreset + scoring vs naive full pairwise distances ({first_cat}, {device})")
            comp = coreset_comparison(root, first_cat, device, args.naive_max_patches)
            print(comp.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if args.anomalib_python:
            cat = cats[0] if cats and cats[0] != "all" else "ACC"
            comp = anomalib_comparison(root, cat, args.anomalib_python, args.anomalib_size,
                                       args.anomalib_images, Path(tmp))
            print(comp.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
