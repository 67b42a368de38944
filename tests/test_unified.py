"""`threecad bench --setting unified`: one model fitted once on the union of the categories'
training images, each category evaluated on its own, with records, resume and refusals as
in the per-category setting (issue 14).

The test double `meandist` (tests/fake_methods.py) appends a line to `log_file` per fit, so
the number of fits is counted, and its state (the mean training image) shows which images
it was fitted on.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_tiny_dataset
from fake_methods import write_distribution
from refusal import assert_refused
from threecad.cli import main

FOLDERS = ("Aluminum_Camera_Cover", "Aluminum_Ipad", "Copper_Stator")  # ACC, AI, CS


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("unified") / "tiny", categories=FOLDERS,
                             n_train=4, n_good=2, n_defect=2)


@pytest.fixture(autouse=True)
def plugins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_distribution(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))


def bench(root: Path, out: Path, *more: str, method: str = "meandist") -> list[str]:
    return ["bench", "--method", method, "--root", str(root), "--out", str(out), "--device", "cpu",
            "--eval-size", "64", "--pictures", "0", "--category", "ACC,AI,CS", *more]


def invoke(args: list[str], code: int = 0):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output + result.stderr
    return result


def fits(log: Path) -> int:
    return len(log.read_text().split()) if log.is_file() else 0


def train_mean(root: Path) -> torch.Tensor:
    """The mean of every training image of the three categories, at meandist's 32 px."""
    from threecad.dataset import ThreeCAD

    images = [s["image"] for abbr in ("ACC", "AI", "CS") for s in ThreeCAD(root, abbr, "train", image_size=32)]
    return torch.stack(images).mean(0)


@pytest.fixture
def unified_run(root, tmp_path) -> tuple[Path, Path, str]:
    run, log = tmp_path / "run", tmp_path / "fits.log"
    out = invoke(bench(root, run, "--setting", "unified", "--set", f"log_file={log}")).output
    return run, log, out


def test_one_fit_on_the_union_and_a_record_per_category(unified_run, root):
    from threecad.integrity import load_checked

    run, log, out = unified_run
    assert fits(log) == 1
    assert "one model for all (--setting unified)" in out
    assert "unified: one model fitted on 12 training images of 3 categories" in out
    res = json.loads((run / "results.json").read_text())
    assert res["setting"] == "unified" and res["unified_categories"] == ["ACC", "AI", "CS"]
    assert list(res["categories"]) == ["ACC", "AI", "CS"]
    fit_times = set()
    for abbr, rec in res["categories"].items():
        assert rec == json.loads((run / "categories" / f"{abbr}.json").read_text())
        assert rec["status"] == "ok" and rec["fit_shared"] is True and rec["fit_loaded"] is False
        assert rec["n_train"] == 12 and rec["n_train_category"] == 4 and rec["n_test"] == 6
        assert rec["checkpoint"] == "checkpoints/unified.pt"
        assert rec["metrics"]["i_auroc"] > 0.7  # dark squares against the mean of all textures
        fit_times.add(rec["timings"]["fit_s"])
    facts = json.loads((run / "checkpoints" / "unified.json").read_text())
    assert fit_times == {facts["fit_s"]} and facts["n_train"] == 12
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["unified.pt"]
    # the one model is the mean of all 12 training images, not of one category's 4
    mean = load_checked(run / "checkpoints" / "unified.pt")["mean"]
    assert torch.allclose(mean, train_mean(root), atol=1e-6)
    assert not (run / "work").exists() or not any((run / "work").iterdir())
    md = (run / "results.md").read_text()
    assert "setting `unified`" in md and "one model fitted once on the training images of ACC, AI, CS" in md
    assert "| Metric | ACC | AI | CS | Mean |" in md


def test_per_category_stays_the_default_and_says_so(root, tmp_path):
    log = tmp_path / "fits.log"
    invoke(bench(root, tmp_path / "run", "--set", f"log_file={log}"))
    assert fits(log) == 3
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["setting"] == "per-category" and "unified_categories" not in res
    assert "fit_shared" not in res["categories"]["ACC"]
    assert "setting `per-category`" in (tmp_path / "run" / "results.md").read_text()


def test_resume_after_a_kill_evaluates_the_rest_without_refitting(unified_run, tmp_path):
    whole, log, _ = unified_run
    run = tmp_path / "interrupted"
    shutil.copytree(whole, run)
    for p in [run / "categories" / "CS.json", *run.glob("results.*")]:  # killed after AI
        p.unlink()
    kept = {a: (run / "categories" / f"{a}.json").read_bytes() for a in ("ACC", "AI")}
    out = invoke(bench(root_of(whole), run, "--setting", "unified", "--set", f"log_file={log}", "--resume")).output
    assert fits(log) == 1  # the checkpoint was loaded, not fitted again
    assert "unified model loaded from checkpoints/unified.pt" in out and "ACC: done before" in out
    for a, data in kept.items():
        assert (run / "categories" / f"{a}.json").read_bytes() == data
    cs = json.loads((run / "categories" / "CS.json").read_text())
    ref = json.loads((whole / "categories" / "CS.json").read_text())
    assert cs["fit_loaded"] is True and cs["metrics"] == ref["metrics"]
    assert cs["timings"]["fit_s"] == ref["timings"]["fit_s"]  # the shared fit's time, kept
    res = json.loads((run / "results.json").read_text())
    assert res["finished"] and list(res["categories"]) == ["ACC", "AI", "CS"]


def test_a_damaged_unified_checkpoint_is_fitted_again(unified_run, tmp_path):
    whole, log, _ = unified_run
    run = tmp_path / "damaged"
    shutil.copytree(whole, run)
    (run / "categories" / "CS.json").unlink()
    ckpt = run / "checkpoints" / "unified.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-7] + b"garbage")
    invoke(bench(root_of(whole), run, "--setting", "unified", "--set", f"log_file={log}", "--resume"))
    assert fits(log) == 2
    cs = json.loads((run / "categories" / "CS.json").read_text())
    assert cs["fit_loaded"] is False
    assert cs["metrics"] == json.loads((whole / "categories" / "CS.json").read_text())["metrics"]
    from threecad.integrity import load_checked

    assert load_checked(ckpt)["mean"].shape == (3, 32, 32)  # rewritten whole, with its checksum


def test_a_fit_that_fails_fails_every_category(root, tmp_path):
    run = tmp_path / "run"
    out = invoke(bench(root, run, "--setting", "unified", "--set", "fail_on=Aluminum_Ipad"), code=1).output
    res = json.loads((run / "results.json").read_text())
    assert {r["status"] for r in res["categories"].values()} == {"failed"}
    assert out.count("FAILED (RuntimeError: planned failure on Aluminum_Ipad)") == 3
    assert "planned failure" in (run / "failures" / "CS.txt").read_text()
    assert not (run / "checkpoints" / "unified.pt").exists()


def test_resume_in_another_setting_or_with_other_categories_is_refused(unified_run, root):
    run, _, _ = unified_run
    log = run.parent / "fits.log"
    common = ["--set", f"log_file={log}", "--resume"]
    assert_refused(bench(root, run, *common), names="setting", watch=[run, root])
    assert_refused(bench(root, run, "--setting", "per-category", *common), names="--setting unified",
                   watch=[run, root])
    other = bench(root, run, "--setting", "unified", *common)
    other[other.index("ACC,AI,CS")] = "ACC,AI"
    assert_refused(other, names=("unified_categories", "ACC,AI,CS"), watch=[run, root])


def test_a_method_that_cannot_run_unified_is_refused_before_any_write(root, tmp_path, monkeypatch):
    import fake_methods

    monkeypatch.setattr(fake_methods.MeanDistance, "supports_unified", False)
    out = tmp_path / "never"
    assert_refused(bench(root, out, "--setting", "unified"), names=("meandist", "--setting per-category"),
                   watch=[out, root])
    assert not out.exists()
    assert_refused(bench(root, out, "--setting", "multi"), names="--setting", watch=[out, root])


def test_a_unified_method_is_unified_under_its_paper_preset_and_hinted_otherwise(root, tmp_path, monkeypatch):
    import fake_methods

    monkeypatch.setattr(fake_methods.MeanDistance, "unified_by_default", True)
    out = invoke(bench(root, tmp_path / "run", "--category", "ACC", "--preset", "cpu")).output
    hints = [line for line in out.splitlines() if line.startswith("note:")]
    assert hints == ["note: meandist's paper trains one model for all categories (--setting unified, "
                     "the default of --preset paper); this run fits one per category"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["setting"] == "per-category"
    paper = invoke(bench(root, tmp_path / "paper", "--category", "ACC", "--preset", "paper")).output
    assert "note:" not in paper
    assert json.loads((tmp_path / "paper" / "run.json").read_text())["setting"] == "unified"
    asked = invoke(bench(root, tmp_path / "asked", "--category", "ACC", "--preset", "paper",
                         "--setting", "per-category")).output
    assert json.loads((tmp_path / "asked" / "run.json").read_text())["setting"] == "per-category"
    assert "note:" in asked


def root_of(run: Path) -> Path:
    return Path(json.loads((run / "run.json").read_text())["dataset"]["root"])


def test_must_show_uniad_unified_gives_three_rows_from_one_model(root, tmp_path):
    """Issue 14's must-show, on the tiny data: `bench --method uniad --setting unified
    --category ACC,AI,CS --preset cpu` (64 px, 1 epoch to stay fast)."""
    from threecad.errors import WeightsUnavailable
    from threecad.registry import load_method

    try:
        cls = load_method("uniad")
        from threecad.method import build_config

        cls(build_config(cls, "cpu", {"image_size": "64", "neighbour_size": "3"}), device="cpu")
    except (WeightsUnavailable, ImportError) as exc:  # a config error must fail, not skip
        pytest.skip(f"uniad cannot be built here: {exc}")
    run = tmp_path / "uniad"
    out = invoke(["bench", "--method", "uniad", "--setting", "unified", "--category", "ACC,AI,CS",
                  "--preset", "cpu", "--set", "image_size=64", "--set", "neighbour_size=3",  # 4x4 tokens
                  "--set", "epochs=1", "--root", str(root),
                  "--out", str(run), "--device", "cpu", "--eval-size", "64", "--pictures", "0"]).output
    res = json.loads((run / "results.json").read_text())
    assert res["setting"] == "unified" and list(res["categories"]) == ["ACC", "AI", "CS"]
    assert {r["status"] for r in res["categories"].values()} == {"ok"}
    assert {r["checkpoint"] for r in res["categories"].values()} == {"checkpoints/unified.pt"}
    assert len({r["timings"]["fit_s"] for r in res["categories"].values()}) == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["unified.pt"]
    assert "| Metric | ACC | AI | CS | Mean |" in out
    assert all(np.isfinite(r["metrics"]["i_auroc"]) for r in res["categories"].values())
