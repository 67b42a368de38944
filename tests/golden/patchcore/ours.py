"""Our PatchCore for its golden test, and what the PatchCore and PaDiM golden tests and their
make_golden.py scripts share.

Both methods fit on training images, so both sides must see the same ones: `training_images()`
are lossless variants of the raw PNG (flips, a half turn, a cyclic shift), made the same way
here and in the scripts (which write them as PNG files for the references' loaders).

The backbone is a torchvision WideResNet-50-2 with random weights from a fixed seed. Its
BatchNorm layers get random affines and then running statistics measured on those training
images (`calibrate_batchnorms`), as a trained network's statistics match its activations:
with statistics that do not, activations grow from stage to stage, and the features' scale,
which decides how PaDiM's covariances compare with their 0.01 I regulariser, resembles no
ImageNet network's.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from baselines.patchcore import PatchCore
from golden.common import randomise_affine, raw_rgb
from threecad.method import build_config

SEED = 26
SHIFT = (13, 29)  # rows, columns of the cyclic shift


def training_images() -> list[Image.Image]:
    """The raw PNG's variants that both sides fit on, in file-name order."""
    rgb = raw_rgb()
    return [rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
            rgb.transpose(Image.Transpose.ROTATE_180),
            Image.fromarray(np.roll(np.asarray(rgb), SHIFT, axis=(0, 1)))]


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    """(3, S, S) uint8 arrays -> (N, 3, S, S) float32 in [0, 1], as the dataset gives them."""
    return torch.from_numpy(np.stack(images)).float().div_(255.0)


def calibrate_batchnorms(extractor, images: torch.Tensor, gain: float = 1.0) -> None:
    """Random BatchNorm affines times `gain`, then running statistics equal to the statistics of
    `images` (one forward pass in train mode with momentum 1); momentum and eval mode restored.
    As every layer is then normalised and ReLU and max-pooling are positively homogeneous, the
    taps are `gain` times those of gain 1 (up to BatchNorm's eps)."""
    g = torch.Generator().manual_seed(SEED)
    norms = extractor.batchnorm_layers()
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        randomise_affine(bn, g)
        with torch.no_grad():
            bn.weight.mul_(gain)
            bn.bias.mul_(gain)
        bn.momentum = 1.0
    extractor.stages.train()
    with torch.no_grad():
        extractor(images)
    extractor.stages.eval()
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


def build() -> PatchCore:
    """The paper preset with the golden weights, its memory bank to be all training patches
    (`coreset_ratio` 1, the reference's IdentitySampler)."""
    config = build_config(PatchCore, "paper", {"weights": "none", "coreset_ratio": 1.0})
    torch.manual_seed(SEED)
    method = PatchCore(config)
    pre = method.preprocess()
    calibrate_batchnorms(method.extractor, as_batch([pre.image(im) for im in training_images()]))
    return method
