"""RealNet: the reference's parameter counts, AFS, the RRS head, fit/predict, persistence, the
reference's backbone weights and SDAS source, refusals.

The paper network (524 M trainable parameters) is only ever built on the meta device here;
nothing is downloaded (timm's weights are a random state dict written where they are looked for).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from baselines.realnet import AFS, RRS, RealNet, RealNetConfig, ReconUNet
from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError, WeightsUnavailable
from threecad.method import build_config
from threecad.model_card import model_card

# cnulab/RealNet (ab75012c) built with its own classes, MVTec config (see
# /work/shared/reference/baselines_param_counts.csv).
REFERENCE_TRAINABLE = {"recon": 518_236_160, "recon.block1_recon": 51_846_144,
                       "recon.block2_recon": 207_271_936, "recon.block3_recon": 207_271_936,
                       "recon.block4_recon": 51_846_144, "rrs": 5_872_662, "rrs.decoder1": 5_833_088,
                       "rrs.decoder2": 39_208, "rrs.decoder3": 366}
REFERENCE_BACKBONE_FROZEN = 66_834_240  # timm wide_resnet50_2 features_only = torchvision conv1..layer4
REFERENCE_AFS_FROZEN = 1_536  # the kept-channel index tensors (256 + 512 + 512 + 256)
REFERENCE_TOTAL = 524_108_822


def small_config(**overrides) -> RealNetConfig:
    """efficientnet_lite0 with random weights (no download), tiny one-level UNets at 64 px."""
    values = dict(image_size=64, batch_size=4, backbone="efficientnet_lite0", weights="none", strides=(4, 8),
                  afs_keep=(16, 16), afs_batches=2, channel_mult=(1,), num_res_blocks=1, attention_ds=(),
                  head_channels=8, norm_groups=8, rrs_top=(8, 8), epochs=2, lr=1e-3, textures="procedural",
                  pool=8, seed=3)
    values.update(overrides)
    return RealNetConfig(**values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("realnet") / "tiny", categories=("Aluminum_Camera_Cover",),
                             n_train=8, n_good=2, n_defect=2)
    train = ThreeCAD(root, "ACC", "train", image_size=64, cache=False)
    test = ThreeCAD(root, "ACC", "test", image_size=64, cache=False)
    return train, test


def loader(dataset, batch_size=4, seed=0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_paper_preset_has_the_reference_counts_and_settings():
    card = model_card(RealNet, "paper")  # meta device: nothing allocated
    parts = card["parts"]
    assert {name: parts[name]["trainable"] for name in REFERENCE_TRAINABLE} == REFERENCE_TRAINABLE
    assert parts["backbone"] == {"trainable": 0, "frozen": REFERENCE_BACKBONE_FROZEN}
    assert parts["afs"] == {"trainable": 0, "frozen": REFERENCE_AFS_FROZEN}
    assert card["total"]["trainable"] == REFERENCE_TOTAL
    assert card["postprocess"] == {"sigma": 0.0, "mode": "reflect", "score": "mean_pool_max", "pool": 16,
                                   "pool_pad": 0}
    assert card["shapes"]["blocks"] == [[256, 64, 64], [512, 32, 32], [512, 16, 16], [256, 8, 8]]
    assert card["shapes"]["rrs_input"] == [512, 64, 64]
    cfg = build_config(RealNet, "paper")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.betas, cfg.anomaly_prob, cfg.afs_batches,
            cfg.afs_keep, cfg.rrs_top, cfg.select, cfg.textures, cfg.anomaly_images) == (
        256, 16, 1000, 1e-4, (0.9, 0.999), 0.5, 64, (256, 512, 512, 256), (256, 256), "last", "dtd", None)
    assert (cfg.backbone, cfg.weights) == ("wide_resnet50_2", "timm_racm")  # timm 0.5.4's file, as the reference
    assert any("wide_resnet50_racm-8234f177.pth" in note for note in card["notes"])
    assert card["pretrained"][0]["file"].endswith("wide_resnet50_racm-8234f177.pth")
    assert "SDAS" in card["anomalies"]["source"]
    cpu = build_config(RealNet, "cpu")
    assert cpu.backbone == "efficientnet_lite0" and cpu.image_size <= 128 and cpu.textures == "procedural"
    assert cpu.weights == "imagenet"
    assert cpu.steps >= 200 and cfg.steps == 0


def test_unet_keeps_shape_and_starts_at_zero():
    """The output conv is zero-initialised (the reference's zero_module): the first
    reconstruction is 0, so the first residual is the squared feature itself."""
    unet = ReconUNet(64, 32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), head_channels=16,
                     groups=8)
    x = torch.randn(2, 64, 16, 16)
    y = unet(x)
    assert y.shape == x.shape and torch.count_nonzero(y) == 0


def test_afs_keeps_the_channels_that_follow_the_mask():
    """Channels whose change is exactly the mask get MSE 0 and are kept; noise channels are not."""
    afs = AFS((6,), (2,))
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:5, 2:5] = 1
    clean = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    anomalous = clean + 0.5 * torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    anomalous[:, 1] = clean[:, 1] + 3 * masks[:, 0]
    anomalous[:, 4] = clean[:, 4] - 2 * masks[:, 0]
    sums = [torch.zeros(6)]
    afs.accumulate([anomalous], [clean], masks, sums)
    assert float(sums[0][1]) < 1e-3 and float(sums[0][4]) < 1e-3
    afs.select(sums)
    assert afs.indexes[0].tolist() == [1, 4]
    assert torch.equal(afs([clean])[0], clean[:, [1, 4]])


def test_rrs_selects_per_sample_channels_by_max_and_mean():
    """A channel with one huge pixel wins by max, one uniformly raised wins by mean; the
    gathered values are the raw residuals (the BatchNorm only ranks)."""
    rrs = RRS(total_channels=6, top_max=1, top_mean=1).eval()
    res = torch.zeros(1, 6, 8, 8)
    res[0, 2, 3, 3] = 30.0  # max 30, mean 0.47: first by max, second by mean after channel 5
    res[0, 5] = 1.0
    captured = {}
    rrs.decoder1.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    logits = rrs([res], out_size=32)
    assert logits.shape == (1, 2, 32, 32)
    assert torch.equal(captured["x"][0, 0], res[0, 2]) and torch.equal(captured["x"][0, 1], res[0, 5])


def test_training_pairs_follow_the_coin():
    from threecad.anomaly_synthesis import AnomalySynthesizer

    method = RealNet(small_config())
    images = 0.3 + 0.4 * torch.rand(8, 3, 64, 64)
    synth = AnomalySynthesizer(64, seed=1)
    inputs, masks = method.training_pair(images, synth, torch.Generator().manual_seed(0), prob=0.0)
    assert torch.equal(inputs, images) and masks.sum() == 0
    inputs, masks = method.training_pair(images, synth, torch.Generator().manual_seed(0), prob=1.0)
    assert (masks.flatten(1).sum(1) > 0).all()
    outside = (masks == 0).expand_as(inputs)
    assert torch.equal(inputs[outside], images[outside])
    flags = torch.cat([method.training_pair(images, synth, torch.Generator().manual_seed(s))[1].flatten(1).amax(1)
                       for s in range(10)])
    assert 0.35 < float(flags.mean()) < 0.65  # the reference's p 0.5


def test_loss_is_ce_plus_summed_mse():
    method = RealNet(small_config())
    x = 0.5 + 0.1 * torch.rand(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    losses = method.losses(x, x, masks)
    assert set(losses) == {"ce", "mse", "loss"}
    # zero-initialised UNets: the reconstruction is 0, so the MSE is the mean square of the selected features
    feats = method.net.afs(method.backbone(x))
    expected = sum(float((f ** 2).mean()) for f in feats)
    assert float(losses["mse"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(losses["loss"].detach()) == pytest.approx(float((losses["ce"] + losses["mse"]).detach()), rel=1e-6)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    from threecad.anomaly_synthesis import AnomalySynthesizer

    method = RealNet(small_config())
    images = 0.55 + 0.1 * torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    inputs, masks = method.training_pair(images, AnomalySynthesizer(64, seed=1), torch.Generator().manual_seed(0),
                                         prob=1.0)
    params = [p for p in method.net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    method.net.train()
    before = method.losses(images, inputs, masks)
    optimizer.zero_grad()
    before["loss"].backward()
    optimizer.step()
    with torch.no_grad():  # still train mode: BatchNorm uses batch statistics on both sides
        after = float(method.losses(images, inputs, masks)["loss"])
    assert after < float(before["loss"].detach()), (float(before["loss"].detach()), after)


def test_fit_predict_save_load(tiny_data, tmp_path):
    train, test = tiny_data
    method = RealNet(small_config(steps=5))  # 2 batches an epoch: 3 epochs
    before = [idx.clone() for idx in method.net.afs.indexes]
    method.fit(loader(train))
    info = method.info()
    assert info["texture_source"] == "procedural" and info["epochs"] == 3 and info["selected_epoch"] == 3
    assert set(info["final_train_losses"]) == {"ce", "mse", "loss"}
    after = [idx for idx in method.net.afs.indexes]
    assert [len(set(a.tolist())) for a in after] == [16, 16]  # distinct channels, of 24 and 40
    assert max(after[1].tolist()) < 40 and any(not torch.equal(a, b) for a, b in zip(before, after))
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.inference_mode():
        scores, maps = method.predict(images)
    assert scores is None and maps.shape == (len(test), 64, 64)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    torch.save(method.state_dict(), tmp_path / "realnet.pt")
    restored = RealNet(small_config(seed=9))  # other initial weights and AFS indices
    restored.load_state_dict(torch.load(tmp_path / "realnet.pt", weights_only=True))
    with torch.inference_mode():
        _, maps2 = restored.predict(images)
    assert torch.equal(maps, maps2) and restored.info()["texture_source"] == "procedural"


# --------------------------------------------------------------------------- timm's backbone weights
def _timm_layout_state(seed=0) -> dict:
    """A random WideResNet-50 state dict in timm's layout (timm's ResNet key names are torchvision's),
    as the racm release file holds it: no num_batches_tracked, the classifier included."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.wide_resnet50_2().state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in shapes.items()}
    state.update({k: torch.rand(shape, generator=gen) + 0.5 for k, shape in shapes.items()
                  if k.endswith("running_var")})
    return state


def _no_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.setenv("THREECAD_OFFLINE", "1")


def _wrn_config(**overrides) -> RealNetConfig:
    return small_config(**{"backbone": "wide_resnet50_2", "weights": "timm_racm", "strides": (4, 8), **overrides})


def test_timm_weights_load_from_the_torch_hub_folder_and_are_recorded(tmp_path, monkeypatch):
    _no_downloads(monkeypatch, tmp_path)
    state = _timm_layout_state()
    folder = tmp_path / "torch_hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "wide_resnet50_racm-8234f177.pth")
    method = RealNet(_wrn_config())
    stem, layer1, layer2 = method.backbone.stages
    assert torch.equal(stem[0].weight, state["conv1.weight"])
    assert torch.equal(stem[1].running_var, state["bn1.running_var"])
    assert torch.equal(layer1[2].conv3.weight, state["layer1.2.conv3.weight"])
    assert torch.equal(layer2[0].downsample[1].running_mean, state["layer2.0.downsample.1.running_mean"])
    digest = hashlib.sha256((folder / "wide_resnet50_racm-8234f177.pth").read_bytes()).hexdigest()
    assert method.info()["backbone_weights"] == {
        "weights": "timm_racm", "file": str(folder / "wide_resnet50_racm-8234f177.pth"), "sha256": digest}


def test_a_local_copy_loads_through_weights_path(tmp_path, monkeypatch):
    _no_downloads(monkeypatch, tmp_path)
    state = _timm_layout_state(seed=1)
    torch.save(state, tmp_path / "racm.pth")
    method = RealNet(_wrn_config(weights=str(tmp_path / "racm.pth")))
    assert torch.equal(method.backbone.stages[2][3].conv2.weight, state["layer2.3.conv2.weight"])
    digest = hashlib.sha256((tmp_path / "racm.pth").read_bytes()).hexdigest()
    assert method.info()["backbone_weights"]["sha256"] == digest


def test_missing_timm_weights_are_a_one_line_error_naming_where_to_put_them(tmp_path, monkeypatch):
    _no_downloads(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable) as err:
        RealNet(_wrn_config())
    message = str(err.value)
    assert "\n" not in message
    assert "wide_resnet50_racm-8234f177.pth" in message and str(tmp_path / "torch_hub" / "checkpoints") in message
    assert "timm/wide_resnet50_2.racm_in1k" in message and "weights=PATH" in message


def test_timm_weights_need_their_backbone():
    with pytest.raises(ThreecadError) as err:
        small_config(weights="timm_racm")  # efficientnet_lite0
    assert "weights=timm_racm" in str(err.value) and "wide_resnet50_2" in str(err.value)


def test_timm_wide_resnet_has_torchvisions_key_layout():
    """The claim the loader rests on, checked against timm's own classes when timm is installed."""
    timm = pytest.importorskip("timm")
    import torchvision

    ours = torchvision.models.wide_resnet50_2().eval()
    theirs = timm.create_model("wide_resnet50_2", pretrained=False).eval()
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    state = _timm_layout_state(seed=2)
    ours.load_state_dict(state, strict=False)
    theirs.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


# --------------------------------------------------------------------------- SDAS samples (anomaly_images)
def _sdas_folder(root, n=3, size=48, colour=(255, 255, 255)):
    root.mkdir(parents=True)
    for i in range(n):
        suffix = ".png" if i == 0 else ".jpg"  # the reference's sample.py writes .jpg
        Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(root / f"rank0_{i}{suffix}")
    return root


def test_sdas_samples_are_blended_into_perlin_masks_as_the_reference(tmp_path):
    folder = _sdas_folder(tmp_path / "sdas", size=48)  # resized to the batch's 64 px
    method = RealNet(small_config(anomaly_images=str(folder)))
    source = method._anomaly_source(0)
    assert source.texture_source == "anomaly_images"
    images = torch.full((16, 3, 64, 64), 0.5)
    out, masks = source(images)
    assert masks.shape == (16, 1, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    outside, inside = (masks == 0).expand_as(out), (masks == 1).expand_as(out)
    assert torch.equal(out[outside], images[outside])
    # white samples at opacity U(0.5, 1.0) over 0.5 grey: 0.75..1.0 inside the mask
    assert inside.any() and float(out[inside].min()) >= 0.75 - 1e-6 and float(out[inside].max()) <= 1.0
    assert method.info()["anomaly_images"] == str(folder)


def test_a_fit_on_sdas_samples_records_its_source(tiny_data, tmp_path):
    method = RealNet(small_config(anomaly_images=str(_sdas_folder(tmp_path / "sdas")), steps=2))
    method.fit(loader(tiny_data[0]))
    info = method.info()
    assert (info["anomaly_source"], info["anomaly_images"]) == ("anomaly_images", str(tmp_path / "sdas"))
    assert "SDAS" in model_card(RealNet, "cpu", {"anomaly_images": str(tmp_path / "sdas")})["anomalies"]["source"]


@pytest.mark.parametrize("case, needle", [("empty", "no .png"), ("absent", "not a directory"),
                                          ("pairs", "no .png")])
def test_bad_anomaly_folder_is_a_one_line_error(tmp_path, case, needle):
    folder = tmp_path / "anom"
    if case == "empty":
        folder.mkdir()
    elif case == "pairs":  # images only in sub-folders: not one category's samples
        _sdas_folder(folder / "images")
    with pytest.raises(ThreecadError) as err:
        small_config(anomaly_images=str(folder))
    message = str(err.value)
    assert "anomaly_images" in message and needle in message and "\n" not in message


@pytest.mark.parametrize("key, value", [("image_size", 70), ("afs_keep", (16,)), ("norm_groups", 5),
                                        ("head_channels", 3), ("rrs_top", (64, 1)), ("anomaly_prob", 1.5),
                                        ("textures", "plaid"), ("select", "test"), ("betas", (0.9,)),
                                        ("lr", 0.0), ("steps", -1)])
def test_bad_config_is_a_one_line_error_naming_the_field(key, value):
    overrides = {key: value}
    if key == "head_channels":
        overrides["attention_ds"] = ()  # the middle block still attends over 8 channels
    with pytest.raises(ThreecadError) as err:
        small_config(**overrides)
    message = str(err.value)
    assert "\n" not in message
    assert key in message or (key == "norm_groups" and "norm_groups" in message), message


def test_bad_config_through_the_cli_is_refused(tmp_path):
    from refusal import assert_refused

    root = make_tiny_dataset(tmp_path / "tiny", categories=("Aluminum_Camera_Cover",), n_train=2, n_good=1,
                             n_defect=1)
    assert_refused(["bench", "--method", "realnet", "--preset", "cpu", "--root", str(root), "--category", "ACC",
                    "--set", f"anomaly_images={tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")],
                   names=["anomaly_images"], watch=[root])
    assert not (tmp_path / "run").exists()
