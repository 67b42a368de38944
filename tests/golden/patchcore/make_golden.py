"""Writes golden.npz: PatchCore's map and score for tests/golden/raw/part.png as the reference
computes them (amazon-science/patchcore-inspection fcaa92f124fb1ad74a7acf56726decd4b27cbcad)
with our paper preset's weights (ours.py). Run once by hand; the test suite only reads the result.

Set-up (outside threecad's venv; nothing is installed into it):
    git archive of the reference at that commit extracted into SRC (its package is SRC/src/patchcore)
    .venv/bin/pip install --no-deps --target PKGS faiss-cpu     (1.15.1 was used)
Run from the repository root, one thread:
    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/patchcore/make_golden.py --reference SRC --packages PKGS

What runs is the reference's path from file to score as bin/run_patchcore.py sets it up for the
README's MVTec command (`patch_core -b wideresnet50 -le layer2 -le layer3
--pretrain_embed_dimension 1024 --target_embed_dimension 1024 --anomaly_scorer_num_nn 1
--patchsize 3 ... dataset --resize 256 --imagesize 224`), with two changes: the sampler is
`identity` (one of run_patchcore.py's choices) instead of `approx_greedy_coreset -p 0.1`, so
that the memory bank is every training patch on both sides (ours: `coreset_ratio` 1); and
faiss runs one thread. `patchcore.utils.fix_seeds(0)`; a torchvision WideResNet-50-2 in train
mode (as `models.wide_resnet50_2(pretrained=True)` leaves it; pretrained weights cannot be
downloaded, ours are copied in by registration order, shapes asserted, conv1..layer3: the
reference's forward stops after layer3) handed to `PatchCore.load`, whose feature-size probe
runs an all-ones image through it in train mode; `MVTecDataset` (PIL, `Resize(256)`,
`CenterCrop(224)`, ImageNet normalisation) on an MVTec-style folder of ours.training_images()
(train) and the raw PNG (test), batch size 2 as run_patchcore.py's default; `PatchCore.fit`;
`PatchCore.predict` (faiss IndexFlatL2, max patch score; `RescaleSegmentor`: bilinear resize,
scipy gaussian_filter sigma 4). Patch: `timm` stubbed (backbones.py imports it for other
backbones). Recorded on the way: the query features `NearestNeighbourScorer.predict` gets, the
patch-score grid `RescaleSegmentor` gets, the map it hands to gaussian_filter (raw map), and how
far the probe moved the BatchNorm statistics.
The maps are 224 x 224: stored every STRIDE-th pixel (exact values), the score whole; the
query features every QUERY_STRIDE-th row, the memory bank every BANK_STRIDE-th; the input
pixels every 4th.
"""
from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from golden.common import (RAW, copy_in_order, golden_path, raw_hw, raw_sha256,  # noqa: E402
                           reference_setup)
from golden.patchcore import ours  # noqa: E402

GOLDEN = golden_path("patchcore")
SIZE, RESIZE = 224, 256  # the README command's --imagesize and --resize
STRIDE, QUERY_STRIDE, BANK_STRIDE = 2, 49, 392


def reference_modules():
    args = reference_setup(__doc__, "patchcore-inspection's files at fcaa92f1", "pip --target folder with faiss-cpu")
    sys.path.insert(0, str(args.reference.resolve() / "src"))
    sys.modules["timm"] = types.ModuleType("timm")
    import patchcore.common
    import patchcore.patchcore
    import patchcore.sampler
    import patchcore.utils
    from patchcore.datasets import mvtec
    return patchcore, mvtec


def batchnorm_state(net: torch.nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm2d's running mean and variance, copied."""
    return [t.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def main() -> None:
    patchcore, mvtec = reference_modules()
    method = ours.build()

    backbone = torchvision.models.wide_resnet50_2(weights=None)
    used = torch.nn.ModuleList([torch.nn.Sequential(backbone.conv1, backbone.bn1), backbone.layer1,
                                backbone.layer2, backbone.layer3])
    n = copy_in_order(method.extractor.stages, used)
    backbone.name, backbone.seed = "wideresnet50", None
    assert backbone.training
    before = batchnorm_state(used)

    patchcore.utils.fix_seeds(0)
    ref = patchcore.patchcore.PatchCore("cpu")
    ref.load(backbone=backbone, layers_to_extract_from=["layer2", "layer3"], device="cpu",
             input_shape=(3, SIZE, SIZE), pretrain_embed_dimension=1024, target_embed_dimension=1024,
             patchsize=3, featuresampler=patchcore.sampler.IdentitySampler(), anomaly_score_num_nn=1,
             nn_method=patchcore.common.FaissNN(False, 1))
    probe = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(batchnorm_state(used), before))

    recorded = {}
    scorer_predict = ref.anomaly_scorer.predict
    segment = ref.anomaly_segmentor.convert_to_segmentation
    gaussian = patchcore.common.ndimage.gaussian_filter

    def record_queries(query_features):
        recorded["queries"] = np.array(query_features[0], copy=True)
        return scorer_predict(query_features)

    def record_grid(patch_scores):
        recorded["grid"] = np.array(patch_scores, copy=True)
        return segment(patch_scores)

    def record_map(x, *a, **k):
        recorded["raw"] = np.array(x, copy=True)
        return gaussian(x, *a, **k)

    ref.anomaly_scorer.predict = record_queries
    ref.anomaly_segmentor.convert_to_segmentation = record_grid
    patchcore.common.ndimage.gaussian_filter = record_map
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "part" / "train" / "good").mkdir(parents=True)
        (root / "part" / "test" / "good").mkdir(parents=True)
        for i, image in enumerate(ours.training_images()):
            image.save(root / "part" / "train" / "good" / f"{i:03d}.png")
        (root / "part" / "test" / "good" / RAW.name).write_bytes(RAW.read_bytes())
        loaders = {}
        for split in (mvtec.DatasetSplit.TRAIN, mvtec.DatasetSplit.TEST):
            data = mvtec.MVTecDataset(str(root), "part", resize=RESIZE, imagesize=SIZE, split=split, seed=0)
            loaders[split] = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False, num_workers=0)
        ref.fit(loaders[mvtec.DatasetSplit.TRAIN])
        scores, masks, _, _ = ref.predict(loaders[mvtec.DatasetSplit.TEST])
        image = loaders[mvtec.DatasetSplit.TEST].dataset[0]["image"][None]
    patchcore.common.ndimage.gaussian_filter = gaussian

    bank = ref.anomaly_scorer.detection_features
    mean = torch.tensor(mvtec.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mvtec.IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (image * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)[0].numpy()
    s = STRIDE
    np.savez(GOLDEN, raw_sha256=raw_sha256(), raw_hw=raw_hw(), size=SIZE, resize=RESIZE, stride=s,
             query_stride=QUERY_STRIDE, bank_stride=BANK_STRIDE, score=np.float32(scores[0]),
             map=np.asarray(masks[0], np.float32)[::s, ::s], raw_map=recorded["raw"].astype(np.float32)[::s, ::s],
             patch_scores=recorded["grid"][0].astype(np.float32),
             queries=recorded["queries"][::QUERY_STRIDE].astype(np.float32),
             bank=np.asarray(bank, np.float32)[::BANK_STRIDE], bank_shape=np.asarray(bank.shape),
             pixels=pixels[:, ::4, ::4], tensors_copied=n, probe_relative_change=np.float64(probe))
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; score {float(scores[0]):.9g}; bank {bank.shape}; "
          f"map range {masks[0].min():.6g}..{masks[0].max():.6g}; {n} tensors copied; the probe moved "
          f"BatchNorm statistics by up to {probe:.3g} relative")


if __name__ == "__main__":
    main()
