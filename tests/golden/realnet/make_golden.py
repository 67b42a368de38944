"""Writes golden.npz: the reference RealNet's map and score for tests/golden/raw/part.png, computed
by the reference's own code (cnulab/RealNet ab75012c1d58da9789f6a6137fbeb444e203b314) with our
paper preset's weights at 128 px (ours.py). Run once by hand; the test suite only reads the result.

Set-up (outside threecad's venv; nothing is installed into it):
    git archive of the reference at that commit extracted into SRC
    (its assets/anomaly_synthesis.jpg may be missing from a mirror: extract file by file)
    .venv/bin/pip install --no-deps --target PKGS timm==0.5.4 easydict imgaug==0.4.0 shapely imageio six
    (the reference pins timm 0.5.4; its dataset module imports imgaug; the rest the venv has)
Run from the repository root, one thread (several GB of memory: both networks at once):
    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/realnet/make_golden.py --reference SRC --packages PKGS

What runs is the reference's test path, as its evaluation_realnet.py sets it up: the config
experiments/MVTec-AD/realnet.yaml through train_realnet's `update_config`, with input_size
128 x 128; `ModelHelper(config.net)` (timm 0.5.4 `wide_resnet50_2` features_only layer1..4,
AFS 256/512/512/256, the four reconstruction UNets, RRS 256 + 256); the test loader of
`datasets.data_builder.build` on a one-image meta file (OpenCV read, RGB, PIL bilinear resize,
ImageNet normalisation); `model(input, train=False)["anomaly_score"]` as the map; image
score = `EvalImageMax.encode_pred` with the config's avgpool_size 16 x 16. Our tensors go in by
registration order with shapes asserted (backbone, each UNet, RRS) and AFS's indices by name.
Patches: timm's `create_model` gets pretrained=False (there is nothing to download; every
weight is then overwritten); the loader runs with 0 workers (one image); `Tensor.cuda` is the
identity from `encode_pred` on (it moves the map to the GPU to pool it); the names NumPy 2
removed and imgaug 0.4.0 reads at import are put back (names only).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import (RAW, copy_in_order, cuda_as_identity, golden_path, meta_file, numpy_aliases,  # noqa: E402
                           raw_in_folder, reference_setup, timm_without_downloads)
from golden.realnet import ours  # noqa: E402

GOLDEN = golden_path("realnet")
BLOCKS = ("block1", "block2", "block3", "block4")
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def reference_modules():
    args = reference_setup(__doc__, "cnulab/RealNet's files at ab75012c",
                           "pip --target folder with timm 0.5.4, easydict, imgaug, shapely, imageio, six")
    numpy_aliases()
    timm = timm_without_downloads()
    assert timm.__version__ == "0.5.4", timm.__version__
    import yaml
    from easydict import EasyDict
    from datasets import data_builder
    from models.model_helper import ModelHelper
    from train_realnet import update_config
    from utils.eval_helper import EvalImageMax

    config = EasyDict(yaml.load(open(args.reference / "experiments/MVTec-AD/realnet.yaml"), Loader=yaml.FullLoader))
    config = update_config(config, EasyDict(class_name="part"))
    return config, data_builder, ModelHelper, EvalImageMax


def main() -> None:
    config, data_builder, ModelHelper, EvalImageMax = reference_modules()
    method = ours.build()

    ref = ModelHelper(config.net)
    ref.cpu()
    n = copy_in_order(method.backbone, ref.backbone.feature_extractor)
    for i, (block, layer) in enumerate(zip(BLOCKS, LAYERS)):
        ref.afs.indexes[f"{block}_{layer}"].data.copy_(method.net.afs.indexes[i].data)
        n += 1 + copy_in_order(method.net.recon[f"{block}_recon"], getattr(ref.recon, f"{block}_recon"))
    n += copy_in_order(method.net.rrs, ref.rrs)
    ref.eval()
    del method

    with raw_in_folder() as folder:
        dataset = copy.deepcopy(config.dataset)
        dataset.image_reader.kwargs.image_dir = str(folder)
        dataset.test.meta_file = str(meta_file(folder / "test.json", RAW.name, "part"))
        dataset.input_size = [ours.IMAGE_SIZE, ours.IMAGE_SIZE]
        dataset.workers = 0
        batch = next(iter(data_builder.build(dataset, training=False, distributed=False)))
    with torch.no_grad():
        outputs = ref(batch, train=False)
    preds = outputs["anomaly_score"].numpy()[:, 0]  # N x H x W, as evaluation_realnet's validate
    image_metric = next(m for m in config.evaluator.metrics.auc if m.name == "image")
    cuda_as_identity()  # encode_pred pools on the GPU; here on the CPU
    score = EvalImageMax.encode_pred(preds, **image_metric.kwargs)

    mean = torch.tensor(config.dataset.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.dataset.pixel_std).view(1, 3, 1, 1)
    pixels = (batch["image"] * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)[0].numpy()
    out = {"score": np.float32(score[0]), "map": preds[0].astype(np.float32), "pixels": pixels,
           "size": np.int64(ours.IMAGE_SIZE), "pool": np.int64(image_metric.kwargs.avgpool_size[0]),
           "tensors_copied": np.int64(n)}
    np.savez(GOLDEN, **out)
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; score {float(score[0]):.6g}; "
          f"map range {preds.min():.4g}..{preds.max():.4g}; {n} tensors copied")


if __name__ == "__main__":
    main()
