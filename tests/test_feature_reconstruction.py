"""What UniAD and CRAD share (`threecad.feature_reconstruction`), checked on both: the paper
presets have the references' parameter counts, the map is the L2 distance between features and reconstruction upsampled with corners aligned, the
image score its mean-pooled max, a fit lowers the reconstruction loss and survives a
save/load, the tap checks refuse what cannot align, and the reference's schedule (StepLR
stepped one epoch late, global gradient clipping) as both references drive it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from baselines.crad import CRAD, blend
from baselines.uniad import UniAD
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.model_card import model_card
from threecad.optim import clip_gradients, delayed_step_lr


# Small configs (64 px, a random B4 as the paper presets build it, two epochs) for the tests of both methods.
SMALL: dict[type, dict[str, Any]] = {
    UniAD: dict(backbone="efficientnet_b4_tf", weights="none", image_size=64, batch_size=4, epochs=2, hidden_dim=32,
                heads=4, encoder_layers=1, decoder_layers=2, ffn_dim=64, neighbour_size=3, lr=1e-3, seed=1),
    CRAD: dict(backbone="efficientnet_b4_tf", weights="none", image_size=64, batch_size=4, epochs=2, layers=1,
               expansion=32, score_pool=32, seed=1),
}


def small_config(method: type, **overrides):
    return method.config_class(**{**SMALL[method], **overrides})


def uniad_reconstruction(method: UniAD, feats: torch.Tensor) -> torch.Tensor:
    """The transformer on the feature grid's tokens, back to the grid (no jitter)."""
    tokens = method.net.reconstruction(feats.flatten(2).permute(2, 0, 1))
    return tokens.permute(1, 2, 0).reshape(feats.shape)


def crad_reconstruction(method: CRAD, feats: torch.Tensor) -> torch.Tensor:
    """The memory read and bottlenecks, blended with the features (the paper's rec')."""
    return blend(method.net.reconstruction(feats), feats, 0.3, 0.7, 0.05)


@dataclass
class Case:
    method: type
    quiet: dict[str, Any]  # overrides under which a step is deterministic and lowers the loss
    reconstruction: Callable[[Any, torch.Tensor], torch.Tensor]  # features -> reconstruction, written out
    pool: int  # the paper's score pool
    parts: dict[str, int]  # the reference's trainable parameters of each part, paper preset
    trainable: int  # their total (a part may be listed twice, counted once)


CASES = [
    pytest.param(Case(UniAD, dict(dropout=0.0, jitter_scale=0.0), uniad_reconstruction, 16,
                      {"reconstruction: transformer": 7_574_016, "reconstruction: input_proj": 69_888,
                       "reconstruction: output_proj": 69_904, "reconstruction: pos_embed": 3_584}, 7_717_392),
                 id="uniad"),
    # pretrained (offline) features: a random backbone's are near zero and so is CRAD's loss
    pytest.param(Case(CRAD, dict(backbone="efficientnet_lite0", weights="imagenet", coord_noise=0.0),
                      crad_reconstruction, 32,
                      {"reconstruction: query grids": 13_824 + 2_709_504,
                       "reconstruction: coordinate heads": 2 * 47_306, "reconstruction: bottlenecks": 12_450_240,
                       "reconstruction: recover": 93_312}, 15_361_492),
                 id="crad"),
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("reconstruction"), categories=("Copper_Stator",), n_train=8,
                             n_good=2, n_defect=1)
    return ThreeCAD(root, "CS", "train", image_size=64, cache=False), ThreeCAD(root, "CS", "test", image_size=64,
                                                                                  cache=False)


@pytest.mark.parametrize("case", CASES)
def test_paper_preset_has_the_reference_counts(case):
    card = model_card(case.method, "paper")
    assert {k: card["parts"][k]["trainable"] for k in case.parts} == case.parts
    assert card["total"] == {"trainable": case.trainable, "frozen": 3_635_984}  # B4 stem + blocks 0..21
    assert card["parts"]["neck (MFCN)"] == {"trainable": 0, "frozen": 0}


@pytest.mark.parametrize("case", CASES)
def test_one_model_for_all_categories_scored_by_the_pooled_max(case):
    assert case.method.unified_by_default is True
    card = model_card(case.method, "paper")
    box = {"box": 21} if case.method.name == "crad" else {}  # CRAD's evaluation averages 21 x 21 first
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "mean_pool_max", "pool": case.pool,
                                   "pool_pad": 0, **box}


@pytest.mark.parametrize("case", CASES)
def test_taps_that_cannot_align_are_refused(case):
    with pytest.raises(ThreecadError, match="image_size=72"):
        small_config(case.method, image_size=72)  # not a multiple of the deepest stride, 16
    with pytest.raises(ThreecadError, match="score_pool=128"):
        small_config(case.method, score_pool=128)
    with pytest.raises(ThreecadError, match="out_stride=0"):
        small_config(case.method, out_stride=0)
    with pytest.raises(ThreecadError, match="select"):
        small_config(case.method, select="test")


@pytest.mark.parametrize("case", CASES)
def test_one_step_lowers_the_loss(case, tiny_data):
    method = case.method(small_config(case.method, **case.quiet))
    images = torch.stack([tiny_data[0][i]["image"] for i in range(4)])
    opt = method.training_setup(None).optimizer
    method.net.reconstruction.train()  # BatchNorm on batch statistics throughout

    def loss() -> torch.Tensor:
        return method.step({"image": images})["loss"]

    with torch.no_grad():
        before = float(loss())
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        assert float(loss()) < before


@pytest.mark.parametrize("case", CASES)
def test_fit_predict_save_load(case, tiny_data, tmp_path):
    train, test = tiny_data
    # the loader gives paths: epoch 2 reads the cache
    method = case.method(small_config(case.method, cache_features=True))
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert method.info()["selected_epoch"] == 2 and not (tmp_path / "work" / "epoch.pt").exists()
    assert len(method.feature_cache) == 0  # dropped after the fit
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
        feats = method.net.features(images)
        rec = case.reconstruction(method, feats)
    assert scores is None and maps.shape == (len(test), 64, 64)
    # the map: L2 over channels on the aligned grid, upsampled bilinearly with corners aligned
    raw = (rec - feats).pow(2).sum(1, keepdim=True).sqrt()
    assert torch.allclose(maps, F.interpolate(raw, size=64, mode="bilinear", align_corners=True)[:, 0], atol=1e-5)
    torch.save(method.state_dict(), tmp_path / "state.pt")
    restored = case.method(small_config(case.method, seed=5))
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(restored.predict(images)[1], maps)


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
