"""Exact metrics against scikit-learn and a transcription of the MVTec AD AU-PRO definition."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from metrics_reference import mvtec_au_pro, sk_f1max
from sklearn.metrics import average_precision_score, roc_auc_score

from threecad.errors import ThreecadError
from threecad.metrics import (Evaluator, au_pro, f1_max, image_ap, image_auroc, image_f1max, pixel_ap,
                              pixel_auroc, pixel_f1max)

TOL = 1e-9


@st.composite
def maps_and_masks(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(2, 7))
    w = draw(st.integers(2, 7))
    levels = draw(st.sampled_from([2, 4, 256, 0]))       # 0: continuous scores
    masks = draw(arrays(bool, (n, h, w)))
    if levels:
        maps = draw(arrays(np.uint8, (n, h, w), elements=st.integers(0, levels - 1))).astype(np.float32)
    else:
        maps = draw(arrays(np.float64, (n, h, w), elements=st.floats(-5, 5, allow_nan=False)))
    assume(masks.any() and (~masks).any())
    return maps, masks


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps_and_masks())
def test_exact_pixel_metrics_match_sklearn_and_mvtec(data):
    maps, masks = data
    y, s = masks.ravel(), maps.ravel()
    assert abs(pixel_auroc(maps, masks) - roc_auc_score(y, s)) < TOL
    assert abs(pixel_ap(maps, masks) - average_precision_score(y, s)) < TOL
    assert abs(pixel_f1max(maps, masks) - sk_f1max(y, s)) < TOL
    for limit in (0.3, 1.0, 0.05):
        assert abs(au_pro(maps, masks, limit=limit) - mvtec_au_pro(maps, masks, limit)) < TOL


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(2, 30), elements=st.floats(-3, 3, allow_nan=False) | st.sampled_from([0.0, 1.0])),
       st.data())
def test_image_metrics_match_sklearn(scores, data):
    labels = data.draw(arrays(bool, len(scores)))
    assume(labels.any() and (~labels).any())
    assert abs(image_auroc(scores, labels) - roc_auc_score(labels, scores)) < TOL
    assert abs(image_ap(scores, labels) - average_precision_score(labels, scores)) < TOL
    assert abs(image_f1max(scores, labels) - sk_f1max(labels, scores)) < TOL
    assert f1_max(scores, labels) == image_f1max(scores, labels)


def test_tie_heavy_8bit_maps_with_defect_free_images():
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 24, 24), bool)
    masks[1, 3:9, 4:7] = True
    masks[3, 10, 10] = True                      # single-pixel region
    masks[4, 0:2, 0:2] = True
    masks[4, 2, 2] = True                        # touches the square at a corner: same region
    maps = rng.integers(0, 256, masks.shape).astype(np.uint8)
    maps[masks] = np.minimum(maps[masks].astype(int) + 60, 255)
    y, s = masks.ravel(), maps.ravel().astype(float)
    assert abs(pixel_auroc(maps, masks) - roc_auc_score(y, s)) < TOL
    assert abs(pixel_ap(maps, masks) - average_precision_score(y, s)) < TOL
    assert abs(au_pro(maps, masks) - mvtec_au_pro(maps, masks)) < TOL
    ev = Evaluator()
    ev.update(maps, masks)
    out = ev.compute()
    assert out["n_regions"] == 3                 # corner contact joins (8-connectivity)
    assert abs(out["au_pro"] - mvtec_au_pro(maps, masks)) < TOL


def test_corner_contact_is_one_region_not_two():
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = 1.0                          # one pixel of the region found, the other not
    # one 8-connected region half covered vs. two 4-connected regions, one covered: same
    # PRO here, so distinguish by the region count and by region recall
    ev = Evaluator(recall_fpr=0.0)
    ev.update(maps, masks)
    out = ev.compute()
    assert out["n_regions"] == 1
    assert out["region_recall_size/>=1%"] == 1.0     # 1 of 2 pixels = half covered


def test_batches_and_torch_inputs_give_the_same_answer():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    masks = rng.random((8, 16, 16)) < 0.08
    masks[[0, 4, 5]] = False
    maps = (rng.random((8, 16, 16)) + masks).astype(np.float32)
    whole = Evaluator()
    whole.update(maps, masks)
    parts = Evaluator()
    parts.update(torch.from_numpy(maps[:3]), torch.from_numpy(masks[:3]))
    parts.update(torch.from_numpy(maps[3:]).unsqueeze(1), torch.from_numpy(masks[3:].astype(np.uint8)))
    a, b = whole.compute(), parts.compute()
    for key in ("i_auroc", "i_ap", "p_auroc", "p_ap", "p_f1max", "au_pro"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert a["p_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert a["i_auroc"] == pytest.approx(roc_auc_score(masks.any((1, 2)), maps.max((1, 2))), abs=TOL)


def test_constant_maps_give_the_tie_values():
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    maps = np.full((3, 8, 8), 0.7)
    for mode in ("exact", "streaming"):
        ev = Evaluator(mode=mode)
        ev.update(maps, masks)
        out = ev.compute()
        assert out["p_auroc"] == pytest.approx(0.5)
        assert out["p_ap"] == pytest.approx(masks.mean())
        assert out["au_pro"] == pytest.approx(0.15)     # the diagonal up to 0.3, / 0.3
        assert out["i_auroc"] == pytest.approx(0.5)


def test_only_good_images_give_documented_none_not_nan():
    ev = Evaluator()
    ev.update(np.random.default_rng(0).random((4, 8, 8)), np.zeros((4, 8, 8), bool),
              defect_types=["good"] * 4)
    out = ev.compute()
    for key in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro"):
        assert out[key] is None
        assert key in out["notes"]
    assert "no defective image" in out["notes"]
    assert out["n_images"] == 4 and out["n_defective_images"] == 0


def test_undefined_functions_raise_clear_errors():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ThreecadError, match="no defective pixel"):
        pixel_auroc(maps, np.zeros((2, 4, 4), bool))
    with pytest.raises(ThreecadError, match="no normal pixel"):
        au_pro(maps, np.ones((2, 4, 4), bool))
    with pytest.raises(ThreecadError, match="no defective image"):
        image_auroc([0.1, 0.2], [0, 0])


@pytest.mark.parametrize("bad, match", [
    (np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (-np.inf, "NaN or inf")])
def test_non_finite_maps_are_refused(bad, match):
    maps = np.zeros((3, 4, 4))
    maps[2, 1, 1] = bad
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = True
    with pytest.raises(ThreecadError, match=match) as info:
        Evaluator().update(maps, masks)
    assert "index 2" in str(info.value)
    with pytest.raises(ThreecadError, match=match):
        pixel_auroc(maps, masks)


def test_bad_masks_shapes_and_labels_are_refused():
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ThreecadError, match="boolean or 0/1"):
        Evaluator().update(maps, np.full((2, 4, 4), 255, np.uint8))
    with pytest.raises(ThreecadError, match="boolean or 0/1"):
        Evaluator().update(maps, np.full((2, 4, 4), 0.5))
    with pytest.raises(ThreecadError, match="differs from maps shape"):
        Evaluator().update(maps, np.zeros((2, 4, 5), bool))
    with pytest.raises(ThreecadError, match=r"\(N, H, W\)"):
        Evaluator().update(np.zeros((4, 4)), np.zeros((4, 4), bool))
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 0, 0] = True
    with pytest.raises(ThreecadError, match="labelled good"):
        Evaluator().update(maps, masks, labels=[0, 0])
    with pytest.raises(ThreecadError, match="type 'good'"):
        Evaluator().update(maps, masks, defect_types=["good", "good"])
    with pytest.raises(ThreecadError, match="one per image"):
        Evaluator().update(maps, masks, scores=[0.1, 0.2, 0.3])
    with pytest.raises(ThreecadError, match="unknown protocol"):
        Evaluator(protocol="mvtec")
    with pytest.raises(ThreecadError, match="unknown mode"):
        Evaluator(mode="fast")
    with pytest.raises(ThreecadError, match="size_edges"):
        Evaluator(size_edges=(0.01, 0.001))
    with pytest.raises(ThreecadError, match="FPR limit"):
        au_pro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], limit=0.0)
