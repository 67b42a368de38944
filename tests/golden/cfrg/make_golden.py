"""Writes golden.npz for tests/test_golden_cfrg.py from the official 3CAD release (run by hand, never by the tests).

Set-up, from a folder outside the project:
  git --git-dir=<fetched EnquanYang2022/3CAD> archive b5e66a122cf445afb445f2c528c70686718ae6b8 | tar -x -C SRC
  .venv/bin/pip install --no-deps --target PKGS timm==0.6.13 einops imgaug==0.4.0 shapely six geomloss==0.2.6
  (the release imports timm in its model and Adapter, einops in its resnet, imgaug in its dataset
  module, geomloss through train_utils/__init__; none of them computes anything used here)
Run, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/cfrg/make_golden.py --reference SRC --packages PKGS

What runs is the release's own code: its `Data_3CAD` test set reads the PNG (PIL
`Resize([256, 256])`, `ToTensor`, ImageNet normalisation; it also opens a texture, unused at
test time, so a one-texture folder is given) through a batch-1 DataLoader as its test.py;
then `cfrg_net` in eval mode and test.py's lines: `teacher_feature, rec, segment_result =
model(img)`, `cal_anomaly_map(teacher_feature, rec, segment_result, 256, amap_mode='a')`,
`gaussian_filter(sigma=4)`, `np.max`; all float32 (test.py has no autocast).
Run-time patch: `wide_resnet50_2(pretrained=True)` in the release's model is called with
pretrained=False (no download; every tensor is overwritten). Its networks get every tensor of
`build_ours()`: the teacher and recovery branch by the name maps of golden/rd/keys.py, the
student by `lukemelas_to_torchvision` (its blocks 11-15, head and classifier run but their
output is unused: not in ours), adapters and U-Net by name. The maps are 256 x 256, so they are
stored every `stride`-th pixel (exact values) and the score whole. The script also runs ours
and prints the relative difference at each stage.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from golden.common import (golden_path, input_digest, numpy_aliases, predict, raw_hw, raw_in_folder,  # noqa: E402
                           raw_sha256, read_raw, reference_setup, relative)
from golden.rd.keys import bottleneck_key, copy_into, decoder_key, encoder_key  # noqa: E402
from threecad.tf_efficientnet import lukemelas_to_torchvision  # noqa: E402

GOLDEN = golden_path("cfrg")
COMMIT = "b5e66a122cf445afb445f2c528c70686718ae6b8"
STRIDE = 2
B0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
CLASS = "part"


def student_keys(reference_state: dict, ours: dict) -> Callable[[str], str | None]:
    """lukemelas name -> our student's: torchvision's name with `features.` as `stages.`; None for
    the blocks after the stride-16 tap, the head and the classifier (not built by ours)."""
    torchvision_name = {v: k for k, v in lukemelas_to_torchvision(B0_DEPTHS)({k: k for k in reference_state}).items()}

    def key(k: str) -> str | None:
        name = "stages." + torchvision_name[k].removeprefix("features.")
        return name if name in ours else None
    return key


def unet_key(k: str) -> str:
    """The release's UNet name -> our SegmentationDecoder's."""
    for theirs, mine in ((".upconv.", ".up."), (".conv1.", ".body.0."), (".bn1.", ".body.1."),
                         (".conv2.", ".body.3."), (".bn2.", ".body.4.")):
        if theirs in k:
            return k.replace(theirs, mine)
    if k.startswith("conv_final.0."):
        return "head." + k[len("conv_final.0."):]
    raise KeyError(k)


def main() -> None:
    reference_setup(__doc__, "EnquanYang2022/3CAD's files at " + COMMIT,
                    "pip --target folder with timm 0.6.13, einops, imgaug 0.4.0, shapely, six, geomloss 0.2.6")
    numpy_aliases()
    from scipy.ndimage import gaussian_filter

    from train_utils.toolbox.models.cfrg import model as release_model
    from train_utils.toolbox.models.model_utils import cal_anomaly_map
    from train_utils.toolbox.utils import get_dataset
    from test_golden_cfrg import NORM_SEED, build_ours

    ours = build_ours()
    cfg = ours.config
    # the release: WRN50 teacher, B0 student, BN_layer(3) + de_wide_resnet50_2 (3, 4, 6), full U-Net, 256 px, sigma 4
    assert (cfg.teacher, cfg.student, cfg.bottleneck_blocks, tuple(cfg.decoder_blocks), cfg.image_size, cfg.sigma,
            cfg.recovery_guidance, cfg.segmentation, cfg.map_source) == \
        ("wide_resnet50_2", "efficientnet_b0_tf", 3, (3, 4, 6), 256, 4.0, True, True, "recovery")
    net = ours.net
    teacher_builder = release_model.wide_resnet50_2
    release_model.wide_resnet50_2 = lambda pretrained=False, **kwargs: teacher_builder(pretrained=False, **kwargs)
    torch.manual_seed(0)  # the release's own init of what is not copied (never used)
    model = release_model.cfrg_net()
    own = net.trainable
    n = copy_into(model.teacher, net.teacher, encoder_key)
    n += copy_into(model.bn, own["bottleneck"], bottleneck_key)
    n += copy_into(model.decoder, own["decoder"], decoder_key)
    n += copy_into(model.student, own["student"], student_keys(model.student.state_dict(), own["student"].state_dict()))
    for k, adapter in enumerate((model.adapter1, model.adapter2, model.adapter3)):
        n += copy_into(adapter, own["adapters"][k], lambda name: name.replace("op.", "body.", 1))
    n += copy_into(model.segment, own["segmentation"], unet_key)
    assert n == len(net.state_dict()), "every tensor of ours has its place in the release's network"
    model.eval()

    image_size = 256  # Data_3CAD's resize
    with raw_in_folder(CLASS, "test", "good") as root:
        (root / CLASS / "train").mkdir()  # get_dataset also builds the (here empty) training set
        texture = root / "dtd" / "images" / "any"
        texture.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(texture / "0.jpg")
        _, testset = get_dataset(data_name="3CAD", data_path=str(root), dtd_path=str(root / "dtd" / "images"),
                                 class_name=CLASS)
        sample, = list(torch.utils.data.DataLoader(testset, batch_size=1))
    img = sample["img"]
    with torch.no_grad():  # test.py's lines
        teacher_feature, rec, segment_result = model(img)
        anomaly_map, _ = cal_anomaly_map(teacher_feature, rec, segment_result, img.shape[-1], amap_mode="a")
        anomaly_map_smoothed = gaussian_filter(anomaly_map, sigma=4)
    score = np.max(anomaly_map_smoothed)
    segmentation = torch.sigmoid(segment_result)[0, 0].numpy()

    np.savez(GOLDEN, raw_sha256=raw_sha256(), input_sha256=input_digest(img), size=image_size,
             raw_map=anomaly_map[::STRIDE, ::STRIDE].astype(np.float32),
             smoothed_map=anomaly_map_smoothed[::STRIDE, ::STRIDE].astype(np.float32),
             score=np.float64(score)[None], stride=STRIDE, map_shape=np.asarray(anomaly_map.shape),
             raw_hw=raw_hw(), seed=NORM_SEED, reference=f"EnquanYang2022/3CAD@{COMMIT}")
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes, {n} tensors copied; raw map "
          f"[{anomaly_map.min():.6g}, {anomaly_map.max():.6g}], segmentation sigmoid "
          f"[{segmentation.min():.4g}, {segmentation.max():.4g}], score {score:.9g}")

    # ours, stage by stage, against the release's tensors above
    net.eval()
    x = read_raw(ours)
    teacher = net.teacher
    stages = {"input (normalised)": relative((x - teacher.mean) / teacher.std, img)}
    with torch.no_grad():
        out = net(x)
        student = model.student(img)["features"]
        adapted = [a(s) for a, s in zip((model.adapter1, model.adapter2, model.adapter3), student)]
        taps = own["student"](x)
    for k in range(3):
        stages[f"teacher tap {k + 1}"] = relative(out.teacher[k], teacher_feature[k])
    for k in range(3):
        stages[f"student tap {k + 1}"] = relative(taps[k], student[k])
    for k in range(3):
        stages[f"adapted student {k + 1}"] = relative(out.student[k], adapted[k])
    for k in range(3):
        stages[f"recovered {k + 1}"] = relative(out.recovered[k], rec[k])
    stages["segmentation logits"] = relative(out.logits, segment_result)
    raw, scores, smoothed = predict(ours, x)
    stages.update({"raw map": relative(raw[0], anomaly_map),
                   "smoothed map": relative(smoothed[0], anomaly_map_smoothed),
                   "score": relative(float(scores[0]), score)})
    print(f"input equal bit for bit: {input_digest((x - teacher.mean) / teacher.std) == input_digest(img)}")
    for name, value in stages.items():
        print(f"  {name:22s} max relative difference {value:.3e}")


if __name__ == "__main__":
    main()
