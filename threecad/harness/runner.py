"""Run one method over the categories of a dataset, measuring every method the same way.

Per category: loaders, fit (timed), predict over the test set streamed into the
Evaluator (throughput timed after a warm-up batch, with device synchronisation), peak
host and device memory, a checkpoint, pictures, and an atomic per-category record, so
that `--resume` skips what finished and a failure in one category does not stop the others.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from threecad.catalog import Category, resolve_categories
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_path
from threecad.harness import devices
from threecad.harness.memory import PeakMemory
from threecad.harness.pictures import HardestImages
from threecad.harness.rundir import MAIN_METRICS, RunDir
from threecad.layout import fingerprint, scan_root
from threecad.method import Method, build_config
from threecad.registry import load_method

log = logging.getLogger(__name__)
PROTOCOLS = ("standard", "3cad-paper")
EXACT_PIXEL_LIMIT = 250_000_000  # above this many test pixels, `auto` metrics stream


@dataclass
class BenchSpec:
    """What `threecad bench` was asked to do."""

    method: str
    root: Path
    categories: tuple[str, ...] = ("all",)
    preset: str | None = None  # None: "paper" on CUDA, "cpu" on the CPU
    overrides: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    protocol: str = "standard"
    out: Path | None = None
    resume: bool = False
    eval_size: int = 256
    metrics_mode: str = "auto"  # exact | streaming | auto
    pictures: int = 6


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dataset_name(root: Path, scan_dataset: str) -> str:
    return "3cad-synthetic" if (root / "synthetic.json").is_file() else scan_dataset


def _run_id(method: str, preset: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{method}-{preset}-{stamp}-{secrets.token_hex(3)}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_benchmark(spec: BenchSpec, echo=print) -> tuple[dict[str, Any], int]:
    """Run the benchmark; returns (results.json content, exit code: 0 ok, 1 a category failed)."""
    if spec.protocol not in PROTOCOLS:
        raise ThreecadError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if spec.metrics_mode not in ("auto", "exact", "streaming"):
        raise ThreecadError(f"unknown metrics mode '{spec.metrics_mode}'; valid: auto, exact, streaming")
    device = devices.pick_device(spec.device)
    devices.configure_threads(device)
    method_cls = load_method(spec.method)
    preset = spec.preset or ("paper" if device.type == "cuda" else "cpu")
    if spec.preset is None:
        log.info("preset %s (default for %s)", preset, device.type)
    config = build_config(method_cls, preset, spec.overrides)
    root = Path(spec.root).expanduser()
    scan = scan_root(root)
    errors = [p for p in scan.problems if p.severity == "error"]
    if errors:
        log.warning("%d layout problems under %s (first: %s); run `threecad verify`", len(errors), root, errors[0])
    categories = resolve_categories(spec.categories, scan.categories)

    run_spec = {
        "method": method_cls.name, "preset": preset, "config": dataclasses.asdict(config),
        "protocol": spec.protocol, "eval_size": spec.eval_size,
        "dataset": {"name": dataset_name(root, scan.dataset), "root": str(root.resolve()),
                    "fingerprint": fingerprint(scan.table, root)},
        "seed": config.seed, "device": str(device),
    }
    out = Path(spec.out) if spec.out else Path("runs") / _run_id(method_cls.name, preset)
    run = RunDir(out)
    previous = run.read_spec()
    if previous is not None:
        if not spec.resume:
            raise ThreecadError(f"{out} already holds a run; pass --resume to finish it, or choose another --out")
        keys = ("method", "preset", "config", "protocol", "eval_size", "dataset")
        diff = [k for k in keys if previous.get(k) != run_spec.get(k)]
        if diff:
            raise ThreecadError(f"cannot resume {out}: it was run with a different {', '.join(diff)}")
        run_spec["run_id"] = previous["run_id"]
        run_spec["started"] = previous["started"]
    else:
        run_spec["run_id"] = out.name if spec.out is None else _run_id(method_cls.name, preset)
        run_spec["started"] = _now()
        run.write_spec(run_spec)
    echo(f"{method_cls.name} ({preset}) on {len(categories)} categories of {root} -> {out}  [{device}]")

    records: dict[str, dict[str, Any]] = {}
    for cat in categories:
        done = run.read_category(cat.abbreviation) if spec.resume else None
        if done and done.get("status") == "ok":
            echo(f"{cat.abbreviation}: done before, skipped (--resume)")
            records[cat.abbreviation] = done
            continue
        try:
            record = _run_category(method_cls, config, cat, scan, root, device, spec, run)
            run.write_category(cat.abbreviation, record)
            shutil.rmtree(run.work_dir(cat.abbreviation), ignore_errors=True)
            m = record["metrics"]
            echo(f"{cat.abbreviation}: " + "  ".join(f"{k} {100 * m[k]:.1f}" for k in MAIN_METRICS if k in m)
                 + f"  (fit {record['timings']['fit_s']:.1f}s, {record['timings']['infer_images_per_s']:.1f} img/s)")
        except ThreecadError:
            raise
        except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
            log.error("%s failed: %s", cat.abbreviation, exc)
            record = run.write_failure(cat.abbreviation, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            echo(f"{cat.abbreviation}: FAILED ({record['error']}); traceback in {run.failure_file(cat.abbreviation)}")
        records[cat.abbreviation] = record
        results = run.write_results(run_spec, records, _extra())
    results = run.write_results(run_spec, records, {**_extra(), "finished": _now()})
    failed = [a for a, r in records.items() if r.get("status") != "ok"]
    return results, int(bool(failed))


def _extra() -> dict[str, Any]:
    return {"versions": devices.versions(), "code_revision": devices.code_revision(),
            "hardware": devices.hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}


def _loader(dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int) -> DataLoader:
    workers = devices.loader_workers(device)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=gen)


def _run_category(method_cls: type[Method], config, cat: Category, scan, root: Path,
                  device: torch.device, spec: BenchSpec, run: RunDir) -> dict[str, Any]:
    from threecad.dataset import ThreeCAD
    from threecad.metrics import Evaluator
    from threecad.splits import find_manifest, read_manifest

    seed_everything(config.seed)
    manifest = find_manifest(root)
    if manifest is not None:
        manifest = read_manifest(manifest, scan.table)
        if cat.abbreviation not in set(manifest["category"]):
            log.info("%s is not in %s; training on all of train/good", cat.abbreviation, manifest)
            manifest = None
    train = ThreeCAD(root, cat.abbreviation, "train", image_size=config.image_size, table=scan.table,
                     manifest=manifest)
    val = None
    if manifest is not None:
        try:
            val = ThreeCAD(root, cat.abbreviation, "val", image_size=config.image_size, table=scan.table,
                           manifest=manifest)
        except ThreecadError:
            val = None
        if val is not None and len(val) == 0:
            val = None
    test = ThreeCAD(root, cat.abbreviation, "test", image_size=spec.eval_size, table=scan.table)
    if len(train) == 0 or len(test) == 0:
        raise ThreecadError(f"{cat.abbreviation}: no {'train' if len(train) == 0 else 'test'} images under {root}")

    method = method_cls(config, device=device, amp=device.type == "cuda")
    method.work_dir = run.work_dir(cat.abbreviation)
    train_loader = _loader(train, config.batch_size, device, True, config.seed)
    val_loader = _loader(val, config.batch_size, device, False, config.seed) if val is not None else None

    with PeakMemory(device) as mem:
        devices.synchronize(device)
        t0 = time.perf_counter()
        method.fit(train_loader, val_loader)
        devices.synchronize(device)
        fit_s = time.perf_counter() - t0

        pixels = len(test) * spec.eval_size ** 2
        mode = spec.metrics_mode if spec.metrics_mode != "auto" else (
            "exact" if pixels <= EXACT_PIXEL_LIMIT else "streaming")
        evaluator = Evaluator(protocol=spec.protocol, mode=mode)
        hardest = HardestImages(spec.pictures)
        infer_s, infer_n = 0.0, 0
        test_loader = _loader(test, config.batch_size, device, False, config.seed)
        for i, batch in enumerate(tqdm(test_loader, desc=f"{cat.abbreviation} test", leave=False, disable=None)):
            images = batch["image"]
            devices.synchronize(device)
            t1 = time.perf_counter()
            x = images.to(device, non_blocking=True)
            if config.image_size != spec.eval_size:
                x = F.interpolate(x, size=(config.image_size, config.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)
            with torch.inference_mode():
                scores, maps = method.predict(x)
                maps = F.interpolate(maps.float()[:, None], size=(spec.eval_size, spec.eval_size),
                                     mode="bilinear", align_corners=False)[:, 0]
                maps, scores = maps.cpu(), scores.float().cpu()
            devices.synchronize(device)
            if i > 0 or len(test_loader) == 1:  # the first batch is warm-up
                infer_s += time.perf_counter() - t1
                infer_n += len(images)
            masks = batch["mask"][:, 0] > 0.5
            evaluator.update(maps, masks, scores=None if spec.protocol == "3cad-paper" else scores,
                             labels=batch["label"], defect_types=list(batch["defect_type"]))
            hardest.update(images, maps, masks, scores, batch["label"], list(batch["path"]))
    computed = evaluator.compute()
    metrics = {k: float(computed[k]) for k in MAIN_METRICS if k in computed}
    breakdowns = {k: v for k, v in computed.items() if k not in MAIN_METRICS}

    ckpt = run.checkpoint_file(cat.abbreviation)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt, suffix=".pt") as tmp:
        torch.save(method.state_dict(), tmp)
    if spec.pictures > 0:
        hardest.render(run.picture_file(cat.abbreviation),
                       f"{method_cls.name} on {cat.abbreviation} ({cat.folder})")
    return {
        "status": "ok", "metrics": metrics, "breakdowns": _jsonable(breakdowns),
        "timings": {"fit_s": fit_s, "infer_images_per_s": infer_n / infer_s if infer_s > 0 else float("nan")},
        "memory": {"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
        "n_train": len(train), "n_val": len(val) if val is not None else 0, "n_test": len(test),
        "metrics_mode": mode, "method_info": _jsonable(method.info()),
        "checkpoint": str(ckpt.relative_to(run.path)),
        "picture": str(run.picture_file(cat.abbreviation).relative_to(run.path)) if spec.pictures > 0 else None,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
