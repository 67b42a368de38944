"""A run's numbers computed again from its stored predictions and a dataset root's masks.

Why: a row is evidence, not a claim. `threecad leaderboard submit RUN --root ROOT` checks,
before the table is touched, that ROOT's test images and masks are the files the run saw
(xxh3 digests), that the dataset is what the run says it is (a root with the synthetic
marker is never `3cad`), and that every metric of every category, computed here from the
stored predictions (threecad.harness.predictions) and ROOT's masks under the run's protocol,
equals the recorded one exactly. Any difference refuses the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from threecad.leaderboard.schema import LeaderboardError

# what the synthetic marker makes of a dataset, whatever the run says
SYNTHETIC = "3cad-synthetic"


def verify_run(run_dir: str | Path, data: dict[str, Any], records: dict[str, dict[str, Any]],
               root: str | Path) -> None:
    """Raise a LeaderboardError naming the first difference between the run and ROOT."""
    from threecad.layout import SYNTHETIC_MARKER, scan_root

    run_dir, root = Path(run_dir), Path(root).expanduser()
    if not root.is_dir():
        raise LeaderboardError(f"--root {root} is not a folder")
    dataset = (data.get("dataset") or {}).get("name") if isinstance(data.get("dataset"), dict) else data.get("dataset")
    if (root / SYNTHETIC_MARKER).is_file() and dataset != SYNTHETIC:
        raise LeaderboardError(f"{root} is a synthetic set ({SYNTHETIC_MARKER}), but the run says its dataset is "
                               f"{dataset!r}: a synthetic root is only ever listed as {SYNTHETIC}")
    table = scan_root(root).table
    for abbr, record in records.items():
        _verify_category(run_dir, data, abbr, record, root, table)


def _verify_category(run_dir: Path, data: dict[str, Any], abbr: str, record: dict[str, Any], root: Path,
                     table) -> None:
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
