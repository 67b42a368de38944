"""benchmarks/gpu_check.py, dry-run on the CPU: the script a GPU machine runs must work before one is lent.

The real dry run (`--device cpu --steps 1` at 64 px) runs a chosen fast subset through the
harness in a subprocess, as `make gpu-check` runs the script: PatchCore (deterministic: its
CPU-vs-device comparison path, exact on the CPU) and CRAD (gradient-trained, with the
offline backbone standing in for EfficientNet-B4). All twelve methods at paper presets take
about four minutes on one core even at one step, so every registered method instead gets
the cheap check of what the script would run: its paper preset, shortened in every length
field, with no weights to download, the architecture otherwise the paper's.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from threecad.method import build_config
from threecad.registry import available_methods
from threecad.trained import length, not_length, short_lengths, undeclared_lengths

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
METHODS = available_methods()
DRY_RUN = ("patchcore", "crad")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def test_cpu_dry_run_checks_and_tables(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", THREECAD_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "1", "--image-size", "64",
                           "--train-images", "4", "--methods", ",".join(DRY_RUN), "--out", str(tmp_path / "w")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| method")}
    assert sorted(rows) == sorted(DRY_RUN)
    patchcore, crad = rows["patchcore"], rows["crad"]
    # columns: method weights size batch fit img/s peak loss map same-weights own-fit check s
    on_disk = gpu_check.imagenet_on_disk
    assert patchcore[1] == ("imagenet" if on_disk("wide_resnet50_2") else "random")
    assert crad[1] == ("imagenet" if on_disk("efficientnet_b4_tf") else "efficientnet_lite0 (offline ImageNet)"
                       if on_disk("efficientnet_lite0") else "random")
    assert patchcore[3] == crad[3] == "4 (capped)"  # the paper batch, cut to the 4 training images
    assert patchcore[8] == crad[8] == "4x64x64"
    assert patchcore[10] == "0% / 0%"  # deterministic: the same run on the CPU agrees exactly
    assert patchcore[7] == "n/a (no training)" and float(crad[7]) > 0
    assert float(patchcore[5]) > 0 and float(crad[5]) > 0
    assert patchcore[11] == crad[11] == "ok"
    assert re.fullmatch(r"2 of 2 methods passed in \d+s", proc.stdout.splitlines()[-1])
    records = sorted(p.relative_to(tmp_path / "w").as_posix() for p in (tmp_path / "w").glob("*/cpu/categories/*.json"))
    assert records == ["crad/cpu/categories/AI.json", "patchcore/cpu/categories/AI.json"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_shortened_offline_and_paper_otherwise(name):
    cls = METHODS[name]
    assert not isinstance(cls, Exception), f"method {name} does not load: {cls}"
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert undeclared_lengths(cls.config_class) == [], \
        "a config field looks like a training length: declare it with length(...) or not_length(...)"
    plan = gpu_check.make_plan(cls, steps=1, image_size=64, n_train=4)
    config = build_config(cls, "paper", plan.overrides)
    paper = build_config(cls, "paper")
    lengths = short_lengths(cls.config_class, 1)
    for key, value in lengths.items():
        assert getattr(config, key) == value <= max(1, getattr(paper, key)), key
    assert config.batch_size == min(paper.batch_size, 4)
    assert config.image_size % 64 == 0 and config.image_size <= max(paper.image_size, 128)
    changed = {f for f in fields if getattr(config, f) != getattr(paper, f)}
    allowed = set(lengths) | {"image_size", "batch_size", "weights", "backbone", "teacher", "precision"}
    assert changed <= allowed, f"the check would not run the paper architecture: {sorted(changed - allowed)}"
    if hasattr(config, "weights"):  # nothing may download: ImageNet only from a file on disk
        backbone = getattr(config, "backbone", getattr(config, "teacher", None))
        assert config.weights == "none" or gpu_check.imagenet_on_disk(backbone)


def test_length_rules():
    @dataclasses.dataclass
    class Config:
        steps: int = length(300)
        student_steps: int = length(150, "half")
        steps_per_checkpoint: int = length(100, "one")
        lr_step: int = not_length(10, "epochs between decays")
        warmup_iters: int = 5
        lr: float = 0.1

    assert short_lengths(Config, 4) == {"steps": 4, "student_steps": 2, "steps_per_checkpoint": 1}
    assert undeclared_lengths(Config) == ["warmup_iters"]


def test_map_gap_is_relative_to_the_reference_range():
    import torch

    ref = torch.tensor([[[0.0, 2.0], [4.0, 4.0]]])
    mean, worst = gpu_check.map_gap(ref + torch.tensor([[[0.0, 0.0], [0.0, 0.4]]]), ref)
    assert mean == pytest.approx(0.1 / 4) and worst == pytest.approx(0.1)
    problems = gpu_check.shape_problems(torch.ones(2), torch.zeros(2, 8, 4), 2, "cuda")
    assert problems == ["cuda: maps of shape (2, 8, 4), expected (2, h, h)"]


def test_unknown_method_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")  # main() sets it; restored after the test
    assert gpu_check.main(["--device", "cpu", "--methods", "nosuch", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method nosuch; registered: ") and err.count("\n") == 1
