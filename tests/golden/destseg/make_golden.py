"""Writes golden.npz for tests/test_golden_destseg.py from the reference code (run by hand, never by the tests).

Our DeSTSeg (paper preset with `weights=none`, the test's seeded weights) is built first; its
weights are copied, by registration order within paired modules and with equal shapes
asserted, into the reference's DeSTSeg(dest=True, ed=True): teacher, student encoder, the four
student decoder stages, segmentation network. The raw PNG is read by the reference's
MVTecDataset(is_train=False) with constant.py's size and normalisation, through a DataLoader,
and the lines of its eval.py that turn an image into maps and scores are run on it (T = 100),
in float32 on the CPU.

Two run-time changes to the reference, neither numeric: timm.create_model gets
pretrained=False (the teacher would download ImageNet weights; ours are copied over them),
and model/__init__.py is not run (it imports anomalib for the metrics; `model` is registered
as a bare package).

Set-up, from a folder outside the project:
  git clone https://github.com/apple/ml-destseg && git -C ml-destseg checkout f6ea31fb5b097698b195f85b1d5e3efaedce9eb6
  .venv/bin/pip install --no-deps --target refpkgs timm==0.6.13 imgaug==0.4.0 shapely six
  (requirements.txt pins timm 0.6.12, which does not import on Python 3.11; 0.6.13 has the same ResNet-18)
Run, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/destseg/make_golden.py --reference ml-destseg --packages refpkgs
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from golden.common import (copy_in_order, golden_path, input_digest, numpy_aliases, predict,  # noqa: E402
                           raw_hw, raw_in_folder, read_raw, reference_setup, relative, timm_without_downloads)

GOLDEN = golden_path("destseg")
COMMIT = "f6ea31fb5b097698b195f85b1d5e3efaedce9eb6"
T = 100  # eval.py's --T default


def import_reference(reference: Path):
    timm_without_downloads()
    model = types.ModuleType("model")
    model.__path__ = [str(reference / "model")]
    sys.modules["model"] = model
    from constant import NORMALIZE_MEAN, NORMALIZE_STD, RESIZE_SHAPE
    from data.mvtec_dataset import MVTecDataset
    from model.destseg import DeSTSeg

    return DeSTSeg, MVTecDataset, RESIZE_SHAPE, NORMALIZE_MEAN, NORMALIZE_STD


def main() -> None:
    args = reference_setup(__doc__, "apple/ml-destseg checkout at " + COMMIT,
                           "pip --target folder with timm, imgaug, shapely, six")
    numpy_aliases()
    from torch.utils.data import DataLoader

    from test_golden_destseg import SEED, STRIDE, build_ours

    RefDeSTSeg, MVTecDataset, RESIZE_SHAPE, NORMALIZE_MEAN, NORMALIZE_STD = import_reference(args.reference.resolve())
    ours = build_ours()
    cfg = ours.config
    # eval.py: ResNet-18 teacher, 256 x 256, a 256-wide segmentation network with ASPP rates 6/12/18
    assert (cfg.teacher, cfg.image_size, cfg.seg_channels, tuple(cfg.aspp_rates), cfg.top_k) == \
        ("resnet18", 256, 256, (6, 12, 18), T) and RESIZE_SHAPE == [256, 256]
    model = RefDeSTSeg(dest=True, ed=True)
    net = ours.net
    n = copy_in_order(net.teacher, model.teacher_net.encoder, "teacher")
    n += copy_in_order(net.student.encoder, model.student_net.encoder, "student encoder")
    for i, name in enumerate(["decoder_layer4", "decoder_layer3", "decoder_layer2", "decoder_layer1"]):
        n += copy_in_order(net.student.decoder[i], getattr(model.student_net, name), name)
    n += copy_in_order(net.segmentation, model.segmentation_net, "segmentation")
    assert n == len(net.state_dict()) - 1, "every tensor of ours but the step counter has its place"

    with raw_in_folder("good", name="000.png") as tmp:  # the test dataset globs <dir>/*/*.png; "good" has no mask
        dataset = MVTecDataset(is_train=False, mvtec_dir=f"{tmp}/", resize_shape=RESIZE_SHAPE,
                               normalize_mean=NORMALIZE_MEAN, normalize_std=NORMALIZE_STD)
        sample_batched = next(iter(DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)))
    model.eval()
    with torch.no_grad():
        # eval.py lines 45-72 (without .cuda())
        img = sample_batched["img"]
        mask = sample_batched["mask"].to(torch.int64)
        output_segmentation, output_de_st, output_de_st_list = model(img)
        seg_raw, dest_raw = output_segmentation[0, 0].numpy().copy(), output_de_st[0, 0].numpy().copy()
        output_segmentation = F.interpolate(output_segmentation, size=mask.size()[2:], mode="bilinear",
                                            align_corners=False)
        output_de_st = F.interpolate(output_de_st, size=mask.size()[2:], mode="bilinear", align_corners=False)
        output_segmentation_sample, _ = torch.sort(output_segmentation.view(output_segmentation.size(0), -1),
                                                   dim=1, descending=True)
        output_segmentation_sample = torch.mean(output_segmentation_sample[:, :T], dim=1)
        output_de_st_sample, _ = torch.sort(output_de_st.view(output_de_st.size(0), -1), dim=1, descending=True)
        output_de_st_sample = torch.mean(output_de_st_sample[:, :T], dim=1)

    seg_map, dest_map = output_segmentation[0, 0].numpy(), output_de_st[0, 0].numpy()
    np.savez_compressed(
        GOLDEN, seg_raw=seg_raw, seg_map=seg_map, segmentation_score=output_segmentation_sample[0].numpy(),
        dest_raw=dest_raw, dest_map_strided=dest_map[::STRIDE, ::STRIDE].copy(),
        dest_score=output_de_st_sample[0].numpy(), input_sha256=input_digest(img),
        input_size=np.array(img.shape[-2:]), raw_size=raw_hw(), seed=SEED,
        reference=f"apple/ml-destseg@{COMMIT}")

    x = read_raw(ours)
    line = [f"input equal: {input_digest((x - net.teacher.mean) / net.teacher.std) == input_digest(img)}"]
    for source, ref_map, ref_score in (("segmentation", seg_map, output_segmentation_sample[0]),
                                       ("dest", dest_map, output_de_st_sample[0])):
        cfg.map_source = source
        _, scores, maps = predict(ours, x)
        line.append(f"{source}: map rel {relative(maps[0].numpy(), ref_map):.3e}, score rel "
                    f"{relative(float(scores[0]), float(ref_score)):.3e}")
    print(f"{GOLDEN} ({GOLDEN.stat().st_size} bytes), {n} tensors copied; segmentation map range "
          f"[{seg_map.min():.4f}, {seg_map.max():.4f}], DeST map range [{dest_map.min():.4f}, {dest_map.max():.4f}]")
    print("; ".join(line))


if __name__ == "__main__":
    main()
