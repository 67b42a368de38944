"""`bench --resume` with every registered method: an interrupted run is finished, not redone.

Each method runs on a tiny 64 px dataset with its cpu preset made fast (image_size=64 and
one epoch where the config has epochs). A run interrupted after its first category (a
finished run's directory without CS's files) is resumed: ACC's record stays byte-identical
with the same mtime, and CS gives exactly the metrics of an uninterrupted run. One method is also killed for real
(SIGKILL of a `threecad bench` subprocess while CS runs) and resumed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from threecad.cli import main
from threecad.harness import BenchSpec, run_benchmark
from threecad.harness.runmanifest import MANIFEST_FILE, RunManifest
from threecad.leaderboard.evidence import check_checkpoints
from threecad.registry import available_methods
from threecad.trained import short_lengths

METHODS = available_methods()  # at collection: a newly registered method is tested without edits


def fast_overrides(cls) -> dict[str, str]:
    """Settings that make a method's cpu preset run in seconds on 64 px images."""
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    out = {"image_size": "64"}
    # every declared training length, however a method counts it: a one-step fit
    out.update({k: str(v) for k, v in short_lengths(cls.config_class, 1).items()})
    if "neighbour_size" in names:  # UniAD: 64 px at stride 16 is a 4x4 token grid, which 7x7 would mask whole
        out["neighbour_size"] = "3"
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("resume") / "tiny")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def bench(name: str, root: Path, out: Path, categories: str, resume: bool = False) -> dict:
    spec = BenchSpec(method=name, root=root, categories=(categories,), preset="cpu",
                     overrides=fast_overrides(METHODS[name]), device="cpu", out=out, resume=resume,
                     eval_size=64, pictures=0)
    results, code = run_benchmark(spec, echo=lambda *_: None)
    assert code == 0, results
    return results


def stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def interrupt_after_first(whole: Path, run: Path) -> None:
    """`run`: a copy of the finished run `whole` as a kill after ACC leaves it (no CS, not finished)."""
    shutil.copytree(whole, run)
    for p in [run / "categories" / "CS.json", *run.glob("checkpoints/CS.pt*"), *run.glob("results.*")]:
        p.unlink()


def assert_manifest_lists_every_file(run: Path) -> None:
    """manifest.json lists every file the run wrote (not the lock files), each as it is now."""
    listed = json.loads((run / MANIFEST_FILE).read_text())["files"]
    on_disk = {p.relative_to(run).as_posix() for p in run.rglob("*")
               if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_FILE}
    assert set(listed) == on_disk
    assert RunManifest(run).check_all() == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_finishes_an_interrupted_run(name, root, tmp_path):
    cls = METHODS[name]
    assert not isinstance(cls, Exception), f"method {name} does not load: {cls}"
    reference = bench(name, root, tmp_path / "whole", "ACC,CS")
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["config"] == reference["config"]

    run = tmp_path / "interrupted"
    interrupt_after_first(tmp_path / "whole", run)
    acc = stamp(run / "categories" / "ACC.json")
    acc_ckpt = stamp(run / "checkpoints" / "ACC.pt")
    resumed = bench(name, root, run, "ACC,CS", resume=True)  # compares the config read back from run.json

    assert stamp(run / "categories" / "ACC.json") == acc  # not redone: same bytes, same mtime
    assert stamp(run / "checkpoints" / "ACC.pt") == acc_ckpt
    assert list(resumed["categories"]) == ["ACC", "CS"]
    assert resumed["categories"]["CS"]["metrics"] == reference["categories"]["CS"]["metrics"]
    assert resumed["categories"]["CS"]["n_train"] == reference["categories"]["CS"]["n_train"] == 6
    assert resumed["finished"] and resumed["run_id"] == reference["run_id"]
    assert_manifest_lists_every_file(run)
    # its checkpoints are what `leaderboard submit --root` takes for this method's
    check_checkpoints(run, resumed, resumed["categories"])

    # resuming a finished run changes nothing and gives its results
    before = {p.name: stamp(p) for p in run.rglob("*.json")}
    again = bench(name, root, run, "ACC,CS", resume=True)
    assert again == resumed
    assert {p.name: stamp(p) for p in run.rglob("*.json")} == before


def test_killed_run_resumes(tmp_path, monkeypatch):
    """SIGKILL while CS runs, then --resume: ACC untouched, CS equal to an uninterrupted run."""
    name = "padim" if "padim" in METHODS else sorted(METHODS)[0]
    root = make_tiny_dataset(tmp_path / "data", categories=("Aluminum_Camera_Cover",))
    # a CS with many training images, so that the kill surely lands while it runs
    make_tiny_dataset(root, categories=("Copper_Stator",), n_train=120, seed=1)
    cache = tmp_path / "cache"
    monkeypatch.setenv("THREECAD_CACHE", str(cache))
    sets = [x for k, v in fast_overrides(METHODS[name]).items() for x in ("--set", f"{k}={v}")]
    args = ["bench", "--method", name, "--root", str(root), "--preset", "cpu", "--device", "cpu",
            "--eval-size", "64", "--pictures", "0", "--category", "ACC,CS", *sets]

    run = tmp_path / "killed"
    env = dict(os.environ, THREECAD_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "threecad", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    acc_file = run / "categories" / "ACC.json"
    deadline = time.monotonic() + 600
    while not acc_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert acc_file.exists() and not (run / "categories" / "CS.json").exists(), "the kill missed CS"
    results = run / "results.json"  # absent when the kill came between ACC's record and the summary
    assert not results.exists() or "finished" not in json.loads(results.read_text())
    acc = stamp(acc_file)

    runner = CliRunner()
    result = runner.invoke(main, [*args, "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "ACC: done before, skipped (--resume)" in result.output
    assert stamp(acc_file) == acc
    whole = runner.invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    resumed = json.loads((run / "results.json").read_text())
    reference = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["categories"]["CS"]["metrics"] == reference["categories"]["CS"]["metrics"]
    assert resumed["categories"]["CS"]["n_train"] == 120
    assert not (run / "work" / "CS").exists()

    # a finished run resumed: exit 0, the table printed again, nothing rewritten
    before = {str(p): stamp(p) for p in run.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    again = runner.invoke(main, [*args, "--out", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    assert "| Metric | ACC | CS | Mean |" in again.output
    assert {str(p): stamp(p) for p in run.rglob("*") if p.is_file() and not p.name.startswith(".lock")} == before


def test_a_hand_edited_record_is_run_again(root, tmp_path):
    """A record edited after the run wrote it (in step with results.json) is not kept by --resume:
    its files no longer match the manifest, so the category runs again and its true numbers return."""
    run = tmp_path / "run"
    honest = bench("padim", root, run, "ACC,CS")
    for path in (run / "categories" / "ACC.json", run / "results.json"):
        data = json.loads(path.read_text())
        metrics = data["metrics"] if "metrics" in data else data["categories"]["ACC"]["metrics"]
        metrics["i_auroc"] = 0.999
        path.write_text(json.dumps(data))
    resumed = bench("padim", root, run, "ACC,CS", resume=True)
    assert resumed["categories"]["ACC"]["metrics"] == honest["categories"]["ACC"]["metrics"]
    assert json.loads((run / "categories" / "ACC.json").read_text())["metrics"]["i_auroc"] != 0.999
    assert_manifest_lists_every_file(run)
