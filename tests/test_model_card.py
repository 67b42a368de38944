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
    assert card["preprocess"]["size"] == card["config"]["image_size"]
    assert card["precision"] == card["config"]["precision"] in ("fp32", "amp")
    assert card["setting"] == ("unified" if preset == "paper" and cls.unified_by_default else "per-category")
    assert "last" in card["selection"] or card["selection"].startswith("none (")  # never the test set
    assert all(set(w) == {"backbone", "weights", "file", "sha256"} for w in card["pretrained"])
    json.dumps(card)  # plain JSON


def test_paper_cards_say_what_the_references_do(monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    cards = {name: model_card(load_method(name), "paper") for name in ("cfrg", "draem", "rdpp", "simplenet", "crad")}
    assert cards["cfrg"]["precision"] == "amp" and cards["draem"]["precision"] == "fp32"
    assert (cards["draem"]["preprocess"]["library"], cards["draem"]["preprocess"]["colour"]) == ("cv2", "bgr")
    assert cards["rdpp"]["preprocess"]["library"] == "cv2"
    assert cards["simplenet"]["preprocess"] == {"size": 288, "library": "pil", "colour": "rgb",
                                                "geometry": "shorter_side_crop", "resize_to": 329}
    assert cards["crad"]["setting"] == "unified"


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


def test_readme_shows_every_paper_preset_as_the_cards_say(monkeypatch):
    """The README's table of paper presets is `threecad methods --markdown`, character for character."""
    from pathlib import Path

    from threecad.model_card import paper_presets_markdown

    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert paper_presets_markdown() in readme, "README out of date: paste `threecad methods --markdown`"
