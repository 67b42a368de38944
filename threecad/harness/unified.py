"""`--setting unified`: one model fitted once on the union of the chosen categories' training
images, then each category's test set evaluated on its own.

The field reports both settings (UniAD, ADer, MambaAD); here the table, records and
leaderboard rows keep their per-category shape. The one checkpoint (`checkpoints/unified.pt`,
with its fit facts beside it) is written before any category is evaluated, so `--resume`
loads it instead of fitting again.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any

from torch.utils.data import ConcatDataset

from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_json
from threecad.harness.evaluation import calibration, evaluate
from threecad.harness.fitting import fit, new_method
from threecad.harness.memory import PeakMemory
from threecad.harness.prepare import BenchSpec, CategoryData, Plan
from threecad.harness.records import category_record, jsonable, write_losses
from threecad.harness.rundir import RunDir
from threecad.integrity import load_checked, save_checked, sum_path
from threecad.method import Method
from threecad.wording import plural

log = logging.getLogger(__name__)
UNIFIED_WORK = "_unified"  # the unified fit's scratch folder under work/


@dataclass
class UnifiedModel:
    """The one model of a unified run, fitted here or loaded from its checkpoint by --resume."""

    method: Method
    facts: dict[str, Any]  # fit_s, n_train, n_val, categories, memory: as in checkpoints/unified.json
    loaded: bool


def unified_model(plan: Plan, spec: BenchSpec, run: RunDir, echo) -> UnifiedModel | BaseException:
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
    datas = [plan.datasets(c) for c in plan.categories]
    train = ConcatDataset([d.train for d in datas])
    vals = [d.val for d in datas if d.val is not None]
    val = ConcatDataset(vals) if vals else None
    work = run.work_dir(UNIFIED_WORK)
    try:
        method = new_method(plan.method_cls, plan.config, plan.device, work)
        with PeakMemory(plan.device) as mem:
            fit_s = fit(method, plan.config, train, val, plan.device, f"unified ({', '.join(abbrs)})")
        facts = {"fit_s": fit_s, "n_train": len(train), "n_val": len(val) if val is not None else 0,
                 "categories": abbrs, "memory": {"peak_host_rss_mb": mem.host_mb, "peak_device_mb": mem.device_mb},
                 "method_info": jsonable(method.info()),
                 **write_losses(method, run, "unified", spec)}
        save_checked(method.state_dict(), run.unified_checkpoint_file)  # first the model, then its facts
        atomic_write_json(run.unified_fit_file, facts)
        run.manifest.update([run.unified_checkpoint_file, sum_path(run.unified_checkpoint_file), run.unified_fit_file]
                            + [run.path / facts[k] for k in ("losses", "loss_curve") if facts.get(k)])
    except ThreecadError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as every remaining category's failure
        log.error("unified fit failed: %s", exc)
        return exc
    shutil.rmtree(work, ignore_errors=True)
    echo(f"unified: one model fitted on {plural(len(train), 'training image')} of "
         f"{plural(len(abbrs), 'category')} in {fit_s:.1f}s")
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
        method = new_method(plan.method_cls, plan.config, plan.device, run.work_dir(UNIFIED_WORK))
        method.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is refitted, not trusted
        log.warning("unified checkpoint %s not used (%s); fitting again", ckpt, exc)
        return None
    return UnifiedModel(method, facts, loaded=True)


def evaluate_unified(plan: Plan, model: UnifiedModel, data: CategoryData, spec: BenchSpec,
                     run: RunDir) -> dict[str, Any]:
    """One category's test set on the unified model; its record, with the shared fit's facts."""
    cat = data.category
    post = model.method.postprocess()
    with PeakMemory(plan.device) as mem:
        ev = evaluate(model.method, post, plan.config, data.test, plan.device, spec, cat.abbreviation,
                      keep=(run.path, cat.abbreviation))
        held_out = calibration(model.method, post, plan.config, data.val, plan.device, spec)
    fit_mem = model.facts.get("memory") or {}
    device_peaks = [v for v in (fit_mem.get("peak_device_mb"), mem.device_mb) if v is not None]
    memory = {"peak_host_rss_mb": max(mem.host_mb, fit_mem.get("peak_host_rss_mb") or 0.0),
              "peak_device_mb": max(device_peaks) if device_peaks else None}
    record = category_record(model.method, post, cat, ev, spec, run, fit_s=model.facts["fit_s"],
                             memory=memory, n_train=model.facts["n_train"], n_val=model.facts["n_val"],
                             n_test=len(data.test), checkpoint=run.unified_checkpoint_file,
                             losses={k: model.facts.get(k) for k in ("losses", "loss_curve")}, calibration=held_out)
    record.update({"fit_shared": True, "fit_loaded": model.loaded, "n_train_category": len(data.train),
                   "unified_categories": model.facts["categories"]})
    return record
