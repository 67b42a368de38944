"""DeSTSeg: the reference's parameter counts, its losses by hand, the two training phases,
step counting with drop_last, resume, persistence, and the bad-config errors."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from baselines.destseg import DeSTSeg, DeSTSegConfig, denoising_loss, segmentation_losses
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card
from threecad.training import CHECKPOINT_NAME

# apple/ml-destseg's parts, counted on its PyTorch model (reference/baselines_param_counts.csv)
TEACHER = 2_782_784
STUDENT, STUDENT_ENCODER, STUDENT_DECODER = 24_665_024, 11_176_512, 13_488_512
SEGMENTATION, SEG_RES, SEG_HEAD = 7_706_369, 2_918_912, 4_787_457


def small_config(**overrides) -> DeSTSegConfig:
    """Random EfficientNet-Lite0 teacher (no file needed), 64 px, a narrow segmentation net."""
    values = dict(teacher="efficientnet_lite0", weights="none", image_size=64, batch_size=4, steps=6,
                  student_steps=3, seg_channels=16, textures="procedural", seed=3, steps_per_checkpoint=1)
    values.update(overrides)
    return DeSTSegConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("destseg") / "tiny", categories=("Aluminum_Camera_Cover",),
                             n_train=9, n_good=4, n_defect=3)
    train = ThreeCAD(root, "ACC", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "ACC", "test", image_size=64, cache=False)
    return train, test


def loader(dataset, batch_size=4, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_reference_counts_and_settings():
    config = build_config(DeSTSeg, "paper")
    assert dataclasses.asdict(config) == dataclasses.asdict(DeSTSegConfig())
    assert (config.teacher, config.image_size, config.batch_size, config.steps, config.student_steps) == (
        "resnet18", 256, 32, 5000, 1000)
    assert (config.lr_student, config.lr_seg_res, config.lr_seg_head, config.momentum, config.weight_decay,
            config.gamma) == (0.4, 0.1, 0.01, 0.9, 1e-4, 4.0)
    card = model_card(DeSTSeg, "paper")
    assert card["parts"] == {"teacher (resnet18, used part)": {"trainable": 0, "frozen": TEACHER},
                             "student": {"trainable": STUDENT, "frozen": 0},
                             "segmentation": {"trainable": SEGMENTATION, "frozen": 0}}
    assert card["total"] == {"trainable": STUDENT + SEGMENTATION, "frozen": TEACHER}
    assert card["subparts"] == {"student encoder": STUDENT_ENCODER, "student decoder": STUDENT_DECODER,
                                "segmentation res": SEG_RES, "segmentation head": SEG_HEAD}
    assert [(t["layer"], t["channels"], t["size"]) for t in card["taps"]["teacher"]] == [
        ("layer1", 64, 64), ("layer2", 128, 32), ("layer3", 256, 16)]
    assert card["shapes"] == {"segmentation_input": [448, 64, 64], "segmentation_output": [1, 64, 64]}
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "top_k_mean", "top_k": 100}


def test_card_records_the_teacher_file_check_as_pending():
    """torchvision's resnet18-f37072fd here, timm 0.6.12's resnet18-5c106cde in the reference:
    not compared yet, and the card says so."""
    (note,) = [n for n in model_card(DeSTSeg, "paper")["notes"] if n.startswith("teacher weights")]
    assert "resnet18-f37072fd.pth" in note and "resnet18-5c106cde.pth" in note and "not yet checked" in note


def test_cpu_preset_uses_an_offline_teacher():
    config = build_config(DeSTSeg, "cpu")
    assert config.teacher == "efficientnet_lite0" and 64 <= config.image_size <= 128
    assert config.steps <= 600 and config.textures == "procedural"


def test_losses_against_hand_computation():
    # orthogonal unit features: 1 - cos = 1 at every pixel; the reference sums over the batch
    t = [F.normalize(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(3, 2, 4, 4), dim=1)]
    s = [F.normalize(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(3, 2, 4, 4), dim=1)]
    from baselines.destseg import cosine_distances

    assert float(denoising_loss(cosine_distances(t, s) * 2)) == pytest.approx(2 * 3.0)  # 2 taps x batch 3
    assert float(denoising_loss(cosine_distances(t, t))) == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: BCE = ln 2, (1 - p_t)^4 = 1/16; L1 = 0.5
    probs = torch.full((2, 1, 4, 4), 0.5)
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, :8] = 1
    out = segmentation_losses(probs, masks, gamma=4.0)
    assert float(out["focal"]) == pytest.approx(math.log(2) / 16, rel=1e-5)
    assert float(out["l1"]) == pytest.approx(0.5)


def test_mask_is_resized_bilinearly_then_binarised():
    masks = torch.zeros(1, 1, 8, 8)
    masks[..., 0:3, :] = 1  # rows 0-2: at 4x4 (2x2 bilinear average), row 0 = 1, row 1 = 0.5 -> 1
    probs = torch.zeros(1, 1, 4, 4)
    # target rows 0 and 1 are 1, rows 2 and 3 are 0 -> L1 of all-zero probs = 8/16
    assert float(segmentation_losses(probs, masks, 4.0)["l1"]) == pytest.approx(0.5)


def _fixed_batch(config):
    from threecad.anomaly_synthesis import AnomalySynthesizer

    torch.manual_seed(0)
    normal = 0.5 + 0.1 * torch.rand(4, 3, config.image_size, config.image_size)
    anomalous, masks = AnomalySynthesizer(config.image_size, seed=1, draw="augmented")(normal)
    return normal, anomalous, masks


@pytest.mark.parametrize("phase,moved,still", [("student", "student", "segmentation"),
                                               ("segmentation", "segmentation", "student")])
def test_each_phase_steps_only_its_network_and_lowers_its_loss(phase, moved, still):
    config = small_config()
    method = DeSTSeg(config)
    normal, anomalous, masks = _fixed_batch(config)
    optimizer = method.optimizer()
    before_state = {k: v.clone() for k, v in method.net.trainable_state().items()}
    losses = []
    for _ in range(3):
        out = method.losses(normal, anomalous, masks, phase)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"]))
    with torch.no_grad():
        losses.append(float(method.losses(normal, anomalous, masks, phase)["loss"]))
    assert losses[-1] < losses[0], losses
    after = method.net.trainable_state()
    changed = {k.split(".")[0] for k, v in after.items() if not torch.equal(v, before_state[k])}
    # the other network is untouched: no weights, no momentum, no BatchNorm statistics
    assert moved in changed and still not in changed, changed


def test_fit_counts_steps_with_full_batches_and_predicts_the_upsampled_segmentation(tiny_data, tmp_path):
    train, test = tiny_data
    method = DeSTSeg(small_config(steps=5, student_steps=2))
    seen = []
    base = loader(train)  # 9 images, batch 4: 2 full batches a pass, the 1-image batch is dropped

    class Spy:
        def __init__(self, inner):
            self.inner, self.generator, self.dataset = inner, inner.generator, inner.dataset
            self.batch_size = inner.batch_size

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            for batch in self.inner:
                seen.append(len(batch["image"]))
                yield batch

    method.fit(Spy(base))
    info = method.info()
    assert info["steps_done"] == 5 and info["texture_source"] == "procedural"
    assert set(info["final_losses_last_50_steps"]) == {"cosine", "focal", "l1"}
    assert seen[:3] == [4, 4, 1] and seen.count(1) == 2  # two passes and a half; small batches skipped

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert scores is None and maps.shape == (len(test), 64, 64)
    with torch.no_grad():  # independently: sigmoid of the segmentation at 16x16, bilinear to 64
        net = method.net
        t = [F.normalize(f, dim=1, eps=0) for f in net.teacher(images)]
        s = [F.normalize(f, dim=1, eps=0) for f in net.student(images, [f.shape[-2:] for f in t])]
        x = torch.cat([F.interpolate(-a * b, size=16, mode="bilinear") for a, b in zip(t, s)], dim=1)
        expected = F.interpolate(torch.sigmoid(net.segmentation(x)), size=64, mode="bilinear")[:, 0]
    assert torch.allclose(maps, expected, atol=1e-5)
    scores, _ = method.postprocess().apply(maps)
    assert torch.allclose(scores, maps.flatten(1).topk(100, dim=1).values.mean(dim=1))

    torch.save(method.state_dict(), tmp_path / "destseg.pt")
    restored = DeSTSeg(small_config(steps=5, student_steps=2))
    restored.load_state_dict(torch.load(tmp_path / "destseg.pt", weights_only=True))
    with torch.inference_mode():
        _, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and restored.info()["steps_done"] == 5


class Interrupt(Exception):
    pass


class InterruptingLoader:
    """Wraps a loader and raises after `limit` batches in total, like a killed run."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.seen = inner, limit, 0
        self.generator, self.dataset, self.batch_size = inner.generator, inner.dataset, inner.batch_size

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            if self.seen == self.limit:
                raise Interrupt
            self.seen += 1
            yield batch


def test_epoch_checkpoint_resumes_exactly(tiny_data, tmp_path):
    train, _ = tiny_data
    config = small_config(steps=6, student_steps=3, steps_per_checkpoint=2)  # checkpoint every pass
    reference = DeSTSeg(config)
    reference.fit(loader(train))

    work = tmp_path / "work"
    first = DeSTSeg(config)
    first.work_dir = work
    with pytest.raises(Interrupt):
        first.fit(InterruptingLoader(loader(train), limit=7))  # 3 batches a pass: dies in pass 3, step 5
    saved = torch.load(work / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1 and int(saved["model"]["steps_done"]) == 4

    resumed = DeSTSeg(config)
    resumed.work_dir = work
    resumed.fit(loader(train))  # a fresh loader, as a new process would build
    assert resumed.info()["resumed_after_epoch"] == 2 and resumed.info()["steps_done"] == 6
    assert not (work / CHECKPOINT_NAME).exists()
    ref_state, res_state = reference.net.trainable_state(), resumed.net.trainable_state()
    for key, value in ref_state.items():
        assert torch.allclose(value.float(), res_state[key].float(), atol=1e-6), key


def test_batch_larger_than_the_training_set_is_a_clear_error(tiny_data):
    train, _ = tiny_data
    with pytest.raises(ThreecadError, match="batch_size=16 is larger than the 9 training images"):
        DeSTSeg(small_config(batch_size=16)).fit(loader(train, batch_size=16))


@pytest.mark.parametrize("field,value", [("batch_size", 1), ("steps", 0), ("student_steps", 9),
                                         ("map_source", "teacher"), ("textures", "wood"), ("top_k", 0),
                                         ("aspp_rates", (0,))])
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(ThreecadError, match=f"config {field}="):
        small_config(**{field: value})


def test_select_val_is_refused_without_a_validation_loss():
    with pytest.raises(ThreecadError, match="defines no validation loss"):
        DeSTSeg(small_config(select="val"))


def test_bad_config_on_the_command_line_is_refused(tmp_path):
    from refusal import assert_refused

    root = make_tiny_dataset(tmp_path / "data", categories=("Aluminum_Camera_Cover",), n_train=3)
    out = tmp_path / "run"
    assert_refused(["bench", "--method", "destseg", "--preset", "cpu", "--root", str(root), "--out", str(out),
                    "--set", "batch_size=1"], names="batch_size", watch=[root, out])


def test_cpu_preset_localises_dark_squares(tiny_data):
    """The real cpu preset (pretrained EfficientNet-Lite0 teacher), trained 30 + 30 steps, ranks defect
    pixels above normal ones (measured 0.85 with one thread, 0.78 in the two-worker suite: thread
    counts change the 60 short steps). Image-level separation needs more steps than a test can
    afford (measured I-AUROC 0.63 here), so it is not asserted."""
    train, test = tiny_data
    method = DeSTSeg(build_config(DeSTSeg, "cpu", {"image_size": "64", "batch_size": "4", "steps": "60",
                                                    "student_steps": "30"}))
    method.fit(loader(train))
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))]) > 0.5
    with torch.inference_mode():
        scores, maps = method.postprocess().apply(method.predict(images)[1])  # as the harness does
    assert roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()) >= 0.7
