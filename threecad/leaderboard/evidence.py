"""A run's numbers computed again from its stored predictions and a dataset root's masks.

Why: a row is evidence, not a claim. `threecad leaderboard submit RUN --root ROOT` checks,
before the table is touched, that ROOT's test images and masks are the files the run saw
(xxh3 digests), that the dataset is what the run says it is (a root with the synthetic
marker is never `3cad`), and that every metric of every category, computed here from the
stored predictions (threecad.harness.predictions) and ROOT's masks under the run's protocol,
equals the recorded one exactly. Any difference refuses the run. Rows that pass are
`recomputed`; on 3CAD or MVTec AD only when each category's test set has the official
fingerprint, else `data-unverified` (none is recorded yet). Without `--root` rows are `claimed`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from threecad.leaderboard.schema import LeaderboardError
from threecad.saved_run import recorded_config

# what the synthetic marker makes of a dataset, whatever the run says
SYNTHETIC = "3cad-synthetic"
# Per dataset and category, the test-set fingerprint (`test_set_fingerprint`) of a verified copy
# of the official data. None is recorded yet: no verified copy of 3CAD or MVTec AD has been at
# hand. Until one is, rows on those datasets are `data-unverified` even when recomputed.
OFFICIAL_FINGERPRINTS: dict[str, dict[str, str]] = {"3cad": {}, "mvtec": {}}


@dataclass
class Verified:
    """What `verify_run` established: the rows' evidence, and each category's test-set fingerprint."""

    evidence: str  # "recomputed" or "data-unverified" (threecad.leaderboard.schema.EVIDENCE)
    fingerprints: dict[str, str]
    why: str = ""  # for data-unverified: what is missing


def test_set_fingerprint(paths, image_digests, mask_digests) -> str:
    """xxh3-128 over the sorted (relative path, image digest, mask digest) of a category's test set:
    equal for two roots exactly when they hold the same test files under the same names."""
    digest = xxhash.xxh3_128()
    for path, image, mask in sorted(zip(map(str, paths), map(str, image_digests), map(str, mask_digests))):
        digest.update(f"{path}\0{image}\0{mask}\n".encode())
    return digest.hexdigest()


def verify_run(run_dir: str | Path, data: dict[str, Any], records: dict[str, dict[str, Any]],
               root: str | Path) -> Verified:
    """Raise a LeaderboardError naming the first difference between the run and ROOT; else what holds."""
    from threecad.layout import SYNTHETIC_MARKER, scan_root

    run_dir, root = Path(run_dir), Path(root).expanduser()
    if not root.is_dir():
        raise LeaderboardError(f"--root {root} is not a folder")
    dataset = (data.get("dataset") or {}).get("name") if isinstance(data.get("dataset"), dict) else data.get("dataset")
    synthetic = (root / SYNTHETIC_MARKER).is_file()
    if synthetic and dataset != SYNTHETIC:
        raise LeaderboardError(f"{root} is a synthetic set ({SYNTHETIC_MARKER}), but the run says its dataset is "
                               f"{dataset!r}: a synthetic root is only ever listed as {SYNTHETIC}")
    if dataset == SYNTHETIC and not synthetic:
        raise LeaderboardError(f"the run says its dataset is {SYNTHETIC}, but {root} has no {SYNTHETIC_MARKER}: "
                               "pass the synthetic root the run was scored on")
    check_checkpoints(run_dir, data, records)
    table = scan_root(root).table
    fingerprints = {abbr: _verify_category(run_dir, data, abbr, record, root, table)
                    for abbr, record in records.items()}
    official = OFFICIAL_FINGERPRINTS.get(str(dataset))
    if official is None:  # synthetic (marker checked) or custom data: nothing more to check
        return Verified("recomputed", fingerprints)
    unknown = [abbr for abbr, fp in fingerprints.items() if official.get(abbr) != fp]
    if not unknown:
        return Verified("recomputed", fingerprints)
    why = (f"no fingerprint of the official {dataset} test set is recorded yet" if not official else
           f"the test set of {', '.join(unknown[:3])} is not the official {dataset} one")
    return Verified("data-unverified", fingerprints, why)


def check_checkpoints(run_dir: Path, data: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    """Each category's checkpoint must load into the method run.json names, built from the recorded
    config (on the meta device: shapes and keys are checked, nothing is computed), so that a run of
    one method relabelled as another, or another method's records put into a run, is refused."""
    import torch

    from threecad.backbones import architecture_only
    from threecad.integrity import load_checked

    method_cls, config = recorded_config(data)  # a ThreecadError names what does not fit
    if config.seed != data.get("seed", config.seed):
        raise LeaderboardError(f"the run's seed {data.get('seed')} is not its config's ({config.seed})")
    with architecture_only(), torch.device("meta"):
        method = method_cls(config, device="meta")
    for abbr, record in records.items():
        try:
            method.load_state_dict(load_checked(run_dir / record["checkpoint"]))
        except Exception as exc:  # noqa: BLE001 - whatever fails, the checkpoint is not this method's
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise LeaderboardError(f"{abbr}: the checkpoint {record.get('checkpoint')} is not a {method_cls.name} "
                                   f"model of the recorded config ({type(exc).__name__}: {first})") from None


def _verify_category(run_dir: Path, data: dict[str, Any], abbr: str, record: dict[str, Any], root: Path,
                     table) -> str:
    from threecad.dataset import load_mask
    from threecad.harness.predictions import file_xxh3, load_predictions
    from threecad.metrics import Evaluator
    from threecad.preprocess import Preprocess

    entry = record.get("predictions")
    if not entry:
        raise LeaderboardError(f"{abbr}: the run kept no predictions (made before runs kept them): its numbers "
                               "cannot be checked; run it again")
    try:
        kept = load_predictions(run_dir, entry)
    except (OSError, ValueError, KeyError) as exc:
        raise LeaderboardError(f"{abbr}: the stored predictions cannot be read ({exc})") from None
    rows = table[(table["category"] == abbr) & (table["split"] == "test")]
    by_path = {Path(p).resolve(): m for p, m in zip(rows["image_path"], rows["mask_path"])}
    paths = [(root / p).resolve() for p in kept["paths"]]
    if sorted(by_path) != sorted(paths):
        raise LeaderboardError(f"{abbr}: {root}'s test images are not the {len(paths)} the run saw "
                               f"({len(by_path)} there)")
    for path, digest, mask_digest in zip(paths, kept["image_xxh3"], kept["mask_xxh3"]):
        if file_xxh3(path) != digest or file_xxh3(by_path[path]) != mask_digest:
            raise LeaderboardError(f"{abbr}: {path} (or its mask) is not the file the run saw")
    pre = Preprocess(**record["preprocess"])
    size = kept["maps"].shape[-1]
    if size != data.get("eval_size"):
        raise LeaderboardError(f"{abbr}: the run says it was evaluated at {data.get('eval_size')} px, but its "
                               f"stored maps are {size} px")
    masks = np.stack([load_mask(by_path[p], pre, size)[0] for p in paths]).astype(bool)
    scores = None if np.isnan(kept["scores"]).all() else kept["scores"]
    evaluator = Evaluator(protocol=data["protocol"], mode=record.get("metrics_mode", "exact"))
    evaluator.update(kept["maps"], masks, scores=scores, labels=kept["labels"],
                     defect_types=[str(t) for t in kept["defect_types"]])
    computed = evaluator.compute()
    for metric, value in (record.get("metrics") or {}).items():
        again = computed.get(metric)
        again = None if again is None else float(again)
        if again != value:
            raise LeaderboardError(f"{abbr}: {metric} is {value} in the run, {again} computed from its stored "
                                   "predictions and the root's masks")
    return test_set_fingerprint(kept["paths"], kept["image_xxh3"], kept["mask_xxh3"])
