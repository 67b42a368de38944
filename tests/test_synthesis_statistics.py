"""Anomaly synthesis against the references' own code: DRAEM, RealNet and DeSTSeg (issue 26, section 3).

The fixtures in tests/data/synthesis/ come from the reference code itself: its make_reference.py
ran the data loaders of VitjanZ/DRAEM, cnulab/RealNet and apple/ml-destseg (with imgaug 0.4.0) and
recorded, at 256 px over 500 draws each, the size of every mask and the change that DRAEM's texture
augmentation makes to a probe texture; and the outputs of DRAEM's Perlin noise for given gradients
and of each of its ten augmentations for given parameters.

A statistical comparison draws 500 samples here with a fixed seed and asks the two samples to be
compatible: the share of empty masks by Fisher's exact test (samples left clean by DRAEM's and
RealNet's coin count as empty), the sizes of the non-empty masks (or the texture changes) by a
two-sample Kolmogorov-Smirnov test, each at p > 0.01.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from baselines.destseg import DeSTSeg
from baselines.draem import DRAEM
from baselines.realnet import RealNet
from threecad.anomaly_synthesis import DRAEM_AUGMENTATIONS, draem_augmentation, lattice_perlin
from threecad.method import build_config

DATA = Path(__file__).resolve().parent / "data" / "synthesis"
SIZE, DRAWS, BATCH = 256, 500, 50
P_MIN = 0.01


@cache
def reference() -> dict:
    return json.loads((DATA / "reference.json").read_text())


@cache
def golden() -> dict:
    with np.load(DATA / "golden.npz") as g:
        return {k: g[k] for k in g.files}


def _mask_only(synth):
    """The synthesizer with textures left out (masks do not depend on them), so that 500 draws stay quick."""
    synth._textures = lambda images, keys=None: images
    synth._draem_augment = lambda tex: tex
    return synth


def _grey() -> torch.Tensor:
    return torch.full((BATCH, 3, SIZE, SIZE), 0.5)


def _sizes(masks: torch.Tensor) -> list[int]:
    return masks.flatten(1).sum(1).long().tolist()


def assert_same_masks(ours: list[int], name: str) -> None:
    ours_a, ref = np.asarray(ours), np.asarray(reference()[name])
    assert len(ours_a) == len(ref) == DRAWS
    table = [[int((ours_a == 0).sum()), int((ours_a > 0).sum())], [int((ref == 0).sum()), int((ref > 0).sum())]]
    p_empty = stats.fisher_exact(table).pvalue
    p_size = stats.ks_2samp(ours_a[ours_a > 0], ref[ref > 0]).pvalue
    summary = (f"{name}: empty {np.mean(ours_a == 0):.3f} vs reference {np.mean(ref == 0):.3f} "
               f"(Fisher p {p_empty:.3g}); coverage of non-empty masks {ours_a[ours_a > 0].mean() / SIZE ** 2:.4f} "
               f"vs {ref[ref > 0].mean() / SIZE ** 2:.4f} (KS p {p_size:.3g})")
    assert p_empty > P_MIN and p_size > P_MIN, summary


# --------------------------------------------------------------------------- masks, 500 draws at 256 px
def test_draem_masks_as_the_reference():
    """The Perlin mask of every draw (DRAEM's augment_image before its coin), empty ones included."""
    cfg = build_config(DRAEM, "paper")
    synth = _mask_only(cfg.synthesizer(cfg.seed, None))
    assert_same_masks([s for _ in range(DRAWS // BATCH) for s in _sizes(synth(_grey())[1])], "draem_mask")


def test_draem_training_samples_as_the_reference():
    """Half the samples clean, the others with a mask that may be empty: anomalous in about 47%."""
    model = DRAEM(build_config(DRAEM, "paper", {"recon_width": 1, "disc_width": 1}))
    cfg = model.config
    synth = _mask_only(cfg.synthesizer(cfg.seed, None))
    coins = torch.Generator().manual_seed(cfg.seed + 2)
    sizes = [s for _ in range(DRAWS // BATCH) for s in _sizes(model.training_pair(_grey(), synth, coins)[2])]
    assert_same_masks(sizes, "draem_sample")


def test_realnet_training_samples_as_the_reference():
    """RealNet's DTD anomalies: half the samples normal, the others DRAEM's mask (a full foreground on 3CAD)."""
    cfg = build_config(RealNet, "paper")
    model = RealNet.__new__(RealNet)  # training_pair reads the config only; the paper network is not needed
    model.config = cfg
    synth = _mask_only(cfg.synthesizer(cfg.seed, None))
    coins = torch.Generator().manual_seed(cfg.seed + 2)
    sizes = [s for _ in range(DRAWS // BATCH) for s in _sizes(model.training_pair(_grey(), synth, coins)[1])]
    assert_same_masks(sizes, "realnet_sample")


def test_destseg_masks_as_the_reference():
    """DeSTSeg's perlin_noise with aug_prob 1.0: every sample drawn, empty masks kept."""
    cfg = build_config(DeSTSeg, "paper")
    synth = _mask_only(cfg.synthesizer(cfg.seed, None))
    assert_same_masks([s for _ in range(DRAWS // BATCH) for s in _sizes(synth(_grey())[1])], "destseg_mask")


# --------------------------------------------------------------------------- DRAEM's texture augmentation
def test_draem_texture_augmentation_changes_the_probe_as_the_reference():
    """Mean absolute change of the probe texture (OpenCV-read, BGR as DRAEM reads DTD) per draw of
    three of the ten augmentations."""
    import cv2

    probe = cv2.resize(cv2.imread(str(DATA / "probe.png")), (SIZE, SIZE))
    tex = torch.from_numpy(probe).permute(2, 0, 1).float().div(255).expand(BATCH, -1, -1, -1)
    cfg = build_config(DRAEM, "paper")
    synth = cfg.synthesizer(cfg.seed, None)
    ours = np.concatenate([(synth._draem_augment(tex) - tex).abs().flatten(1).mean(1).numpy()
                           for _ in range(DRAWS // BATCH)])
    ref = np.asarray(reference()["draem_texture_change"])
    p = stats.ks_2samp(ours, ref).pvalue
    assert p > P_MIN, f"mean change {ours.mean():.4f} vs reference {ref.mean():.4f} (KS p {p:.3g})"


# --------------------------------------------------------------------------- golden outputs
def test_lattice_perlin_is_draems_rand_perlin_2d_np():
    g = golden()
    for i, (size, rows, cols) in enumerate(g["perlin_cases"].tolist()):
        angles = torch.zeros(1, 33, 33)
        angles[0, :rows + 1, :cols + 1] = torch.from_numpy(g[f"perlin_angles_{i}"]).float()
        ours = lattice_perlin(angles, torch.tensor([rows]), torch.tensor([cols]), size)[0].double().numpy()
        np.testing.assert_allclose(ours, g[f"perlin_noise_{i}"], rtol=0, atol=1e-6)


def _cases() -> list[tuple[int, dict]]:
    return list(enumerate(json.loads(str(golden()["cases"]))))


@pytest.mark.parametrize("index,case", _cases(), ids=[f"{c['name']}-{i}" for i, c in _cases()])
def test_augmentation_equals_imgaug(index, case):
    """Equal to imgaug's output; a rotation may move a few pixels by one level: imgaug under NumPy 2
    (which made the fixture) rounds its matrix to float32, under the reference's NumPy 1 it does not,
    and ours follows NumPy 1."""
    g = golden()
    ours = draem_augmentation(case["name"], g[case["input"]].copy(), **case["params"]).astype(int)
    want = g["outputs"][index].astype(int)
    assert ours.shape == want.shape
    if case["name"] == "rotate":
        diff = np.abs(ours - want)
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
    else:
        assert np.array_equal(ours, want)


def test_every_augmentation_has_a_golden_case():
    assert {c["name"] for _, c in _cases()} == set(DRAEM_AUGMENTATIONS)
