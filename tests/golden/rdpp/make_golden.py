"""Writes golden.npz: RD++'s map and score as the reference computes them, with our weights.

Run once (never by the test suite), on CPU, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/rdpp/make_golden.py --reference SRC --packages PKGS
SRC: tientrandinh/Revisiting-Reverse-Distillation at 7f2ceb7c (`git archive` of the commit).
PKGS: `pip install --no-deps --target PKGS geomloss==0.2.6` (imported by the reference's
utils_train); never the project's environment.

What runs is the reference's own code: `MVTecDataset_test` reads the PNG (cv2, BGR -> RGB,
`cv2.resize(img / 255., (256, 256))`, ImageNet normalisation) through a batch-1 DataLoader as
its main.py, then `wide_resnet50_2` + `MultiProjectionLayer` + `BN_layer` + `de_wide_resnet50_2`
in eval mode, `cal_anomaly_map(..., amap_mode='a')`, `gaussian_filter(sigma=4)` and `np.max`, the
lines of `evaluation_multi_proj`. Its networks are built with random init and get every tensor
of `build_ours()` (tests/test_golden_rdpp.py) by a name map, each key and shape checked; the
ones ours lacks are never used (the encoder's layer4/fc, whose output is discarded; the
bottleneck's conv4/bn4, never called). Run-time patch: `numba` is replaced by a stub whose
`njit` is the identity (the reference's simplex noise module imports it; the test set draws
no noise).
The reference reads 256 px (hard-coded in its dataset), so the maps are stored every
`stride`-th pixel in both directions (exact values) and the score whole.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import golden_path, raw_hw, raw_in_folder, raw_sha256, reference_setup  # noqa: E402

GOLDEN = golden_path("rdpp")
STRIDE = 2


def stub_numba() -> None:
    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda fn: fn

    sys.modules["numba"] = types.SimpleNamespace(njit=njit, jit=njit, prange=range)


# reference name -> ours (None: not in ours, unused by the reference's forward)
def encoder_key(k: str) -> str | None:
    if k.startswith(("layer4.", "fc.")):
        return None
    if k.startswith("conv1."):
        return "stages.0.0." + k[6:]
    if k.startswith("bn1."):
        return "stages.0.1." + k[4:]
    for i in (1, 2, 3):
        if k.startswith(f"layer{i}."):
            return f"stages.{i}." + k[len(f"layer{i}."):]
    raise KeyError(k)


def bottleneck_key(k: str) -> str | None:
    head, _, rest = k.partition(".")
    table = {"conv1": "down1.0", "bn1": "down1.1", "conv2": "down1.3", "bn2": "down1.4",
             "conv3": "down2.0", "bn3": "down2.1"}
    if head in ("conv4", "bn4"):
        return None
    if head in table:
        return f"{table[head]}.{rest}"
    if head == "bn_layer":
        return "embed." + rest.replace("downsample.", "shortcut.")
    raise KeyError(k)


def decoder_key(k: str) -> str:
    for i in (1, 2, 3):
        if k.startswith(f"layer{i}."):
            return f"stages.{i - 1}." + k[len(f"layer{i}."):].replace("upsample.", "shortcut.")
    raise KeyError(k)


def projection_key(k: str) -> str:
    return k.replace(".proj.", ".", 1)


def copy_into(reference, ours, key) -> None:
    """Every tensor of `ours` into `reference` under the mapped name; all of ours used, shapes equal."""
    state, own = reference.state_dict(), ours.state_dict()
    mapped = {k: key(k) for k in state}
    used = {v for v in mapped.values() if v is not None}
    assert used == set(own), (sorted(set(own) - used)[:5], sorted(used - set(own))[:5])
    for k, v in mapped.items():
        if v is not None:
            assert state[k].shape == own[v].shape, (k, v)
            state[k] = own[v].clone()
    reference.load_state_dict(state, strict=True)


def main() -> None:
    reference_setup(__doc__, "the reference repository's files at 7f2ceb7c", "pip --target folder with geomloss 0.2.6")
    stub_numba()
    from scipy.ndimage import gaussian_filter

    from dataset.dataset import MVTecDataset_test, get_data_transforms
    from model.de_resnet import de_wide_resnet50_2
    from model.resnet import wide_resnet50_2
    from utils.utils_test import cal_anomaly_map
    from utils.utils_train import MultiProjectionLayer
    from test_golden_rdpp import build_ours

    ours = build_ours()
    net = ours.net
    torch.manual_seed(0)  # the reference's own init of what is not copied (unused)
    encoder, bn = wide_resnet50_2(pretrained=False)
    decoder = de_wide_resnet50_2(pretrained=False)
    proj = MultiProjectionLayer(base=64)
    copy_into(encoder, net.teacher, encoder_key)
    copy_into(bn, net.trainable["bottleneck"], bottleneck_key)
    copy_into(decoder, net.trainable["decoder"], decoder_key)
    copy_into(proj, net.trainable["projection"], projection_key)

    image_size = 256  # main.py's default; the dataset hard-codes it
    with raw_in_folder("test", "good") as root:
        data_transform, gt_transform = get_data_transforms(image_size, image_size)
        test_data = MVTecDataset_test(root=str(root), transform=data_transform, gt_transform=gt_transform)
        loader = torch.utils.data.DataLoader(test_data, batch_size=1, shuffle=False)
        (img, _gt, _label, _, _), = list(loader)
    for module in (encoder, proj, bn, decoder):
        module.eval()
    with torch.no_grad():  # evaluation_multi_proj's lines
        inputs = encoder(img)
        features = proj(inputs)
        outputs = decoder(bn(features))
        anomaly_map, _ = cal_anomaly_map(inputs, outputs, img.shape[-1], amap_mode="a")
        smoothed = gaussian_filter(anomaly_map, sigma=4)
    score = np.max(smoothed)
    np.savez(GOLDEN, raw_sha256=raw_sha256(),
             raw_map=anomaly_map[::STRIDE, ::STRIDE].astype(np.float32),
             smoothed_map=smoothed[::STRIDE, ::STRIDE].astype(np.float32), score=np.float64(score)[None],
             stride=STRIDE, size=image_size, map_shape=np.asarray(anomaly_map.shape),
             raw_hw=raw_hw())
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; map {anomaly_map.shape} stored every {STRIDE} px; "
          f"score {score:.9g}; max raw {anomaly_map.max():.9g}")


if __name__ == "__main__":
    main()
