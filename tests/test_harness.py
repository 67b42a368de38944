"""The harness through its CLI, with a method registered by a real entry point."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    state = torch.load(run / "checkpoints" / "ACC.pt", weights_only=True)
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
