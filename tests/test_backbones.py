import pytest
import torch

from threecad.backbones import FeatureExtractor, resolve_weights
from threecad.errors import WeightsUnavailable


@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", (24, 40, 112)), ("mobilenet_v2", (24, 32, 96))])
def test_offline_backbones_load_pretrained(name, channels):
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


def test_weights_from_path(tmp_path):
    ref = FeatureExtractor("resnet18", (8,), "none")
    full = __import__("torchvision").models.resnet18(weights=None)
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "w.pth")
    f = FeatureExtractor("resnet18", (8,), str(tmp_path / "w.pth"))
    assert torch.equal(f.stages[0][0].weight, full.conv1.weight)
    assert ref.channels == f.channels
