"""`bench --track-test-every N`: the test split evaluated while training, for the record only.

The fit must be the same with and without tracking (the evaluations restore every random
state), the curve and `best_on_test` are written and marked as not valid, the result and
the leaderboard rows stay the honest (last-epoch) numbers, a resumed fit keeps the curve,
and the option is refused where it means nothing.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import make_tiny_dataset
from refusal import assert_refused
from threecad.cli import main
from threecad.harness.tracking import NOT_VALID, TestTracker


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tracking") / "tiny")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def bench(root, out, *more):
    args = ["bench", "--method", "rd", "--root", str(root), "--category", "ACC", "--preset", "cpu",
            "--set", "image_size=64", "--set", "epochs=3", "--device", "cpu", "--eval-size", "64", "--out", str(out),
            *more]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "categories" / "ACC.json").read_text())


def test_tracking_records_the_curve_and_leaves_the_fit_and_result_unchanged(root, tmp_path):
    plain = bench(root, tmp_path / "plain")
    tracked = bench(root, tmp_path / "tracked", "--track-test-every", "2")
    assert tracked["metrics"] == plain["metrics"]
    a = torch.load(tmp_path / "plain" / "checkpoints" / "ACC.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "tracked" / "checkpoints" / "ACC.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    tracking = tracked["test_tracking"]
    assert tracking["every"] == 2 and tracking["epochs"] == [2, 3]  # every 2nd, and the last
    assert tracking["note"] == NOT_VALID
    rows = (tmp_path / "tracked" / tracking["test_curve"]).read_text().splitlines()
    assert rows[0].split(",")[:2] == ["epoch", "i_auroc"] and [r.split(",")[0] for r in rows[1:]] == ["2", "3"]
    last = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert float(last["i_auroc"]) == tracked["metrics"]["i_auroc"]  # the last evaluation is the result's epoch
    for metric, best in tracking["best_on_test"].items():
        values = [float(dict(zip(rows[0].split(","), r.split(",")))[metric]) for r in rows[1:]]
        assert best["value"] == max(values)
    assert (tmp_path / "tracked" / tracking["test_curve_picture"]).stat().st_size > 0
    assert "test_tracking" not in plain


def test_leaderboard_keeps_the_honest_number(root, tmp_path):
    from threecad.leaderboard.store import read_table

    record = bench(root, tmp_path / "run", "--track-test-every", "1")
    table = tmp_path / "board.csv"
    result = CliRunner().invoke(main, ["leaderboard", "submit", str(tmp_path / "run"), "--csv", str(table),
                                       "--create"])
    assert result.exit_code == 0, result.output
    rows = read_table(table).query("category == 'ACC' and source == 'run'")
    values = dict(zip(rows["metric"], rows["value"].astype(float)))
    assert values["i_auroc"] == pytest.approx(100 * record["metrics"]["i_auroc"], abs=1e-4)
    assert not any("best" in m for m in values)


def test_a_resumed_fit_keeps_the_epochs_evaluated_before(tmp_path):
    """The rows evaluated before an interruption are read back from the category's work folder."""
    from threecad.harness import BenchSpec

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "test_curve.json").write_text(json.dumps({"2": {"i_auroc": 0.7, "p_auroc": None}}))
    tracker = TestTracker(method=None, test=None, spec=BenchSpec(method="rd", root=tmp_path), label="ACC",
                          work_dir=tmp_path / "work", every=2)
    assert tracker.rows == {2: {"i_auroc": 0.7, "p_auroc": None}}
    assert tracker.summary()["best_on_test"] == {"i_auroc": {"value": 0.7, "epoch": 2}}


@pytest.mark.parametrize("more, names", [
    (["--method", "padim"], ["--track-test-every", "padim"]),
    (["--method", "uniad", "--setting", "unified"], ["--track-test-every", "unified"]),
])
def test_tracking_is_refused_where_it_means_nothing(root, tmp_path, more, names):
    args = ["bench", "--root", str(root), "--category", "ACC", "--preset", "cpu", "--device", "cpu",
            "--track-test-every", "2", "--out", str(tmp_path / "out"), *more]
    assert_refused(args, names=names, watch=[tmp_path, root])
