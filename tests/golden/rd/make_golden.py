"""Writes golden.npz for tests/test_golden_rd.py from the reference code (run by hand, never by the tests).

Set-up, from a folder outside the project (the commit fetched, its HEAD):
  git --git-dir=<fetched hq-deng/RD4AD> archive 6554076872c65f8784f6ece8cfb39ce77e1aee12 | tar -x -C SRC
Run, from the project root (the reference needs nothing beyond the project's environment):
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/rd/make_golden.py --reference SRC

What runs is the reference's own code: `MVTecDataset(phase="test")` with `get_data_transforms(256,
256)` reads the PNG (PIL `Resize((256, 256))`, `ToTensor`, `CenterCrop(256)`, ImageNet
normalisation) through a batch-1 DataLoader as its test.py; then `wide_resnet50_2` (eval) and
the lines of its `evaluation`: `decoder(bn(encoder(img)))` in eval mode,
`cal_anomaly_map(inputs, outputs, 256, amap_mode='a')`, `gaussian_filter(sigma=4)`, `np.max`.
The networks are built with random init and get every tensor of `build_ours()` by the name maps
of keys.py. The maps are 256 x 256, so they are stored every `stride`-th pixel in both
directions (exact values) and the score whole. The script also runs ours and prints the
relative difference at each stage (input, teacher taps, embedding, decoder outputs, maps, score).
"""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import (golden_path, input_digest, predict, raw_hw, raw_in_folder, raw_sha256,  # noqa: E402
                           read_raw, reference_setup, relative)
from golden.rd.keys import bottleneck_key, copy_into, decoder_key, encoder_key  # noqa: E402

GOLDEN = golden_path("rd")
COMMIT = "6554076872c65f8784f6ece8cfb39ce77e1aee12"
STRIDE = 2


def main() -> None:
    reference_setup(__doc__, "hq-deng/RD4AD's files at " + COMMIT)
    from scipy.ndimage import gaussian_filter

    from dataset import MVTecDataset, get_data_transforms
    from de_resnet import de_wide_resnet50_2
    from resnet import wide_resnet50_2
    from test import cal_anomaly_map
    from test_golden_rd import NORM_SEED, build_ours

    ours = build_ours()
    cfg = ours.config
    # test.py: wide_resnet50_2 teacher, BN_layer(AttnBottleneck, 3), de_wide_resnet50_2 (3, 4, 6), 256 px, sigma 4
    assert (cfg.backbone, cfg.bottleneck_blocks, tuple(cfg.decoder_blocks), cfg.image_size, cfg.sigma) == \
        ("wide_resnet50_2", 3, (3, 4, 6), 256, 4.0)
    net = ours.net
    torch.manual_seed(0)  # the reference's own init of what is not copied (never used)
    encoder, bn = wide_resnet50_2(pretrained=False)
    decoder = de_wide_resnet50_2(pretrained=False)
    n = copy_into(encoder, net.teacher, encoder_key)
    n += copy_into(bn, net.trainable["bottleneck"], bottleneck_key)
    n += copy_into(decoder, net.trainable["decoder"], decoder_key)
    assert n == len(net.state_dict()), "every tensor of ours has its place in the reference"

    image_size = 256  # test.py's get_data_transforms(256, 256)
    with raw_in_folder("test", "good") as root:
        data_transform, gt_transform = get_data_transforms(image_size, image_size)
        test_data = MVTecDataset(root=str(root), transform=data_transform, gt_transform=gt_transform, phase="test")
        loader = torch.utils.data.DataLoader(test_data, batch_size=1, shuffle=False)
        (img, _gt, _label, _type), = list(loader)
    encoder.eval()
    bn.eval()
    decoder.eval()
    with torch.no_grad():  # evaluation()'s lines
        inputs = encoder(img)
        embedding = bn(inputs)
        outputs = decoder(embedding)
        anomaly_map, _ = cal_anomaly_map(inputs, outputs, img.shape[-1], amap_mode="a")
        anomaly_map_smoothed = gaussian_filter(anomaly_map, sigma=4)
    score = np.max(anomaly_map_smoothed)

    np.savez(GOLDEN, raw_sha256=raw_sha256(), input_sha256=input_digest(img), size=image_size,
             raw_map=anomaly_map[::STRIDE, ::STRIDE].astype(np.float32),
             smoothed_map=anomaly_map_smoothed[::STRIDE, ::STRIDE].astype(np.float32),
             score=np.float64(score)[None], stride=STRIDE, map_shape=np.asarray(anomaly_map.shape),
             raw_hw=raw_hw(), seed=NORM_SEED, reference=f"hq-deng/RD4AD@{COMMIT}")
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes, {n} tensors copied; raw map "
          f"[{anomaly_map.min():.6g}, {anomaly_map.max():.6g}], score {score:.9g}")

    # ours, stage by stage, against the reference's tensors above
    x = read_raw(ours)
    teacher = net.teacher
    net.eval()
    stages = {"input (normalised)": relative((x - teacher.mean) / teacher.std, img)}
    with torch.no_grad():
        t = teacher(x)
        e = net.trainable["bottleneck"](t)
        r = net.trainable["decoder"](e)
    for k in range(3):
        stages[f"teacher tap {k + 1}"] = relative(t[k], inputs[k])
    stages["embedding"] = relative(e, embedding)
    for k in range(3):
        stages[f"decoder output {k + 1}"] = relative(r[k], outputs[k])
    raw, scores, smoothed = predict(ours, x)
    stages.update({"raw map": relative(raw[0], anomaly_map),
                   "smoothed map": relative(smoothed[0], anomaly_map_smoothed),
                   "score": relative(float(scores[0]), score)})
    print(f"input equal bit for bit: {input_digest((x - teacher.mean) / teacher.std) == input_digest(img)}")
    for name, value in stages.items():
        print(f"  {name:20s} max relative difference {value:.3e}")


if __name__ == "__main__":
    main()
