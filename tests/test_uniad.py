"""UniAD: the reference's shapes and config, its masking/query/jitter mechanics against
hand-computed answers (what it shares with CRAD: tests/test_feature_reconstruction.py)."""
from __future__ import annotations

import pytest
import torch

from baselines.uniad import UniAD, jitter, neighbour_mask
from test_feature_reconstruction import small_config
from threecad.errors import ThreecadError
from threecad.feature_cache import FeatureCache
from threecad.method import build_config
from threecad.model_card import model_card


def test_paper_preset_has_the_reference_shapes():
    card = model_card(UniAD, "paper")
    assert [(t["stride"], t["channels"], t["size"]) for t in card["taps"]] == [
        (2, 24, 112), (4, 32, 56), (8, 56, 28), (16, 160, 14)]
    assert card["aligned"] == {"stride": 16, "channels": 272, "size": 14, "tokens": 196}
    # the layer-wise queries and the position table grow with the token grid
    assert model_card(UniAD, "paper", {"image_size": "256"})["total"]["trainable"] == 7_779_344


def test_paper_preset_is_the_reference_config():
    cfg = build_config(UniAD, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.lr_step, cfg.lr_gamma,
            cfg.clip_norm, cfg.jitter_scale, cfg.jitter_prob, cfg.neighbour_size, cfg.seed) == (
        224, 8, 1000, 1e-4, 1e-4, 800, 0.1, 0.1, 20.0, 1.0, 7, 133)
    assert (cfg.blocks, cfg.out_stride, cfg.hidden_dim, cfg.heads, cfg.ffn_dim) == ((1, 5, 9, 21), 16, 256, 8, 1024)
    assert (cfg.backbone, cfg.weights) == ("efficientnet_b4_tf", "imagenet")  # lukemelas' B4 and file
    cpu = build_config(UniAD, "cpu")
    assert (cpu.backbone, cpu.image_size, cpu.strides, cpu.out_stride, cpu.neighbour_size, cpu.epochs) == (
        "efficientnet_lite0", 256, (16, 32), 16, 7, 200)


def test_neighbour_mask_hides_each_tokens_own_neighbourhood():
    mask = neighbour_mask(3, 3, 3).view(3, 3, 3, 3)
    assert torch.isinf(mask[1, 1]).all()  # the centre sees nothing of a 3x3 grid
    assert torch.isinf(mask[0, 0]).tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert (mask[0, 0][~torch.isinf(mask[0, 0])] == 0).all()


def test_grids_the_mask_would_blind_are_refused():
    with pytest.raises(ThreecadError, match="neighbour_size=7"):
        small_config(UniAD, neighbour_size=7)  # 4x4 tokens at 64 px
    with pytest.raises(ThreecadError, match="hidden_dim"):
        small_config(UniAD, hidden_dim=30)


def test_jitter_scales_with_the_token_norm():
    tokens = torch.zeros(5, 2, 4)
    tokens[..., 0] = 8.0  # norm 8, C 4: noise std 8 / 4 * scale
    torch.manual_seed(0)
    out = jitter(tokens, scale=20.0, prob=1.0)
    torch.manual_seed(0)
    float(torch.rand(()))  # the coin
    assert torch.allclose(out, tokens + torch.randn(5, 2, 4) * 40.0)
    assert torch.equal(jitter(tokens, scale=20.0, prob=0.0), tokens)


def test_decoder_layers_start_from_their_own_queries():
    method = UniAD(small_config(UniAD))
    rec = method.net.reconstruction.eval()
    tokens = torch.randn(16, 2, sum(method.net.backbone.channels))
    with torch.no_grad():
        base = rec(tokens)
        rec.decoder[1].queries.weight.add_(1.0)
        assert not torch.allclose(rec(tokens), base)  # the last layer's queries matter
        rec.decoder[1].queries.weight.sub_(1.0)
        assert torch.allclose(rec(tokens), base, atol=1e-6)


def test_feature_cache_computes_each_training_image_once():
    calls = []

    def compute(images):
        calls.append(len(images))
        return images * 2

    cache = FeatureCache(1, host=True)
    a = {"image": torch.arange(3.0).view(3, 1), "path": ["a", "b", "c"]}
    b = {"image": torch.tensor([[1.0], [3.0]]), "path": ["b", "d"]}
    assert cache.get(a, compute).flatten().tolist() == [0, 2, 4]
    assert cache.get(b, compute).flatten().tolist() == [2, 6]  # "b" from the cache
    assert calls == [3, 1] and len(cache) == 4
    assert FeatureCache(0).get(b, compute).flatten().tolist() == [2, 6] and calls == [3, 1, 2]
    cache.clear()
    assert len(cache) == 0


def test_feature_cache_stops_adding_at_its_budget_and_says_so_once(caplog):
    calls = []

    def compute(images):  # two scales, as FastFlow's encoder gives them
        calls.append(len(images))
        return [images * 2, images.expand(-1, 4) * 3]

    cache = FeatureCache(20 / 2 ** 20)  # 20 bytes: one image's 5 float32 values, not two
    batch = {"image": torch.tensor([[1.0], [2.0]]), "path": ["a", "b"]}
    with caplog.at_level("INFO", logger="threecad.feature_cache"):
        for _ in range(3):
            low, high = cache.get(batch, compute)
            assert low.flatten().tolist() == [2, 4] and high.tolist() == [[3.0] * 4, [6.0] * 4]
    assert len(cache) == 1 and calls == [2, 1, 1]  # "b" did not fit: computed every time
    assert sum("feature cache full" in r.getMessage() for r in caplog.records) == 1
