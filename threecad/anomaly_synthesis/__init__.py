"""Synthetic anomalies in the DRAEM style, shared by CFRG, DRAEM, DeSTSeg and RealNet.

A Perlin-noise mask (scale 2^t per axis, rotated, thresholded) cuts a texture into the
image: `x_a = x (1 - M) + (1 - b) tex M + b x M` with b ~ U[0, beta_max), as the 3CAD
release does. Textures come from DTD (the paper's source) when `dtd_root` holds
torchvision's DTD layout, otherwise from procedural families (fractal noise, stripes,
blobs, checkers, colour shifts of the image itself), so that training works with no
download.

Everything is batched in torch on the input's device, except the "draem" draw's texture
augmentations (uint8 image operations, on the CPU as the reference's). Random numbers are
drawn from the synthesizer's own CPU `torch.Generator` (small tensors: lattice gradients and
per-sample parameters) and moved to the device, so the same seed gives the same sequence of
batches on CPU and CUDA (up to floating point). Call it in the main process on whole batches:
a copy made by a DataLoader worker would repeat the same sequence in every worker.

Ways to draw (`draw=`):
- "augmented" (default): every texture goes through three random augmentations (DRAEM's
  manner, in torch), DTD textures are picked at random, the Perlin field is evaluated at
  rotated coordinates (no empty corners), and empty masks are redrawn up to `MAX_REDRAWS`
  times, so an empty mask remains only with probability far below 1e-6 per sample.
- "release": as the 3CAD release's data loader draws: the texture of training image `idx`
  is DTD image `idx % len(DTD)` (DTD's `images/*/*.jpg` in sorted order; `idx` is the
  image's position among the sorted training paths, passed as `keys`), no augmentation,
  the Perlin field is rendered unrotated and then rotated as an image by up to 90 degrees
  with zero-filled corners (bilinear, like imgaug's Affine), and an empty mask is kept: that
  sample stays a good image with an all-zero mask.
- "draem": as DRAEM's training loader (VitjanZ/DRAEM `data_loader.py`, also RealNet's DTD
  anomalies): the Perlin field of `perlin.rand_perlin_2d_np` (lattice aligned with the image,
  no random phase), rotated as an image (zero corners), empty masks kept (`draem_masks`); a
  random DTD image read and resized with OpenCV, then three of DRAEM's ten imgaug augmentations
  in a random order with the reference's ranges (`DRAEM_AUGMENTATIONS`, `draem_augmentation`).
- "destseg": as DeSTSeg's loader (apple/ml-destseg `data_utils.perlin_noise`): the "draem"
  draw's masks, a random DTD image read with PIL (bilinear), no augmentation.

Every sample is meant to be augmented (as the 3CAD release; DRAEM's and RealNet's 50% clean
samples are drawn by those methods around the synthesizer).

DTD is found in torchvision's layout (`<root>/dtd/dtd/images/<class>/*.jpg`) or as a plain
`<root>/images/<class>/*.jpg` (the release's `dtd_path`). Textures come in the channel
order of the images (`colour`: "rgb", or "bgr" for a method that reads as OpenCV does).

A method's config takes the settings from `SynthesisConfig` (fields, checks, the texture
folder and the synthesizer they describe), so that they are written once.

Modules, one concern each: `perlin` (Perlin noise and the masks cut from it), `textures` (DTD
and procedural textures), `draem_ops` (DRAEM's imgaug texture operations), `synthesizer`
(`AnomalySynthesizer` and its draws) and `config` (`SynthesisConfig`).
"""
from threecad.anomaly_synthesis.config import SynthesisConfig
from threecad.anomaly_synthesis.draem_ops import BRIGHTNESS_SPACES, DRAEM_AUGMENTATIONS, draem_augmentation
from threecad.anomaly_synthesis.perlin import draem_masks, lattice_perlin, perlin_noise, rotate_zero_fill
from threecad.anomaly_synthesis.synthesizer import (COLOURS, DRAWS, MAX_REDRAWS, REFERENCE_MASKS,
                                                    TEXTURE_AUGMENTATIONS, AnomalySynthesizer)
from threecad.anomaly_synthesis.textures import (DTD_SUFFIXES, PROCEDURAL_FAMILIES, TEXTURES, find_dtd_images,
                                                 texture_root)

__all__ = [
    "SynthesisConfig", "BRIGHTNESS_SPACES", "DRAEM_AUGMENTATIONS", "draem_augmentation", "draem_masks",
    "lattice_perlin", "perlin_noise", "rotate_zero_fill", "COLOURS", "DRAWS", "MAX_REDRAWS", "REFERENCE_MASKS",
    "TEXTURE_AUGMENTATIONS", "AnomalySynthesizer", "DTD_SUFFIXES", "PROCEDURAL_FAMILIES", "TEXTURES",
    "find_dtd_images", "texture_root",
]
