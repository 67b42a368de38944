"""RD++: the reference's parameter counts per part, its losses against hand computation, the
Sinkhorn divergence against a closed form, the noise patches (crops of one fixed field), a tiny
fit/predict with a checkpoint round trip, a resume from the epoch checkpoint, one optimisation
step, bad configs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from baselines.rdpp import (MultiProjection, RDPlusPlus, RDPlusPlusConfig, add_noise_patches, fractal_noise,
                            noise_field, projection_loss, sinkhorn_divergence)
from baselines.reverse_distillation import ReverseDistillation
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

WRN50 = (256, 512, 1024)


def test_projection_counts_match_the_reference():
    proj = MultiProjection(WRN50)
    counts = {n: sum(p.numel() for p in getattr(proj, n).parameters()) for n in ("proj_a", "proj_b", "proj_c")}
    assert counts == {"proj_a": 737_856, "proj_b": 2_950_272, "proj_c": 11_798_784}
    assert sum(counts.values()) == 15_486_912


def test_model_card_parts_and_paper_preset():
    card = model_card(RDPlusPlus, "paper")
    parts = card["parts"]
    assert parts["encoder (wide_resnet50_2, used part)"] == {"trainable": 0, "frozen": 24_862_528}
    assert parts["bottleneck"] == {"trainable": 58_885_120, "frozen": 0}
    assert parts["decoder"] == {"trainable": 24_917_504, "frozen": 0}
    assert parts["projection"] == {"trainable": 15_486_912, "frozen": 0}
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
    cfg = build_config(RDPlusPlus, "paper")
    assert (cfg.backbone, cfg.image_size, cfg.batch_size, cfg.accumulation, cfg.lr, cfg.proj_lr, cfg.beta1,
            cfg.beta2, cfg.epochs, cfg.weight_proj, cfg.seed, cfg.select) == (
        "wide_resnet50_2", 256, 32, 2, 0.005, 0.001, 0.5, 0.999, 200, 0.2, 111, "last")
    cpu = build_config(RDPlusPlus, "cpu")
    assert cpu.backbone == "efficientnet_lite0"
    # RD's cpu input size and batch: at 128 px the stators scored about .5 (see the preset's comment)
    rd = build_config(ReverseDistillation, "cpu")
    assert (cpu.image_size, cpu.batch_size, cpu.accumulation, cpu.epochs) == (rd.image_size, rd.batch_size, 1, rd.epochs)


def test_reference_parts_hold_the_dead_conv():
    method = RDPlusPlus(build_config(RDPlusPlus, "paper", {"weights": "none"}), device="meta")
    (dead,) = method.reference_parts().values()
    # with it the release's bottleneck has 67,277,824 parameters
    assert sum(p.numel() for p in dead.parameters()) == 67_277_824 - 58_885_120


def test_sinkhorn_divergence_closed_forms():
    # one point against one point: OT_eps = |x-y|^2/2 exactly, the self terms are 0
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert float(sinkhorn_divergence(x, y)) == pytest.approx(12.5, rel=1e-5)
    # a permuted copy of the same cloud: the same measure, divergence 0 (the reference's SSOT)
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    value = sinkhorn_divergence(z, z[torch.randperm(8)])
    (grad,) = torch.autograd.grad(value, z)
    assert abs(float(value.detach())) < 1e-4 and float(grad.abs().max()) < 1e-4
    # two translated clouds with small blur: about the squared shift / 2 (OT of a translation)
    w = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    assert float(sinkhorn_divergence(w, w + torch.tensor([2.0, 0.0]), blur=0.01)) == pytest.approx(2.0, rel=1e-2)


def test_projection_loss_terms_against_hand_computation():
    gen = torch.Generator().manual_seed(0)
    enc = [torch.randn(2, 4, 3, 3, generator=gen)]
    p_clean = [torch.randn(2, 4, 3, 3, generator=gen)]
    p_noisy = [-p_clean[0]]  # opposite at every pixel: 1 - cos = 2
    out = projection_loss(enc, p_noisy, p_clean, torch.tensor([1, 0]))
    assert float(out["recon"]) == pytest.approx(2.0, abs=1e-6)
    cos = F.cosine_similarity(enc[0].flatten(1), p_clean[0].flatten(1), dim=1)
    assert float(out["contrast"]) == pytest.approx(float((cos - 0.5).clamp_min(0).mean()), abs=1e-6)
    expected = (float(out["ssot"]) + 0.01 * 2.0 + 0.1 * float(out["contrast"])) / 1.11
    assert float(out["proj"]) == pytest.approx(expected, rel=1e-6)


def test_noise_patches_are_top_left_crops_of_one_field():
    """As the reference's one OpenSimplex instance sampled from the origin: the same field in
    every patch, its top-left h x w crop, at top, left >= 1."""
    field = noise_field(8, 0.085, torch.Generator().manual_seed(1), frequency=8.0)
    images = torch.full((4, 3, 64, 64), 0.5)
    noisy = add_noise_patches(images, field, torch.Generator().manual_seed(0), min_side=3, max_side=8)
    sides = set()
    for i in range(4):
        diff = noisy[i] - images[i]
        rows, cols = (diff != 0).any(0).any(1).nonzero(), (diff != 0).any(0).any(0).nonzero()
        top, left = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
        assert 3 <= h <= 7 and 3 <= w <= 7 and top >= 1 and left >= 1
        assert torch.allclose(diff[:, top:top + h, left:left + w], field[:, :h, :w], atol=1e-7)
        sides.add((h, w))
    assert len(sides) > 1  # patches differ in size, not in content


def test_noise_field_has_the_reference_std_and_comes_from_the_seed():
    field = noise_field(32, 0.085, torch.Generator().manual_seed(7))
    assert field.shape == (3, 32, 32)
    assert float(field.pow(2).mean().sqrt()) == pytest.approx(0.085, rel=1e-5)
    assert torch.equal(field, noise_field(32, 0.085, torch.Generator().manual_seed(7)))
    assert not torch.equal(field, noise_field(32, 0.085, torch.Generator().manual_seed(8)))
    # fractal sum of 6 octaves (persistence 0.6) of Perlin noise; channels correlated (z = colour, 1/32 apart)
    noise = fractal_noise((3, 32, 32), torch.Generator().manual_seed(1))
    assert float(noise.abs().max()) < 1 / (1 - 0.6) and float(noise.std()) > 0.05
    assert float(torch.corrcoef(noise.flatten(1))[0, 2]) > 0.5
    method = RDPlusPlus(small_config())  # 64 px: sides and frequency scaled by 1/4
    assert method._patch_sides() == (2, 8)
    assert method.draw_noise_field(torch.Generator()).shape == (3, 8, 8)
    assert RDPlusPlus.config_class().noise_std == 0.085


def small_config(**overrides) -> RDPlusPlusConfig:
    values = dict(backbone="mobilenet_v2", weights="none", image_size=64, batch_size=4, accumulation=2, epochs=2,
                  decoder_blocks=(1, 1, 1), bottleneck_blocks=1, sigma=2.0, seed=1)
    values.update(overrides)
    return RDPlusPlusConfig(**values)


def test_fit_predict_save_load(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=8, n_good=2, n_defect=2)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "CS", "test", image_size=64, cache=False)
    method = RDPlusPlus(small_config())
    method.work_dir = tmp_path / "work"
    method.fit(DataLoader(train, batch_size=4, shuffle=True))
    info = method.info()
    assert info["selected_epoch"] == 2 and set(info["final_train_losses"]) >= {"loss", "distill", "ssot", "proj"}
    assert abs(info["final_train_losses"]["ssot"]) < 1e-3  # a shuffled copy of the batch: ~0, as the reference
    assert not (tmp_path / "work" / "epoch.pt").exists()

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert scores is None and maps.shape == (len(test), 64, 64)
    with torch.no_grad():  # raw map: sum over levels of 1 - cos(teacher, decoder(bottleneck(projection)))
        teacher = method.net.teacher(images)
        parts = method.net.trainable
        rebuilt = parts["decoder"](parts["bottleneck"](parts["projection"](teacher)))
        raw = sum(F.interpolate((1 - F.cosine_similarity(t, r, dim=1))[:, None], size=64, mode="bilinear",
                                align_corners=True) for t, r in zip(teacher, rebuilt))[:, 0]
    assert torch.allclose(raw, maps, atol=1e-5)

    torch.save(method.state_dict(), tmp_path / "rdpp.pt")
    restored = RDPlusPlus(small_config())
    restored.load_state_dict(torch.load(tmp_path / "rdpp.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.equal(restored.predict(images)[1], maps)


def test_resume_from_the_epoch_checkpoint_repeats_the_run(tmp_path):
    """Killed in epoch 2, resumed: the same weights as a run never stopped (the field is drawn
    again from the seed, the noise stream restored from the checkpoint)."""
    root = make_tiny_dataset(tmp_path / "tiny", categories=("Copper_Stator",), n_train=8, n_good=1, n_defect=1)
    train = ThreeCAD(root, "CS", "train", image_size=64, cache=False)

    def run(work: str, stop_at: int | None = None) -> RDPlusPlus:
        method = RDPlusPlus(small_config())
        method.work_dir = tmp_path / work
        calls, step = [0], method.step

        def counted(batch):
            calls[0] += 1
            if calls[0] == stop_at:
                raise KeyboardInterrupt
            return step(batch)

        method.step = counted
        method.fit(DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
        return method

    whole = run("whole")
    with pytest.raises(KeyboardInterrupt):
        run("cut", stop_at=3)  # the first batch of epoch 2
    assert (tmp_path / "cut" / "epoch.pt").exists()
    resumed = run("cut")
    assert resumed.loop.resumed_after == 1
    restored = resumed.net.trainable.state_dict()
    for key, value in whole.net.trainable.state_dict().items():
        assert torch.equal(value, restored[key]), key


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    method = RDPlusPlus(small_config(lr=0.001, proj_lr=0.001))
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    parts = method.net.trainable
    parts.train()
    opt = torch.optim.Adam(parts.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def loss() -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)  # the same noise each time
        return method.losses(images, method.draw_noise_field(gen), gen)["loss"]

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before)


@pytest.mark.parametrize("field, value", [("accumulation", 3), ("proj_lr", 0.0), ("image_size", 80),
                                          ("sinkhorn_scaling", 1.0), ("noise_min_side", 40), ("noise_std", -0.1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ThreecadError, match=field):
        small_config(**{field: value})


def test_bad_config_through_the_cli_is_one_error_line(tmp_path):
    from refusal import assert_refused

    assert_refused(["bench", "--method", "rdpp", "--preset", "cpu", "--set", "accumulation=3",
                    "--root", str(tmp_path), "--out", str(tmp_path / "run")], names=["accumulation"],
                   watch=[tmp_path])
