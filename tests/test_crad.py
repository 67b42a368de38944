"""CRAD: the reference's shapes and config, the memory read and the similarity blend
against hand-computed answers, the two optimiser groups (what it shares with UniAD:
tests/test_feature_reconstruction.py)."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.crad import CRAD, blend
from test_feature_reconstruction import small_config
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card


def test_paper_preset_has_the_reference_shapes():
    card = model_card(CRAD, "paper")
    assert card["grids"] == {"local": [1, 216, 8, 8], "global": [1, 216 * 28 * 28, 4, 4]}
    assert [(t["stride"], t["channels"]) for t in card["taps"]] == [(8, 56), (16, 160)]
    # the global grid holds a feature map per cell: it grows with the image; CRAD-s: expansion 216
    assert model_card(CRAD, "paper", {"image_size": "256"})["total"]["trainable"] == 16_190_932
    assert model_card(CRAD, "paper", {"expansion": "216"})["total"]["trainable"] == 5_261_116


def test_paper_preset_is_the_reference_config():
    cfg = build_config(CRAD, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.grid_lr, cfg.weight_decay, cfg.lr_step,
            cfg.lr_gamma, cfg.clip_norm, cfg.coord_noise, cfg.coord_noise_prob) == (
        224, 64, 50, 1e-3, 0.1, 0.01, 40, 0.1, 0.1, 0.05, 0.5)  # batch: the reference's total, 4 x 16
    assert (cfg.blocks, cfg.out_stride, cfg.layers, cfg.expansion, cfg.mse_weight, cfg.cos_weight, cfg.mse_coef) == (
        (9, 21), 8, 11, 864, 0.3, 0.7, 0.05)
    assert (cfg.backbone, cfg.weights) == ("efficientnet_b4_tf", "imagenet")  # lukemelas' B4 and file
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
    method = CRAD(small_config(CRAD))
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
    method = CRAD(small_config(CRAD))
    opt = method.optimizer()
    rec = method.net.reconstruction
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]
    assert opt.param_groups[1]["params"] == [rec.local_grid, rec.global_grid]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in rec.parameters())


def test_bad_coordinate_noise_is_a_clear_error():
    with pytest.raises(ThreecadError, match="coord_noise_prob"):
        small_config(CRAD, coord_noise_prob=2.0)
