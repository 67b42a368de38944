"""`efficientnet_b4_tf`: EfficientNet-B4 as UniAD's and CRAD's references build and load it
(lukemelas' `efficientnet_pytorch`, its TensorFlow-ported weight file), checked against that
package with the same random weights. Nothing downloads: the weight files are random ones
saved in lukemelas' key layout."""
from __future__ import annotations

import copy
import hashlib

import pytest
import torch
import torchvision

from baselines.crad import CRAD
from baselines.uniad import UniAD
from test_feature_reconstruction import small_config
from threecad.backbones import BACKBONES, FeatureExtractor
from threecad.tf_efficientnet import B4_TF_IMAGE_SIZE
from threecad.efficientnet_taps import NAME_TF, EfficientNetB4Taps
from threecad.errors import ThreecadError, WeightsUnavailable
from threecad.method import build_config
from threecad.model_card import model_card

lukemelas = pytest.importorskip("efficientnet_pytorch", reason="the `efficientnet_pytorch` reference is in the "
                                "dev extra (pip install efficientnet_pytorch)")

UNIAD_BLOCKS = (1, 5, 9, 21)  # CRAD's (9, 21) are among them
WEIGHT_FILE = BACKBONES[NAME_TF].weights_url.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """lukemelas' B4 as the references build it, with random BatchNorm statistics and affines (so
    that eps matters), and its state dict saved in lukemelas' layout."""
    torch.manual_seed(0)
    ref = lukemelas.EfficientNet.from_name("efficientnet-b4")  # the references' call: no image size given
    g = torch.Generator().manual_seed(1)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    path = tmp_path_factory.mktemp("lukemelas") / WEIGHT_FILE
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


def reference_taps(ref, x: torch.Tensor, normalised: torch.Tensor) -> list[torch.Tensor]:
    """The references' feature taps: blocks 1, 5, 9, 21 of `extract_features` (eval mode)."""
    y = ref._swish(ref._bn0(ref._conv_stem(normalised)))
    out = []
    for i, block in enumerate(ref._blocks[: UNIAD_BLOCKS[-1] + 1]):
        y = block(y, drop_connect_rate=ref._global_params.drop_connect_rate * i / len(ref._blocks))
        if i in UNIAD_BLOCKS:
            out.append(y)
    return out


def relative_differences(ref, ours: EfficientNetB4Taps, size: int) -> list[float]:
    """max |ours - reference| / max |reference| per tapped block, float64, one batch of `size` px."""
    ref, ours = copy.deepcopy(ref).double(), ours.double()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        # the same normalisation into both: the test is of the networks
        want = reference_taps(ref, x, (x - ours.mean) / ours.std)
        got = ours(x)
    assert [a.shape for a in want] == [b.shape for b in got]
    return [float((a - b).abs().max() / a.abs().max()) for a, b in zip(want, got)]


@pytest.mark.parametrize("size", [224, 256])  # the references' input size, and another
def test_taps_equal_efficientnet_pytorch_with_the_same_weights(reference, size):
    """To 1e-6 relative in float64 at any input size: the padding is lukemelas' for 380 px,
    fixed whatever the input (at 224 and 256 px TensorFlow's own rule would pad block 6
    otherwise)."""
    ref, path = reference
    ours = EfficientNetB4Taps(UNIAD_BLOCKS, str(path), NAME_TF)
    assert max(relative_differences(ref, ours, size)) <= 1e-6


def test_torchvision_b4_with_the_same_weights_is_not_the_references(reference):
    """Why the paper presets use `efficientnet_b4_tf`: symmetric padding and eps 1e-5 change the taps."""
    ref, path = reference
    tv = EfficientNetB4Taps(UNIAD_BLOCKS, "none", "efficientnet_b4")
    tv.load_state_dict(EfficientNetB4Taps(UNIAD_BLOCKS, str(path), NAME_TF).state_dict())
    assert relative_differences(ref, tv, 224)[0] > 1e-2


def test_batchnorm_and_padding_are_the_references(reference):
    ref, _ = reference
    assert ref._global_params.image_size == B4_TF_IMAGE_SIZE
    ours = EfficientNetB4Taps(UNIAD_BLOCKS, "none", NAME_TF)
    bns = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-3, 0.01)}
    assert (ref._bn0.eps, ref._bn0.momentum) == (1e-3, pytest.approx(0.01))  # 1 - TensorFlow's decay 0.99
    # lukemelas' static padding of the same convolutions (the uneven ones; the rest pad evenly)
    ref_convs = {"stem": ref._conv_stem, **{f"block {i}": ref._blocks[i]._depthwise_conv for i in range(22)}}
    uneven = {w: tuple(c.static_padding.padding) for w, c in ref_convs.items()
              if isinstance(c.static_padding, torch.nn.ZeroPad2d) and len(set(c.static_padding.padding)) > 1}
    assert dict(ours.asymmetric_padding()) == uneven == {w: (0, 1, 0, 1) for w in ("stem", "block 2", "block 10")}


def test_the_key_map_covers_every_tensor(reference):
    ref, path = reference
    mapped = BACKBONES[NAME_TF].convert(ref.state_dict())
    torchvision_b4 = torchvision.models.efficientnet_b4(weights=None).state_dict()
    assert len(mapped) == len(ref.state_dict()) == len(torchvision_b4)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in torchvision_b4.items()}
    assert BACKBONES[NAME_TF].convert(torchvision_b4) is torchvision_b4  # torchvision's layout passes as it is
    with pytest.raises(WeightsUnavailable, match="_blocks.0._bogus.weight"):
        BACKBONES[NAME_TF].convert({**ref.state_dict(), "_blocks.0._bogus.weight": torch.zeros(1)})
    # the generic extractor (tapped by stride) reads the file through the same map
    assert torch.equal(FeatureExtractor(NAME_TF, (8, 16), str(path)).stages[0][0].weight, ref._conv_stem.weight)


def test_the_imagenet_file_is_read_where_efficientnet_pytorch_caches_it(reference, tmp_path, monkeypatch):
    ref, path = reference
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("THREECAD_OFFLINE", "1")  # nothing may download
    with pytest.raises(WeightsUnavailable, match=f"{WEIGHT_FILE}.*THREECAD_OFFLINE.*weights=PATH"):
        EfficientNetB4Taps((9, 21), "imagenet", NAME_TF)
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / WEIGHT_FILE
    cached.write_bytes(path.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ours = EfficientNetB4Taps((9, 21), "imagenet", NAME_TF, sha256=digest.upper())
    assert ours.weights_source == {"file": str(cached), "sha256": digest}
    assert torch.equal(ours.body[21].block[3][0].weight, ref._blocks[21]._project_conv.weight)
    assert torch.equal(ours.stem[1].running_var, ref._bn0.running_var)
    with pytest.raises(WeightsUnavailable, match=f"sha256 {digest}, not the expected 0+"):
        EfficientNetB4Taps((9, 21), "imagenet", NAME_TF, sha256="0" * 64)


@pytest.mark.parametrize("method", [UniAD, CRAD])
def test_a_lukemelas_file_loads_through_the_config_and_its_hash_is_recorded(method, reference):
    ref, path = reference
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    m = method(small_config(method, backbone=NAME_TF, weights=str(path), weights_sha256=digest))
    assert isinstance(m.net.backbone, EfficientNetB4Taps) and m.net.backbone.name == NAME_TF
    assert m.info()["backbone_weights"] == {"file": str(path), "sha256": digest}
    assert torch.equal(m.net.backbone.body[9].block[0][0].weight, ref._blocks[9]._expand_conv.weight)
    with pytest.raises(ThreecadError, match="weights_sha256=abc"):
        small_config(method, weights_sha256="abc")
    assert method(small_config(method, backbone=NAME_TF)).info()["backbone_weights"] is None  # random (weights=none)


@pytest.mark.parametrize("method", [UniAD, CRAD])
def test_paper_presets_use_the_references_b4_and_say_so(method, monkeypatch):
    monkeypatch.setenv("THREECAD_OFFLINE", "1")  # a card never needs weights
    assert build_config(method, "paper").backbone == NAME_TF
    card = model_card(method, "paper")
    assert f"backbone ({NAME_TF}, used part)" in card["parts"]
    notes = " ".join(card["notes"])
    assert "lukemelas' efficientnet_pytorch" in notes and WEIGHT_FILE in notes and "fixed for 380 px" in notes
    assert "at 224 px TensorFlow's own 'same' rule would pad block 6 (1, 2)" in notes
    assert "torchvision" not in notes.replace("torchvision's key layout", "")
    old = " ".join(model_card(method, "paper", {"backbone": "efficientnet_b4"})["notes"])
    assert "efficientnet_b4_rwightman-23ab8bcd.pth" in old and "not the references'" in old
