"""Every registered method computes what it computed when the digests were recorded.

A refactor of the training plumbing, the runner or a shared piece must leave each method's
cpu preset byte-identical on the same seed: the same checkpoint tensors, metrics and loss
history (tests/behaviour_digests.py says what is digested and how to re-record on purpose).
"""
from __future__ import annotations

import json

import pytest

from behaviour_digests import GOLDEN, measure_one_thread, synth_root
from threecad.registry import available_methods

RECORDED = json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def digest_root(tmp_path_factory):
    return synth_root(tmp_path_factory.mktemp("digests") / "data")


def test_every_registered_method_has_a_recorded_digest():
    assert sorted(available_methods()) == sorted(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_cpu_preset_behaviour_unchanged(name, digest_root, tmp_path):
    got = measure_one_thread(name, digest_root, tmp_path / "run")
    want = RECORDED[name]
    assert got["overrides"] == want["overrides"]
    assert got["metrics"] == want["metrics"]
    assert got["checkpoint"] == want["checkpoint"]
    assert got["losses"] == want["losses"]
    # a field may be added (with a default that keeps behaviour); none recorded may change
    assert {k: got["config"].get(k) for k in want["config"]} == want["config"]
