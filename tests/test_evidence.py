"""A run keeps what it was scored on, and `submit --root` computes every number again from it.

A real bench run (PaDiM, the fastest real method) keeps its predictions; the metrics
computed again from them and the root's masks equal the recorded ones exactly. Consistent
tampering, caught only by recomputing: a metric edited in both the record and the summary,
a synthetic root listed as 3CAD, a test image swapped on the root, a mask edited, and
predictions edited. Each is refused before the table is touched.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from threecad.cli import main
from threecad.harness.runmanifest import RunManifest
from threecad.leaderboard.runs import load_results
from threecad.leaderboard.runcheck import check_run
from threecad.leaderboard.evidence import verify_run
from threecad.leaderboard.schema import LeaderboardError


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    base = tmp_path_factory.mktemp("evidence")
    root = make_tiny_dataset(base / "data")
    run = base / "run"
    result = CliRunner().invoke(main, ["bench", "--method", "padim", "--root", str(root), "--preset", "cpu",
                                       "--set", "image_size=64", "--device", "cpu", "--eval-size", "64",
                                       "--pictures", "0", "--out", str(run)], env={"THREECAD_CACHE": str(base / "c")})
    assert result.exit_code == 0, result.output
    return root, run


def copies(scored, tmp_path):
    root, run = scored
    shutil.copytree(root, tmp_path / "data")
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "data", tmp_path / "run"


def verify(run, root):
    _, path, data = load_results(run)
    verify_run(run, data, check_run(run, path, data).records, root)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_an_honest_run_is_computed_again_to_the_same_numbers(scored, tmp_path):
    root, run = scored
    record = json.loads((run / "categories" / "ACC.json").read_text())
    entry = record["predictions"]
    assert entry["images"] == 9 and (run / entry["maps"]).is_file() and (run / entry["index"]).is_file()
    verify(run, root)
    table = tmp_path / "board.csv"
    result = CliRunner().invoke(main, ["leaderboard", "submit", str(run), "--root", str(root), "--csv",
                                       str(table), "--create"])
    assert result.exit_code == 0, result.output


def test_a_metric_edited_consistently_is_refused(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    edit_json(run / "categories" / "ACC.json", lambda d: d["metrics"].update(p_auroc=0.999))
    edit_json(run / "results.json", lambda d: d["categories"]["ACC"]["metrics"].update(p_auroc=0.999))
    with pytest.raises(LeaderboardError, match="p_auroc"):
        verify(run, root)


def test_a_synthetic_root_is_never_3cad(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    (root / "synthetic.json").write_text("{}")
    edit_json(run / "results.json", lambda d: d["dataset"].update(name="3cad"))
    with pytest.raises(LeaderboardError, match="synthetic"):
        verify(run, root)


def test_a_changed_test_image_or_mask_is_refused(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    image = sorted((root / "Aluminum_Camera_Cover" / "test" / "good").glob("*.png"))[0]
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(LeaderboardError, match="not the file the run saw"):
        verify(run, root)
    root, run = copies(scored, tmp_path / "again")
    mask = sorted((root / "Aluminum_Camera_Cover" / "ground_truth").rglob("*.png"))[0]
    mask.write_bytes(mask.read_bytes() + b"\0")
    with pytest.raises(LeaderboardError, match="not the file the run saw"):
        verify(run, root)


def test_edited_predictions_are_refused(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    maps = run / "predictions" / "ACC.maps.npy"
    values = np.load(maps)
    values[:] = values[::-1]  # the maps of other images
    np.save(maps, values)
    with pytest.raises(LeaderboardError, match="computed from its stored predictions"):
        verify(run, root)


def test_audit_reruns_the_checkpoints_and_catches_a_relabelled_method(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    result = CliRunner().invoke(main, ["leaderboard", "audit", str(run), "--root", str(root), "--rerun"])
    assert result.exit_code == 0, result.output
    assert "ACC: the checkpoint predicts the recorded metrics again" in result.output
    # a PaDiM run relabelled PatchCore, consistently in run.json and results.json: its checkpoint cannot load
    # with PatchCore's config and the manifest rewritten too, as a careful forger would: only the checkpoint tells
    relabel_as_patchcore(run)
    result = CliRunner().invoke(main, ["leaderboard", "audit", str(run), "--root", str(root), "--rerun"])
    assert result.exit_code != 0 and "is not a patchcore model" in result.output, result.output


def relabel_as_patchcore(run):
    from threecad.method import build_config, config_dict
    from threecad.registry import load_method

    config = config_dict(build_config(load_method("patchcore"), "cpu", {"image_size": "64"}))
    for name in ("run.json", "results.json"):
        edit_json(run / name, lambda d: d.update(method="patchcore", config=config))
    RunManifest(run).update([run / "run.json", run / "results.json"])


def submit(run, root, tmp_path, *more):
    return CliRunner().invoke(main, ["leaderboard", "submit", str(run), "--root", str(root), "--csv",
                                     str(tmp_path / "board.csv"), "--create", *more])


def test_a_run_relabelled_as_another_method_is_refused_by_submit(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    relabel_as_patchcore(run)
    result = submit(run, root, tmp_path)
    assert result.exit_code != 0 and "is not a patchcore model" in result.stderr, result.output
    assert not (tmp_path / "board.csv").exists()


def test_another_methods_records_in_a_run_are_refused_by_submit(scored, tmp_path):
    """PaDiM's records, checkpoints and predictions put into a PatchCore run, its summary rebuilt."""
    from threecad.harness.rundir import RunDir

    root, padim = copies(scored, tmp_path)
    run = tmp_path / "patchcore"
    result = CliRunner().invoke(main, ["bench", "--method", "patchcore", "--root", str(root), "--preset", "cpu",
                                       "--set", "image_size=64", "--device", "cpu", "--eval-size", "64",
                                       "--pictures", "0", "--category", "ACC", "--out", str(run)],
                                env={"THREECAD_CACHE": str(tmp_path / "c")})
    assert result.exit_code == 0, result.output
    for folder in ("categories", "checkpoints", "predictions"):
        for f in (padim / folder).glob("ACC*"):
            shutil.copy(f, run / folder / f.name)
    spec = json.loads((run / "run.json").read_text())
    record = json.loads((run / "categories" / "ACC.json").read_text())
    results = RunDir(run).write_results(spec, {"ACC": record}, {"finished": "2026-12-06T00:00:00Z"})
    assert results["categories"]["ACC"]["method_info"] == record["method_info"]
    outcome = submit(run, root, tmp_path)
    assert outcome.exit_code != 0 and "is not a patchcore model" in outcome.stderr, outcome.output


@pytest.mark.parametrize("field, value, words", [
    ("eval_size", 512, "evaluated at 512 px"),  # the stored maps are 64 px
    ("seed", 7, "seed 7"),  # the config still says the seed the run used
])
def test_a_summary_field_edited_consistently_is_refused(scored, tmp_path, field, value, words):
    root, run = copies(scored, tmp_path)
    for name in ("run.json", "results.json"):
        edit_json(run / name, lambda d: d.update({field: value}))
    result = submit(run, root, tmp_path)
    assert result.exit_code != 0 and words in result.stderr, result.output


def test_evidence_of_the_rows(scored, tmp_path):
    """A real-looking root gives `data-unverified` (no official fingerprint is recorded), a synthetic
    root `recomputed`, no --root `claimed`; every view marks what was not computed again."""
    root, run = copies(scored, tmp_path)
    table = tmp_path / "board.csv"
    result = submit(run, root, tmp_path)
    assert result.exit_code == 0, result.output
    assert "data-unverified" in result.output and "no fingerprint of the official 3cad test set" in result.output
    rows = pd.read_csv(table, dtype=str)
    assert set(rows["evidence"]) == {"data-unverified"}
    shown = CliRunner().invoke(main, ["leaderboard", "show", "--csv", str(table), "--format", "plain"]).output
    assert "(data unverified)" in shown and "official one" in shown

    (root / "synthetic.json").write_text("{}")
    for name in ("run.json", "results.json"):
        edit_json(run / name, lambda d: d["dataset"].update(name="3cad-synthetic"))
    result = submit(run, root, tmp_path, "--replace")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(table, dtype=str)
    assert set(rows.loc[rows["dataset"] == "3cad-synthetic", "evidence"]) == {"recomputed"}

    claimed = CliRunner().invoke(main, ["leaderboard", "submit", str(scored[1]), "--csv", str(table), "--replace"])
    assert claimed.exit_code == 0, claimed.output
    assert "rows stored as claimed" in claimed.output
    rows = pd.read_csv(table, dtype=str)
    assert set(rows.loc[rows["dataset"] == "3cad", "evidence"]) == {"claimed"}
    shown = CliRunner().invoke(main, ["leaderboard", "show", "--csv", str(table), "--format", "md"]).output
    assert "(claimed)" in shown


def test_a_synthetic_run_on_a_root_without_the_marker_is_refused(scored, tmp_path):
    root, run = copies(scored, tmp_path)
    for name in ("run.json", "results.json"):
        edit_json(run / name, lambda d: d["dataset"].update(name="3cad-synthetic"))
    with pytest.raises(LeaderboardError, match="no synthetic.json"):
        verify(run, root)


def test_audit_names_a_file_the_run_did_not_write(scored, tmp_path):
    """A file changed after the run (here a record's metric, in step with results.json) differs from
    the manifest; audit names it before anything else."""
    root, run = copies(scored, tmp_path)
    for name, change in (("categories/ACC.json", lambda d: d["metrics"].update(i_auroc=0.5)),
                         ("results.json", lambda d: d["categories"]["ACC"]["metrics"].update(i_auroc=0.5))):
        edit_json(run / name, change)
    result = CliRunner().invoke(main, ["leaderboard", "audit", str(run), "--root", str(root)])
    assert result.exit_code != 0
    assert "is not the file the run wrote (manifest.json)" in result.output + result.stderr
