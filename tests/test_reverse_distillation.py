"""Reverse Distillation: the RD networks' parameter counts, maps and loss against hand-computed
answers, tiny fit/predict with a checkpoint round trip."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from baselines.reverse_distillation import ReverseDistillation, ReverseDistillationConfig
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.distillation import MirroredDecoder, OneClassBottleneck, flattened_cosine_loss, upsampled_sum
from threecad.method import build_config
from threecad.model_card import model_card

WRN50 = (256, 512, 1024)


def test_wide_resnet_networks_match_rd_counts():
    # RD's de_wide_resnet50_2 and its bottleneck without the 1x1 conv (8,392,704) it never calls.
    assert sum(p.numel() for p in MirroredDecoder(WRN50).parameters()) == 24_917_504
    assert sum(p.numel() for p in OneClassBottleneck(WRN50).parameters()) == 67_277_824 - 8_392_704


@pytest.mark.parametrize("channels", [(24, 40, 112), (24, 32, 96)])
def test_networks_follow_a_small_teachers_channels(channels):
    feats = [torch.randn(2, c, 32 >> k, 32 >> k) for k, c in enumerate(channels)]
    embedding = OneClassBottleneck(channels)(feats)
    assert embedding.shape == (2, 2 * channels[2], 4, 4)  # stride 32 of a 128 px image
    out = MirroredDecoder(channels)(embedding)
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]


def test_loss_and_map_against_hand_computation():
    a = [torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[[1.0, 1.0]], [[1.0, -1.0]]]])]
    b = [torch.tensor([[[[0.0]], [[1.0]]]]), torch.tensor([[[[1.0, 1.0]], [[1.0, -1.0]]]])]
    # scale 1: orthogonal -> 1; scale 2: identical -> 0
    assert float(flattened_cosine_loss(a, b)) == pytest.approx(1.0)
    maps = upsampled_sum([torch.ones(1, 2, 2), 2 * torch.ones(1, 4, 4)], 8)
    assert maps.shape == (1, 8, 8) and torch.allclose(maps, torch.full((1, 8, 8), 3.0))


def small_config(**overrides) -> ReverseDistillationConfig:
    values = dict(backbone="mobilenet_v2", weights="none", image_size=64, batch_size=4, epochs=2,
                  decoder_blocks=(1, 1, 1), bottleneck_blocks=1, sigma=2.0, lr=0.005, seed=1)
    values.update(overrides)
    return ReverseDistillationConfig(**values)


def test_paper_preset_is_rd_defaults():
    cfg = build_config(ReverseDistillation, "paper")
    assert (cfg.backbone, cfg.lr, cfg.beta1, cfg.beta2, cfg.batch_size, cfg.epochs, cfg.image_size, cfg.sigma) == (
        "wide_resnet50_2", 0.005, 0.5, 0.999, 16, 200, 256, 4.0)
    assert build_config(ReverseDistillation, "cpu").backbone in ("efficientnet_lite0", "mobilenet_v2")


def test_fit_predict_save_load_and_val_selection(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=8, n_good=3, n_defect=2)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "CS", "test", image_size=64, cache=False)
    method = ReverseDistillation(small_config(epochs=3, select="val"))
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True), DataLoader(train, batch_size=4))
    losses = method.loop.val_losses
    assert len(losses) == 3 and method.info()["selected_epoch"] == losses.index(min(losses)) + 1
    assert not (tmp_path / "work" / "epoch.pt").exists()

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert scores is None  # the harness scores the smoothed map (the max, as RD)
    assert maps.shape == (len(test), 64, 64) and torch.isfinite(maps).all()
    # the map is the raw (unsmoothed) sum of per-scale 1 - cos, computed here independently
    with torch.no_grad():
        teacher, rebuilt = method.net(images)
        raw = sum(F.interpolate((1 - F.cosine_similarity(t, r, dim=1))[:, None], size=64, mode="bilinear",
                                align_corners=True) for t, r in zip(teacher, rebuilt))[:, 0]
    assert torch.allclose(raw, maps, atol=1e-5)
    assert method.postprocess().as_dict() == {"sigma": 2.0, "mode": "reflect", "score": "max"}

    torch.save(method.state_dict(), tmp_path / "rd.pt")
    restored = ReverseDistillation(small_config(epochs=3, select="val"))
    restored.load_state_dict(torch.load(tmp_path / "rd.pt", weights_only=True))
    with torch.inference_mode():
        scores2, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and scores2 is None


def test_model_card_lists_rd_parts():
    card = model_card(ReverseDistillation, "paper")
    parts = card["parts"]
    assert parts["encoder (wide_resnet50_2, used part)"] == {"trainable": 0, "frozen": 24_862_528}
    assert parts["bottleneck"] == {"trainable": 67_277_824 - 8_392_704, "frozen": 0}
    assert parts["decoder"] == {"trainable": 24_917_504, "frozen": 0}
    assert [(t["layer"], t["stride"], t["channels"]) for t in card["taps"]] == [
        ("layer1", 4, 256), ("layer2", 8, 512), ("layer3", 16, 1024)]
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
