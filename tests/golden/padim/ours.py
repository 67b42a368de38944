"""Our PaDiM for the golden test, shared by make_golden.py and tests/test_golden_padim.py.

The paper preset with a random-init backbone (`weights=none`, drawn from the global generator
after a fixed seed) whose BatchNorm layers are calibrated on the training images as for
PatchCore (golden/patchcore/ours.py says why), and a random channel subset of N_FEATURES
instead of 550: the reference's `d`, shrunk so that the test's 3136 covariances factorise in
seconds on one core (the reference's code takes any d).

Two feature scales. With unit BatchNorm affines (`gain` 1) the features have the scale of an
ImageNet WideResNet's (mean about 1, standard deviation about 1.5): the covariances of a few
training images then have eigenvalues up to thousands next to the 0.01 I regulariser
(condition numbers up to about 3e5), and float32 inversion loses digits in both codes. GAIN
scales every affine, so the features, by 0.1 and the covariances by 0.01 against the same
regulariser: condition numbers up to about 3e3, where both codes' float32 arithmetic is good
to about 1e-6 of the float64 values and a comparison at 1e-5 tests the computation, not rounding.
"""
from __future__ import annotations

import torch

from baselines.padim import PaDiM
from golden.patchcore.ours import SEED, as_batch, calibrate_batchnorms, training_images
from threecad.method import build_config

N_FEATURES = 100
GAIN = 0.1


def build(gain: float = GAIN) -> PaDiM:
    config = build_config(PaDiM, "paper", {"weights": "none", "n_features": N_FEATURES})
    torch.manual_seed(SEED)
    method = PaDiM(config)
    pre = method.preprocess()
    calibrate_batchnorms(method.extractor, as_batch([pre.image(im) for im in training_images()]), gain)
    return method
