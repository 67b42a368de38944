"""DRAEM: the reference's parameter counts, its training pairs, loss, persistence and refusals."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from baselines.draem import DRAEM, DRAEMConfig
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

# VitjanZ/DRAEM's networks counted with their own classes (ReconstructiveSubNetwork base_width
# 128, DiscriminativeSubNetwork base_channels 64, 6 -> 2 channels).
REFERENCE_PARTS = {"reconstructive.encoder": 37_622_400, "reconstructive.decoder": 31_426_179,
                   "discriminative.encoder": 14_134_272, "discriminative.decoder": 14_239_874}
REFERENCE_TOTAL = 97_422_725


def small_config(**overrides) -> DRAEMConfig:
    values = dict(image_size=64, recon_width=4, disc_width=4, batch_size=4, epochs=2, lr=1e-3,
                  textures="procedural", seed=3)
    values.update(overrides)
    return DRAEMConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("draem") / "tiny", categories=("Aluminum_Camera_Cover",),
                             n_train=8, n_good=2, n_defect=2)
    train = ThreeCAD(root, "ACC", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "ACC", "test", image_size=64, cache=False)
    return train, test


def loader(dataset, batch_size=4, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_the_reference_counts_and_settings():
    card = model_card(DRAEM, "paper")
    assert {name: c["trainable"] for name, c in card["parts"].items()} == REFERENCE_PARTS
    assert all(c["frozen"] == 0 for c in card["parts"].values())
    assert card["total"] == {"trainable": REFERENCE_TOTAL, "frozen": 0}
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "mean_pool_max", "pool": 21,
                                   "pool_pad": 10}
    assert card["shapes"]["bottleneck"] == [1024, 16, 16]
    assert card["shapes"]["discriminative_taps"] == [[64, 256, 256], [128, 128, 128], [256, 64, 64],
                                                     [512, 32, 32], [512, 16, 16], [512, 8, 8]]
    cfg = build_config(DRAEM, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.steps, cfg.lr, cfg.lr_milestones, cfg.lr_gamma,
            cfg.anomaly_prob, cfg.rotate_prob, cfg.textures, cfg.draw, cfg.select) == (
        256, 8, 700, 0, 1e-4, (0.8, 0.9), 0.2, 0.5, 0.3, "dtd", "draem", "last")
    assert cfg.synthesizer(0, None).colour == "bgr"  # textures in the images' (OpenCV) channel order
    cpu = build_config(DRAEM, "cpu")
    assert cpu.textures == "procedural" and cpu.image_size <= 128 and cpu.steps >= 300
    assert cpu.draw == "augmented"


def test_reference_initialisation():
    """Conv weights N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0, as `weights_init`."""
    net = DRAEM(small_config(recon_width=16, disc_width=16)).net.requires_grad_(False)
    convs = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    bn_w = torch.cat([m.weight for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    bn_b = torch.cat([m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(float(convs.std()) - 0.02) < 0.001 and abs(float(convs.mean())) < 0.001
    assert abs(float(bn_w.mean()) - 1.0) < 0.005 and 0.015 < float(bn_w.std()) < 0.025
    assert torch.count_nonzero(bn_b) == 0


def test_training_pairs_follow_the_coins():
    """anomaly_prob 0: inputs are the targets with empty masks; 1: every input is changed inside
    its (non-empty) mask only; rotate_prob 1 rotates the targets (zero corners)."""
    from threecad.anomaly_synthesis import AnomalySynthesizer

    images = 0.3 + 0.4 * torch.rand(6, 3, 64, 64)
    synth = AnomalySynthesizer(64, seed=1)
    gen = torch.Generator().manual_seed(0)
    targets, inputs, masks = DRAEM(small_config(anomaly_prob=0.0, rotate_prob=0.0)).training_pair(images, synth, gen)
    assert torch.equal(targets, images) and torch.equal(inputs, images) and masks.sum() == 0
    targets, inputs, masks = DRAEM(small_config(anomaly_prob=1.0, rotate_prob=0.0)).training_pair(images, synth, gen)
    assert torch.equal(targets, images)
    assert (masks.flatten(1).sum(1) > 0).all()
    outside = (masks == 0).expand_as(inputs)
    assert torch.equal(inputs[outside], targets[outside]) and not torch.equal(inputs, targets)
    targets, inputs, masks = DRAEM(small_config(anomaly_prob=0.0, rotate_prob=1.0)).training_pair(images, synth, gen)
    assert torch.equal(inputs, targets) and not torch.equal(targets, images)
    assert (targets[:, :, 0, 0] == 0).float().mean() > 0.5  # most corners leave the frame at |angle| > 45 deg
    # about half the samples anomalous under the reference's p = 0.5
    cfg = small_config(anomaly_prob=0.5, rotate_prob=0.0)
    flags = torch.cat([DRAEM(cfg).training_pair(images, synth, gen)[2].flatten(1).amax(1) for _ in range(20)])
    assert 0.35 < float(flags.mean()) < 0.65


def test_losses_against_hand_computation():
    """A perfect reconstruction costs 0 in L2 and SSIM; the focal term matches its formula."""
    from threecad.losses import softmax_focal_loss

    probs = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    target = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    pt_normal, pt_anom = 0.9 * (1 - 1e-5) + 0.1 * 1e-5 + 1e-5, 0.9 * 1e-5 + 0.1 * (1 - 1e-5) + 1e-5
    expected = (3 * -(1 - pt_normal) ** 2 * math.log(pt_normal) - (1 - pt_anom) ** 2 * math.log(pt_anom)) / 4
    assert float(softmax_focal_loss(probs, target)) == pytest.approx(expected, rel=1e-5)
    method = DRAEM(small_config())
    x = 0.5 + 0.1 * torch.rand(2, 3, 64, 64)
    rec, logits = method.net(x)
    assert rec.shape == (2, 3, 64, 64) and logits.shape == (2, 2, 64, 64)
    losses = method.losses(x, x, torch.zeros(2, 1, 64, 64))
    assert set(losses) == {"l2", "ssim", "focal", "loss"}
    assert float(losses["loss"]) == pytest.approx(float(losses["l2"] + losses["ssim"] + losses["focal"]), rel=1e-6)
    assert float(losses["l2"]) == pytest.approx(float(((rec - x) ** 2).mean()), rel=1e-5)


def test_ssim_term_reads_its_range_off_the_reconstruction():
    """As the reference's ssim (val_range None): range 2 while the reconstruction dips below -0.5."""
    from threecad.losses import ssim_loss

    g = torch.Generator().manual_seed(4)
    targets = torch.rand(2, 3, 32, 32, generator=g)
    rec = 2.0 * torch.rand(2, 3, 32, 32, generator=g) - 0.7  # min below -0.5, max above 1
    logits = torch.zeros(2, 2, 32, 32)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return rec, logits

    method = DRAEM(small_config(image_size=32))
    method.net = Fixed()
    value = method.losses(targets, targets, torch.zeros(2, 1, 32, 32))["ssim"]
    assert torch.equal(value, ssim_loss(rec, targets, value_range=2.0))
    assert float(value) != pytest.approx(float(ssim_loss(rec, targets)), abs=1e-4)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    from threecad.anomaly_synthesis import AnomalySynthesizer

    method = DRAEM(small_config(anomaly_prob=1.0))
    images = 0.55 + 0.1 * torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pair = method.training_pair(images, AnomalySynthesizer(64, seed=1), torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(method.net.parameters(), lr=1e-3)
    method.net.train()
    before = method.losses(*pair)
    optimizer.zero_grad()
    before["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        after = method.losses(*pair)
    assert float(after["loss"]) < float(before["loss"]), (float(before["loss"]), float(after["loss"]))


def test_fit_predict_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = DRAEM(small_config(steps=5))
    method.fit(loader(train))
    info = method.info()
    assert info["texture_source"] == "procedural" and info["epochs"] == 3 and info["selected_epoch"] == 3
    assert set(info["final_train_losses"]) == {"l2", "ssim", "focal", "loss"}
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert scores is None and maps.shape == (len(test), 64, 64)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0  # a softmax probability
    torch.save(method.state_dict(), tmp_path / "draem.pt")
    restored = DRAEM(small_config(steps=5, seed=9))  # other initial weights: the state must replace them
    restored.load_state_dict(torch.load(tmp_path / "draem.pt", weights_only=True))
    with torch.inference_mode():
        _, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and restored.info()["texture_source"] == "procedural"
    # the harness's score: max of the 21x21 (pad 10) average of the map
    post = DRAEM(small_config()).postprocess()
    scores, smoothed = post.apply(maps)
    assert torch.equal(smoothed, maps)
    expected = torch.nn.functional.avg_pool2d(maps[:, None], 21, stride=1, padding=10).flatten(1).amax(1)
    assert torch.allclose(scores, expected)


def test_select_val_needs_and_uses_a_validation_split(tiny_data):
    train, _ = tiny_data
    method = DRAEM(small_config(epochs=2, select="val"))
    with pytest.raises(ThreecadError, match="validation"):
        method.fit(loader(train))
    method.fit(loader(train), val_loader=DataLoader(train, batch_size=4))
    losses = method.loop.val_losses
    assert len(losses) == 2 and method.info()["selected_epoch"] == losses.index(min(losses)) + 1


@pytest.mark.parametrize("key,value", [("image_size", 48), ("recon_width", 0), ("anomaly_prob", 1.5),
                                       ("rotate_prob", -0.1), ("textures", "cloth"), ("draw", "paint"),
                                       ("pool", 0), ("steps", -1), ("select", "test"), ("lr", 0.0)])
def test_bad_config_is_a_one_line_error_naming_the_field(key, value):
    with pytest.raises(ThreecadError) as err:
        small_config(**{key: value})
    message = str(err.value)
    assert key in message and "\n" not in message


def test_bad_config_through_the_cli_is_refused(tmp_path):
    from refusal import assert_refused

    root = make_tiny_dataset(tmp_path / "tiny", categories=("Aluminum_Camera_Cover",), n_train=2, n_good=1,
                             n_defect=1)
    assert_refused(["bench", "--method", "draem", "--preset", "cpu", "--root", str(root), "--category", "ACC",
                    "--set", "image_size=100", "--out", str(tmp_path / "run")],
                   names=["image_size"], watch=[root])
    assert not (tmp_path / "run").exists()
