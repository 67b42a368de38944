"""The minimal method of CONTRIBUTING.md works as the document says.

The test takes the example's code block from CONTRIBUTING.md itself (so the document cannot
drift from what runs), installs it as a plug-in through an entry point in a throw-away
site folder, and runs it as a user would: `threecad methods`, `bench`, `bench --resume`
and the model card.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_dataset

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "CONTRIBUTING.md should hold exactly one python block: the example method"
    return blocks[0]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "tinyae_plugin.py").write_text(example_source())
    dist = site / "tinyae_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyae-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[threecad.methods]\ntinyae = tinyae_plugin:TinyAE\n")
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
                THREECAD_CACHE=str(cache), OMP_NUM_THREADS="1")


def threecad(args, env):
    proc = subprocess.run([sys.executable, "-m", "threecad", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_example_declares_its_length_for_the_tools(plugin_env, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(plugin_env["PYTHONPATH"].split(os.pathsep)[0])))
    import tinyae_plugin

    from threecad.trained import short_lengths

    assert short_lengths(tinyae_plugin.TinyAEConfig, 2) == {"epochs": 2}


def test_example_method_runs_through_bench_resume_and_model_card(plugin_env, tmp_path):
    root = make_tiny_dataset(tmp_path / "data")
    assert "tinyae" in threecad(["methods"], plugin_env)
    card = json.loads(threecad(["methods", "tinyae", "--json"], plugin_env))
    # 3->16 conv 3x3, 16->16 conv 3x3, 16->16 and 16->3 transposed 4x4, with biases
    assert card["parts"] == {"autoencoder": {"trainable": 448 + 2320 + 4112 + 771, "frozen": 0}}

    out = tmp_path / "run"
    bench = ["bench", "--method", "tinyae", "--root", str(root), "--preset", "cpu", "--device", "cpu",
             "--out", str(out)]
    threecad(bench, plugin_env)
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "tinyae"
    assert sorted(results["categories"]) == ["ACC", "CS"]
    for record in results["categories"].values():
        assert 0.0 <= record["metrics"]["i_auroc"] <= 1.0
    losses = (out / "losses" / "ACC.csv").read_text().splitlines()
    assert len(losses) == 1 + 4  # a header and the cpu preset's four epochs
    before = {p: p.read_bytes() for p in sorted((out / "categories").glob("*.json"))}
    checkpoints = {p: p.read_bytes() for p in sorted((out / "checkpoints").glob("*.pt"))}

    threecad(bench + ["--resume"], plugin_env)  # finished: nothing is redone, nothing changes
    assert {p: p.read_bytes() for p in sorted((out / "categories").glob("*.json"))} == before
    assert {p: p.read_bytes() for p in sorted((out / "checkpoints").glob("*.pt"))} == checkpoints
