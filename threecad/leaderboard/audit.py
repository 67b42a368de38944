"""`threecad leaderboard audit RUN [--root ROOT] [--rerun]`: is this run what it says it is?

Every file of the run must be the one its manifest lists (threecad.harness.runmanifest).
Without `--rerun`, the run's summary is checked against its records, and every metric is
computed again from the stored predictions and the dataset's masks (the same check as
`submit --root`; ROOT defaults to the root the run recorded). With `--rerun`, each
category's checkpoint is loaded into the method run.json names, built from the recorded
config, so a checkpoint of another method (a PatchCore model relabelled CFRG) cannot load;
the test split is predicted again through the method's declared pre- and post-processing
and every metric must come out as recorded (exactly on the machine and thread count that
ran it; `tolerance` elsewhere).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from threecad.harness.runmanifest import MANIFEST_FILE, RunManifest, category_files
from threecad.leaderboard.evidence import verify_run
from threecad.saved_run import recorded_config
from threecad.leaderboard.runcheck import check_run
from threecad.leaderboard.runs import load_results
from threecad.leaderboard.schema import LeaderboardError
from threecad.wording import plural


def audit_run(run_dir: str | Path, root: str | Path | None = None, rerun: bool = False, tolerance: float = 0.0,
              echo: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Raise a LeaderboardError at the first thing that does not hold; the recomputed metrics otherwise."""
    run_dir, path, data = load_results(run_dir)
    _check_manifest(Path(run_dir), echo)
    records = check_run(Path(run_dir), path, data).records
    unlisted = [rel for abbr, record in records.items()
                for rel in RunManifest(run_dir).differing(category_files(Path(run_dir), abbr, record))]
    if unlisted and RunManifest(run_dir).read() is not None:
        raise LeaderboardError(f"{run_dir}: {unlisted[0]} is not in the run's manifest")
    root = Path(root) if root is not None else Path((data.get("dataset") or {}).get("root", ""))
    verified = verify_run(run_dir, data, records, root)
    echo(f"{plural(len(records), 'category')}: every metric computed again from the stored predictions "
         f"and {root}'s masks")
    for abbr, fingerprint in verified.fingerprints.items():
        echo(f"{abbr}: test-set fingerprint {fingerprint}")
    echo(f"evidence: {verified.evidence}" + (f" ({verified.why})" if verified.why else ""))
    if not rerun:
        return {}
    return {abbr: _rerun(Path(run_dir), data, abbr, record, root, tolerance, echo) for abbr, record in records.items()}


def _check_manifest(run_dir: Path, echo) -> None:
    manifest = RunManifest(run_dir)
    listed = manifest.read()
    if listed is None:
        echo(f"note: {run_dir} has no {MANIFEST_FILE} (made before runs kept one): its files are not checked")
        return
    if not listed:
        raise LeaderboardError(f"{manifest.path} is damaged: the run's files cannot be checked")
    differing = manifest.check_all()
    if differing:
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        raise LeaderboardError(f"{run_dir}: {differing[0]}{more} is not the file the run wrote ({MANIFEST_FILE})")
    echo(f"{len(listed)} files are the ones the run wrote ({MANIFEST_FILE})")


def _rerun(run_dir: Path, data: dict[str, Any], abbr: str, record: dict[str, Any], root: Path, tolerance: float,
           echo) -> dict[str, float]:
    import torch

    from threecad.dataset import ThreeCAD
    from threecad.harness import BenchSpec
    from threecad.harness.evaluation import evaluate
    from threecad.harness.fitting import new_method
    from threecad.integrity import load_checked

    method_cls, built = recorded_config(data)
    try:
        method = new_method(method_cls, built, torch.device("cpu"), work_dir=None)
        method.load_state_dict(load_checked(run_dir / record["checkpoint"]))
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the checkpoint is not this method's
        raise LeaderboardError(f"{abbr}: the checkpoint {record['checkpoint']} is not a {data.get('method')} "
                               f"model of the recorded config ({type(exc).__name__}: {exc})") from None
    pre = method.preprocess()
    test = ThreeCAD(root, abbr, "test", image_size=pre.size, preprocess=pre, mask_size=int(data["eval_size"]),
                    cache=False)
    spec = BenchSpec(method=method_cls.name, root=root, protocol=data["protocol"], eval_size=int(data["eval_size"]),
                     metrics_mode=record.get("metrics_mode", "auto"), pictures=0)
    ev = evaluate(method, method.postprocess(), built, test, torch.device("cpu"), spec, f"audit {abbr}")
    for metric, value in (record.get("metrics") or {}).items():
        again = ev.metrics.get(metric)
        same = again == value or (again is not None and value is not None and math.isfinite(again)
                                  and abs(again - value) <= tolerance)
        if not same:
            raise LeaderboardError(f"{abbr}: {metric} is {value} in the run, {again} when its checkpoint predicts "
                                   "the test set again")
    echo(f"{abbr}: the checkpoint predicts the recorded metrics again")
    return ev.metrics
