"""Run one method over the categories of a dataset, measuring every method the same way.

First everything is checked without writing a byte (`prepare`): settings, the method
built once (its config and weights files), the categories, the layout (a root with
result-changing errors is refused), the split manifest, the datasets (caches filled) and
the run directory's state (`--resume` compares the config in `config_dict`'s canonical
form). A refused command leaves no file, so the corrected command is not refused in turn.

Then, under a lock on the run directory, per category: loaders, fit (timed), predict over
the test set streamed into the Evaluator (throughput timed after a warm-up batch, with
device synchronisation), peak host and device memory, a checked checkpoint, pictures, and
an atomic per-category record, so that `--resume` skips what finished and a failure in
one category does not stop the others.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
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

from threecad.catalog import Category, resolve_categories
from threecad.errors import DatasetError, ThreecadError
from threecad.harness import devices
from threecad.smoothing import release_blur
from threecad.harness.memory import PeakMemory
from threecad.harness.pictures import HardestImages
from threecad.harness.rundir import MAIN_METRICS, RunDir, RunLock
from threecad.integrity import save_checked
from threecad.layout import fingerprint, layout_errors, scan_root
from threecad.method import Method, MethodConfig, build_config, config_dict
from threecad.progress import progress
from threecad.registry import load_method

log = logging.getLogger(__name__)
PROTOCOLS = ("standard", "3cad-paper")
EXACT_PIXEL_LIMIT = 250_000_000  # above this many test pixels, `auto` metrics stream
MIN_EVAL_SIZE = 16
# run.json and a --resume must agree on these (compared in config_dict's canonical form)
RESUME_KEYS = ("method", "preset", "config", "protocol", "eval_size", "dataset")


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
    allow_layout_problems: bool = False  # run on a root with layout errors (warned, counted)


@dataclass
class CategoryData:
    """One category's datasets, built (and their caches filled) before anything is written."""

    category: Category
    train: Any
    val: Any
    test: Any


@dataclass
class Plan:
    """Everything checked before the first write: a command refused here leaves no file."""

    method_cls: type[Method]
    config: MethodConfig
    preset: str
    device: torch.device
    root: Path
    scan: Any
    categories: list[Category]
    run_spec: dict[str, Any]
    out: Path
    previous: dict[str, Any] | None
    done: dict[str, dict[str, Any]]  # --resume: records of categories that finished
    data: dict[str, CategoryData]  # the categories still to run
    manifest: Any  # the checked split manifest (DataFrame) or None
    split_note: str | None


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word.removesuffix('y')}ies" if word.endswith("y") else f"{n} {word}s"


def run_benchmark(spec: BenchSpec, echo=print) -> tuple[dict[str, Any], int]:
    """Run the benchmark; returns (results.json content, exit code: 0 ok, 1 a category failed).

    Settings, method (built once: weights files), datasets and the run directory's state
    are all checked before the first write; the run directory is then locked until the
    run ends. Resuming a finished run changes nothing and returns its results.
    """
    plan = prepare(spec)
    run = RunDir(plan.out)
    created = _make_run_dir(plan.out)
    lock = RunLock(run)
    try:
        lock.acquire()
    except ThreecadError:
        if created:
            _remove_empty_dirs(plan.out, created)
        raise
    try:
        return _execute(plan, spec, run, echo)
    finally:
        lock.release()


def prepare(spec: BenchSpec) -> Plan:
    """Check every setting, build the method once and the datasets; write nothing."""
    if spec.protocol not in PROTOCOLS:
        raise ThreecadError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if spec.metrics_mode not in ("auto", "exact", "streaming"):
        raise ThreecadError(f"unknown metrics mode '{spec.metrics_mode}'; valid: auto, exact, streaming")
    if not isinstance(spec.eval_size, int) or spec.eval_size < MIN_EVAL_SIZE:
        raise ThreecadError(f"--eval-size {spec.eval_size}: must be an integer of at least {MIN_EVAL_SIZE}")
    if not isinstance(spec.pictures, int) or spec.pictures < 0:
        raise ThreecadError(f"--pictures {spec.pictures}: must be 0 or more")
    device = devices.pick_device(spec.device)
    devices.configure_threads(device)
    method_cls = load_method(spec.method)
    preset = spec.preset or ("paper" if device.type == "cuda" else "cpu")
    if spec.preset is None:
        log.info("preset %s (default for %s)", preset, device.type)
    config = build_config(method_cls, preset, spec.overrides)

    root = Path(spec.root).expanduser()
    scan = scan_root(root)
    order = {c: i for i, c in enumerate(scan.categories)}
    categories = sorted(resolve_categories(spec.categories, scan.categories), key=order.__getitem__)
    problems = _layout_problems(scan, categories)
    if problems and not spec.allow_layout_problems:
        raise DatasetError(f"{_plural(len(problems), 'layout error')} under {root} would change the results "
                           f"(first: {problems[0].kind}: {problems[0].path}: {problems[0].message}); "
                           "fix them (`threecad verify` lists them) or pass --allow-layout-problems")
    if problems:
        log.warning("%s under %s (first: %s); running anyway (--allow-layout-problems)",
                    _plural(len(problems), "layout error"), root, problems[0])
    manifest, split = _split_manifest(root, scan, categories)

    dataset = {"name": dataset_name(root, scan.dataset), "root": str(root.resolve()),
               "fingerprint": fingerprint(scan.table, root), "split": None,
               "layout_problems": len(problems)}
    split_note = None
    if split is not None:
        dataset["files_fingerprint"] = dataset["fingerprint"]
        dataset["fingerprint"] = hashlib.sha256(
            f"{dataset['fingerprint']}\0{split['sha256']}".encode()).hexdigest()[:16]
        dataset["split"] = split
        split_note = f"using split manifest {split['path']} (val {_plural(split['val_images'], 'image')})"
    run_spec = {
        "method": method_cls.name, "preset": preset, "config": config_dict(config),
        "protocol": spec.protocol, "eval_size": spec.eval_size, "dataset": dataset,
        "seed": config.seed, "device": str(device),
    }
    out = Path(spec.out).expanduser() if spec.out else Path("runs") / _run_id(method_cls.name, preset)
    if out.exists() and not out.is_dir():
        raise ThreecadError(f"--out {out} is a file, not a folder")
    run = RunDir(out)
    previous = run.read_spec()
    check_resumable(previous, run_spec, spec.resume, out)
    done: dict[str, dict[str, Any]] = {}
    if previous is not None:
        for cat in categories:
            record = run.read_category(cat.abbreviation)
            if record is not None and record.get("status") == "ok":
                done[cat.abbreviation] = record
    if len(done) < len(categories):  # a finished run resumed builds nothing
        check_method(method_cls, config)
    data = {cat.abbreviation: _datasets(cat, scan, root, config, spec.eval_size, manifest)
            for cat in categories if cat.abbreviation not in done}
    return Plan(method_cls=method_cls, config=config, preset=preset, device=device, root=root, scan=scan,
                categories=categories, run_spec=run_spec, out=out, previous=previous, done=done,
                data=data, manifest=manifest, split_note=split_note)


def check_method(method_cls: type[Method], config: MethodConfig) -> None:
    """Build the method once on the CPU (config checks, weights files), then drop it."""
    try:
        method = method_cls(config, device="cpu", amp=False)
        method.postprocess()
    except ThreecadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any construction failure is a bad setting, said in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        weights = getattr(config, "weights", None)
        if isinstance(weights, str) and _raised_by_torch_load(exc):
            raise ThreecadError(f"the weights file {weights} cannot be read as a PyTorch state dict "
                                f"({type(exc).__name__}: {first}); pass a file saved with torch.save") from exc
        raise ThreecadError(f"method '{method_cls.name}' cannot be built with this config: "
                            f"{type(exc).__name__}: {first}") from exc
    del method


def _raised_by_torch_load(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if name.endswith(("torch/serialization.py", "torch/_weights_only_unpickler.py")):
            return True
        tb = tb.tb_next
    return False


def check_resumable(previous: dict[str, Any] | None, run_spec: dict[str, Any], resume: bool, out: Path) -> None:
    """Refuse to write into another run, or to resume one that was run differently."""
    if previous is None:
        return
    if not resume:
        raise ThreecadError(f"{out} already holds a run; pass --resume to finish it, or choose another --out")
    diff = [k for k in RESUME_KEYS if previous.get(k) != run_spec.get(k)]
    if diff:
        detail = ""
        if "config" in diff:
            old, new = previous.get("config") or {}, run_spec["config"]
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = f" (config {', '.join(f'{k}: {old.get(k)!r} then, {new.get(k)!r} now' for k in keys[:3])})"
        raise ThreecadError(f"cannot resume {out}: it was run with a different {', '.join(diff)}{detail}")


def _layout_problems(scan, categories: list[Category]) -> list:
    """The scan's result-changing errors in the chosen categories (or at the root itself)."""
    folders = {c.folder.lower() for c in categories} | {c.abbreviation.lower() for c in categories}
    out = []
    for p in layout_errors(scan):
        try:
            rel = Path(p.path).relative_to(scan.root).parts
        except ValueError:
            rel = ()
        if not rel or rel[0].lower() in folders:
            out.append(p)
    return out


def _split_manifest(root: Path, scan, categories: list[Category]) -> tuple[Any, dict[str, Any] | None]:
    """The `split.csv` every bench on this root uses (checked), and its record for results.json."""
    from threecad.splits import find_manifest, read_manifest

    path = find_manifest(root)
    if path is None:
        return None, None
    manifest = read_manifest(path, scan.table)
    used = manifest[manifest["category"].isin([c.abbreviation for c in categories])]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest, {"path": str(path.resolve()), "sha256": digest,
                      "val_images": int((used["subset"] == "val").sum()),
                      "train_images": int((used["subset"] == "train").sum())}


def _datasets(cat: Category, scan, root: Path, config: MethodConfig, eval_size: int, manifest) -> CategoryData:
    from threecad.dataset import ThreeCAD

    rows = scan.table[scan.table["category"] == cat.abbreviation]
    for split in ("train", "test"):
        if not (rows["split"] == split).any():
            raise DatasetError(f"{cat.abbreviation}: no {split} images under {root / cat.folder}")
    if manifest is not None and cat.abbreviation not in set(manifest["category"]):
        log.info("%s is not in the split manifest; training on all of train/good", cat.abbreviation)
        manifest = None
    train = ThreeCAD(root, cat.abbreviation, "train", image_size=config.image_size, table=scan.table,
                     manifest=manifest)
    val = None
    if manifest is not None and ((manifest["category"] == cat.abbreviation)
                                 & (manifest["subset"] == "val")).any():
        val = ThreeCAD(root, cat.abbreviation, "val", image_size=config.image_size, table=scan.table,
                       manifest=manifest)
    test = ThreeCAD(root, cat.abbreviation, "test", image_size=eval_size, table=scan.table)
    return CategoryData(cat, train, val if val is not None and len(val) > 0 else None, test)


def _make_run_dir(out: Path) -> Path | None:
    """Create the run directory; returns the topmost folder created (None: it existed)."""
    top = None
    for p in [out, *out.parents]:
        if p.exists():
            break
        top = p
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ThreecadError(f"cannot create the run directory {out}: {(exc.strerror or str(exc)).lower()}") from None
    return top


def _remove_empty_dirs(out: Path, top: Path) -> None:
    p = out
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
        p = p.parent


def _execute(plan: Plan, spec: BenchSpec, run: RunDir, echo) -> tuple[dict[str, Any], int]:
    run_spec = plan.run_spec
    previous = run.read_spec()  # again, under the lock: the authoritative state
    check_resumable(previous, run_spec, spec.resume, plan.out)
    if previous is not None:
        run_spec["run_id"] = previous["run_id"]
        run_spec["started"] = previous["started"]
    else:
        run_spec["run_id"] = plan.out.name if spec.out is None else _run_id(plan.method_cls.name, plan.preset)
        run_spec["started"] = _now()
        run.write_spec(run_spec)
    echo(f"{plan.method_cls.name} ({plan.preset}) on {_plural(len(plan.categories), 'category')} of "
         f"{plan.root} -> {plan.out}  [{plan.device}]")
    if plan.split_note:
        echo(plan.split_note)

    records: dict[str, dict[str, Any]] = {}
    ran = False
    for cat in plan.categories:
        done = plan.done.get(cat.abbreviation)
        if done is not None and run.read_category(cat.abbreviation) == done:
            echo(f"{cat.abbreviation}: done before, skipped (--resume)")
            records[cat.abbreviation] = done
            continue
        data = plan.data.get(cat.abbreviation) or _datasets(cat, plan.scan, plan.root, plan.config,
                                                            spec.eval_size, plan.manifest)
        ran = True
        try:
            record = _run_category(plan.method_cls, plan.config, data, plan.device, spec, run)
            run.write_category(cat.abbreviation, record)
            shutil.rmtree(run.work_dir(cat.abbreviation), ignore_errors=True)
            m = record["metrics"]
            echo(f"{cat.abbreviation}: " + "  ".join(f"{k} {_pct(m[k])}" for k in MAIN_METRICS if k in m)
                 + f"  (fit {record['timings']['fit_s']:.1f}s, {record['timings']['infer_images_per_s']:.1f} img/s)"
                 + (f"  [{record['notes']}]" if record.get("notes") else ""))
        except ThreecadError:
            raise
        except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
            log.error("%s failed: %s", cat.abbreviation, exc)
            record = run.write_failure(cat.abbreviation, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            echo(f"{cat.abbreviation}: FAILED ({record['error']}); traceback in {run.failure_file(cat.abbreviation)}")
        records[cat.abbreviation] = record
        run.write_results(run_spec, records, _extra())
    previous_results = run.read_results()
    if (not ran and previous_results is not None and previous_results.get("finished")
            and previous_results.get("categories") == records
            and all(previous_results.get(k) == run_spec.get(k) for k in (*RESUME_KEYS, "run_id"))):
        results = previous_results  # a finished run, resumed: nothing to do, nothing rewritten
        echo("nothing left to run: every category finished before")
    else:
        results = run.write_results(run_spec, records, {**_extra(), "finished": _now()})
    failed = [a for a, r in records.items() if r.get("status") != "ok"]
    return results, int(bool(failed))


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _extra() -> dict[str, Any]:
    return {"versions": devices.versions(), "code_revision": devices.code_revision(),
            "hardware": devices.hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}


def _loader(dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int) -> DataLoader:
    workers = devices.loader_workers(device)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=gen)


def _run_category(method_cls: type[Method], config, data: CategoryData, device: torch.device,
                  spec: BenchSpec, run: RunDir) -> dict[str, Any]:
    from threecad.metrics import Evaluator

    cat, train, val, test = data.category, data.train, data.val, data.test
    seed_everything(config.seed)
    method = method_cls(config, device=device, amp=device.type == "cuda")
    post = method.postprocess()
    method.work_dir = run.work_dir(cat.abbreviation)
    train_loader = _loader(train, config.batch_size, device, True, config.seed)
    val_loader = _loader(val, config.batch_size, device, False, config.seed) if val is not None else None
    log.info("%s: fitting on %s", cat.abbreviation, _plural(len(train), "image"))

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
        batches = progress(test_loader, desc=f"{cat.abbreviation} test", unit="batch")
        for i, batch in enumerate(batches):
            images = batch["image"]
            devices.synchronize(device)
            t1 = time.perf_counter()
            x = images.to(device, non_blocking=True)
            if config.image_size != spec.eval_size:
                x = F.interpolate(x, size=(config.image_size, config.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)
            with torch.inference_mode():
                scores, maps = method.predict(x)
                maps = maps.float()
                if spec.protocol == "standard":  # 3cad-paper: the Evaluator blurs the raw map, as the release
                    scores, maps = post.apply(maps, scores)
                maps = F.interpolate(maps[:, None], size=(spec.eval_size, spec.eval_size),
                                     mode="bilinear", align_corners=False)[:, 0].cpu()
                # 3cad-paper: the release scores every image by the max of its blurred map; none is passed
                scores = None if scores is None or spec.protocol != "standard" else scores.float().cpu()
            devices.synchronize(device)
            if i > 0 or len(test_loader) == 1:  # the first batch is warm-up
                infer_s += time.perf_counter() - t1
                infer_n += len(images)
            masks = batch["mask"][:, 0] > 0.5
            evaluator.update(maps, masks, scores=scores, labels=batch["label"],
                             defect_types=list(batch["defect_type"]))
            if scores is not None:
                shown = scores
            elif spec.protocol == "standard":
                shown = maps.flatten(1).amax(dim=1)
            else:  # the score the release gives: max of the map after its blur
                shown = torch.from_numpy(release_blur(maps.double().numpy()).reshape(len(maps), -1).max(axis=1))
            hardest.update(images, maps, masks, shown, batch["label"], list(batch["path"]))
    computed = evaluator.compute()
    # None: the data cannot define the metric (e.g. no defect pixel at all); `notes` says why
    metrics = {k: None if computed[k] is None else float(computed[k]) for k in MAIN_METRICS if k in computed}
    notes = str(computed.get("notes") or "")
    breakdowns = {k: v for k, v in computed.items() if k not in MAIN_METRICS and k != "notes"}

    ckpt = run.checkpoint_file(cat.abbreviation)
    save_checked(method.state_dict(), ckpt)  # with its checksum: load it with integrity.load_checked
    if spec.pictures > 0:
        hardest.render(run.picture_file(cat.abbreviation),
                       f"{method_cls.name} on {cat.abbreviation} ({cat.folder})")
    return {
        "status": "ok", "metrics": metrics, "notes": notes, "breakdowns": _jsonable(breakdowns),
        "timings": {"fit_s": fit_s, "infer_images_per_s": infer_n / infer_s if infer_s > 0 else float("nan")},
        "memory": {"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
        "n_train": len(train), "n_val": len(val) if val is not None else 0, "n_test": len(test),
        "metrics_mode": mode, "method_info": _jsonable(method.info()),
        "postprocess": post.as_dict() if spec.protocol == "standard" else {"release_blur_sigma": 4.0},
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
