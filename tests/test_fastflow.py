"""FastFlow: the coupling block (inverse, log-determinant against autograd, FrEIA when installed),
the reference's parameter counts, loss and map against hand computation, tiny fit/predict,
a checkpoint round trip and refused configs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from baselines.fastflow import (AllInOneBlock, _FullBatches, FastFlow, FastFlowConfig, Flow, anomaly_map, flow_loss,
                                kernel_sizes)
from conftest import make_tiny_dataset
from tests.refusal import assert_refused
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card


def randomised(module: nn.Module, seed: int = 0, strength: float = 1.0) -> nn.Module:
    """Non-trivial parameters (the initial global affine is the identity) without touching permutations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("global_scale"):  # around its initial value: scales of about 0.7 to 1.4
                p.add_(noise * strength)
            elif p.requires_grad:
                p.copy_(noise * strength * (0.5 if "subnet" in name else 1.0))
    return module


# --------------------------------------------------------------------------- the flow
@pytest.mark.parametrize("kernel", [1, 3])
def test_block_inverts_and_its_log_determinant_is_autograds(kernel):
    block = randomised(AllInOneBlock(5, kernel, 1.0, 2.0, torch.Generator().manual_seed(3))).double()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64) * 2
    y, logdet = block(x)
    assert torch.allclose(block.inverse(y), x, atol=1e-12)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: block(v[None])[0][0], x[i]).reshape(45, 45)
        sign, value = torch.linalg.slogdet(jac)
        assert sign != 0 and float(value.detach()) == pytest.approx(float(logdet[i].detach()), abs=1e-9)


def test_flow_of_eight_steps_inverts_in_float32():
    # parameters of a trained flow's magnitude (stronger ones give |z| ~ 20, where float32 keeps 1e-4)
    flow = randomised(Flow(6, kernel_sizes(8, False), 1.0, 2.0, torch.Generator().manual_seed(0)), strength=0.3)
    x = torch.randn(3, 6, 8, 8)
    z, logdet = flow(x)
    assert (flow.inverse(z) - x).abs().max() < 1e-5 and (z - x).abs().max() > 0.1
    total, h = torch.zeros(3), x
    for block in flow.blocks:  # the flow's log-determinant is the sum of its steps'
        h, ld = block(h)
        total = total + ld
    assert torch.equal(h, z) and torch.allclose(total, logdet)


def test_permutations_are_fixed_one_hot_matrices_drawn_from_the_seed():
    def perms(seed: int) -> list[torch.Tensor]:
        flow = Flow(7, [3, 3], 1.0, 2.0, torch.Generator().manual_seed(seed))
        return [b.w_perm.flatten(1) for b in flow.blocks]

    for w, block in zip(perms(1), Flow(7, [3, 3], 1.0, 2.0, torch.Generator().manual_seed(1)).blocks):
        assert torch.equal(w.sum(0), torch.ones(7)) and torch.equal(w.sum(1), torch.ones(7))
        assert torch.equal(block.w_perm_inv.flatten(1), w.T) and not block.w_perm.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(perms(1), perms(1)))
    assert not all(torch.equal(a, b) for a, b in zip(perms(1), perms(2)))


def test_block_equals_freia_all_in_one_block_when_installed():
    Ff = pytest.importorskip("FrEIA.framework")  # gathierry's pin is FrEIA 1779d1f = PyPI FrEIA 0.2
    Fm = pytest.importorskip("FrEIA.modules")

    def subnet(k):
        return lambda c_in, c_out: nn.Sequential(nn.Conv2d(c_in, c_in, k, padding="same"), nn.ReLU(),
                                                 nn.Conv2d(c_in, c_out, k, padding="same"))
    ref = Ff.SequenceINN(10, 6, 6)
    for k in kernel_sizes(4, False):
        ref.append(Fm.AllInOneBlock, subnet_constructor=subnet(k), affine_clamping=2.0, permute_soft=False)
    ref = randomised(ref)
    mine = Flow(10, kernel_sizes(4, False), 1.0, 2.0, torch.Generator())
    mine.load_state_dict({k.replace("module_list", "blocks"): v for k, v in ref.state_dict().items()})
    x = torch.randn(3, 10, 6, 6) * 3
    (z_ref, ld_ref), (z, ld) = ref(x), mine(x)
    assert torch.equal(z, z_ref) and torch.equal(ld, ld_ref)


def test_kernel_pattern_follows_gathierrys_configs():
    assert kernel_sizes(4, True) == [3, 3, 3, 3] and kernel_sizes(4, False) == [3, 1, 3, 1]
    assert FastFlowConfig().three_by_three_only is True  # resnet18.yaml
    assert FastFlowConfig(backbone="wide_resnet50_2").three_by_three_only is False
    assert FastFlowConfig(backbone="wide_resnet50_2", conv3x3_only=True).three_by_three_only is True


def test_loss_and_map_against_hand_computation():
    z = torch.zeros(2, 3, 2, 2)
    z[0] = 2.0  # 0.5 * 12 * 4 = 24
    logdet = torch.tensor([1.0, -3.0])
    assert float(flow_loss([(z, logdet)])) == pytest.approx(((24 - 1) + (0 + 3)) / 2)
    assert float(flow_loss([(z, logdet), (z, logdet)])) == pytest.approx(26.0)
    coarse = torch.zeros(1, 4, 2, 2)
    coarse[..., 0, :] = 2.0  # top row: mean_c z^2 = 4 -> -exp(-2); bottom row: -1
    fine = torch.zeros(1, 4, 4, 4)
    maps = anomaly_map([coarse, fine], 4)
    # bilinear, align_corners False, 2 -> 4: rows 0 and 3 copy the edges, rows 1 and 2 mix 3:1
    top, bottom = -np.exp(-2.0), -1.0
    rows = [top, 0.75 * top + 0.25 * bottom, 0.25 * top + 0.75 * bottom, bottom]
    expected = torch.tensor(rows, dtype=torch.float32)[:, None].expand(4, 4)
    assert torch.allclose(maps[0], (expected - 1.0) / 2, atol=1e-6)


# --------------------------------------------------------------------------- the method
def test_paper_card_counts_match_gathierrys_resnet18_and_wide_resnet50(monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    card = model_card(FastFlow, "paper")
    parts = list(card["parts"].values())
    assert [p["trainable"] for p in parts] == [0, 917_504, 4_657_408]
    assert [p["frozen"] for p in parts] == [2_782_784, 0, 1_376_256]  # encoder; permutation matrices
    assert card["total"]["trainable"] == 5_574_912  # main.py's "Model A.D. Param#"
    assert [f["trainable"] for f in card["flows"]["per_scale"]] == [222_976, 888_320, 3_546_112]

    wide = model_card(FastFlow, "paper", {"backbone": "wide_resnet50_2"})
    parts = list(wide["parts"].values())
    assert [p["trainable"] for p in parts] == [0, 3_670_016, 41_337_856]
    assert [p["frozen"] for p in parts] == [24_862_528, 0, 22_020_096]
    assert wide["total"]["trainable"] == 45_007_872
    assert wide["flows"]["kernel_sizes"] == [3, 1, 3, 1, 3, 1, 3, 1]
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "max"}


def test_card_records_the_encoder_file_check_as_pending(monkeypatch):
    """torchvision's resnet18-f37072fd here, timm 0.5.4's resnet18-5c106cde in gathierry's code:
    not compared yet, and the card says so; for wide_resnet50_2 the card names timm's own file."""
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    (note,) = [n for n in model_card(FastFlow, "paper")["notes"] if n.startswith("encoder weights")]
    assert "resnet18-f37072fd.pth" in note and "resnet18-5c106cde.pth" in note and "not yet checked" in note
    (wide,) = [n for n in model_card(FastFlow, "paper", {"backbone": "wide_resnet50_2"})["notes"]
               if n.startswith("encoder weights")]
    assert "wide_resnet50_racm-8234f177.pth" in wide


def test_paper_preset_is_gathierrys_training():
    cfg = build_config(FastFlow, "paper")
    assert (cfg.backbone, cfg.image_size, cfg.flow_steps, cfg.hidden_ratio, cfg.clamp, cfg.lr, cfg.weight_decay,
            cfg.batch_size, cfg.epochs, cfg.drop_last, cfg.strides) == (
        "resnet18", 256, 8, 1.0, 2.0, 1e-3, 1e-5, 32, 500, True, (4, 8, 16))
    cpu = build_config(FastFlow, "cpu")
    assert (cpu.backbone, cpu.image_size, cpu.strides, cpu.flow_steps, cpu.cache_features) == (
        "efficientnet_lite0", 256, (16, 32), 4, True)  # the deep taps find the stators' defects (README)
    assert not build_config(FastFlow, "paper").cache_features  # ~1.8 MB per image at 256 px


def small_config(**overrides) -> FastFlowConfig:
    values = dict(backbone="efficientnet_lite0", weights="none", image_size=64, batch_size=4, epochs=2,
                  flow_steps=2, conv3x3_only=True, seed=1)
    values.update(overrides)
    return FastFlowConfig(**values)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    method = FastFlow(small_config())
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    params = [p for p in method.net.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    before = flow_loss(method.net(images))
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = flow_loss(method.net(images))
    assert float(after) < float(before.detach()) - 1.0  # the loss sums thousands of terms per image


def test_fit_predict_save_load_and_val_selection(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=10, n_good=3, n_defect=2)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "CS", "test", image_size=64, cache=False)
    method = FastFlow(small_config(epochs=3, select="val"))
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True), DataLoader(train, batch_size=4))
    losses = method.loop.val_losses
    assert len(losses) == 3 and method.info()["selected_epoch"] == losses.index(min(losses)) + 1
    assert not (tmp_path / "work" / "epoch.pt").exists()

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
        latents = [z for z, _ in method.net(images)]
    assert scores is None and maps.shape == (len(test), 64, 64)
    assert float(maps.min()) >= -1.0 and float(maps.max()) <= 0.0
    assert torch.equal(maps, anomaly_map(latents, 64))

    torch.save(method.state_dict(), tmp_path / "ff.pt")
    restored = FastFlow(small_config(epochs=3, select="val", seed=7))  # other weights and permutations
    restored.load_state_dict(torch.load(tmp_path / "ff.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(restored.predict(images)[1], maps)


def test_drop_last_skips_the_short_batch_and_refuses_a_batch_larger_than_the_set(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=6, n_good=1, n_defect=1)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)
    batches = _FullBatches(DataLoader(train, batch_size=4), 4)  # 6 images: one full batch, 2 dropped
    assert len(batches) == 1 and [len(b["image"]) for b in batches] == [4]
    with pytest.raises(ThreecadError, match="batch_size=8"):
        FastFlow(small_config()).fit(DataLoader(train, batch_size=8))
    FastFlow(small_config(drop_last=False, epochs=1)).fit(DataLoader(train, batch_size=8))


@pytest.mark.parametrize("key, value", [("image_size", "100"), ("hidden_ratio", "0"), ("flow_steps", "0"),
                                        ("select", "test"), ("backbone", "resnet1000"), ("clamp", "-1"),
                                        ("strides", "3,16")])
def test_bad_config_is_refused_naming_the_field(tmp_path, key, value):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=2, n_good=1, n_defect=1)
    out = tmp_path / "run"
    assert_refused(["bench", "--method", "fastflow", "--preset", "cpu", "--set", f"{key}={value}",
                    "--root", str(root), "--out", str(out), "--device", "cpu"],
                   names=[f"config {key}="], watch=[root, out])


def test_cached_encoder_maps_train_the_same_flows(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=8, n_good=1, n_defect=1)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)
    trained = []
    for cache in (False, True):
        method = FastFlow(small_config(epochs=3, cache_features=cache))
        method.fit(DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
        trained.append(method.net.trainable.state_dict())
    assert all(torch.allclose(trained[0][k], trained[1][k], atol=1e-6) for k in trained[0])
