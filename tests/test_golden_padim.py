"""PaDiM against its reference on the same weights, from raw image to image score (issue 26).

The golden values (tests/golden/padim/golden.npz) were computed by the reference's own code
(xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master: its MVTec loader and the lines of
its main.py: embedding_concat, the channel subset, np.cov + 0.01 I, np.linalg.inv, scipy's
mahalanobis, bilinear upsampling, gaussian_filter sigma 4, the max) with the weights and the
channel subset of tests/golden/padim/ours.py, fitted on golden.patchcore.ours.training_images();
make_golden.py there made them and says how. The score is the max of the smoothed map before
the reference's min-max normalisation over the test set. The test never imports the reference.

`test_every_stage_from_the_references_input` shows that with the reference's input everything
agrees: Gaussians, distances, maps and score. Two departures, each isolated by a test marked to
fail:
- input: the reference resizes the shorter side to 256 with Lanczos (`Resize(256,
  Image.ANTIALIAS)`) and crops the centre 224 x 224; the paper preset declares the whole image
  squashed to 256 x 256 with PIL's bilinear filter (the 3CAD evaluation covers every pixel), so
  maps differ in size and content;
- float32 precision at features of an ImageNet network's scale (unit BatchNorm affines,
  golden/padim/ours.py): the covariances + 0.01 I of a few training images are ill-conditioned;
  the reference computes them in float64 (np.cov) and inverts their float32 copy by LU
  (np.linalg.inv), ours accumulates them in float32 and inverts them by Cholesky in float64;
  each loses digits the other keeps. The golden values proper use features scaled by 0.1, where both are exact enough.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.padim import PaDiM
from golden.common import TOLERANCE, load_golden, predict, raw_rgb, relative
from golden.padim import ours
from golden.patchcore.ours import as_batch, training_images


@pytest.fixture(scope="module")
def golden():
    return load_golden("padim")


@pytest.fixture(scope="module")
def method():
    torch.set_num_threads(1)
    return ours.build()


def references_input(rgb: Image.Image, golden) -> np.ndarray:
    """torchvision's Resize(256, LANCZOS) + CenterCrop(224) on a PIL image -> (3, 224, 224) uint8."""
    size, resize = int(golden["size"]), int(golden["resize"])
    width, height = (resize, int(resize * rgb.height / rgb.width)) if rgb.width <= rgb.height else \
        (int(resize * rgb.width / rgb.height), resize)  # torchvision's rounding of the longer side
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    resized = np.asarray(rgb.resize((width, height), Image.Resampling.LANCZOS))
    return np.ascontiguousarray(resized[top:top + size, left:left + size].transpose(2, 0, 1))


def run(method: PaDiM, read, golden: dict, unit: bool = False) -> dict[str, float]:
    """Fit on the training images and predict the raw PNG, both read by `read` -> relative
    differences per stage (against the values of unit affines with `unit`)."""
    method.fit([{"image": as_batch([read(im) for im in training_images()])}])  # the reference's one batch
    image = as_batch([read(raw_rgb())])
    raw, scores, smoothed = predict(method, image)
    if raw.shape[-1] != golden["size"]:
        return {"map size": float("inf")}
    with torch.inference_mode():  # the Mahalanobis distances on the grid, from the method's own tensors
        delta = method.embed(image)[0].flatten(1).T - method.mean
        distances = (delta[:, None, :] @ method.precision @ delta[:, :, None]).clamp_min(0).sqrt()
    key, s = ("unit_", int(golden["unit_stride"])) if unit else ("", int(golden["stride"]))
    got = {"distances": relative(distances.view(method.grid), golden[key + "distances"]),
           "raw map": relative(raw[0, ::s, ::s], golden[key + "raw_map"]),
           "smoothed map": relative(smoothed[0, ::s, ::s], golden[key + "map"]),
           "score": relative(scores, golden[key + "score"])}
    if not unit:
        positions = torch.from_numpy(golden["positions"])
        got.update({"mean": relative(method.mean[positions], golden["mean"]),
                    "precision": relative(method.precision[positions], golden["precision"])})
    return got


def test_the_references_input_pixels(golden):
    np.testing.assert_array_equal(references_input(raw_rgb(), golden)[:, ::4, ::4], golden["pixels"])


def test_every_stage_from_the_references_input(method, golden):
    assert torch.equal(method.channel_index, torch.from_numpy(golden["channel_index"]))
    got = run(method, lambda rgb: references_input(rgb, golden), golden)
    assert max(got.values()) <= TOLERANCE, got


@pytest.mark.xfail(strict=True, reason="at unit BatchNorm affines the covariances + 0.01 I have condition numbers "
                                       "up to about 3e5; ours (float32 accumulation, float64 Cholesky) and the "
                                       "reference (np.cov in float64, float32 LU inverse) lose different digits")
def test_maps_and_score_at_unit_affines_from_the_references_input(golden):
    got = run(ours.build(gain=1.0), lambda rgb: references_input(rgb, golden), golden, unit=True)
    assert max(got.values()) <= TOLERANCE, got


@pytest.mark.xfail(strict=True, reason="the paper preset declares the whole image squashed to 256 x 256 (PIL "
                                       "bilinear); the reference resizes the shorter side to 256 with Lanczos "
                                       "(Resize(256, Image.ANTIALIAS)) and takes the centre 224 x 224")
def test_maps_and_score_through_the_declared_preprocess(method, golden):
    pre = method.preprocess()
    assert (pre.size, pre.library, pre.colour, pre.geometry) == (256, "pil", "rgb", "square")
    got = run(method, pre.image, golden)
    assert max(got.values()) <= TOLERANCE, got
