"""Model cards (`threecad methods NAME`) for every registered method, built without weights."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from threecad.cli import main
from threecad.model_card import model_card
from threecad.registry import load_method, method_entry_points
from tests.refusal import assert_refused

METHODS = sorted(method_entry_points())


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_every_method_has_a_card_with_counted_parts(name, preset, monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")  # a card must never need weights
    cls = load_method(name)  # a method that fails to load fails here, never skipped
    card = model_card(cls, preset)
    assert card["name"] == cls.name and card["preset"] == preset
    assert card["parts"] and all(set(c) == {"trainable", "frozen"} for c in card["parts"].values())
    assert card["total"]["trainable"] <= sum(c["trainable"] for c in card["parts"].values())  # shared once
    assert card["total"]["trainable"] + card["total"]["frozen"] > 0
    assert card["postprocess"]["score"] in ("max", "mean_pool_max", "top_k_mean")
    json.dumps(card)  # plain JSON


def test_cli_prints_the_card_as_json_and_as_a_table(monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    result = CliRunner().invoke(main, ["methods", "rd", "--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.output)
    assert card["preset"] == "paper" and card["config"]["image_size"] == 256
    table = CliRunner().invoke(main, ["methods", "rd"])
    assert table.exit_code == 0 and "total" in table.output and "trainable" in table.output


@pytest.mark.parametrize("args, names", [
    (["methods", "no-such-method"], ["no-such-method", "cfrg"]),
    (["methods", "cfrg", "--preset", "gpu"], ["gpu", "paper", "cpu"]),
    (["methods", "cfrg", "--set", "nonsense=1"], ["nonsense"]),
    (["methods", "--json"], ["NAME"]),
])
def test_bad_card_requests_name_the_culprit_and_the_valid_ones(args, names):
    assert_refused(args, names=names)


def test_reference_only_parts_stay_out_of_the_total(monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    card = model_card(load_method("cfrg"), "paper")
    (whole,) = card["reference_parts"].values()
    used = next(v for k, v in card["parts"].items() if k.startswith("student"))
    assert (whole["trainable"], used["trainable"]) == (5_288_548, 851_808)
    assert card["total"]["trainable"] == sum(v["trainable"] for v in card["parts"].values())
