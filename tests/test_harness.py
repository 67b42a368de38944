"""The harness through its CLI, with a method registered by a real entry point."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fake_methods import pythonpath_with, write_distribution


@pytest.fixture
def env(tmp_path):
    site = write_distribution(tmp_path / "site")
    e = dict(os.environ, PYTHONPATH=pythonpath_with(site), THREECAD_CACHE=str(tmp_path / "cache"))
    return e


def threecad(args, env, check=None):
    proc = subprocess.run([sys.executable, "-m", "threecad", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def test_methods_lists_entry_point_method(env):
    out = threecad(["methods"], env, check=0).stdout
    assert "meandist" in out and "distance to the mean training image" in out and "presets: paper, cpu" in out


def test_model_sees_test_images_resized_once_as_its_training_images(tiny_root, tmp_path, env):
    """Metrics at --eval-size 64, model at 32 px: predict gets each test image resized from the
    original once (as training), not the 64 px evaluation image resized again."""
    from threecad.dataset import ThreeCAD

    seen = tmp_path / "seen"
    threecad(["bench", "--method", "meandist", "--root", str(tiny_root), "--out", str(tmp_path / "run"),
              "--device", "cpu", "--eval-size", "64", "--category", "ACC", "--set", f"predict_log={seen}"],
             env, check=0)
    got = torch.cat([torch.load(p) for p in sorted(tmp_path.glob("seen.*.pt"))])
    direct = ThreeCAD(tiny_root, "ACC", "test", image_size=32, cache=False)
    assert got.shape == (len(direct), 3, 32, 32)
    assert torch.equal(got, torch.stack([direct[i]["image"] for i in range(len(direct))]))
    twice = torch.nn.functional.interpolate(
        torch.stack([ThreeCAD(tiny_root, "ACC", "test", image_size=64, cache=False)[i]["image"]
                     for i in range(len(direct))]), size=(32, 32), mode="bilinear", antialias=True)
    assert not torch.allclose(got, twice, atol=1e-3)  # the old double resize differs: the test can tell


def test_bench_end_to_end(tiny_root, tmp_path, env):
    run = tmp_path / "run"
    proc = threecad(["bench", "--method", "meandist", "--root", str(tiny_root), "--out", str(run),
                     "--device", "cpu", "--eval-size", "64"], env, check=0)
    res = json.loads((run / "results.json").read_text())
    assert res["schema"] == "threecad.run/1" and res["method"] == "meandist" and res["preset"] == "cpu"
    assert set(res["categories"]) == {"ACC", "CS"}
    for rec in res["categories"].values():
        assert rec["status"] == "ok"
        assert rec["metrics"]["i_auroc"] > 0.8  # dark squares are easy for the mean distance
        assert rec["timings"]["fit_s"] >= 0 and rec["timings"]["infer_images_per_s"] > 0
        assert rec["memory"]["peak_host_rss_mb"] > 10
        assert rec["n_test"] == 9 and rec["n_train"] == 6
    assert res["mean"]["i_auroc"] == pytest.approx(
        sum(r["metrics"]["i_auroc"] for r in res["categories"].values()) / 2)
    assert res["dataset"]["name"] == "3cad" and len(res["dataset"]["fingerprint"]) == 16
    from threecad.integrity import load_checked

    state = load_checked(run / "checkpoints" / "ACC.pt")
    assert state["mean"].shape == (3, 32, 32)
    assert (run / "pictures" / "ACC.png").stat().st_size > 1000
    md = (run / "results.md").read_text()
    assert "| Metric | ACC | CS | Mean |" in md and "i_auroc" in md
    assert "| Metric | ACC | CS | Mean |" in proc.stdout
    csv = (run / "results.csv").read_text().splitlines()
    assert csv[0] == "run_id,method,preset,protocol,dataset,category,metric,value"
    # the same run directory is not overwritten by accident
    again = threecad(["bench", "--method", "meandist", "--root", str(tiny_root), "--out", str(run)], env)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr


def test_failure_isolation_and_resume(tiny_root, tmp_path, env):
    run, log = tmp_path / "run", tmp_path / "fits.log"
    common = ["bench", "--method", "meandist", "--root", str(tiny_root), "--out", str(run), "--device", "cpu",
              "--eval-size", "64", "--set", f"log_file={log}", "--pictures", "0"]
    first = threecad([*common, "--set", "fail_on=Copper_Stator"], env, check=1)
    assert "CS: FAILED" in first.stdout
    res = json.loads((run / "results.json").read_text())
    assert res["categories"]["ACC"]["status"] == "ok" and res["categories"]["CS"]["status"] == "failed"
    assert "planned failure" in (run / "failures" / "CS.txt").read_text()
    # a resumed run must use the same config: a changed one is refused
    changed = threecad([*common, "--resume"], env)
    assert changed.returncode == 2 and "different config" in changed.stderr
    # simulate a run killed after its first category: drop CS's record, resume with the same config
    (run / "categories" / "CS.json").unlink()
    spec = json.loads((run / "run.json").read_text())
    spec["config"]["fail_on"] = ""
    (run / "run.json").write_text(json.dumps(spec))
    threecad([*common, "--resume"], env, check=0)
    assert log.read_text().split() == ["Aluminum_Camera_Cover", "Copper_Stator"]  # ACC fitted once
    res = json.loads((run / "results.json").read_text())
    assert {r["status"] for r in res["categories"].values()} == {"ok"}


def test_bad_options_are_one_line_errors(tiny_root, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from threecad.cli import main

    monkeypatch.syspath_prepend(str(write_distribution(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    runner = CliRunner()

    def threecad(args, _env):
        result = runner.invoke(main, args)
        return type("Result", (), {"exit_code": result.exit_code, "stderr": result.output})

    base = ["bench", "--method", "meandist", "--root", str(tiny_root)]
    cases = [
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--set", "image_size=big"], "expected int"),
        (["--category", "Coper_Stator"], "Did you mean 'Copper_Stator'"),
        (["--preset", "huge"], "no preset 'huge'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for extra, message in cases:
        proc = threecad([*base, *extra], None)
        assert proc.exit_code == 2, (extra, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    proc = threecad(["bench", "--method", "meandsit", "--root", str(tiny_root)], None)
    assert proc.exit_code == 2 and "Did you mean 'meandist'" in proc.stderr


# ------------------------------------------------------------------ in-process checks (CliRunner)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `threecad ARGS` in this process, with meandist registered; returns the click Result."""
    from click.testing import CliRunner

    from threecad.cli import main

    monkeypatch.syspath_prepend(str(write_distribution(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, result.output + result.stderr
        return result
    return invoke


def fast(root, out, *more):
    return ["bench", "--method", "meandist", "--root", str(root), "--out", str(out), "--device", "cpu",
            "--eval-size", "64", "--pictures", "0", *more]


def test_checkpoint_is_checked_and_categories_in_catalog_order(cli, tiny_root, tmp_path):
    from threecad.integrity import load_checked, sum_path

    run = tmp_path / "run"
    out = cli(*fast(tiny_root, run, "--category", "CS,ACC")).output
    assert "on 2 categories of" in out
    res = json.loads((run / "results.json").read_text())
    assert list(res["categories"]) == ["ACC", "CS"]  # the catalog's order, not the order asked
    ckpt = run / "checkpoints" / "ACC.pt"
    assert sum_path(ckpt).is_file()
    assert load_checked(ckpt)["mean"].shape == (3, 32, 32)
    one = cli(*fast(tiny_root, tmp_path / "one", "--category", "CS")).output
    assert "on 1 category of" in one


def test_all_empty_masks_give_undefined_pixel_metrics(cli, tiny_root, tmp_path):
    for mask in tiny_root.glob("*/ground_truth/*/*.png"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    run = tmp_path / "run"
    out = cli(*fast(tiny_root, run, "--category", "ACC")).output
    rec = json.loads((run / "categories" / "ACC.json").read_text())
    assert rec["status"] == "ok"
    assert rec["metrics"]["p_auroc"] is None and rec["metrics"]["au_pro"] is None
    assert isinstance(rec["metrics"]["i_auroc"], float)
    assert "p_auroc: no defect" in rec["notes"]
    assert "p_auroc -" in out
    res = json.loads((run / "results.json").read_text())
    assert "p_auroc" not in res["mean"] and res["mean"]["i_auroc"] == rec["metrics"]["i_auroc"]


def test_layout_errors_refused_unless_allowed(cli, tiny_root, tmp_path, monkeypatch):
    """An unreadable folder (simulated: root ignores chmod) would silently drop its images."""
    import errno

    hidden = tiny_root / "Copper_Stator" / "test" / "bump"
    real_scandir = os.scandir

    def scandir(p="."):
        if Path(os.fspath(p)) == hidden:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    result = cli(*fast(tiny_root, tmp_path / "refused"), code=2)
    assert "--allow-layout-problems" in result.stderr and str(hidden) in result.stderr
    assert not (tmp_path / "refused").exists()
    run = tmp_path / "run"
    cli(*fast(tiny_root, run, "--allow-layout-problems", "--category", "ACC"))  # CS's problem is not ACC's
    assert json.loads((run / "results.json").read_text())["dataset"]["layout_problems"] == 0
    cli(*fast(tiny_root, tmp_path / "run2", "--allow-layout-problems"))
    res = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert res["dataset"]["layout_problems"] == 1 and res["categories"]["CS"]["n_test"] == 6


def test_split_manifest_is_announced_and_recorded(cli, tiny_root, tmp_path):
    import hashlib

    plain = tmp_path / "plain"
    cli(*fast(tiny_root, plain))
    cli("split", "--root", str(tiny_root))
    manifest = tiny_root / "split.csv"
    run = tmp_path / "run"
    out = cli(*fast(tiny_root, run)).output
    assert f"using split manifest {manifest.resolve()} (val 2 images)" in out
    res = json.loads((run / "results.json").read_text())
    before = json.loads((plain / "results.json").read_text())["dataset"]
    assert res["dataset"]["split"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert res["dataset"]["split"]["path"] == str(manifest.resolve())
    assert before["split"] is None and res["dataset"]["files_fingerprint"] == before["fingerprint"]
    assert res["dataset"]["fingerprint"] != before["fingerprint"] and len(res["dataset"]["fingerprint"]) == 16
    assert res["categories"]["ACC"]["n_train"] == 5 and res["categories"]["ACC"]["n_val"] == 1
    # the plain run cannot be resumed on the root that now carries a split
    assert "different dataset" in cli(*fast(tiny_root, plain, "--resume"), code=2).stderr


def test_progress_logs_at_a_steady_pace_without_a_terminal(caplog):
    from threecad.progress import LogProgress, progress

    now = [0.0]
    caplog.set_level(logging.INFO, logger="threecad.progress")
    with LogProgress(total=10, desc="ACC test", unit="batch", interval=30, clock=lambda: now[0]) as bar:
        for _ in range(10):
            now[0] += 10
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ACC test: 3/10 batch after 30 s (0.1 batch/s), about 70 s left",
                     "ACC test: 6/10 batch after 60 s (0.1 batch/s), about 40 s left",
                     "ACC test: 9/10 batch after 90 s (0.1 batch/s), about 10 s left",
                     "ACC test: 10/10 batch done in 100.0 s (0.1 batch/s)"]
    caplog.clear()
    assert list(progress(range(5), desc="x", terminal=False)) == [0, 1, 2, 3, 4]
    assert [r.getMessage().split(" done")[0] for r in caplog.records] == ["x: 5/5 it"]
