"""`threecad bench --method a,b`: a study in one process, its table, --resume and bad input.

The study is padim (real, 64 px) and the test method meandist (tests/fake_methods.py,
registered through a real entry point) on two categories. Each method's run directory must
hold what `--method NAME --out DIR` alone writes (the same metrics), the study table must
show those numbers in the paper's layout with the best marked, an interrupted study must be
finished by --resume without redoing what was done, a failing pair must be recorded while
the others run, and refused commands must leave every file as it was.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from fake_methods import write_distribution
from refusal import assert_refused
from threecad.cli import main
from threecad.harness.study import parse_methods
from threecad.harness.studytable import study_tables

SHORT = ["--preset", "cpu", "--device", "cpu", "--eval-size", "64", "--pictures", "0", "--set", "image_size=64"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("study") / "tiny")


def _install(mp: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """The test method's distribution on the path, a shared cache, one thread."""
    site = tmp_path_factory.getbasetemp() / "site"
    if not site.exists():
        write_distribution(site)
    mp.syspath_prepend(str(site))
    mp.syspath_prepend(str(Path(__file__).parent))
    mp.setenv("THREECAD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _setup(tmp_path_factory, monkeypatch):
    _install(monkeypatch, tmp_path_factory)


def bench(*args: str, code: int = 0):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == code, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def study(root, tmp_path_factory) -> Path:
    """A finished study of padim and meandist on ACC and CS."""
    out = tmp_path_factory.mktemp("s") / "S"
    mp = pytest.MonkeyPatch()
    _install(mp, tmp_path_factory)
    try:
        bench("--method", "padim,meandist", "--root", str(root), "--category", "ACC,CS", *SHORT, "--out", str(out))
    finally:
        mp.undo()
    return out


def stamps(top: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(top)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(top.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}


def test_study_writes_a_run_per_method_and_the_table(study, root, tmp_path):
    assert sorted(p.name for p in study.iterdir() if not p.name.startswith(".")) == [
        "meandist", "padim", "study.csv", "study.json", "study.md"]
    # the member run equals what `--method padim` alone writes
    bench("--method", "padim", "--root", str(root), "--category", "ACC,CS", *SHORT, "--out", str(tmp_path / "P"))
    alone = json.loads((tmp_path / "P" / "results.json").read_text())
    member = json.loads((study / "padim" / "results.json").read_text())
    assert {k: v["metrics"] for k, v in member["categories"].items()} == {
        k: v["metrics"] for k, v in alone["categories"].items()}
    assert member["config"] == alone["config"] and member["finished"]
    assert sorted(p.name for p in (study / "padim").iterdir()) == sorted(p.name for p in (tmp_path / "P").iterdir())

    # the table: methods as rows, categories then Mean as columns, values of the records in percent
    md = (study / "study.md").read_text()
    assert "## I-AUROC\n\n| Method | ACC | CS | Mean |" in md and "## AU-PRO" in md
    means = {m: json.loads((study / m / "results.json").read_text())["mean"] for m in ("padim", "meandist")}
    rows = {line.split(" | ")[0][2:]: line for line in md.split("## P-AUROC")[1].split("##")[0].splitlines()
            if line.startswith("| ") and "Method" not in line}
    best = max(means, key=lambda m: round(100 * means[m]["p_auroc"], 1))
    assert f"**{100 * means[best]['p_auroc']:.1f}** |" in rows[best]
    csv = (study / "study.csv").read_text().splitlines()
    assert csv[0] == "metric,method,preset,ACC,CS,Mean,best"
    row = next(line for line in csv if line.startswith("p_auroc,padim,"))
    assert float(row.split(",")[5]) == pytest.approx(100 * means["padim"]["p_auroc"], abs=1e-9)
    spec = json.loads((study / "study.json").read_text())
    assert spec["methods"] == ["padim", "meandist"] and spec["categories"] == ["ACC", "CS"]
    assert spec["configs"]["padim"]["image_size"] == 64 == spec["configs"]["meandist"]["image_size"]


def test_resume_finishes_an_interrupted_study(study, root, tmp_path):
    run = tmp_path / "S"
    shutil.copytree(study, run)
    for p in [run / "padim" / "categories" / "CS.json", *run.glob("padim/checkpoints/CS.pt*"),
              *run.glob("padim/results.*"), run / "study.md", run / "study.csv"]:
        p.unlink()
    kept = {k: v for k, v in stamps(run).items() if k.startswith(("meandist", "padim/categories"))}
    result = bench("--method", "padim,meandist", "--root", str(root), "--category", "ACC,CS", *SHORT,
                   "--out", str(run), "--resume")
    assert "1 of 4 (method, category) pairs to run; 3 done before, skipped (--resume)" in result.output
    now = stamps(run)
    assert all(now[k] == v for k, v in kept.items() if not k.endswith(("results.json", "results.csv", "results.md")))
    for name in ("study.md", "study.csv"):
        assert (run / name).read_text() == (study / name).read_text()

    # a finished study resumed: nothing rewritten, the table printed again
    again = bench("--method", "padim,meandist", "--root", str(root), "--category", "ACC,CS", *SHORT,
                  "--out", str(run), "--resume")
    assert "## I-AUROC" in again.output
    assert stamps(run) == now


def test_a_failing_pair_is_recorded_and_the_rest_go_on(root, tmp_path):
    out = tmp_path / "F"
    result = bench("--method", "meandist,padim", "--root", str(root), "--category", "ACC,CS", *SHORT,
                   "--set", "meandist.fail_on=Copper_Stator", "--out", str(out), code=1)
    assert "meandist CS: FAILED (RuntimeError: planned failure on Copper_Stator)" in result.output
    fail = json.loads((out / "meandist" / "categories" / "CS.json").read_text())
    assert fail["status"] == "failed" and (out / "meandist" / fail["traceback"]).is_file()
    padim = json.loads((out / "padim" / "results.json").read_text())
    assert [r["status"] for r in padim["categories"].values()] == ["ok", "ok"]
    md = (out / "study.md").read_text()
    assert "- meandist on CS: RuntimeError: planned failure on Copper_Stator (see meandist/failures/CS.txt)" in md
    assert "| meandist | " in md and " | - | " in md.split("## I-AUROC")[1].split("##")[0]


def test_bad_study_input_refused(study, root, tmp_path):
    base = ["bench", "--root", str(root), "--category", "ACC,CS", *SHORT]
    new = tmp_path / "new"
    watch = [study, tmp_path]
    assert_refused([*base, "--method", "padim,nosuch", "--out", str(new)], names="nosuch", watch=watch)
    assert_refused([*base, "--method", "padim,PaDiM", "--out", str(new)], names="padim", watch=watch)
    assert_refused([*base, "--method", "padim,,meandist", "--out", str(new)], names="--method", watch=watch)
    assert_refused([*base, "--method", "padim,meandist", "--set", "nokey=1", "--out", str(new)],
                   names="nokey", watch=watch)
    # a study directory made with other settings
    assert_refused([*base, "--method", "padim,meandist", "--out", str(study)], names="--resume", watch=watch)
    assert_refused([*base, "--method", "padim,patchcore", "--out", str(study), "--resume"],
                   names=["methods", "padim,meandist then"], watch=watch)
    assert_refused([*base, "--method", "padim,meandist", "--set", "meandist.batch_size=2", "--out", str(study),
                    "--resume"], names="config", watch=watch)
    assert_refused([*base, "--method", "padim,meandist", "--out", str(study / "padim")], names="one method",
                   watch=watch)
    assert not new.exists()


def test_parse_methods():
    assert parse_methods(" cfrg, rd ,patchcore") == ("cfrg", "rd", "patchcore")
    with pytest.raises(Exception, match="named twice"):
        parse_methods("rd,RD")


def test_study_table_marks_ties_and_missing_values():
    def results(values: dict[str, float | None]) -> dict:
        cats = {a: ({"status": "ok", "metrics": {"i_auroc": v}} if v is not None else
                    {"status": "failed", "error": "E: x", "traceback": f"failures/{a}.txt"}) for a, v in values.items()}
        return {"protocol": "standard", "preset": "cpu", "eval_size": 64, "setting": "per-category",
                "dataset": {"name": "d"}, "categories": cats}

    md, csv = study_tables({"a": results({"ACC": 0.9004, "CS": 0.5}), "b": results({"ACC": 0.8996, "CS": None})},
                           ["ACC", "CS"])
    assert "| a | **90.0** | **50.0** | 70.0 |" in md  # 90.04 and 89.96 both print 90.0: both best
    assert "| b | **90.0** | - | **90.0** |" in md
    assert "- b on CS: E: x (see b/failures/CS.txt)" in md
    assert csv.splitlines()[1:] == ["i_auroc,a,cpu,90.03999999999999,50.0,70.02,ACC;CS",
                                    "i_auroc,b,cpu,89.96,,89.96,ACC;Mean"]
