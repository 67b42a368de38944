"""`threecad export` with every registered method: the exported graph computes what the run scored.

Each method runs once (per module) on a tiny 64 px dataset with its cpu preset made fast, as in
tests/test_resume.py, but fitted for twenty steps: after one, DRAEM's image scores lie within a
few float32 steps of each other (some equal), where the numbers define no ranking. The category's
test images, read through the method's declared preprocess, go through the exported file
(onnxruntime, torch.jit.load) and through `SavedModel.predict_pixels`: the maps agree to 1e-4 of
their range and the images rank the same. A method that declares `export_refusal` is refused
in one line that gives the reason, which its model card shows too.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_tiny_dataset
from test_resume import fast_overrides
from tests.refusal import assert_refused
from threecad.cli import main
from threecad.export import export_run, run_exported, sidecar_path
from threecad.harness import BenchSpec, run_benchmark
from threecad.model_card import model_card
from threecad.registry import available_methods
from threecad.saved_run import load_run
from threecad.trained import short_lengths

METHODS = available_methods()
FORMATS = ("onnx", "torchscript")
STEPS = 20
MAP_TOLERANCE = 1e-4  # of the map range


def needs(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install 'threecad[export]')")
        pytest.importorskip("onnxruntime", reason="the ONNX parity test runs the graph in onnxruntime")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("export") / "tiny", categories=("Aluminum_Camera_Cover",))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory):
    """name -> run directory, each method benched on its first use only."""
    made: dict[tuple[str, str], Path] = {}
    base = tmp_path_factory.mktemp("runs")

    def run_of(name: str, protocol: str = "standard") -> Path:
        if (name, protocol) not in made:
            cls = METHODS[name]
            overrides = fast_overrides(cls)
            overrides.update({k: str(v) for k, v in short_lengths(cls.config_class, STEPS).items()})
            out = base / f"{name}-{protocol}"
            spec = BenchSpec(method=name, root=root, categories=("ACC",), preset="cpu", overrides=overrides,
                             device="cpu", out=out, eval_size=64, pictures=0, protocol=protocol)
            results, code = run_benchmark(spec, echo=lambda *_: None)
            assert code == 0, results
            made[name, protocol] = out
        return made[name, protocol]

    return run_of


def category_test_images(root: Path, model) -> np.ndarray:
    """The category's test images through the method's declared preprocess, (N, 3, S, S) uint8."""
    paths = sorted((root / "Aluminum_Camera_Cover" / "test").rglob("*.png"))
    return np.stack([model.preprocess.image(Image.open(p).convert("RGB")) for p in paths])


def assert_parity(want, scores: np.ndarray, maps: np.ndarray) -> None:
    spread = float(want.maps.max() - want.maps.min())
    assert spread > 0
    assert maps.shape == want.maps.shape
    assert np.abs(maps - want.maps).max() <= MAP_TOLERANCE * spread
    np.testing.assert_array_equal(np.argsort(scores, kind="stable"), np.argsort(want.scores, kind="stable"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_exported_graph_gives_predicts_maps_and_ranking(name, fmt, runs, root, tmp_path):
    cls = METHODS[name]
    assert not isinstance(cls, Exception), f"method {name} does not load: {cls}"
    run_dir = runs(name)
    out = tmp_path / f"{name}.{fmt}"
    if cls.export_refusal:
        assert_refused(["export", str(run_dir), "--category", "ACC", "--format", fmt, "--out", str(out)],
                       names=[name, cls.export_refusal], watch=[tmp_path, run_dir])
        return
    needs(fmt)
    run = load_run(run_dir)
    model = run.model("ACC")
    record = export_run(run, "ACC", fmt, out)
    assert json.loads(sidecar_path(out).read_text()) == record
    assert (record["method"], record["category"], record["run_id"]) == (name, "ACC", run.spec["run_id"])
    assert record["preprocess"] == model.preprocess.as_dict()
    assert record["input"]["shape"] == ["N", 3, model.preprocess.size, model.preprocess.size]
    assert record["postprocess"] == {**model.post.as_dict(), "in_graph": True}
    assert (record["protocol"], record["eval_size"]) == ("standard", 64)
    assert record["check"]["passed"]

    pixels = category_test_images(root, model)
    scores, maps = run_exported(out, fmt, pixels.astype(np.float32) / 255.0)
    assert_parity(model.predict_pixels(pixels), scores, maps)


def test_paper_protocol_graph_ranks_by_the_release_blur(runs, root, tmp_path):
    """Under 3cad-paper the map is the raw one and the score the max of the sigma-4 blur (float32
    in the graph, scipy's float64 in predict): same maps, same ranking."""
    needs("onnx")
    run = load_run(runs("padim", "3cad-paper"))
    model = run.model("ACC")
    record = export_run(run, "ACC", "onnx", tmp_path / "padim.onnx")
    assert record["postprocess"] == {"release_blur_sigma": 4.0, "in_graph": True}
    assert "raw" in record["outputs"]["map"]
    pixels = category_test_images(root, model)
    scores, maps = run_exported(tmp_path / "padim.onnx", "onnx", pixels.astype(np.float32) / 255.0)
    assert_parity(model.predict_pixels(pixels), scores, maps)


def test_cli_writes_the_graph_and_its_description(runs, tmp_path):
    out = tmp_path / "models" / "padim-acc.pt"
    result = CliRunner().invoke(main, ["export", str(runs("padim")), "--category", "ACC", "--format", "torchscript",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and sidecar_path(out).is_file()
    assert str(out) in result.output and "checked" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["padim-acc.pt", "padim-acc.pt.json"]


def test_a_method_that_cannot_export_is_refused_with_its_reason(runs, tmp_path, monkeypatch):
    """The refusal names the method and its declared reason, in one line; the card shows the reason."""
    monkeypatch.setattr(METHODS["padim"], "export_refusal", "its predict decides in Python on tensor values")
    run_dir = runs("padim")
    out = tmp_path / "padim.onnx"
    assert_refused(["export", str(run_dir), "--category", "ACC", "--format", "onnx", "--out", str(out)],
                   names=["padim", "decides in Python on tensor values"], watch=[tmp_path, run_dir])
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    assert model_card(METHODS["padim"], "cpu")["export"] == "refused: its predict decides in Python on tensor values"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_card_says_whether_the_method_exports(name, monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    cls = METHODS[name]
    said = model_card(cls, "cpu")["export"]
    if cls.export_refusal:
        assert said == f"refused: {cls.export_refusal}"
    else:
        assert said.startswith("onnx or torchscript")


def test_a_graph_that_does_not_reproduce_predict_is_not_kept(runs, tmp_path, monkeypatch):
    """The written file is checked before it is renamed into place: off by 1 % of the map range, refused."""
    import threecad.export as export

    real = export.run_exported

    def off(path, fmt, images):
        scores, maps = real(path, fmt, images)
        return scores, maps + 0.01 * float(maps.max() - maps.min())

    monkeypatch.setattr(export, "run_exported", off)
    run_dir = runs("padim")
    assert_refused(["export", str(run_dir), "--category", "ACC", "--format", "torchscript",
                    "--out", str(tmp_path / "padim.pt")], names=["does not reproduce predict"],
                   watch=[tmp_path, run_dir])


@pytest.mark.parametrize("args, names", [
    (["--category", "XYZ", "--format", "torchscript"], ["XYZ", "ACC"]),
    (["--category", "ACC", "--format", "tflite"], ["tflite"]),
])
def test_bad_requests_name_the_culprit(args, names, runs, tmp_path):
    run_dir = runs("padim")
    assert_refused(["export", str(run_dir), *args, "--out", str(tmp_path / "m")], names=names,
                   watch=[tmp_path, run_dir])


def test_an_existing_file_is_never_overwritten(runs, tmp_path):
    run_dir = runs("padim")
    out = tmp_path / "padim.pt"
    out.write_bytes(b"someone else's model")
    assert_refused(["export", str(run_dir), "--category", "ACC", "--format", "torchscript", "--out", str(out)],
                   names=[str(out), "exists"], watch=[tmp_path, run_dir])


def test_weights_past_protobufs_limit_are_kept_in_one_data_file(runs, tmp_path, monkeypatch):
    """Past 2 GiB (PaDiM's Gaussians at 256 px) the exporter writes a file per weight; the export keeps
    FILE and FILE.data beside it, and onnxruntime reads them as predict computes. Simulated here by
    an exporter that writes a small graph that way."""
    needs("onnx")
    import onnx
    import torch

    real = torch.onnx.export

    def per_weight_files(model, args, f, **kwargs):
        real(model, args, f, **kwargs)
        onnx.save_model(onnx.load_model(f), f, save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)

    monkeypatch.setattr(torch.onnx, "export", per_weight_files)
    run = load_run(runs("padim"))
    out = tmp_path / "padim.onnx"
    record = export_run(run, "ACC", "onnx", out)
    assert record["files"] == ["padim.onnx", "padim.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["padim.onnx", "padim.onnx.data", "padim.onnx.json"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    scores, maps = run_exported(out, "onnx", pixels.astype(np.float32) / 255.0)
    assert_parity(run.model("ACC").predict_pixels(pixels), scores, maps)


def test_the_sidecar_carries_the_runs_threshold(runs, tmp_path):
    """With held-out good images recorded, FILE.json gives their scores and the threshold predict uses."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs("padim"), run_dir)
    record_file = run_dir / "categories" / "ACC.json"
    held_out = {"source": "validation split: good training images held out of the fit", "images": 3,
                "scores": [3.0, 1.0, 2.0]}
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "threshold_calibration": held_out}))
    record = export_run(load_run(run_dir), "ACC", "torchscript", tmp_path / "padim.pt")
    assert record["threshold"] == {"source": held_out["source"], "images": 3, "fpr": 0.01, "value": 3.0,
                                   "held_out_scores": [3.0, 1.0, 2.0]}


def test_onnx_without_onnxruntime_is_refused_before_any_work(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    run_dir = runs("padim")
    assert_refused(["export", str(run_dir), "--category", "ACC", "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                   names=["onnxruntime", "threecad[export]"], watch=[tmp_path, run_dir])
