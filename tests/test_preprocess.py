"""Declared input pipelines (threecad.preprocess): each equals the library call its reference makes.

The default is the pipeline every method had before pipelines were declared (PIL bilinear,
the whole image squashed to a square): it must give the same bytes, so that caches and
results stay valid. A shorter-side resize with a centre crop equals torchvision's
`Resize(int)` + `CenterCrop` on a PIL image; an OpenCV resize equals `cv2.resize` with
`INTER_LINEAR`; masks follow the image's geometry.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.preprocess import Preprocess

cv2 = pytest.importorskip("cv2")


def image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_default_pipeline_is_the_square_pil_resize_of_before():
    im = image(300, 400)
    want = np.asarray(im.resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(Preprocess(size=64).image(im), want)
    assert Preprocess(size=64).key() == ""


@pytest.mark.parametrize("height, width", [(300, 400), (400, 300), (333, 333), (290, 1000)])
def test_shorter_side_crop_equals_torchvision_resize_and_center_crop(height, width):
    from torchvision import transforms

    im = image(height, width, seed=height + width)
    want = np.asarray(transforms.Compose([transforms.Resize(292), transforms.CenterCrop(256)])(im))
    got = Preprocess(size=256, geometry="shorter_side_crop", resize_to=292).image(im)
    assert np.array_equal(got, want.transpose(2, 0, 1))


def test_cv2_pipeline_equals_cv2_resize_and_keeps_thin_marks():
    im = image(300, 400)
    want = cv2.resize(np.asarray(im), (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(Preprocess(size=64, library="cv2").image(im), want.transpose(2, 0, 1))
    # a one-pixel dark line on a bright part, downsized 4x: OpenCV samples it, PIL averages it away
    bright = np.full((256, 256, 3), 200, np.uint8)
    bright[:, 129] = 0
    line = Image.fromarray(bright)
    darkest_cv2 = Preprocess(size=64, library="cv2").image(line).min()
    darkest_pil = Preprocess(size=64).image(line).min()
    assert darkest_cv2 < darkest_pil


def test_bgr_reverses_the_channels():
    im = image(100, 120)
    rgb = Preprocess(size=32).image(im)
    assert np.array_equal(Preprocess(size=32, colour="bgr").image(im), rgb[::-1])


def test_masks_follow_the_crop():
    """A marked square lands on the same pixels in the image and in its mask."""
    pixels = np.full((300, 500, 3), 220, np.uint8)
    pixels[140:160, 300:330] = 0
    mask = np.zeros((300, 500), np.uint8)
    mask[140:160, 300:330] = 1
    pre = Preprocess(size=128, geometry="shorter_side_crop", resize_to=150)
    dark = pre.image(Image.fromarray(pixels)).max(axis=0) < 110
    marked = pre.mask(mask, 128)[0].astype(bool)
    assert marked.sum() > 0 and (dark == marked).mean() > 0.995
    assert pre.mask(mask, 64).shape == (1, 64, 64)


def test_each_pipeline_has_its_own_cache(tiny_root, tmp_path):
    plain = ThreeCAD(tiny_root, "ACC", "train", image_size=32, cache=tmp_path)
    other = ThreeCAD(tiny_root, "ACC", "train", image_size=32, cache=tmp_path,
                     preprocess=Preprocess(size=32, library="cv2", colour="bgr"))
    assert plain.cache_path != other.cache_path
    assert not torch.equal(plain[0]["image"], other[0]["image"])
    assert torch.equal(other[0]["image"], ThreeCAD(tiny_root, "ACC", "train", image_size=32, cache=False,
                                                   preprocess=other.preprocess)[0]["image"])


@pytest.mark.parametrize("kwargs, word", [
    ({"size": 64, "library": "skimage"}, "library"),
    ({"size": 64, "colour": "rgba"}, "colour"),
    ({"size": 64, "geometry": "pad"}, "geometry"),
    ({"size": 64, "geometry": "shorter_side_crop", "resize_to": 32}, "resize_to"),
    ({"size": 0}, "size"),
])
def test_bad_pipelines_are_refused_in_one_line(kwargs, word):
    with pytest.raises(ThreecadError, match=word):
        Preprocess(**kwargs)
