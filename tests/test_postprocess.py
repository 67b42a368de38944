"""Declared post-processing: the image-score rules and their validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, uniform_filter

from threecad.errors import ThreecadError
from threecad.postprocess import PostProcess


def test_max_rule_scores_the_smoothed_map_with_scipy_reflect_borders():
    maps = torch.rand(3, 20, 24, dtype=torch.float64)
    scores, smoothed = PostProcess(sigma=2.0).apply(maps)
    for i in range(3):
        ref = gaussian_filter(maps[i].numpy(), sigma=2.0)  # scipy's default mode is reflect
        assert np.abs(smoothed[i].numpy() - ref).max() < 1e-12
        assert scores[i].item() == pytest.approx(ref.max(), abs=1e-12)


def test_given_scores_pass_through_and_zero_sigma_keeps_the_map():
    maps, own = torch.rand(2, 8, 8), torch.tensor([5.0, 7.0])
    scores, smoothed = PostProcess().apply(maps, own)
    assert scores is own and smoothed is maps


def test_mean_pool_max_counts_zero_padding_like_draem():
    maps = torch.rand(2, 30, 30, dtype=torch.float64)
    scores = PostProcess(score="mean_pool_max", pool=21, pool_pad=10).image_scores(maps)
    for i in range(2):  # avg_pool2d(k=21, stride 1, pad 10) == mean over the window with zeros outside
        ref = uniform_filter(maps[i].numpy(), size=21, mode="constant", cval=0.0)
        assert scores[i].item() == pytest.approx(ref.max(), abs=1e-12)


def test_mean_pool_max_without_padding_like_uniad():
    maps = torch.rand(1, 40, 40, dtype=torch.float64)
    score = PostProcess(score="mean_pool_max", pool=16).image_scores(maps)
    windows = maps[0].unfold(0, 16, 1).unfold(1, 16, 1).mean(dim=(-1, -2))
    assert score.item() == pytest.approx(windows.max().item(), abs=1e-12)


def test_top_k_mean_is_the_mean_of_the_largest_pixels():
    maps = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 4, 4)
    scores = PostProcess(score="top_k_mean", top_k=3).image_scores(maps)
    assert scores.tolist() == [14.0, 30.0]


def test_box_mean_counts_zero_padding_before_the_score_like_crad():
    """CRAD's evaluation: every map averaged over box x box windows (zeros counted at the border),
    then the image score taken on that averaged map."""
    maps = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(2, 7, 7)
    post = PostProcess(box=3, score="max")
    smoothed = post.smooth(maps)
    corner = maps[0, :2, :2].sum() / 9  # four pixels inside the window, five zeros
    assert smoothed[0, 0, 0] == pytest.approx(float(corner))
    assert smoothed[0, 3, 3] == pytest.approx(float(maps[0, 2:5, 2:5].mean()))
    scores, _ = post.apply(maps)
    assert torch.equal(scores, smoothed.flatten(1).amax(dim=1))
    assert post.as_dict()["box"] == 3 and "box" not in PostProcess().as_dict()


@pytest.mark.parametrize("kwargs, word", [
    ({"box": 4}, "box"), ({"box": -1}, "box"),
    ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"), ({"mode": "wrap"}, "border"),
    ({"score": "median"}, "image-score"), ({"score": "mean_pool_max", "pool": 0}, "pool"),
    ({"score": "top_k_mean"}, "top_k"), ({"score": "mean_pool_max", "pool": 5, "pool_pad": 3}, "pool")])
def test_bad_declarations_are_refused(kwargs, word):
    with pytest.raises(ThreecadError, match=word):
        PostProcess(**kwargs)
