"""CFRG: the release's parameter counts, the three losses, ablations, persistence and resume."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from cfrg.method import CFRG, CFRGConfig
from threecad.training import CHECKPOINT_NAME
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.method import build_config
from threecad.model_card import model_card

# The official release's per-part parameter counts (counted on its PyTorch model).
RELEASE_BOTTLENECK = 67_277_824
RELEASE_DECODER = 24_917_504
RELEASE_SEGMENTATION = 20_364_417
RELEASE_ADAPTERS = 294_032
RELEASE_EFFICIENTNET_B0 = 5_288_548
# The release's bottleneck also holds a 1x1 conv (4096 -> 2048) and its BatchNorm that its
# forward pass never calls; threecad leaves that dead layer out.
RELEASE_UNUSED_CONV = 4096 * 2048 + 2 * 2048


def small_config(**overrides) -> CFRGConfig:
    """A CFRG small enough for tests: random MobileNetV2 teacher, 64 px."""
    values = dict(teacher="mobilenet_v2", weights="none", image_size=64, batch_size=4, epochs=2,
                  decoder_blocks=(1, 1, 1), bottleneck_blocks=1, sigma=2.0, seed=3, textures="procedural")
    values.update(overrides)
    return CFRGConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("cfrg") / "tiny", categories=("Aluminum_Camera_Cover",),
                             n_train=8, n_good=4, n_defect=3)
    train = ThreeCAD(root, "ACC", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "ACC", "test", image_size=64, cache=False)
    return train, test


def loader(dataset, batch_size=4, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_release_parameter_counts():
    """The model card (built on the meta device, no weights) lists the release's part counts."""
    config = build_config(CFRG, "paper")
    assert (config.teacher, config.student, config.batch_size, config.epochs, config.lr) == (
        "wide_resnet50_2", "efficientnet_b0_tf", 32, 50, 5e-4)
    card = model_card(CFRG, "paper")
    parts = card["parts"]
    assert parts["teacher (wide_resnet50_2, used part)"] == {"trainable": 0, "frozen": 24_862_528}
    assert parts["bottleneck"]["trainable"] + RELEASE_UNUSED_CONV == RELEASE_BOTTLENECK
    assert parts["decoder"]["trainable"] == RELEASE_DECODER
    assert parts["segmentation"]["trainable"] == RELEASE_SEGMENTATION
    assert parts["adapters"]["trainable"] == RELEASE_ADAPTERS
    assert card["reference_parts"]["student (efficientnet_b0_tf, whole network)"]["trainable"] == \
        RELEASE_EFFICIENTNET_B0
    # the student is EfficientNet-B0 cut after its last stride-16 block (features[0..5])
    full = torchvision.models.efficientnet_b0(weights=None)
    assert parts["student (efficientnet_b0_tf, tapped part)"]["trainable"] == 851_808 == \
        sum(p.numel() for p in full.features[:6].parameters())
    # the release's student: lukemelas' BatchNorm settings, tapped after blocks 2, 4 and 10
    assert card["student_batchnorm"] == [{"eps": 1e-3, "momentum": 0.01, "layers": 33}]
    assert [(t["layer"], t["stride"], t["channels"]) for t in card["taps"]["student"]] == [
        ("features.2", 4, 24), ("features.3", 8, 40), ("features.5", 16, 112)]
    assert [t["channels"] for t in card["taps"]["teacher"]] == [256, 512, 1024]
    assert card["postprocess"] == {"sigma": 4.0, "mode": "reflect", "score": "max"}
    assert card["anomalies"] == {"textures": "dtd", "draw": "release"}


def fixed_batch(config: CFRGConfig):
    from threecad.anomaly_synthesis import AnomalySynthesizer

    torch.manual_seed(0)
    normal = 0.55 + 0.1 * torch.rand(4, 3, config.image_size, config.image_size)
    anomalous, masks = AnomalySynthesizer(config.image_size, seed=1)(normal)
    return normal, anomalous, masks


def test_one_step_lowers_each_loss():
    config = small_config()
    method = CFRG(config)
    normal, anomalous, masks = fixed_batch(config)
    params = method.net.trainable
    params.train()
    optimizer = torch.optim.Adam(params.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    torch.manual_seed(5)  # the student's stochastic depth draws the same masks in both passes
    before = method.losses(normal, anomalous, masks)
    optimizer.zero_grad()
    before["loss"].backward()
    optimizer.step()
    torch.manual_seed(5)
    with torch.no_grad():
        after = method.losses(normal, anomalous, masks)
    assert set(before) == {"dis", "rec", "seg", "loss"}
    for key in ("dis", "rec", "seg"):
        assert after[key] < before[key], (key, float(before[key]), float(after[key]))


def test_discrimination_loss_rewards_disagreeing_on_anomalies():
    from cfrg.losses import discrimination_loss

    t = [torch.randn(2, 8, 4, 4)]
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, :8] = 1  # top half anomalous
    agree = discrimination_loss(t, [t[0].clone()], masks)  # d = 0 everywhere -> loss = anomalous fraction
    assert agree == pytest.approx(0.5, abs=1e-5)
    opposite = discrimination_loss(t, [-t[0]], torch.ones_like(masks))  # d = 2 on anomalies -> 1 - 2 = -1
    assert opposite == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.parametrize("switch,parts,losses", [
    ({"segmentation": False}, {"student", "adapters", "bottleneck", "decoder"}, {"dis", "rec"}),
    ({"recovery_guidance": False, "map_source": "student"}, {"student", "adapters", "segmentation"},
     {"dis", "seg"}),
    ({"recovery_guidance": False}, {"student", "adapters", "bottleneck", "decoder", "segmentation"},
     {"dis", "rec", "seg"}),
    ({"map_source": "student"}, {"student", "adapters", "bottleneck", "decoder", "segmentation"},
     {"dis", "rec", "seg"}),
])
def test_ablation_switches(switch, parts, losses):
    config = small_config(**switch)
    method = CFRG(config)
    assert set(method.net.trainable) == parts
    normal, anomalous, masks = fixed_batch(config)
    assert set(method.losses(normal, anomalous, masks)) == losses | {"loss"}
    with torch.inference_mode():
        scores, maps = method.predict(normal)
    assert maps.shape == (4, 64, 64) and scores is None


def test_guidance_changes_the_segmentation_input():
    """Without guidance the U-Net ignores the recovery branch: perturbing it changes nothing."""
    normal, anomalous, masks = fixed_batch(small_config())
    for guidance in (True, False):
        method = CFRG(small_config(recovery_guidance=guidance))
        method.net.eval()
        with torch.no_grad():
            a = method.net(anomalous).logits
            for p in method.net.trainable["decoder"].parameters():
                p.add_(0.5 * torch.randn_like(p))
            b = method.net(anomalous).logits
        assert torch.equal(a, b) != guidance


def test_bad_config_is_a_clear_error():
    with pytest.raises(ThreecadError, match="map_source"):
        CFRG(small_config(map_source="teacher"))
    with pytest.raises(ThreecadError, match="select"):
        CFRG(small_config(select="test"))


def test_fit_predict_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = CFRG(small_config(epochs=3))
    method.fit(loader(train))
    info = method.info()
    assert info["texture_source"] == "procedural" and info["selected_epoch"] == 3
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert maps.shape == (len(test), 64, 64) and torch.isfinite(maps).all() and scores is None
    torch.save(method.state_dict(), tmp_path / "cfrg.pt")
    restored = CFRG(small_config(epochs=3))
    restored.load_state_dict(torch.load(tmp_path / "cfrg.pt", weights_only=True))
    with torch.inference_mode():
        scores2, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and scores2 is None
    assert restored.info()["texture_source"] == "procedural"


class Interrupt(Exception):
    pass


class InterruptingLoader:
    """Wraps a loader and raises after `limit` batches in total, like a killed run."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.seen = inner, limit, 0
        self.generator = inner.generator

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
    config = small_config(epochs=3)
    reference = CFRG(config)
    reference.fit(loader(train))

    work = tmp_path / "work"
    first = CFRG(config)
    first.work_dir = work
    with pytest.raises(Interrupt):
        first.fit(InterruptingLoader(loader(train), limit=3))  # 2 batches an epoch: dies in epoch 2
    saved = torch.load(work / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 0

    resumed = CFRG(config)
    resumed.work_dir = work
    resumed.fit(loader(train))  # a fresh loader, as a new process would build
    assert resumed.info()["resumed_after_epoch"] == 1
    assert not (work / CHECKPOINT_NAME).exists()
    ref_state, res_state = reference.net.trainable.state_dict(), resumed.net.trainable.state_dict()
    for key, value in ref_state.items():
        assert torch.allclose(value.float(), res_state[key].float(), atol=1e-6), key


def test_select_val_picks_lowest_validation_loss(tiny_data):
    train, _ = tiny_data
    method = CFRG(small_config(epochs=3, select="val"))
    with pytest.raises(ThreecadError, match="validation"):
        method.fit(loader(train))
    method.fit(loader(train), val_loader=DataLoader(train, batch_size=4))
    info = method.info()
    losses = method.loop.val_losses
    assert len(losses) == 3 and info["selected_epoch"] == losses.index(min(losses)) + 1


def test_cpu_preset_finds_dark_squares(tiny_data):
    """The real cpu preset (pretrained EfficientNet-Lite0 teacher), briefly trained, finds the defects."""
    train, test = tiny_data
    method = CFRG(build_config(CFRG, "cpu", {"image_size": "64", "epochs": "5"}))
    method.fit(loader(train))
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = [test[i]["label"] for i in range(len(test))]
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))]) > 0.5
    with torch.inference_mode():
        scores, maps = method.postprocess().apply(method.predict(images)[1])  # as the harness does
    assert roc_auc_score(labels, scores.numpy()) >= 0.9
    assert roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()) >= 0.85


def test_paper_run_without_dtd_records_procedural_textures(tiny_data, tmp_path, monkeypatch, caplog):
    """DTD is looked for in the data home; absent, the run warns once and says so in info()."""
    from threecad.anomaly_synthesis import textures

    monkeypatch.setenv("THREECAD_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(textures, "WARNED_NO_DTD", set())
    train, _ = tiny_data
    config = small_config(epochs=1, textures="dtd")
    assert (config.draw, config.dtd_root) == ("release", None)  # the paper's defaults
    assert build_config(CFRG, "paper").textures == "dtd"
    with caplog.at_level("WARNING", logger="threecad.anomaly_synthesis"):
        for _ in range(2):
            method = CFRG(config)
            method.fit(loader(train))
            assert method.info()["texture_source"] == "procedural"
    assert sum("DTD not found" in r.getMessage() for r in caplog.records) == 1


def test_paper_run_finds_dtd_in_the_data_home(tiny_data, tmp_path, monkeypatch):
    from test_anomaly_synthesis import _fake_dtd

    colours = {"banded": (255, 0, 0), "dotted": (0, 255, 0), "striped": (0, 0, 255), "woven": (255, 255, 0)}
    _fake_dtd(tmp_path / "home", colours)  # <home>/dtd/dtd/images: where `threecad download --dataset dtd` puts it
    monkeypatch.setenv("THREECAD_DATA_HOME", str(tmp_path / "home"))
    train, _ = tiny_data
    method = CFRG(small_config(epochs=1, textures="dtd"))
    method.fit(loader(train))
    assert method.info()["texture_source"] == "dtd" and method.info()["anomaly_draw"] == "release"
    with pytest.raises(ThreecadError, match="DTD not found"):  # named explicitly, it must exist
        CFRG(small_config(epochs=1, textures="dtd", dtd_root=str(tmp_path / "nowhere"))).fit(loader(train))


def test_cpu_preset_uses_an_offline_teacher():
    config = build_config(CFRG, "cpu")
    # inputs smaller than the paper's 256 px, large enough for the stators' slots (see the preset)
    assert config.teacher in ("efficientnet_lite0", "mobilenet_v2") and 160 < config.image_size < 256
    assert dataclasses.asdict(build_config(CFRG, "paper")) == dataclasses.asdict(CFRGConfig())


@pytest.mark.parametrize("raw", ["3,4,6", "[3,4,6]", "(3, 4, 6)", " [3, 4, 6] "])
def test_set_takes_a_sequence_with_or_without_brackets(raw):
    assert build_config(CFRG, "cpu", {"decoder_blocks": raw}).decoder_blocks == (3, 4, 6)


def test_set_names_the_whole_sequence_when_an_item_is_bad():
    with pytest.raises(ThreecadError, match=r"decoder_blocks=3,x,6: expected comma-separated int"):
        build_config(CFRG, "cpu", {"decoder_blocks": "3,x,6"})
