"""EfficientNet-B4 taps by lukemelas block index, their weights, and MFCN alignment."""
from __future__ import annotations

import dataclasses
import hashlib
import io

import pytest
import torch
import torchvision

from loopback import Loopback
from threecad.backbones import BACKBONES, FeatureExtractor
from threecad.efficientnet_taps import EfficientNetB4Taps, align_features, block_positions, frozen_taps
from threecad.errors import ThreecadError, WeightsUnavailable


def test_lukemelas_block_indices_map_onto_torchvision_stages():
    net = torchvision.models.efficientnet_b4(weights=None)
    pos = block_positions(net)
    assert len(pos) == 32  # stages of 2, 4, 4, 6, 6, 8, 2 blocks
    assert [pos[i] for i in (0, 1, 2, 5, 9, 21, 31)] == [(1, 0), (1, 1), (2, 0), (2, 3), (3, 3), (5, 5), (7, 1)]


def test_uniad_taps_have_the_reference_shapes_and_count():
    ext = EfficientNetB4Taps((1, 5, 9, 21), weights="none")
    with torch.no_grad():
        feats = ext(torch.rand(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 112, 112), (32, 56, 56), (56, 28, 28), (160, 14, 14)]
    assert ext.strides == (2, 4, 8, 16) and ext.channels == (24, 32, 56, 160)
    # stem + blocks 0..21; the whole network (head, classifier) has 19,341,616
    assert sum(p.numel() for p in ext.parameters()) == 3_635_984
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.training and not any(m.training for m in ext.modules())
    assert align_features(feats, ext.strides, 16).shape == (1, 272, 14, 14)


def test_crad_taps_align_to_stride_8():
    ext = EfficientNetB4Taps((9, 21), weights="none")
    with torch.no_grad():
        feats = ext(torch.rand(1, 3, 224, 224))
    assert align_features(feats, ext.strides, 8).shape == (1, 216, 28, 28)
    assert [t["layer"] for t in ext.describe_taps(224)] == ["features.3.3 (block 9)", "features.5.5 (block 21)"]


def test_alignment_is_bilinear_with_corners_aligned():
    fine = torch.arange(16.0).view(1, 1, 4, 4)  # stride 8
    coarse = torch.full((1, 1, 2, 2), 7.0)  # stride 16: kept as is
    out = align_features([fine, coarse], (8, 16), 16)
    # corners aligned: the 2x2 grid samples the 4x4 map at its corners
    assert out[0, 0].tolist() == [[0.0, 3.0], [12.0, 15.0]] and out[0, 1].eq(7.0).all()
    up = align_features([torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]])], (16,), 8)  # upsampled x2
    assert torch.allclose(up[0, 0], torch.tensor([[0.0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]))
    with pytest.raises(ThreecadError, match="multiple of 16"):
        align_features([torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)], (8, 16), 8)


def _used_state(net: torch.nn.Module, last_block: int = 21) -> dict:
    kept = ("features.0.",) + tuple(f"features.{s}.{b}." for s, b in block_positions(net)[: last_block + 1])
    return {k: v for k, v in net.state_dict().items() if k.startswith(kept)}


def test_weights_from_a_path_and_a_file_missing_blocks(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.efficientnet_b4(weights=None)
    state = _used_state(source)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "b4.pt")
    ext = EfficientNetB4Taps((9, 21), weights=str(tmp_path / "b4.pt"))
    assert torch.equal(ext.body[21].block[3][0].weight, source.features[5][5].block[3][0].weight)
    assert torch.equal(ext.stem[1].running_var, source.features[0][1].running_var)
    torch.save(_used_state(source, 9), tmp_path / "short.pt")
    with pytest.raises(WeightsUnavailable, match="missing features.4.0"):
        EfficientNetB4Taps((9, 21), weights=str(tmp_path / "short.pt"))
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        EfficientNetB4Taps((9, 21), weights=str(tmp_path / "absent.pt"))


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="efficientnet_b4.*THREECAD_OFFLINE.*weights=PATH"):
        EfficientNetB4Taps((9, 21), weights="imagenet")


def test_imagenet_weights_download_once_into_the_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(4)
    state = _used_state(torchvision.models.efficientnet_b4(weights=None), 9)
    buf = io.BytesIO()
    torch.save(state, buf)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("THREECAD_OFFLINE", raising=False)
    with Loopback(files={"/efficientnet_b4_test.pth": buf.getvalue()}) as srv:
        spec = dataclasses.replace(BACKBONES["efficientnet_b4"], weights_url=srv.url("/efficientnet_b4_test.pth"))
        monkeypatch.setitem(BACKBONES, "efficientnet_b4", spec)
        ext = EfficientNetB4Taps((1, 9), weights="imagenet")
        assert len(srv.requests) == 1
        again = EfficientNetB4Taps((1, 9), weights="imagenet")  # from the cache now
        assert len(srv.requests) == 1
    assert (tmp_path / "checkpoints" / "efficientnet_b4_test.pth").is_file()
    for ours in (ext, again):
        assert torch.equal(ours.body[9].block[0][0].weight, state["features.3.3.block.0.0.weight"])


def test_frozen_taps_picks_the_source_and_refuses_bad_names():
    for name in ("efficientnet_b4", "efficientnet_b4_tf"):
        b4 = frozen_taps(name, (9, 21), (), "none")
        assert isinstance(b4, EfficientNetB4Taps) and b4.name == name and b4.weights_source is None
    lite = frozen_taps("mobilenet_v2", (), (8, 16), "none")
    assert isinstance(lite, FeatureExtractor) and lite.strides == (8, 16) and lite.weights_source is None
    with pytest.raises(ThreecadError, match="unknown backbone 'b9'"):
        frozen_taps("b9", (9,), (8,), "none")
    with pytest.raises(ThreecadError, match="strides"):
        frozen_taps("mobilenet_v2", (), (64,), "none")
    with pytest.raises(ThreecadError, match="blocks"):
        EfficientNetB4Taps((21, 9), weights="none")


def test_frozen_taps_record_the_weight_file_and_check_its_hash(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    digest = hashlib.sha256((tmp_path / "r18.pth").read_bytes()).hexdigest()
    ext = frozen_taps("resnet18", (), (8,), str(tmp_path / "r18.pth"), digest)
    assert ext.weights_source == {"file": str(tmp_path / "r18.pth"), "sha256": digest}
    with pytest.raises(WeightsUnavailable, match="not the expected"):
        frozen_taps("resnet18", (), (8,), str(tmp_path / "r18.pth"), "f" * 64)
