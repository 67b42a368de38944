"""CRAD: the reference's parameter counts, the memory read and the similarity blend against
hand-computed answers, the two optimiser groups, tiny fit/predict through the loaders."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from baselines.crad import CRAD, CRADConfig, blend
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

PAPER_PARTS = {"reconstruction: query grids": 13_824 + 2_709_504, "reconstruction: coordinate heads": 2 * 47_306,
               "reconstruction: bottlenecks": 12_450_240, "reconstruction: recover": 93_312}


def small_config(**overrides) -> CRADConfig:
    values = dict(backbone="efficientnet_b4", weights="none", image_size=64, batch_size=4, epochs=2, layers=1,
                  expansion=32, score_pool=32, seed=1)
    values.update(overrides)
    return CRADConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("crad"), categories=("Copper_Stator",), n_train=8,
                             n_good=2, n_defect=1)
    return ThreeCAD(root, "CS", "train", image_size=64, cache=False), ThreeCAD(root, "CS", "test", image_size=64,
                                                                                  cache=False)


def test_paper_preset_has_the_reference_counts():
    card = model_card(CRAD, "paper")
    parts = card["parts"]
    assert {k: parts[k]["trainable"] for k in PAPER_PARTS} == PAPER_PARTS
    assert card["total"] == {"trainable": 15_361_492, "frozen": 3_635_984}  # B4 stem + blocks 0..21
    assert card["grids"] == {"local": [1, 216, 8, 8], "global": [1, 216 * 28 * 28, 4, 4]}
    assert [(t["stride"], t["channels"]) for t in card["taps"]] == [(8, 56), (16, 160)]
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "mean_pool_max", "pool": 32,
                                   "pool_pad": 0}
    # the global grid holds a feature map per cell: it grows with the image; CRAD-s: expansion 216
    assert model_card(CRAD, "paper", {"image_size": "256"})["total"]["trainable"] == 16_190_932
    assert model_card(CRAD, "paper", {"expansion": "216"})["total"]["trainable"] == 5_261_116


def test_paper_preset_is_the_reference_config():
    cfg = build_config(CRAD, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.grid_lr, cfg.weight_decay, cfg.lr_step,
            cfg.lr_gamma, cfg.clip_norm, cfg.coord_noise, cfg.coord_noise_prob) == (
        224, 16, 50, 1e-3, 0.1, 0.01, 40, 0.1, 0.1, 0.05, 0.5)
    assert (cfg.blocks, cfg.out_stride, cfg.layers, cfg.expansion, cfg.mse_weight, cfg.cos_weight, cfg.mse_coef) == (
        (9, 21), 8, 11, 864, 0.3, 0.7, 0.05)
    assert CRAD.unified_by_default is True
    cpu = build_config(CRAD, "cpu")
    assert cpu.backbone == "efficientnet_lite0" and cpu.strides == (8, 16)


def test_blend_against_hand_computation():
    f = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    r = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    # mse 1 -> round(0.05) = 0 -> term 1; cos 0: s = 0.3 -> rec' = 0.3 f + 0.7 r
    assert torch.allclose(blend(r, f, 0.3, 0.7, 0.05).flatten(), torch.tensor([0.3, 0.7]))
    # mse 50 -> round(clamp(2.5)) = 1 -> term 0; cos 1 (same direction): s = 0.7
    big = torch.tensor([11.0, 0.0]).view(1, 2, 1, 1)
    assert torch.allclose(blend(big, f, 0.3, 0.7, 0.05).flatten(), torch.tensor([0.7 + 0.3 * 11, 0.0]))
    assert torch.equal(blend(f, f, 0.3, 0.7, 0.05), f)  # a perfect reconstruction: rec' = f


def test_memory_read_picks_grid_cells_at_predicted_coordinates():
    method = CRAD(small_config())
    rec = method.net.reconstruction
    feats = torch.randn(2, 216, 8, 8)
    cell = lambda i: -1 + (2 * i + 1) / 4  # centre of cell i of a 4-cell axis (corners not aligned)
    with torch.no_grad():
        rec.global_coord[2].weight.zero_()
        rec.global_coord[2].bias.copy_(torch.tensor([math.atanh(cell(0)), math.atanh(cell(2))]))  # (x, y)
        rec.local_coord[2].weight.zero_()
        rec.local_coord[2].bias.copy_(torch.tensor([math.atanh(-1 + 3 / 8), math.atanh(-1 + 13 / 8)]))
        queries = rec.queries(feats)
    assert queries.shape == (2, 432, 8, 8)
    # global: row y = cell 2, column x = cell 0, a whole (C, h, w) map read from the channel axis
    expected = rec.global_grid[0, :, 2, 0].view(216, 8, 8)
    assert torch.allclose(queries[0, :216], expected, atol=1e-6) and torch.allclose(queries[1, :216], expected,
                                                                                      atol=1e-6)
    # local: 8x8 grid, x = cell 1, y = cell 6, the same vector at every pixel
    assert torch.allclose(queries[:, 216:], rec.local_grid[0, :, 6, 1].view(1, 216, 1, 1).expand(2, -1, 8, 8),
                          atol=1e-6)


def test_two_optimiser_groups_put_the_grids_at_grid_lr():
    method = CRAD(small_config())
    opt = method.optimizer()
    rec = method.net.reconstruction
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]
    assert opt.param_groups[1]["params"] == [rec.local_grid, rec.global_grid]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in rec.parameters())


def test_bad_config_is_a_clear_error():
    with pytest.raises(ThreecadError, match="image_size=72"):
        small_config(image_size=72)
    with pytest.raises(ThreecadError, match="score_pool=128"):
        small_config(score_pool=128)
    with pytest.raises(ThreecadError, match="coord_noise_prob"):
        small_config(coord_noise_prob=2.0)
    with pytest.raises(ThreecadError, match="select"):
        small_config(select="test")


def test_one_step_lowers_the_loss(tiny_data):
    # pretrained (offline) features: a random backbone's are near zero and so is the loss
    method = CRAD(small_config(backbone="efficientnet_lite0", weights="imagenet", coord_noise=0.0))
    images = torch.stack([tiny_data[0][i]["image"] for i in range(4)])
    opt = method.optimizer()
    method.net.reconstruction.train()  # BatchNorm on batch statistics throughout

    def loss() -> torch.Tensor:
        feats, rec = method.forward(images, train=True)
        return F.mse_loss(rec, feats)

    with torch.no_grad():
        before = float(loss())
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        assert float(loss()) < before


def test_fit_predict_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = CRAD(small_config(cache_features=True))  # the loader gives paths: epoch 2 reads the cache
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert method.info()["selected_epoch"] == 2 and not (tmp_path / "work" / "epoch.pt").exists()
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
        feats = method.net.features(images)
        rec = blend(method.net.reconstruction(feats), feats, 0.3, 0.7, 0.05)
    assert scores is None and maps.shape == (len(test), 64, 64)
    # the map: L2 over channels of the blended reconstruction on the stride-8 grid, x8 bilinear, corners aligned
    raw = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()
    assert torch.allclose(maps, F.interpolate(raw, size=64, mode="bilinear", align_corners=True)[:, 0], atol=1e-5)
    torch.save(method.state_dict(), tmp_path / "crad.pt")
    restored = CRAD(small_config(seed=5))
    restored.load_state_dict(torch.load(tmp_path / "crad.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(restored.predict(images)[1], maps)
