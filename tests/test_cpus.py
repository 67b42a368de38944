"""One thread budget for every pool (threecad.cpus), recorded by the run."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from conftest import make_tiny_dataset
from threecad import cpus
from threecad.cli import main


def test_the_budget_comes_from_threads_then_omp_then_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.requested_threads(2) == (2, "--threads")
    assert cpus.requested_threads(None)[0] == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpus.requested_threads(None)[0] == cpus.available_cpus() >= 1


def test_a_cgroup_quota_caps_the_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: 1)
    assert cpus.available_cpus() == 1


def test_every_pool_follows_and_the_run_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    root = make_tiny_dataset(tmp_path / "d", categories=("Aluminum_Camera_Cover",), n_train=3, n_good=1, n_defect=1,
                             defect_types=("bump",))
    try:
        result = CliRunner().invoke(main, ["bench", "--method", "padim", "--root", str(root), "--out",
                                           str(tmp_path / "run"), "--threads", "1", "--pictures", "0",
                                           "--set", "image_size=64", "--eval-size", "64", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        facts = json.loads((tmp_path / "run" / "run.json").read_text())["threads"]
        assert facts["threads"] == 1 and facts["source"] == "--threads" and facts["pools"]["torch"] == 1
        assert cpus.pool_size() == 1
        from threecad.cache import default_workers
        from threecad.stats.pool import default_workers as stats_workers

        assert default_workers() == stats_workers() == 1
    finally:
        cpus.apply_threads(before)
