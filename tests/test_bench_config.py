"""`bench --config FILE.yaml` and `--print-config`: a bench invocation kept as a file."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset
from refusal import assert_refused
from threecad.cli import main


@pytest.fixture
def root(tmp_path):
    return make_tiny_dataset(tmp_path / "data", categories=("Aluminum_Camera_Cover",), n_train=3, n_good=1,
                             n_defect=1, defect_types=("bump",))


def printed(*args):
    result = CliRunner().invoke(main, ["bench", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


def test_print_config_round_trips_and_the_run_keeps_it(root, tmp_path, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))
    first = printed("--method", "padim", "--root", str(root), "--category", "ACC", "--set", "image_size=64",
                    "--eval-size", "64", "--pictures", "0", "--device", "cpu")
    assert "preset: cpu" in first and "image_size: 64" in first and "epsilon: 0.01" in first
    config = tmp_path / "padim.yaml"
    config.write_text(first)
    assert printed("--config", str(config)) == first
    # the command line wins over the file
    assert "eval_size: 128" in printed("--config", str(config), "--eval-size", "128")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    kept = (run / "config.yaml").read_text()
    assert kept == first.replace("out: null", f"out: {run}")
    assert json.loads((run / "run.json").read_text())["config"]["image_size"] == 64
    assert "config.yaml" in json.loads((run / "manifest.json").read_text())["files"]


@pytest.mark.parametrize("text, words", [
    ("method: padim\nepochs: 3\n", ["unknown key", "epochs"]),
    ("method: [padim\n", ["not valid YAML"]),
    ("- padim\n", ["mapping"]),
    ("method: padim\nset: image_size=64\n", ["`set` must be a mapping"]),
])
def test_bad_config_files(tmp_path, text, words):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert_refused(["bench", "--config", str(config), "--root", str(tmp_path)], names=["--config", *words],
                   watch=[tmp_path])
