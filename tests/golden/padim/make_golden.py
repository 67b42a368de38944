"""Writes golden.npz: PaDiM's map and score for tests/golden/raw/part.png as the reference computes
them (xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master
616004b9b7fa6a507d196dd3eeeba9e0a93f160f) with our paper preset's weights (ours.py). Run once by
hand; the test suite only reads the result.

Set-up (outside threecad's venv; nothing is installed into it):
    git archive of the reference at that commit extracted into SRC
    (main.py imports only torch, torchvision, numpy, scipy, sklearn, scikit-image, matplotlib
    and tqdm, which the venv has)
Run from the repository root, one thread:
    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/padim/make_golden.py --reference SRC

What runs is the reference's `main()` for `--arch wide_resnet50_2`, line by line (it is one
function that loops over the MVTec classes and saves plots, so its lines are repeated here
with its own `embedding_concat`, `datasets.mvtec.MVTecDataset` and DataLoaders): a torchvision
WideResNet-50-2 in eval mode with forward hooks on layer1..3 (pretrained weights cannot be
downloaded; ours are copied in by registration order, shapes asserted, conv1..layer3; layer4
and fc run but their output is discarded); `MVTecDataset` (PIL `Resize(256, ANTIALIAS)`, i.e.
Lanczos, `CenterCrop(224)`, ImageNet normalisation) on an MVTec-style folder: train =
golden.patchcore.ours.training_images(), test = the raw PNG and training image 0 (two, because
with one test image main.py's `.squeeze()` drops the batch axis and its smoothing loop then
filters rows); embedding_concat, the channel subset, per position `np.cov(...) + 0.01 I`
stored in a float32 array, `np.linalg.inv`, scipy's `mahalanobis`, bilinear upsampling,
gaussian_filter sigma 4. Two changes: the channel subset is ours (`channel_index`) instead of
`sample(range(1792), 550)` (the two draws differ), and d is ours.N_FEATURES. Patch: Pillow 10
removed `Image.ANTIALIAS`, an alias of LANCZOS; it is put back. The golden score is the max of
the smoothed map before main.py's min-max normalisation over the whole test set (an affine map
shared by all test images of a class, which changes no AUROC).
It runs twice: with ours.build() (BatchNorm affines times ours.GAIN, the golden values) and with
unit affines (the `unit_` values; ours.py says why both).
Stored: the maps (224 x 224) every STRIDE-th pixel (UNIT_STRIDE-th for gain 1), the 56 x 56
distance grid, the score, the Gaussian mean and the reference's inverse covariance at
POSITIONS, the input pixels every 4th.
"""
from __future__ import annotations

import random
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from golden.common import RAW, copy_in_order, golden_path, raw_hw, raw_sha256, reference_setup  # noqa: E402
from golden.padim import ours  # noqa: E402
from golden.patchcore.ours import training_images  # noqa: E402

GOLDEN = golden_path("padim")
STRIDE, UNIT_STRIDE = 2, 4  # the maps are kept every STRIDE-th pixel, those of gain 1 every UNIT_STRIDE-th
POSITIONS = (1234, 3135)  # grid positions (row-major) whose Gaussians are stored


def reference_run(method, mvtec, embedding_concat, root: Path) -> dict:
    """main.py's lines from model to smoothed maps, with `method`'s weights and channel subset."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial.distance import mahalanobis
    from torch.utils.data import DataLoader
    from torchvision.models import wide_resnet50_2

    model = wide_resnet50_2(weights=None)  # the reference's pretrained=True, offline
    used = torch.nn.ModuleList([torch.nn.Sequential(model.conv1, model.bn1), model.layer1, model.layer2,
                                model.layer3])
    n = copy_in_order(method.extractor.stages, used)
    model.eval()
    random.seed(1024)
    torch.manual_seed(1024)
    idx = method.channel_index.clone()  # the reference: torch.tensor(sample(range(0, t_d), d))

    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3):
        layer[-1].register_forward_hook(lambda module, input, output: outputs.append(output))

    train_dataset = mvtec.MVTecDataset(str(root), class_name="bottle", is_train=True)
    train_dataloader = DataLoader(train_dataset, batch_size=32, pin_memory=True)
    test_dataset = mvtec.MVTecDataset(str(root), class_name="bottle", is_train=False)
    test_dataloader = DataLoader(test_dataset, batch_size=32, pin_memory=True)

    train_outputs = OrderedDict([("layer1", []), ("layer2", []), ("layer3", [])])
    test_outputs = OrderedDict([("layer1", []), ("layer2", []), ("layer3", [])])
    for (x, _, _) in train_dataloader:
        with torch.no_grad():
            _ = model(x)
        for k, v in zip(train_outputs.keys(), outputs):
            train_outputs[k].append(v.cpu().detach())
        outputs.clear()
    for k, v in train_outputs.items():
        train_outputs[k] = torch.cat(v, 0)
    embedding_vectors = train_outputs["layer1"]
    for layer_name in ["layer2", "layer3"]:
        embedding_vectors = embedding_concat(embedding_vectors, train_outputs[layer_name])
    embedding_vectors = torch.index_select(embedding_vectors, 1, idx)
    B, C, H, W = embedding_vectors.size()
    embedding_vectors = embedding_vectors.view(B, C, H * W)
    mean = torch.mean(embedding_vectors, dim=0).numpy()
    cov = torch.zeros(C, C, H * W).numpy()
    I = np.identity(C)  # noqa: E741
    for i in range(H * W):
        cov[:, :, i] = np.cov(embedding_vectors[:, :, i].numpy(), rowvar=False) + 0.01 * I
    train_outputs = [mean, cov]

    for (x, y, mask) in test_dataloader:
        with torch.no_grad():
            _ = model(x)
        for k, v in zip(test_outputs.keys(), outputs):
            test_outputs[k].append(v.cpu().detach())
        outputs.clear()
    for k, v in test_outputs.items():
        test_outputs[k] = torch.cat(v, 0)
    embedding_vectors = test_outputs["layer1"]
    for layer_name in ["layer2", "layer3"]:
        embedding_vectors = embedding_concat(embedding_vectors, test_outputs[layer_name])
    embedding_vectors = torch.index_select(embedding_vectors, 1, idx)
    B, C, H, W = embedding_vectors.size()
    embedding_vectors = embedding_vectors.view(B, C, H * W).numpy()
    dist_list = []
    inverses = []
    for i in range(H * W):
        mean = train_outputs[0][:, i]
        conv_inv = np.linalg.inv(train_outputs[1][:, :, i])
        dist = [mahalanobis(sample[:, i], mean, conv_inv) for sample in embedding_vectors]
        dist_list.append(dist)
        if i in POSITIONS:
            inverses.append(conv_inv)
    dist_list = np.array(dist_list).transpose(1, 0).reshape(B, H, W)
    dist_list = torch.tensor(dist_list)
    score_map = F.interpolate(dist_list.unsqueeze(1), size=x.size(2), mode="bilinear",
                              align_corners=False).squeeze().numpy()
    raw_map = score_map[0].copy()
    for i in range(score_map.shape[0]):
        score_map[i] = gaussian_filter(score_map[i], sigma=4)
    # main.py then normalises by the test set's min and max and takes each image's max
    return {"score": np.float32(score_map[0].max()), "map": score_map[0], "raw_map": raw_map,
            "distances": dist_list[0].numpy().astype(np.float32),
            "mean": train_outputs[0][:, list(POSITIONS)].T.astype(np.float32),
            "precision": np.stack(inverses).astype(np.float32), "channel_index": idx.numpy(),
            "image": test_dataset[0][0][None], "size": test_dataset.cropsize, "resize": test_dataset.resize,
            "tensors_copied": n}


def main() -> None:
    reference_setup(__doc__, "the PaDiM repository's files at 616004b9")
    Image.ANTIALIAS = Image.Resampling.LANCZOS
    import datasets.mvtec as mvtec
    from main import embedding_concat

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "bottle" / "train" / "good").mkdir(parents=True)
        (root / "bottle" / "test" / "good").mkdir(parents=True)
        for i, image in enumerate(training_images()):
            image.save(root / "bottle" / "train" / "good" / f"{i:03d}.png")
        (root / "bottle" / "test" / "good" / "000.png").write_bytes(RAW.read_bytes())
        training_images()[0].save(root / "bottle" / "test" / "good" / "001.png")
        ref = reference_run(ours.build(), mvtec, embedding_concat, root)
        unit = reference_run(ours.build(gain=1.0), mvtec, embedding_concat, root)

    mean_rgb = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std_rgb = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = (ref["image"] * std_rgb + mean_rgb).mul(255).round().clamp(0, 255).to(torch.uint8)[0].numpy()
    s, u = STRIDE, UNIT_STRIDE
    np.savez(GOLDEN, raw_sha256=raw_sha256(), raw_hw=raw_hw(), size=ref["size"], resize=ref["resize"], stride=s,
             gain=ours.GAIN, score=ref["score"], map=ref["map"][::s, ::s].astype(np.float32),
             raw_map=ref["raw_map"][::s, ::s].astype(np.float32), distances=ref["distances"],
             positions=np.asarray(POSITIONS), mean=ref["mean"], precision=ref["precision"],
             channel_index=ref["channel_index"], pixels=pixels[:, ::4, ::4], tensors_copied=ref["tensors_copied"],
             unit_stride=u, unit_score=unit["score"], unit_map=unit["map"][::u, ::u].astype(np.float32),
             unit_raw_map=unit["raw_map"][::u, ::u].astype(np.float32), unit_distances=unit["distances"])
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; score {ref['score']:.9g} (gain {ours.GAIN}), "
          f"{unit['score']:.9g} (gain 1); map range {ref['map'].min():.6g}..{ref['map'].max():.6g}; "
          f"{ref['tensors_copied']} tensors copied")


if __name__ == "__main__":
    main()
