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

Two settings, as the field reports both (UniAD, ADer, MambaAD): `per-category` (one model
per category, the default) and `unified` (one model fitted once on the union of the chosen
categories' training images, then each category's test set evaluated on its own, so the
table, records and leaderboard rows keep their per-category shape). In `unified` the one
checkpoint (`checkpoints/unified.pt`, with its fit facts beside it) is written before any
category is evaluated, so `--resume` loads it instead of fitting again.

A run is three steps that a study (threecad.harness.study) also uses one by one, when the
ranks of a torchrun job share the categories: `open_run` (run.json, under the lock),
`run_pair` (one category: its files and its atomic record, nothing shared with another
category) and `finish_run` (the aggregates, rebuilt from the records).
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
from torch.utils.data import ConcatDataset, DataLoader

from threecad.catalog import Category, resolve_categories
from threecad.errors import DatasetError, ThreecadError
from threecad.harness import devices
from threecad.smoothing import release_blur
from threecad.harness.memory import PeakMemory
from threecad.harness.pictures import HardestImages
from threecad.harness.losscurves import read_loss_csv, write_loss_history
from threecad.harness.loggers import RunTags, check_logger, start_run
from threecad.harness.rundir import MAIN_METRICS, RunDir, RunLock
from threecad.fsutil import atomic_write_json
from threecad.integrity import load_checked, save_checked
from threecad.layout import fingerprint, layout_errors, scan_root
from threecad.method import Method, MethodConfig, build_config, config_dict
from threecad.progress import progress
from threecad.registry import load_method

log = logging.getLogger(__name__)
PROTOCOLS = ("standard", "3cad-paper")
SETTINGS = ("per-category", "unified")
EXACT_PIXEL_LIMIT = 250_000_000  # above this many test pixels, `auto` metrics stream
MIN_EVAL_SIZE = 16
# run.json and a --resume must agree on these (compared in config_dict's canonical form)
RESUME_KEYS = ("method", "preset", "config", "protocol", "eval_size", "dataset", "setting", "unified_categories",
               "ddp")
# run.json files written before the unified setting existed say nothing: they ran per category;
# "ddp" is true only in a run trained with --ddp (its categories fitted across the ranks)
SPEC_DEFAULTS = {"setting": "per-category", "unified_categories": None, "ddp": None}
UNIFIED_WORK = "_unified"  # the unified fit's scratch folder under work/


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
    setting: str = "per-category"  # or "unified": one model fitted on the union of the categories
    ddp: bool = False  # each category fitted across the ranks of a torchrun job (threecad.harness.study)
    logger: str | None = None  # also log to "tensorboard" or "mlflow" (threecad.harness.loggers)
    study: Path | None = None  # the study folder this run belongs to (its trackers' root and tag)


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
    setting: str = "per-category"


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
            remove_empty_dirs(plan.out, created)
        raise
    try:
        return _execute(plan, spec, run, echo)
    finally:
        lock.release()


def prepare(spec: BenchSpec) -> Plan:
    """Check every setting, build the method once and the datasets; write nothing."""
    check_logger(spec.logger)  # a tracker that is not installed is refused before any write
    if spec.protocol not in PROTOCOLS:
        raise ThreecadError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if spec.metrics_mode not in ("auto", "exact", "streaming"):
        raise ThreecadError(f"unknown metrics mode '{spec.metrics_mode}'; valid: auto, exact, streaming")
    if not isinstance(spec.eval_size, int) or spec.eval_size < MIN_EVAL_SIZE:
        raise ThreecadError(f"--eval-size {spec.eval_size}: must be an integer of at least {MIN_EVAL_SIZE}")
    if not isinstance(spec.pictures, int) or spec.pictures < 0:
        raise ThreecadError(f"--pictures {spec.pictures}: must be 0 or more")
    if spec.setting not in SETTINGS:
        raise ThreecadError(f"unknown --setting '{spec.setting}'; valid: {', '.join(SETTINGS)}")
    device = devices.pick_device(spec.device)
    devices.configure_threads(device)
    method_cls = load_method(spec.method)
    if spec.setting == "unified" and not method_cls.supports_unified:
        raise ThreecadError(f"method '{method_cls.name}' cannot run in --setting unified (one model for all "
                            "categories); run it with --setting per-category")
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
        "setting": spec.setting, "seed": config.seed, "device": str(device),
    }
    if spec.setting == "unified":  # the union the one model is fitted on: part of what the run is
        run_spec["unified_categories"] = [c.abbreviation for c in categories]
    if spec.ddp:  # absent otherwise, so that run.json of a plain run is as before
        run_spec["ddp"] = True
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
    # unified: a refit needs every category's training images, finished or not
    unfinished = [c for c in categories if c.abbreviation not in done]
    needed = categories if spec.setting == "unified" and unfinished else unfinished
    data = {cat.abbreviation: _datasets(cat, scan, root, config, spec.eval_size, manifest) for cat in needed}
    return Plan(method_cls=method_cls, config=config, preset=preset, device=device, root=root, scan=scan,
                categories=categories, run_spec=run_spec, out=out, previous=previous, done=done,
                data=data, manifest=manifest, split_note=split_note, setting=spec.setting)


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
    diff = [k for k in RESUME_KEYS if spec_value(previous, k) != spec_value(run_spec, k)]
    if "setting" in diff and "unified_categories" in diff:  # one difference, said once
        diff.remove("unified_categories")
    if diff:
        detail = ""
        if "config" in diff:
            old, new = previous.get("config") or {}, run_spec["config"]
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = f" (config {', '.join(f'{k}: {old.get(k)!r} then, {new.get(k)!r} now' for k in keys[:3])})"
        if "unified_categories" in diff and "setting" not in diff:
            detail += f" (categories {','.join(previous.get('unified_categories') or [])} then; pass them again)"
        if "setting" in diff:
            detail += (f" (setting {spec_value(previous, 'setting')} then, {run_spec.get('setting')} now; "
                       f"pass --setting {spec_value(previous, 'setting')})")
        if "ddp" in diff:
            detail += " (trained with --ddp then, not now)" if previous.get("ddp") else " (not trained with --ddp then)"
        raise ThreecadError(f"cannot resume {out}: it was run with a different {', '.join(diff)}{detail}")


def spec_value(spec: dict[str, Any], key: str) -> Any:
    """A run.json or results.json field, with the value older runs meant when they lack it."""
    return spec.get(key, SPEC_DEFAULTS.get(key))


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
    from threecad.dataset import EvalView, ThreeCAD

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
    if config.image_size != eval_size:  # the model sees test images resized as its training images
        test = EvalView(ThreeCAD(root, cat.abbreviation, "test", image_size=config.image_size, table=scan.table),
                        test)
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


def remove_empty_dirs(out: Path, top: Path) -> None:
    """Remove `out` and its parents up to `top` while they are empty (what a refused command made)."""
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
    run_spec = open_run(plan, spec, run)
    unified = plan.setting == "unified"
    echo(f"{plan.method_cls.name} ({plan.preset}) on {_plural(len(plan.categories), 'category')} of "
         f"{plan.root} -> {plan.out}  [{plan.device}]" + ("  one model for all (--setting unified)" if unified else ""))
    if not unified and plan.method_cls.unified_by_default:
        echo(f"note: {plan.method_cls.name} is meant to train one model for all categories; "
             "--setting unified does that (per-category is the default)")
    if plan.split_note:
        echo(plan.split_note)
    records, todo = pending(plan, run, echo)
    fitted = _unified_model(plan, spec, run, echo) if unified and todo else None
    for cat in todo:
        records[cat.abbreviation] = run_pair(plan, spec, run, cat, echo, fitted)
        run.write_results(run_spec, _ordered(plan, records), _extra())
    return finish_run(plan, run, records, ran=bool(todo), echo=echo)


def open_run(plan: Plan, spec: BenchSpec, run: RunDir) -> dict[str, Any]:
    """Under the run directory's lock: check it again and write run.json (a new run) or take
    its run id (a resumed one); returns the run's spec."""
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
    return run_spec


def pending(plan: Plan, run: RunDir, echo=lambda *_: None) -> tuple[dict[str, dict[str, Any]], list[Category]]:
    """(records of the categories finished before, the categories still to run)."""
    records: dict[str, dict[str, Any]] = {}
    todo: list[Category] = []
    for cat in plan.categories:
        done = plan.done.get(cat.abbreviation)
        if done is not None and run.read_category(cat.abbreviation) == done:
            echo(f"{cat.abbreviation}: done before, skipped (--resume)")
            records[cat.abbreviation] = done
        else:
            todo.append(cat)
    return records, todo


def run_pair(plan: Plan, spec: BenchSpec, run: RunDir, cat: Category, echo,
             fitted: UnifiedModel | BaseException | None = None, ddp: DDPFit | None = None,
             label: str = "") -> dict[str, Any] | None:
    """Run one category and write its record atomically (a failure is recorded, not raised).

    `fitted`: the unified model (or its fit's failure). `ddp`: this rank's part of a fit
    shared by all ranks; only the writer rank (0) evaluates and writes, the others return None.
    """
    unified = plan.setting == "unified"
    writer = ddp is None or ddp.is_writer
    tag = label or cat.abbreviation
    data = plan.data.get(cat.abbreviation) or _datasets(cat, plan.scan, plan.root, plan.config,
                                                        spec.eval_size, plan.manifest)
    try:
        if isinstance(fitted, BaseException):
            raise fitted
        if unified:
            record = _evaluate_unified(plan, fitted, data, spec, run)
        else:
            record = _run_category(plan.method_cls, plan.config, data, plan.device, spec, run, ddp=ddp)
        if record is None:
            return None
        run.write_category(cat.abbreviation, record)
        if not unified:
            shutil.rmtree(run.work_dir(cat.abbreviation), ignore_errors=True)
        _log_to_tracker(plan, spec, run, cat.abbreviation, record)
        m = record["metrics"]
        echo(f"{tag}: " + "  ".join(f"{k} {_pct(m[k])}" for k in MAIN_METRICS if k in m)
             + f"  (fit {record['timings']['fit_s']:.1f}s{' shared' if unified else ''}, "
             + f"{record['timings']['infer_images_per_s']:.1f} img/s)"
             + (f"  [{record['notes']}]" if record.get("notes") else ""))
    except ThreecadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
        log.error("%s failed: %s", tag, exc)
        if not writer:
            return None
        tb = "".join(traceback.format_exception(exc))
        record = run.write_failure(cat.abbreviation, f"{type(exc).__name__}: {exc}", tb)
        echo(f"{tag}: FAILED ({record['error']}); traceback in {run.failure_file(cat.abbreviation)}")
    return record


def finish_run(plan: Plan, run: RunDir, records: dict[str, dict[str, Any]], *, ran: bool,
               echo=lambda *_: None) -> tuple[dict[str, Any], int]:
    """Write the run's aggregates (results.json/csv/md) with its finish time, unless a resumed,
    finished run changed nothing; returns (results, exit code: 1 when a category failed)."""
    run_spec = plan.run_spec
    records = _ordered(plan, records)
    previous_results = run.read_results()
    if (not ran and previous_results is not None and previous_results.get("finished")
            and previous_results.get("categories") == records
            and all(spec_value(previous_results, k) == spec_value(run_spec, k) for k in (*RESUME_KEYS, "run_id"))):
        results = previous_results  # a finished run, resumed: nothing to do, nothing rewritten
        echo("nothing left to run: every category finished before")
    else:
        results = run.write_results(run_spec, records, {**_extra(), "finished": _now()})
    failed = [a for a, r in records.items() if r.get("status") != "ok"]
    return results, int(bool(failed))


def _ordered(plan: Plan, records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records in the catalog's order (a resumed unified run finishes them out of order)."""
    return {c.abbreviation: records[c.abbreviation] for c in plan.categories if c.abbreviation in records}


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _extra() -> dict[str, Any]:
    return {"versions": devices.versions(), "code_revision": devices.code_revision(),
            "hardware": devices.hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}


def _loader(dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int, sampler=None) -> DataLoader:
    workers = devices.loader_workers(device)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      generator=gen)


@dataclass
class DDPFit:
    """`--ddp`: this rank's part of one fit trained by every rank of the job.

    The training loader gives this rank its share of the images (DistributedSampler, shuffled
    by seed and epoch) in batches of `batch_size / world_size`, so that with gradients averaged
    each optimiser step sees the config's batch size, as one process would; the learning rate
    and the number of steps per epoch stay those of the config.
    """

    rank: int
    world_size: int
    backend: str
    sync: Any  # threecad.harness.distributed.GradientAverager (a threecad.training.GradientSync)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def facts(self, config) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend,
                "batch_per_rank": config.batch_size // self.world_size}


def _new_method(method_cls: type[Method], config, device: torch.device, work_dir: Path) -> Method:
    seed_everything(config.seed)
    method = method_cls(config, device=device, amp=device.type == "cuda")
    method.work_dir = work_dir
    return method


def _fit(method: Method, config, train, val, device: torch.device, label: str, ddp: DDPFit | None = None) -> float:
    """Fit on `train` (shuffled) and `val`; returns the seconds it took (device synchronised).

    With `ddp`, this rank trains on its share of `train` with gradients averaged across ranks
    (`Method.gradient_sync`); a method that did not train through train_epochs is
    an error, since its ranks would each have fitted alone.
    """
    val_loader = _loader(val, config.batch_size, device, False, config.seed) if val is not None else None
    if ddp is None:
        train_loader = _loader(train, config.batch_size, device, True, config.seed)
    else:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True,
                                     seed=config.seed)
        train_loader = _loader(train, config.batch_size // ddp.world_size, device, True, config.seed, sampler)
    log.info("%s: fitting on %s", label, _plural(len(train), "image")
             + (f" across {ddp.world_size} ranks (--ddp)" if ddp is not None else ""))
    devices.synchronize(device)
    t0 = time.perf_counter()
    if ddp is None:
        method.fit(train_loader, val_loader)
    else:
        ddp.sync.loops = 0
        method.gradient_sync = ddp.sync
        try:
            method.fit(train_loader, val_loader)
        finally:
            method.gradient_sync = None
        if ddp.sync.loops == 0:
            raise RuntimeError(f"{type(method).__name__} did not train through threecad.training.train_epochs, "
                               "so --ddp could not share its fit")
    devices.synchronize(device)
    return time.perf_counter() - t0


@dataclass
class Evaluation:
    """One category's test set, predicted and scored."""

    metrics: dict[str, Any]
    notes: str
    breakdowns: dict[str, Any]
    infer_images_per_s: float
    mode: str
    hardest: HardestImages


@dataclass
class UnifiedModel:
    """The one model of a unified run, fitted here or loaded from its checkpoint by --resume."""

    method: Method
    facts: dict[str, Any]  # fit_s, n_train, n_val, categories, memory: as in checkpoints/unified.json
    loaded: bool


def _unified_model(plan: Plan, spec: BenchSpec, run: RunDir, echo) -> UnifiedModel | BaseException:
    """Load the unified checkpoint on --resume when it is intact, else fit on the union of the
    categories' training images and write the checkpoint before any category is evaluated.

    A fit that fails is returned (not raised): every category still to run records it.
    """
    abbrs = [c.abbreviation for c in plan.categories]
    if plan.previous is not None:
        loaded = _load_unified(plan, run, abbrs)
        if loaded is not None:
            echo(f"unified model loaded from {run.unified_checkpoint_file.relative_to(run.path)} "
                 f"(fitted before in {loaded.facts['fit_s']:.1f}s; not fitted again)")
            return loaded
    datas = [plan.data.get(c.abbreviation) or _datasets(c, plan.scan, plan.root, plan.config, spec.eval_size,
                                                         plan.manifest) for c in plan.categories]
    train = ConcatDataset([d.train for d in datas])
    vals = [d.val for d in datas if d.val is not None]
    val = ConcatDataset(vals) if vals else None
    work = run.work_dir(UNIFIED_WORK)
    try:
        method = _new_method(plan.method_cls, plan.config, plan.device, work)
        with PeakMemory(plan.device) as mem:
            fit_s = _fit(method, plan.config, train, val, plan.device, f"unified ({', '.join(abbrs)})")
        facts = {"fit_s": fit_s, "n_train": len(train), "n_val": len(val) if val is not None else 0,
                 "categories": abbrs, "memory": {"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
                 "method_info": _jsonable(method.info()),
                 **_write_losses(plan.method_cls, method, run, "unified", spec)}
        save_checked(method.state_dict(), run.unified_checkpoint_file)  # first the model, then its facts
        atomic_write_json(run.unified_fit_file, facts)
    except ThreecadError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as every remaining category's failure
        log.error("unified fit failed: %s", exc)
        return exc
    shutil.rmtree(work, ignore_errors=True)
    echo(f"unified: one model fitted on {_plural(len(train), 'training image')} of "
         f"{_plural(len(abbrs), 'category')} in {fit_s:.1f}s")
    return UnifiedModel(method, facts, loaded=False)


def _load_unified(plan: Plan, run: RunDir, abbrs: list[str]) -> UnifiedModel | None:
    """The checkpoint of an interrupted unified run, or None (then it is fitted again)."""
    ckpt, facts = run.unified_checkpoint_file, run.read_unified_fit()
    if facts is None or not ckpt.is_file():
        log.info("no complete unified checkpoint in %s; fitting again", run.path)
        return None
    if facts.get("categories") != abbrs or not isinstance(facts.get("fit_s"), (int, float)):
        log.warning("%s does not describe this run's categories; fitting again", run.unified_fit_file)
        return None
    try:
        state = load_checked(ckpt)
        method = _new_method(plan.method_cls, plan.config, plan.device, run.work_dir(UNIFIED_WORK))
        method.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is refitted, not trusted
        log.warning("unified checkpoint %s not used (%s); fitting again", ckpt, exc)
        return None
    return UnifiedModel(method, facts, loaded=True)


def _evaluate_unified(plan: Plan, model: UnifiedModel, data: CategoryData, spec: BenchSpec,
                      run: RunDir) -> dict[str, Any]:
    cat = data.category
    post = model.method.postprocess()
    with PeakMemory(plan.device) as mem:
        ev = _evaluate(model.method, post, plan.config, data.test, plan.device, spec, cat.abbreviation)
    fit_mem = model.facts.get("memory") or {}
    device_peaks = [v for v in (fit_mem.get("peak_device_mb"), mem.device_mb) if v is not None]
    memory = {"peak_host_rss_mb": max(mem.host_mb, fit_mem.get("peak_host_rss_mb") or 0.0),
              "peak_device_mb": max(device_peaks) if device_peaks else None}
    record = _record(plan.method_cls, model.method, post, cat, ev, spec, run, fit_s=model.facts["fit_s"],
                     memory=memory, n_train=model.facts["n_train"], n_val=model.facts["n_val"],
                     n_test=len(data.test), checkpoint=run.unified_checkpoint_file,
                     losses={k: model.facts.get(k) for k in ("losses", "loss_curve")})
    record.update({"fit_shared": True, "fit_loaded": model.loaded, "n_train_category": len(data.train),
                   "unified_categories": model.facts["categories"]})
    return record


def _run_category(method_cls: type[Method], config, data: CategoryData, device: torch.device,
                  spec: BenchSpec, run: RunDir, ddp: DDPFit | None = None) -> dict[str, Any] | None:
    """Fit, evaluate, checkpoint; the record. With `ddp` every rank fits, rank 0 alone
    evaluates and returns the record (the others None)."""
    cat, train, val, test = data.category, data.train, data.val, data.test
    method = _new_method(method_cls, config, device, run.work_dir(cat.abbreviation))
    post = method.postprocess()
    with PeakMemory(device) as mem:
        fit_s = _fit(method, config, train, val, device, cat.abbreviation, ddp=ddp)
        if ddp is not None and not ddp.is_writer:
            return None
        ev = _evaluate(method, post, config, test, device, spec, cat.abbreviation)
    ckpt = run.checkpoint_file(cat.abbreviation)
    save_checked(method.state_dict(), ckpt)  # with its checksum: load it with integrity.load_checked
    record = _record(method_cls, method, post, cat, ev, spec, run, fit_s=fit_s,
                     memory={"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
                     n_train=len(train), n_val=len(val) if val is not None else 0, n_test=len(test),
                     checkpoint=ckpt)
    if ddp is not None:
        record["ddp"] = ddp.facts(config)  # the one key a single-process record lacks
    return record


def _record(method_cls: type[Method], method: Method, post, cat: Category, ev: Evaluation, spec: BenchSpec,
            run: RunDir, *, fit_s: float, memory: dict[str, Any], n_train: int, n_val: int, n_test: int,
            checkpoint: Path, losses: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The category's record (pictures and loss curves written): what categories/<ABBR>.json holds.

    `losses`: the paths of a loss history written before (a unified fit's), else this
    category's fit's history is written now."""
    if spec.pictures > 0:
        ev.hardest.render(run.picture_file(cat.abbreviation),
                          f"{method_cls.name} on {cat.abbreviation} ({cat.folder})")
    if losses is None:
        losses = _write_losses(method_cls, method, run, cat.abbreviation, spec)
    return {
        "status": "ok", "metrics": ev.metrics, "notes": ev.notes, "breakdowns": _jsonable(ev.breakdowns),
        "timings": {"fit_s": fit_s, "infer_images_per_s": ev.infer_images_per_s},
        "memory": memory,
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "metrics_mode": ev.mode, "method_info": _jsonable(method.info()),
        "postprocess": post.as_dict() if spec.protocol == "standard" else {"release_blur_sigma": 4.0},
        "checkpoint": str(checkpoint.relative_to(run.path)),
        "picture": str(run.picture_file(cat.abbreviation).relative_to(run.path)) if spec.pictures > 0 else None,
        **losses,
    }


def _write_losses(method_cls: type[Method], method: Method, run: RunDir, label: str,
                  spec: BenchSpec) -> dict[str, str | None]:
    """losses/<label>.csv and its curve (pictures/<label>-losses.png, unless --pictures 0) of a
    fit that ran epochs; the record's `losses` and `loss_curve` paths (None without epochs)."""
    written = write_loss_history(run.path, label, method.loss_history(),
                                 title=f"{method_cls.name} on {label}: loss per epoch",
                                 selected_epoch=method.selected_epoch(), picture=spec.pictures > 0)
    if written is None:
        return {"losses": None, "loss_curve": None}
    csv_path, png_path = written
    return {"losses": str(csv_path.relative_to(run.path)),
            "loss_curve": str(png_path.relative_to(run.path)) if png_path is not None else None}


def _log_to_tracker(plan: Plan, spec: BenchSpec, run: RunDir, abbr: str, record: dict[str, Any]) -> None:
    """--logger: one tracker run per (method, category): config, per-epoch losses, metrics."""
    if not spec.logger:
        return
    root = spec.study if spec.study is not None else run.path
    tags = RunTags(plan.method_cls.name, abbr, str(plan.run_spec.get("run_id", "")),
                   spec.study.name if spec.study is not None else None)
    history = read_loss_csv(run.path / record["losses"]).rows() if record.get("losses") else []
    with start_run(spec.logger, root, tags, plan.run_spec["config"]) as tracker:
        tracker.log_history(history)
        tracker.log_metrics(record["metrics"])


def _evaluate(method: Method, post, config, test, device: torch.device, spec: BenchSpec, label: str) -> Evaluation:
    """Predict the test set, streamed into the Evaluator (throughput timed after a warm-up batch)."""
    from threecad.metrics import Evaluator

    pixels = len(test) * spec.eval_size ** 2
    mode = spec.metrics_mode if spec.metrics_mode != "auto" else (
        "exact" if pixels <= EXACT_PIXEL_LIMIT else "streaming")
    evaluator = Evaluator(protocol=spec.protocol, mode=mode)
    hardest = HardestImages(spec.pictures)
    infer_s, infer_n = 0.0, 0
    test_loader = _loader(test, config.batch_size, device, False, config.seed)
    batches = progress(test_loader, desc=f"{label} test", unit="batch")
    for i, batch in enumerate(batches):
        images = batch["image"]
        devices.synchronize(device)
        t1 = time.perf_counter()
        x = images.to(device, non_blocking=True)  # at config.image_size: see threecad.dataset.EvalView
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
    return Evaluation(metrics=metrics, notes=str(computed.get("notes") or ""),
                      breakdowns={k: v for k, v in computed.items() if k not in MAIN_METRICS and k != "notes"},
                      infer_images_per_s=infer_n / infer_s if infer_s > 0 else float("nan"), mode=mode,
                      hardest=hardest)


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
