"""UniAD: the reference's parameter counts, its masking/query/jitter mechanics against hand-computed
answers, the training schedule as the reference drives it, tiny fit/predict through the loaders."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from baselines.uniad import UniAD, UniADConfig, jitter, neighbour_mask
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.feature_cache import FeatureCache
from threecad.method import build_config
from threecad.model_card import model_card
from threecad.optim import clip_gradients, delayed_step_lr

PAPER_PARTS = {"reconstruction: transformer": 7_574_016, "reconstruction: input_proj": 69_888,
               "reconstruction: output_proj": 69_904, "reconstruction: pos_embed": 3_584}


def small_config(**overrides) -> UniADConfig:
    values = dict(backbone="efficientnet_b4", weights="none", image_size=64, batch_size=4, epochs=2,
                  hidden_dim=32, heads=4, encoder_layers=1, decoder_layers=2, ffn_dim=64, neighbour_size=3,
                  lr=1e-3, seed=1)
    values.update(overrides)
    return UniADConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("uniad"), categories=("Copper_Stator",), n_train=8,
                             n_good=2, n_defect=1)
    return ThreeCAD(root, "CS", "train", image_size=64, cache=False), ThreeCAD(root, "CS", "test", image_size=64,
                                                                                  cache=False)


def test_paper_preset_has_the_reference_counts():
    card = model_card(UniAD, "paper")
    parts = card["parts"]
    assert {k: parts[k]["trainable"] for k in PAPER_PARTS} == PAPER_PARTS
    assert card["total"] == {"trainable": 7_717_392, "frozen": 3_635_984}  # B4 stem + blocks 0..21
    assert parts["neck (MFCN)"] == {"trainable": 0, "frozen": 0}
    assert [(t["stride"], t["channels"], t["size"]) for t in card["taps"]] == [
        (2, 24, 112), (4, 32, 56), (8, 56, 28), (16, 160, 14)]
    assert card["aligned"] == {"stride": 16, "channels": 272, "size": 14, "tokens": 196}
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "mean_pool_max", "pool": 16,
                                   "pool_pad": 0}
    # the layer-wise queries and the position table grow with the token grid
    assert model_card(UniAD, "paper", {"image_size": "256"})["total"]["trainable"] == 7_779_344


def test_paper_preset_is_the_reference_config():
    cfg = build_config(UniAD, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.lr_step, cfg.lr_gamma,
            cfg.clip_norm, cfg.jitter_scale, cfg.jitter_prob, cfg.neighbour_size, cfg.seed) == (
        224, 8, 1000, 1e-4, 1e-4, 800, 0.1, 0.1, 20.0, 1.0, 7, 133)
    assert (cfg.blocks, cfg.out_stride, cfg.hidden_dim, cfg.heads, cfg.ffn_dim) == ((1, 5, 9, 21), 16, 256, 8, 1024)
    assert UniAD.unified_by_default is True
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
        small_config(neighbour_size=7)  # 4x4 tokens at 64 px
    with pytest.raises(ThreecadError, match="image_size=72"):
        small_config(image_size=72)
    with pytest.raises(ThreecadError, match="hidden_dim"):
        small_config(hidden_dim=30)
    with pytest.raises(ThreecadError, match="select"):
        small_config(select="test")


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
    method = UniAD(small_config())
    rec = method.net.reconstruction.eval()
    tokens = torch.randn(16, 2, sum(method.net.backbone.channels))
    with torch.no_grad():
        base = rec(tokens)
        rec.decoder[1].queries.weight.add_(1.0)
        assert not torch.allclose(rec(tokens), base)  # the last layer's queries matter
        rec.decoder[1].queries.weight.sub_(1.0)
        assert torch.allclose(rec(tokens), base, atol=1e-6)


def test_lr_schedule_decays_one_epoch_late_as_the_reference():
    def lrs(make_and_step):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make_and_step[0](opt)
        out = []
        for epoch in range(7):
            out.append(opt.param_groups[0]["lr"])
            make_and_step[1](sched, epoch)
        return out

    ours = lrs((lambda o: delayed_step_lr(o, 2, 0.1), lambda s, e: s.step()))
    with pytest.warns(UserWarning):  # the reference calls StepLR.step(epoch), deprecated
        reference = lrs((lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.1), lambda s, e: s.step(e)))
    assert ours == pytest.approx(reference) and ours == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_gradients_are_clipped_to_the_global_norm():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=1.0)
    clip_gradients(opt, 0.1)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)  # norm sqrt(27 + 64)
    opt.step()
    assert float(torch.cat([a, b]).norm()) == pytest.approx(0.1, rel=1e-5)


def test_one_step_lowers_the_loss(tiny_data):
    method = UniAD(small_config(dropout=0.0, jitter_scale=0.0, lr=1e-3))
    images = torch.stack([tiny_data[0][i]["image"] for i in range(4)])
    params = method.net.reconstruction
    opt = torch.optim.AdamW(params.parameters(), lr=1e-3)
    before = float(method._loss(images, train=False))
    for _ in range(3):
        opt.zero_grad()
        method._loss(images, train=True).backward()
        opt.step()
    assert float(method._loss(images, train=False)) < before


def test_fit_predict_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = UniAD(small_config())
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert method.info()["selected_epoch"] == 2 and not (tmp_path / "work" / "epoch.pt").exists()
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
        feats, rec = method.net(images)
    assert scores is None and maps.shape == (len(test), 64, 64)
    # the map: L2 over channels of the 4x4 token grid, x16 bilinear with corners aligned
    raw = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()
    assert torch.allclose(maps, F.interpolate(raw, size=64, mode="bilinear", align_corners=True)[:, 0], atol=1e-5)
    torch.save(method.state_dict(), tmp_path / "uniad.pt")
    restored = UniAD(small_config(seed=5))
    restored.load_state_dict(torch.load(tmp_path / "uniad.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(restored.predict(images)[1], maps)


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
