"""Preparing a run: everything `threecad bench` was asked, checked before the first write.

Settings, the method built once (its config and weights files), the categories, the layout
(a root with result-changing errors is refused), the split manifest, the datasets (caches
filled) and the run directory's state (`--resume` compares the config in `config_dict`'s
canonical form). A refused command leaves no file, so the corrected command is not refused
in turn. The result is a `Plan`, which the runner (threecad.harness.runner) and a study
(threecad.harness.study) execute.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from threecad.catalog import Category, resolve_categories
from threecad.choices import PER_CATEGORY, PROTOCOLS, SETTINGS, STANDARD, UNIFIED, default_setting
from threecad.errors import DatasetError, ThreecadError
from threecad.harness import devices
from threecad.harness.loggers import check_logger
from threecad.harness.rundir import RunDir, run_name
from threecad.layout import SYNTHETIC_MARKER, fingerprint, layout_errors, scan_root
from threecad.method import Method, MethodConfig, build_config, build_refusal, config_dict
from threecad.preprocess import Preprocess
from threecad.progress import progress
from threecad.registry import load_method
from threecad.synth.writer import DATASET_NAME as SYNTHETIC_DATASET
from threecad.wording import plural

log = logging.getLogger(__name__)
METRICS_MODES = ("auto", "exact", "streaming")  # auto: exact up to a test-set size, then streaming
MIN_EVAL_SIZE = 16
# run.json and a --resume must agree on these (compared in config_dict's canonical form)
# layout errors that --allow-layout-problems cannot run past: files the run must read
FILES_THE_RUN_READS = frozenset({"missing_mask", "mask_size", "unreadable_mask", "unreadable_image"})
STUDY_FILE = "study.json"  # what marks a study folder (threecad.harness.study)
RESUME_KEYS = ("method", "preset", "config", "protocol", "eval_size", "dataset", "setting", "unified_categories",
               "ddp")
# run.json files written before the unified setting existed say nothing: they ran per category;
# "ddp" is true only in a run trained with --ddp (its categories fitted across the ranks)
SPEC_DEFAULTS = {"setting": PER_CATEGORY, "unified_categories": None, "ddp": None}


@dataclass
class BenchSpec:
    """What `threecad bench` was asked to do."""

    method: str
    root: Path
    categories: tuple[str, ...] = ("all",)
    preset: str | None = None  # None: "paper" on CUDA, "cpu" on the CPU
    overrides: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    protocol: str = STANDARD
    out: Path | None = None
    resume: bool = False
    eval_size: int = 256
    metrics_mode: str = "auto"  # one of METRICS_MODES
    pictures: int = 6
    allow_layout_problems: bool = False  # run on a root with layout errors (warned, counted)
    setting: str | None = None  # PER_CATEGORY or UNIFIED; None: the method's default (default_setting)
    ddp: bool = False  # each category fitted across the ranks of a torchrun job (threecad.harness.study)
    logger: str | None = None  # also log to "tensorboard" or "mlflow" (threecad.harness.loggers)
    track_test_every: int = 0  # > 0: evaluate the test split every N epochs, for the record only (harness.tracking)
    threads: int | None = None  # CPU threads of every pool; None: OMP_NUM_THREADS, else the CPUs we may use
    metrics_memory: float = 2.0  # GB exact metrics may hold (threecad.metrics.bounded); beyond it they spill
    split: Path | None = None  # a split manifest (`threecad split --out FILE`); None: <root>/split.csv if any
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
    eval_size: int
    preprocess: Preprocess | None  # the method's input pipeline (None: nothing left to run)
    setting: str = PER_CATEGORY
    # --resume with fewer categories: the records of the run's other categories, kept in its results
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)

    def in_order(self, records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The run's records for results.json: this selection's and those kept, in the catalog's order
        (a resumed unified run finishes them out of order)."""
        merged = {**self.kept, **records}
        order = [c.abbreviation for c in self.scan.categories]
        return {abbr: merged[abbr] for abbr in order if abbr in merged}

    def datasets(self, cat: Category) -> CategoryData:
        """The category's datasets: those built by `prepare`, else built now (a unified refit
        needs the training images of categories that finished before)."""
        return self.data.get(cat.abbreviation) or _category_data(cat, self.scan, self.root, self.preprocess,
                                                                 self.eval_size, self.manifest)


def dataset_name(root: Path, scan_dataset: str) -> str:
    return SYNTHETIC_DATASET if (root / SYNTHETIC_MARKER).is_file() else scan_dataset


def prepare(spec: BenchSpec) -> Plan:
    """Check every setting, build the method once and the datasets; write nothing."""
    check_logger(spec.logger)  # a tracker that is not installed is refused before any write
    if spec.protocol not in PROTOCOLS:
        raise ThreecadError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if isinstance(spec.metrics_memory, bool) or not isinstance(spec.metrics_memory, (int, float)) \
            or not spec.metrics_memory > 0:
        raise ThreecadError(f"--metrics-memory must be a positive number of GB; got {spec.metrics_memory}")
    if spec.metrics_mode not in METRICS_MODES:
        raise ThreecadError(f"unknown metrics mode '{spec.metrics_mode}'; valid: {', '.join(METRICS_MODES)}")
    if not isinstance(spec.eval_size, int) or spec.eval_size < MIN_EVAL_SIZE:
        raise ThreecadError(f"--eval-size {spec.eval_size}: must be an integer of at least {MIN_EVAL_SIZE}")
    if not isinstance(spec.pictures, int) or spec.pictures < 0:
        raise ThreecadError(f"--pictures {spec.pictures}: must be 0 or more")
    if spec.setting is not None and spec.setting not in SETTINGS:
        raise ThreecadError(f"unknown --setting '{spec.setting}'; valid: {', '.join(SETTINGS)}")
    device = devices.pick_device(spec.device)
    if spec.threads is not None and (isinstance(spec.threads, bool) or not isinstance(spec.threads, int)
                                     or spec.threads < 1):
        raise ThreecadError(f"--threads {spec.threads}: must be a whole number of at least 1")
    threads = devices.configure_threads(device, spec.threads)
    method_cls = load_method(spec.method)
    if spec.setting == UNIFIED and not method_cls.supports_unified:
        raise ThreecadError(f"method '{method_cls.name}' cannot run in --setting unified (one model for all "
                            "categories); run it with --setting per-category")
    preset = spec.preset or ("paper" if device.type == "cuda" else "cpu")
    if spec.preset is None:
        log.info("preset %s (default for %s)", preset, device.type)
    setting = spec.setting or default_setting(method_cls, preset, spec.ddp)
    check_tracking(spec.track_test_every, method_cls, setting)
    config = build_config(method_cls, preset, spec.overrides)

    root = Path(spec.root).expanduser()
    scan = scan_root(root)
    order = {c: i for i, c in enumerate(scan.categories)}
    categories = sorted(resolve_categories(spec.categories, scan.categories), key=order.__getitem__)
    problems = _layout_problems(scan, categories)
    unreadable = [p for p in problems if p.kind in FILES_THE_RUN_READS]
    if unreadable:  # decided here, once: the run would stop at the first of these files
        first = unreadable[0]
        raise DatasetError(f"{plural(len(unreadable), 'layout error')} under {root} cannot be run past, even with "
                           f"--allow-layout-problems (first: {first.kind}: {first.path}: {first.message}): "
                           "every image and every defective image's mask is read; fix them (`threecad verify` "
                           "lists them) or leave the category out (--category)")
    if problems and not spec.allow_layout_problems:
        raise DatasetError(f"{plural(len(problems), 'layout error')} under {root} would change the results "
                           f"(first: {problems[0].kind}: {problems[0].path}: {problems[0].message}); "
                           "fix them (`threecad verify` lists them) or pass --allow-layout-problems")
    if problems:
        log.warning("%s under %s (first: %s); running anyway (--allow-layout-problems)",
                    plural(len(problems), "layout error"), root, problems[0])
    manifest, split = _split_manifest(root, scan, categories, spec.split)

    dataset = {"name": dataset_name(root, scan.dataset), "root": str(root.resolve()),
               "fingerprint": fingerprint(scan.table, root), "split": None,
               "layout_problems": len(problems)}
    split_note = None
    if split is not None:
        dataset["files_fingerprint"] = dataset["fingerprint"]
        dataset["fingerprint"] = hashlib.sha256(
            f"{dataset['fingerprint']}\0{split['sha256']}".encode()).hexdigest()[:16]
        dataset["split"] = split
        split_note = f"using split manifest {split['path']} (val {plural(split['val_images'], 'image')})"
    preset_values = config_dict(build_config(method_cls, preset))
    run_spec = {
        "method": method_cls.name, "preset": preset, "config": config_dict(config),
        # the fields set away from the preset: a leaderboard row names them in its variant
        "overrides": {k: v for k, v in config_dict(config).items() if preset_values.get(k) != v},
        "protocol": spec.protocol, "eval_size": spec.eval_size, "dataset": dataset,
        "setting": setting, "seed": config.seed, "device": str(device),
        "threads": threads,  # every CPU pool's size and where the number came from (threecad.cpus)
    }
    if setting == UNIFIED:  # the union the one model is fitted on: part of what the run is
        run_spec["unified_categories"] = [c.abbreviation for c in categories]
    if spec.ddp:  # absent otherwise, so that run.json of a plain run is as before
        run_spec["ddp"] = True
    if spec.track_test_every:  # the same: absent when off
        run_spec["track_test_every"] = spec.track_test_every
    out = Path(spec.out).expanduser() if spec.out else Path("runs") / run_name(f"{method_cls.name}-{preset}")
    if out.exists() and not out.is_dir():
        raise ThreecadError(f"--out {out} is a file, not a folder")
    if (out / STUDY_FILE).is_file():  # a run written into it would break the study's --resume
        raise ThreecadError(f"--out {out} holds a study ({STUDY_FILE}), not one method's run; pass the study's "
                            "method list to resume it, or choose another --out")
    run = RunDir(out)
    previous = run.read_spec()
    check_resumable(previous, run_spec, spec.resume, out)
    done: dict[str, dict[str, Any]] = {}
    kept: dict[str, dict[str, Any]] = {}
    if previous is not None:
        for cat in categories:
            record = run.read_category(cat.abbreviation)
            if record is None or record.get("status") != "ok":
                continue
            changed = run.changed_files(cat.abbreviation, record)
            if changed:  # edited or damaged since the run wrote it: its numbers are not the run's
                log.warning("%s: %s not what the run wrote (manifest.json); %s runs again",
                            cat.abbreviation, ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
                            + (" are" if len(changed) > 1 else " is"), cat.abbreviation)
            else:
                done[cat.abbreviation] = record
        chosen = {c.abbreviation for c in categories}
        kept = {c.abbreviation: record for c in scan.categories
                if c.abbreviation not in chosen and (record := run.read_category(c.abbreviation)) is not None}
    # a finished run resumed builds nothing
    preprocess = check_method(method_cls, config) if len(done) < len(categories) else None
    # unified: a refit needs every category's training images, finished or not
    unfinished = [c for c in categories if c.abbreviation not in done]
    needed = categories if setting == UNIFIED and unfinished else unfinished
    # one progress line for every category's datasets (each builds or opens its caches)
    data = {cat.abbreviation: _category_data(cat, scan, root, preprocess, spec.eval_size, manifest)
            for cat in progress(needed, desc="datasets (decoded and cached once)", unit="categories")}
    return Plan(method_cls=method_cls, config=config, preset=preset, device=device, root=root, scan=scan,
                categories=categories, run_spec=run_spec, out=out, previous=previous, done=done,
                data=data, manifest=manifest, split_note=split_note, eval_size=spec.eval_size,
                preprocess=preprocess, setting=setting, kept=kept)


def check_tracking(every: int, method_cls: type[Method], setting: str) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ThreecadError(f"--track-test-every {every}: must be a whole number of epochs >= 1 (0: off)")
    if every and not method_cls.trains_by_gradient:
        raise ThreecadError(f"--track-test-every: method '{method_cls.name}' has no training epochs "
                            "(it builds its model in one pass); drop the option")
    if every and setting == UNIFIED:
        raise ThreecadError("--track-test-every follows one category's fit; it does not run with --setting unified "
                            "(pass --setting per-category)")


def check_method(method_cls: type[Method], config: MethodConfig) -> Preprocess:
    """Build the method once on the CPU (config checks, weights files), then drop it; its
    declared input pipeline is what the datasets apply."""
    try:
        method = method_cls(config, device="cpu", amp=False)
        method.postprocess()
        preprocess = method.preprocess()
    except Exception as exc:  # noqa: BLE001 - any construction failure is a bad setting, said in one line
        refusal = build_refusal(method_cls, config, exc)
        if refusal is exc:
            raise
        raise refusal from exc
    del method
    return preprocess


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
        if "dataset" in diff:
            then, now = previous.get("dataset") or {}, run_spec["dataset"]
            what = [f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in ("name", "root", "fingerprint", "split")
                    if then.get(k) != now.get(k)]
            if "fingerprint" in " ".join(what) and then.get("root") == now.get("root"):
                what.append("the files under the root changed since")
            detail += f" (dataset {'; '.join(what[:3])})"
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


def _split_manifest(root: Path, scan, categories: list[Category],
                    given: Path | None = None) -> tuple[Any, dict[str, Any] | None]:
    """The split manifest of this run (checked): `--split FILE`, else the root's `split.csv` if
    any; and its record for results.json."""
    from threecad.splits import find_manifest, read_manifest

    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ThreecadError(f"--split {path}: no such file (write one with `threecad split --root {root} "
                                f"--out {path}`)")
    else:
        path = find_manifest(root)
    if path is None:
        return None, None
    manifest = read_manifest(path, scan.table)
    used = manifest[manifest["category"].isin([c.abbreviation for c in categories])]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest, {"path": str(path.resolve()), "sha256": digest,
                      "val_images": int((used["subset"] == "val").sum()),
                      "train_images": int((used["subset"] == "train").sum())}


def _category_data(cat: Category, scan, root: Path, pre: Preprocess, eval_size: int, manifest) -> CategoryData:
    from threecad.dataset import ThreeCAD

    rows = scan.table[scan.table["category"] == cat.abbreviation]
    for split in ("train", "test"):
        if not (rows["split"] == split).any():
            raise DatasetError(f"{cat.abbreviation}: no {split} images under {root / cat.folder}")
    if manifest is not None and cat.abbreviation not in set(manifest["category"]):
        log.info("%s is not in the split manifest; training on all of train/good", cat.abbreviation)
        manifest = None
    train = ThreeCAD(root, cat.abbreviation, "train", image_size=pre.size, table=scan.table, manifest=manifest,
                     preprocess=pre)
    val = None
    if manifest is not None and ((manifest["category"] == cat.abbreviation)
                                 & (manifest["subset"] == "val")).any():
        val = ThreeCAD(root, cat.abbreviation, "val", image_size=pre.size, table=scan.table, manifest=manifest,
                       preprocess=pre)
    # the model sees test images as its training images; the masks are at the evaluation size
    test = ThreeCAD(root, cat.abbreviation, "test", image_size=pre.size, table=scan.table, preprocess=pre,
                    mask_size=eval_size)
    return CategoryData(cat, train, val if val is not None and len(val) > 0 else None, test)
