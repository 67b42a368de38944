"""PatchCore against its reference on the same weights, from raw image to image score (issue 26).

The golden values (tests/golden/patchcore/golden.npz) were computed by the reference's own code
(amazon-science/patchcore-inspection: its MVTec loader, `PatchCore.load` / `fit` / `predict`
with the README's MVTec arguments, faiss IndexFlatL2, `RescaleSegmentor`) with the weights of
tests/golden/patchcore/ours.py, fitted on ours.training_images(); make_golden.py there made
them and says how. The sampler is the reference's IdentitySampler and ours `coreset_ratio` 1:
the two coresets draw differently (see baselines/patchcore.py), so only a full memory bank is
the same on both sides. The test never imports the reference.

Two departures, each isolated by a test marked to fail:
- input: the reference resizes the shorter side to 256 and crops the centre 224 x 224
  (`Resize(256)`, `CenterCrop(224)`); the paper preset declares the whole image squashed to
  256 x 256 (the 3CAD evaluation covers every pixel), so maps differ in size and content;
- BatchNorm statistics: the reference's feature-size probe (`feature_dimensions`) runs an
  all-ones image through the backbone, still in train mode, before anything else, which moves
  every running statistic of conv1..layer3 once (momentum 0.1). The paper preset does the same
  when it loads (`ones_warmup`, `FeatureExtractor.probe_with_ones`); the golden weights are set
  after construction, so `with_probe` runs that probe again on them, at the reference's size.
`test_every_stage_from_the_references_input` shows that, with the reference's input and probe,
everything else agrees: patch features, memory bank, patch scores, maps and score.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from baselines.patchcore import PatchCore, nearest_neighbors
from golden.common import TOLERANCE, load_golden, predict, raw_rgb, relative
from golden.patchcore import ours
from threecad.preprocess import Preprocess


@pytest.fixture(scope="module")
def golden():
    return load_golden("patchcore")


@pytest.fixture(scope="module")
def method():
    torch.set_num_threads(1)
    return ours.build()


def with_probe(method: PatchCore, size: int) -> PatchCore:
    """A copy of `method` after the reference's probe: an all-ones (already normalised) image through
    conv1..layer3 in train mode."""
    probed = copy.deepcopy(method)
    probed.extractor.probe_with_ones(size)
    return probed


def references_pipeline(golden) -> Preprocess:
    """torchvision's Resize(256) + CenterCrop(224) on a PIL image, as a declared pipeline."""
    return Preprocess(size=int(golden["size"]), geometry="shorter_side_crop", resize_to=int(golden["resize"]))


def run(method: PatchCore, pre: Preprocess, golden: dict) -> dict[str, float]:
    """Fit on the training images and predict the raw PNG, both read through `pre` -> relative
    differences per stage."""
    train = [pre.image(im) for im in ours.training_images()]
    method.fit([{"image": ours.as_batch(train[:2])}, {"image": ours.as_batch(train[2:])}])  # the reference's batches
    image = ours.as_batch([pre.image(raw_rgb())])
    raw, scores, smoothed = predict(method, image, own_scores=True)
    if raw.shape[-1] != golden["size"]:
        return {"map size": float("inf")}
    with torch.inference_mode():
        feats = method.embed(image)
    queries = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    patch_scores = nearest_neighbors(queries, method.memory_bank, squared=True)[0].view(feats.shape[-2:])
    s = int(golden["stride"])
    return {"patch features": relative(queries[::int(golden["query_stride"])], golden["queries"]),
            "memory bank": relative(method.memory_bank[::int(golden["bank_stride"])], golden["bank"]),
            "patch scores": relative(patch_scores, golden["patch_scores"]),
            "raw map": relative(raw[0, ::s, ::s], golden["raw_map"]),
            "smoothed map": relative(smoothed[0, ::s, ::s], golden["map"]),
            "score": relative(scores, golden["score"])}


def test_the_references_pipeline_gives_its_pixels(golden):
    pixels = references_pipeline(golden).image(raw_rgb())[:, ::4, ::4]
    np.testing.assert_array_equal(pixels, golden["pixels"])


def test_every_stage_from_the_references_input(method, golden):
    probed = with_probe(method, int(golden["size"]))
    got = run(probed, references_pipeline(golden), golden)
    assert tuple(probed.memory_bank.shape) == tuple(golden["bank_shape"])
    assert max(got.values()) <= TOLERANCE, got


@pytest.mark.xfail(strict=True, reason="without the feature-size probe (ones_warmup off) the BatchNorm running "
                                       "statistics are the weights' own, not the reference's")
def test_maps_and_score_from_the_references_input_without_its_probe(method, golden):
    got = run(method, references_pipeline(golden), golden)
    assert max(got.values()) <= TOLERANCE, got


@pytest.mark.xfail(strict=True, reason="the paper preset declares the whole image squashed to 256 x 256 (PIL "
                                       "bilinear); the reference resizes the shorter side to 256 and takes the "
                                       "centre 224 x 224 (Resize(256), CenterCrop(224))")
def test_maps_and_score_through_the_declared_preprocess(method, golden):
    pre = method.preprocess()
    method = with_probe(method, pre.size)  # as the paper preset probes at its own input size
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (256, "pil", "rgb", "square")
    got = run(method, pre, golden)
    assert max(got.values()) <= TOLERANCE, got


def test_the_paper_preset_probes_its_backbone_at_load():
    """`ones_warmup` (on in preset paper) is the probe above, run by the constructor once the weights are in."""
    def built(warmup: bool) -> PatchCore:
        from threecad.method import build_config

        torch.manual_seed(ours.SEED)
        return PatchCore(build_config(PatchCore, "paper", {"weights": "none", "ones_warmup": str(warmup)}))

    probed, plain = built(True), built(False)
    assert PatchCore.presets["cpu"]["ones_warmup"] is False and probed.config.ones_warmup
    plain.extractor.probe_with_ones(plain.config.image_size)
    for a, b in zip(probed.extractor.batchnorm_layers(), plain.extractor.batchnorm_layers()):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    moved = built(False).extractor.batchnorm_layers()[0].running_var
    assert not torch.equal(moved, probed.extractor.batchnorm_layers()[0].running_var)
