"""`threecad predict` and the Python API compute what the benchmark computed.

On `synth --scale 0.01 --max-size 128` with a validation split, a cpu-preset run of PatchCore,
CFRG and FastFlow (made fast) is followed by `predict` on the category's test folder: every
image score equals the one the run stored for that image (to 1e-6 relative; the ranking is the
same), the threshold comes from the held-out good images the run recorded, and the files a
user reads are there. Then the refusals: no threshold source, unreadable images, a used --out.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import threecad
from refusal import assert_refused
from test_resume import METHODS, fast_overrides
from threecad.cli import main

CATEGORY, FOLDER = "ACC", "Aluminum_Camera_Cover"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("predict")
    for args in (["synth", "--out", str(base / "syn"), "--scale", "0.01", "--max-size", "128"],
                 ["split", "--root", str(base / "syn"), "--category", CATEGORY]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    return base / "syn"


@pytest.fixture(scope="module", params=["patchcore", "cfrg", "fastflow"])
def run(request, synthetic, tmp_path_factory) -> "threecad.saved_run.SavedRun":
    name = request.param
    out = tmp_path_factory.mktemp(name) / "run"
    os.environ.setdefault("THREECAD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    overrides = {**fast_overrides(METHODS[name]), "image_size": "64"}
    return threecad.bench(name, synthetic, category=CATEGORY, preset="cpu", overrides=overrides, out=out,
                          device="cpu", eval_size=64, pictures=0)


def stored_scores(run) -> dict[str, float]:
    kept = np.load(run.path / run.record(CATEGORY)["predictions"]["index"])
    return {os.path.normpath(p): float(s) for p, s in zip(kept["paths"], kept["scores"])}


def test_predict_gives_the_runs_scores(run, synthetic, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(run.path), "--category", CATEGORY,
                                       "--images", str(synthetic / FOLDER / "test"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    stored = stored_scores(run)
    assert len(rows) == len(stored) > 0
    ours = np.array([float(r["score"]) for r in rows])
    theirs = np.array([stored[os.path.relpath(r["path"], synthetic)] for r in rows])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())
    assert (np.argsort(ours, kind="stable") == np.argsort(theirs, kind="stable")).all()  # the same ranking
    # the threshold: the held-out good images' scores the run recorded, at the default rate
    held_out = run.record(CATEGORY)["threshold_calibration"]
    assert held_out["images"] == 2 and float(rows[0]["threshold"]) == pytest.approx(max(held_out["scores"]))
    assert {r["decision"] for r in rows} <= {"good", "anomalous"}
    assert all((float(r["score"]) > float(r["threshold"])) == (r["decision"] == "anomalous") for r in rows)
    name = Path(os.path.relpath(rows[0]["path"], synthetic / FOLDER / "test")).with_suffix("")
    amap = np.load(out / "maps" / f"{name}.npy")
    assert amap.shape == (64, 64) and amap.dtype == np.float32
    with Image.open(out / "overlays" / f"{name}.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert f"{len(rows)} images scored" in result.output


def test_the_python_api_predicts_the_same(run, synthetic):
    model = threecad.load_run(run.path).model(CATEGORY)
    paths = sorted((synthetic / FOLDER / "test").rglob("*.png"))[:4]
    out = model.predict(paths)
    stored = stored_scores(run)
    np.testing.assert_allclose(out.scores, [stored[os.path.relpath(p, synthetic)] for p in paths], rtol=1e-6,
                               atol=1e-6 * max(abs(v) for v in stored.values()))
    assert out.maps.shape == (4, 64, 64)
    assert set(run.results["category"]) == {CATEGORY} and "i_auroc" in set(run.results["metric"])


def test_unreadable_images_are_listed_and_skipped(run, synthetic, tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    good = sorted((synthetic / FOLDER / "test" / "good").glob("*.png"))[0]
    (folder / "a.png").write_bytes(good.read_bytes())
    with Image.open(good) as im:  # another size and mode: read as the benchmark reads test images
        im.convert("L").resize((200, 90)).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"not a png")
    os.mkfifo(folder / "pipe.png")  # never read: not a regular file
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(run.path), "--category", CATEGORY, "--images", str(folder),
                                       "--out", str(out), "--threshold", "0.5", "--maps", "png16"])
    assert result.exit_code == 1 and "Traceback" not in result.output + result.stderr
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    assert [r["path"] for r in csv.DictReader((out / "predictions.csv").open())] == [
        str(folder / "a.png"), str(folder / "grey.png")]
    with Image.open(out / "maps" / "a.png") as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "broken.png", "grey.png", "pipe.png"]  # nothing written there


def test_refusals(run, synthetic, tmp_path):
    test = str(synthetic / FOLDER / "test")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine\n")
    base = ["predict", str(run.path), "--images", test]
    assert_refused([*base, "--category", CATEGORY, "--out", str(used)], names=["--out", "empty"], watch=[used])
    assert_refused([*base, "--category", "IS", "--out", str(tmp_path / "o")], names=["IS", CATEGORY])
    assert_refused(["predict", str(run.path), "--category", CATEGORY, "--out", str(tmp_path / "o")],
                   names=["no images"])
    assert_refused([*base, "--category", CATEGORY, "--out", str(tmp_path / "o"), "--fpr", "1.5"], names=["--fpr"])
    assert_refused(["predict", str(tmp_path), "--category", CATEGORY, "--images", test, "--out",
                    str(tmp_path / "o")], names=["not a run directory"])
    assert not (tmp_path / "o").exists()
    # a run without held-out images has no threshold to offer: --threshold is asked for
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    record = copy / "categories" / f"{CATEGORY}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "threshold_calibration": None}))
    assert_refused(["predict", str(copy), "--category", CATEGORY, "--images", test, "--out", str(tmp_path / "o")],
                   names=["--threshold", "held-out"])


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, as written, on the demo's synthetic data."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- python-api-example -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["synth", "--out", "demo-data", "--scale", "0.01", "--max-size", "128"])
    assert result.exit_code == 0, result.output
    exec(compile(block, "README.md (python-api-example)", "exec"), {})
    assert (tmp_path / "runs" / "api-demo" / "results.json").is_file()
