"""SimpleNet: the reference's part counts and settings, its feature aggregation against a literal
transcription of the official code, the all-ones BatchNorm warm-up, the loss, the optimiser
equivalence, fit/predict, the feature cache, persistence and config refusals."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from threecad.backbones import FeatureExtractor
from threecad.patch_features import aggregate_patches
from baselines.simplenet import (Adaptor, Discriminator, SimpleNet, SimpleNetConfig,
                                 truncated_l1)
from conftest import make_tiny_dataset
from patchcore_official import official_patch_features  # the same common.py code SimpleNet uses
from refusal import assert_refused
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card
from threecad.training import CHECKPOINT_NAME


def small_config(**overrides) -> SimpleNetConfig:
    """A SimpleNet small enough for tests: random-weight Lite0, 64 px, 32-d features."""
    values = dict(backbone="efficientnet_lite0", weights="none", image_size=64, batch_size=4, pretrain_dim=48,
                  target_dim=32, dsc_hidden=16, meta_epochs=2, gan_epochs=2, noise_std=0.5, dsc_lr=1e-3,
                  adaptor_lr=5e-4, sigma=1.0, seed=3)
    values.update(overrides)
    return SimpleNetConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("simplenet") / "tiny", categories=("Aluminum_Camera_Cover",),
                             n_train=6, n_good=2, n_defect=2)
    return ThreeCAD(root, "ACC", "train", image_size=64, cache=False), ThreeCAD(root, "ACC", "test", image_size=64,
                                                                                   cache=False)


def loader(dataset, batch_size=4, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_reference_counts_and_settings():
    card = model_card(SimpleNet, "paper")
    assert card["parts"] == {
        "backbone wide_resnet50_2 (used: conv1..layer3)": {"trainable": 0, "frozen": 24_862_528},
        "pre_projection (adaptor)": {"trainable": 2_360_832, "frozen": 0},
        "discriminator": {"trainable": 1_576_960, "frozen": 0},
    }
    assert card["total"]["trainable"] == 3_937_792
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
    c = build_config(SimpleNet, "paper")
    assert (c.image_size, c.batch_size, c.strides, c.patch_size, c.pretrain_dim, c.target_dim) == (
        288, 8, (8, 16), 3, 1536, 1536)
    assert (c.meta_epochs, c.gan_epochs, c.noise_std, c.margin, c.dsc_hidden, c.dsc_layers) == (
        40, 4, 0.015, 0.5, 1024, 2)
    assert (c.dsc_lr, c.dsc_weight_decay, c.adaptor_lr, c.adaptor_weight_decay, c.select) == (
        2e-4, 1e-5, 1e-4, 0.01, "last")
    assert build_config(SimpleNet, "cpu").backbone == "efficientnet_lite0"


@pytest.mark.parametrize("channels,dims", [((512, 1024), (1536, 1536)),  # the paper's: even bins
                                           ((40, 112), (256, 256)),  # the cpu preset's: uneven bins
                                           ((5, 7), (16, 12))])
def test_aggregation_equals_the_official_order(channels, dims):
    """Pooling on each layer's own grid, then resizing, gives the official resize-then-pool numbers."""
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, channels[0], 6, 6, generator=gen), torch.rand(2, channels[1], 3, 3, generator=gen)]
    ours = aggregate_patches(maps, 3, *dims).permute(0, 2, 3, 1)
    official, grid = official_patch_features(maps, 3, *dims)
    assert grid == (6, 6) and ours.shape == (2, 6, 6, dims[1])
    assert torch.allclose(ours.reshape(-1, dims[1]), official, atol=1e-6)


def _resnet_config(**overrides) -> SimpleNetConfig:
    """A random-weight ResNet-18 backbone: deterministic in train mode (Lite0 drops connections)."""
    return small_config(**{"backbone": "resnet18", "strides": (8, 16), **overrides})


def _batchnorm_buffers(extractor: FeatureExtractor) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in bn.named_buffers()} for bn in extractor.batchnorm_layers()]


def test_ones_warmup_moves_every_batchnorm_by_momentum_toward_a_ones_image():
    """The reference's feature_dimensions: torch.ones (1, 3, S, S) through the backbone in train
    mode moves each running mean/variance `momentum` of the way toward the batch statistics of
    the input that layer sees; weights are untouched and the backbone is left in eval mode."""
    cfg = _resnet_config(image_size=64)
    torch.manual_seed(0)
    before = SimpleNet(dataclasses.replace(cfg, ones_warmup=False)).extractor
    torch.manual_seed(0)
    after = SimpleNet(cfg).extractor
    assert not after.training and not any(m.training for m in after.modules())
    inputs = []  # what each BatchNorm sees in the reference's pass (train mode: batch statistics)
    probe = copy.deepcopy(before.stages).train()
    for bn in probe.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        x = torch.ones(1, 3, 64, 64)
        for stage in probe:
            x = stage(x)
    old, new = _batchnorm_buffers(before), _batchnorm_buffers(after)
    assert len(inputs) == len(old) == len(new) == 15  # stem + layer1..layer3 of ResNet-18
    for x, bn, o, n in zip(inputs, after.batchnorm_layers(), old, new):
        m = bn.momentum
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(n["running_mean"], (1 - m) * o["running_mean"] + m * mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(n["running_var"], (1 - m) * o["running_var"] + m * var, rtol=1e-5, atol=1e-6)
        assert int(n["num_batches_tracked"]) == int(o["num_batches_tracked"]) + 1
        assert not torch.equal(n["running_mean"], o["running_mean"])
    weights = {k: v for k, v in after.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in weights.items())


def test_cpu_preset_keeps_the_weight_files_batchnorm_statistics():
    assert build_config(SimpleNet, "cpu").ones_warmup is False
    assert build_config(SimpleNet, "paper").ones_warmup is True
    torch.manual_seed(0)
    method = SimpleNet(_resnet_config(ones_warmup=False))
    torch.manual_seed(0)
    loaded = FeatureExtractor("resnet18", (8, 16), "none")  # the backbone as its weights come
    for got, want in zip(_batchnorm_buffers(method.extractor), _batchnorm_buffers(loaded)):
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_truncated_l1_by_hand():
    true = torch.tensor([1.0, 0.5, 0.0, -1.0])  # losses 0, 0, 0.5, 1.5 -> mean 0.5
    fake = torch.tensor([-1.0, -0.5, 0.2])  # losses 0, 0, 0.7 -> mean 0.7/3
    out = truncated_l1(true, fake, 0.5)
    assert float(out["true"]) == pytest.approx(0.5)
    assert float(out["fake"]) == pytest.approx(0.7 / 3)
    assert float(out["loss"]) == pytest.approx(0.5 + 0.7 / 3)


def test_one_adam_with_two_groups_is_adam_plus_adamw():
    """The reference's Adam (discriminator, L2 1e-5) and AdamW (adaptor, decoupled 0.01) as one optimiser."""
    torch.manual_seed(0)
    nets = [torch.nn.ModuleDict({"adaptor": Adaptor(8), "discriminator": Discriminator(8, 2, 6)}) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    ours = torch.optim.Adam([
        {"params": nets[0]["discriminator"].parameters(), "lr": 2e-3, "weight_decay": 1e-5},
        {"params": nets[0]["adaptor"].parameters(), "lr": 1e-3, "weight_decay": 0.01, "decoupled_weight_decay": True}])
    ref = [torch.optim.Adam(nets[1]["discriminator"].parameters(), lr=2e-3, weight_decay=1e-5),
           torch.optim.AdamW(nets[1]["adaptor"].parameters(), lr=1e-3)]
    x = torch.randn(32, 8)
    for _ in range(3):
        for net, opts in ((nets[0], [ours]), (nets[1], ref)):
            loss = net["discriminator"](net["adaptor"](x)).square().mean()
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    method = SimpleNet(small_config())
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(64, 32, generator=gen)
    noise = torch.randn(64, 32, generator=gen) * 0.5
    opt = torch.optim.Adam(method.net.parameters(), lr=1e-2)
    method.net.train()
    before = method.losses(features, noise)["loss"]
    opt.zero_grad()
    before.backward()
    opt.step()
    after = method.losses(features, noise)["loss"]
    assert float(after.detach()) < float(before.detach()) - 1e-3


def test_fit_predict_val_selection_and_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = SimpleNet(small_config(meta_epochs=3, select="val"))
    method.work_dir = tmp_path / "work"
    method.fit(loader(train), DataLoader(train, batch_size=4))
    losses = method.loop.val_losses
    assert len(losses) == 3 and method.info()["selected_meta_epoch"] == losses.index(min(losses)) + 1
    assert not (tmp_path / "work" / CHECKPOINT_NAME).exists()

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert maps.shape == (len(test), 64, 64) and torch.isfinite(maps).all()
    # recomputed independently: -D over the 8x8 grid of adapted features, resized bilinearly
    with torch.no_grad():
        feats = aggregate_patches([m.float() for m in method.extractor(images)], 3, 48, 32).permute(0, 2, 3, 1)
        patch = -method.net["discriminator"](method.net["adaptor"](feats.reshape(-1, 32))).view(-1, 1, 8, 8)
    assert torch.allclose(scores, patch.flatten(1).amax(1), atol=1e-6)
    assert torch.allclose(maps, F.interpolate(patch, size=64, mode="bilinear", align_corners=False)[:, 0], atol=1e-6)

    torch.save(method.state_dict(), tmp_path / "simplenet.pt")
    restored = SimpleNet(small_config(meta_epochs=3, select="val"))
    restored.load_state_dict(torch.load(tmp_path / "simplenet.pt", weights_only=True))
    with torch.inference_mode():
        scores2, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2)


def test_feature_cache_serves_each_image_its_own_features(tiny_data):
    """The frozen backbone sees no augmentation: cached rows equal a fresh embedding, per path."""
    train, _ = tiny_data
    method = SimpleNet(small_config(feature_cache_mb=64))
    items = [train[i] for i in range(4)]
    batch = {"image": torch.stack([it["image"] for it in items]), "path": [it["path"] for it in items]}
    first = method._train_features(batch)  # fills the cache
    assert len(method.feature_cache) == 4
    order = [2, 0, 3, 1]  # another batch composition, served from the cache
    shuffled = {"image": batch["image"][order], "path": [batch["path"][i] for i in order]}
    cached = method._train_features(shuffled)
    fresh = method.embed(shuffled["image"]).flatten(0, 2)
    assert cached.shape == (4 * 8 * 8, 32)
    assert torch.allclose(cached, fresh, atol=1e-5)
    assert torch.equal(cached.view(4, 64, 32)[1], first.view(4, 64, 32)[0])
    small = SimpleNet(small_config(feature_cache_mb=0))
    small._train_features(batch)
    assert len(small.feature_cache) == 0


@pytest.mark.parametrize("field,value", [("noise_std", 0.0), ("patch_size", 2), ("gan_epochs", 0),
                                         ("select", "test"), ("adaptor_layers", -1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ThreecadError, match=field):
        small_config(**{field: value})


def test_bench_refuses_a_bad_noise_std(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", categories=("Aluminum_Camera_Cover",), n_train=2, n_good=1,
                             n_defect=1)
    assert_refused(["bench", "--method", "simplenet", "--preset", "cpu", "--root", str(root), "--category", "ACC",
                    "--set", "noise_std=-1", "--out", str(tmp_path / "run")],
                   names="noise_std", watch=[root, tmp_path / "run"])


def test_config_round_trips_through_dataclasses():
    c = small_config()
    assert SimpleNetConfig(**dataclasses.asdict(c)) == c
