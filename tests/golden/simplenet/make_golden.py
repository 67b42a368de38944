"""Writes golden.npz: the reference SimpleNet's map and score for tests/golden/raw/part.png, computed
by the reference's own code (DonaldRR/SimpleNet 351a2b8d4e8cfc944dbccbf9bc6ceda930c6f26b) with
our paper preset's weights (ours.py). Run once by hand; the test suite only reads the result.

Set-up (outside threecad's venv; nothing is installed into it):
    git archive of the reference at that commit extracted into SRC
    (the reference imports only torch, torchvision, scipy, sklearn, scikit-image, pandas,
    matplotlib, cv2, tqdm and psutil, which the venv has)
Run from the repository root, one thread:
    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/simplenet/make_golden.py --reference SRC

What runs is the reference's path from file to score, as its main.py sets it up for run.sh:
`datasets.mvtec.MVTecDataset` (PIL, `Resize(329)`, `CenterCrop(288)`, ImageNet normalisation)
on a one-image MVTec-style folder; a torchvision WideResNet-50 in train mode (as its constructor
leaves it) handed to `SimpleNet.load` with run.sh's arguments, whose feature-size probe runs the
all-ones image through it; `SimpleNet._predict` (image score = max patch score; map = patch
scores resized bilinearly, then scipy's Gaussian sigma 4). Our weights go in by registration
order with shapes asserted: the backbone as ours holds it before its warm-up (the reference
warms it up itself), the adaptor into `pre_projection`, the discriminator into `discriminator`.
Patch: `torch.utils.tensorboard` stubbed (imported for logging only). The raw map is the input
that `common.RescaleSegmentor` hands to `scipy.ndimage.gaussian_filter`, recorded on the way.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from golden.common import copy_in_order, golden_path, raw_in_folder, reference_setup  # noqa: E402
from golden.simplenet import ours  # noqa: E402

GOLDEN = golden_path("simplenet")
SIZE, RESIZE = 288, 329  # run.sh's --imagesize and --resize


def reference_modules():
    reference_setup(__doc__, "DonaldRR/SimpleNet's files at 351a2b8d")
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = lambda *a, **k: None
    sys.modules["torch.utils.tensorboard"] = tb
    import common
    import simplenet
    from datasets import mvtec
    return common, simplenet, mvtec


def main() -> None:
    common, ref_simplenet, mvtec = reference_modules()
    pristine = ours.build(ones_warmup=False).extractor
    method = ours.build()

    backbone = torchvision.models.wide_resnet50_2(weights=None)  # the reference's pretrained=True, offline
    used = torch.nn.ModuleList([torch.nn.Sequential(backbone.conv1, backbone.bn1), backbone.layer1, backbone.layer2,
                                backbone.layer3])  # our stages, in their order (layer4 and fc are not used)
    n = copy_in_order(pristine.stages, used)
    backbone.name, backbone.seed = "wideresnet50", None
    assert backbone.training
    ref = ref_simplenet.SimpleNet("cpu")
    ref.load(backbone=backbone, layers_to_extract_from=["layer2", "layer3"], device="cpu",
             input_shape=(3, SIZE, SIZE), pretrain_embed_dimension=1536, target_embed_dimension=1536,
             patchsize=3, embedding_size=256, meta_epochs=40, aed_meta_epochs=1, gan_epochs=4, noise_std=0.015,
             dsc_layers=2, dsc_hidden=1024, dsc_margin=0.5, dsc_lr=0.0002, auto_noise=0, train_backbone=False,
             cos_lr=False, pre_proj=1, proj_layer_type=0, mix_noise=1)
    n += copy_in_order(method.net["adaptor"], ref.pre_projection)
    n += copy_in_order(method.net["discriminator"], ref.discriminator)
    # the two warm-ups (the reference's probe in load, ours at construction) leave equal statistics
    warm = max((a.double() - b.double()).abs().max().item() for a, b in zip(
        method.extractor.stages.state_dict().values(), used.state_dict().values()))

    raw_maps = []
    gaussian = common.ndimage.gaussian_filter

    def record(x, *a, **k):
        raw_maps.append(np.array(x, copy=True))
        return gaussian(x, *a, **k)

    common.ndimage.gaussian_filter = record
    try:
        with raw_in_folder("part", "test", "good") as folder:
            data = mvtec.MVTecDataset(str(folder), "part", resize=RESIZE, imagesize=SIZE,
                                      split=mvtec.DatasetSplit.TEST)
            image = data[0]["image"][None]
            scores, masks, _ = ref._predict(image)
    finally:
        common.ndimage.gaussian_filter = gaussian

    mean = torch.tensor(mvtec.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mvtec.IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (image * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)[0].numpy()
    s = ours.STRIDE
    out = {"score": np.float32(scores[0]), "map": np.asarray(masks[0], np.float32)[::s, ::s],
           "raw_map": raw_maps[0].astype(np.float32)[::s, ::s], "pixels": pixels[:, ::4, ::4],
           "size": np.int64(SIZE), "resize": np.int64(RESIZE), "stride": np.int64(s),
           "tensors_copied": np.int64(n), "warmup_max_abs_diff": np.float64(warm)}
    np.savez(GOLDEN, **out)
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; score {float(scores[0]):.6g}; "
          f"map range {masks[0].min():.4g}..{masks[0].max():.4g}; {n} tensors copied; "
          f"warm-up statistics max |ours - reference| {warm:.3g}")


if __name__ == "__main__":
    main()
