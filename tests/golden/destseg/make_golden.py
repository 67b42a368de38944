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

import argparse
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
COMMIT = "f6ea31fb5b097698b195f85b1d5e3efaedce9eb6"
T = 100  # eval.py's --T default


def numpy_aliases() -> None:
    """imgaug 0.4.0 reads names that NumPy 2 removed; add them back (names only, no numerics)."""
    for name, value in (("bool", bool), ("int", int), ("float", float), ("complex", complex),
                        ("object", object), ("str", str)):
        if name not in np.__dict__:
            setattr(np, name, value)
    if "sctypes" not in np.__dict__:
        np.sctypes = {"int": [np.int8, np.int16, np.int32, np.int64],
                      "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
                      "float": [np.float16, np.float32, np.float64], "complex": [np.complex64, np.complex128],
                      "others": [bool, object, bytes, str, np.void]}


def copy_in_order(src: torch.nn.Module, dst: torch.nn.Module, label: str) -> int:
    """src's state dict into dst entry by entry in registration order, shapes asserted equal."""
    s, d = list(src.state_dict().items()), list(dst.state_dict().items())
    assert len(s) == len(d), f"{label}: {len(s)} tensors vs {len(d)}"
    for (ks, vs), (kd, vd) in zip(s, d):
        assert vs.shape == vd.shape, f"{label}: {ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}"
    dst.load_state_dict({kd: vs.detach().clone() for (_, vs), (kd, _) in zip(s, d)}, strict=True)
    return len(s)


def import_reference(reference: Path):
    import timm

    create_model = timm.create_model
    timm.create_model = lambda *a, **k: create_model(*a, **{**k, "pretrained": False})
    model = types.ModuleType("model")
    model.__path__ = [str(reference / "model")]
    sys.modules["model"] = model
    from constant import NORMALIZE_MEAN, NORMALIZE_STD, RESIZE_SHAPE
    from data.mvtec_dataset import MVTecDataset
    from model.destseg import DeSTSeg

    return DeSTSeg, MVTecDataset, RESIZE_SHAPE, NORMALIZE_MEAN, NORMALIZE_STD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="apple/ml-destseg checkout at " + COMMIT)
    ap.add_argument("--packages", required=True, help="pip --target folder with timm, imgaug, shapely, six")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reference = Path(args.reference).resolve()
    sys.path[:0] = [str(ROOT), str(reference), str(Path(args.packages).resolve())]
    numpy_aliases()
    from torch.utils.data import DataLoader

    from tests.test_golden_destseg import GOLDEN, RAW, SEED, STRIDE, build_ours, input_digest, read_input, relative

    RefDeSTSeg, MVTecDataset, RESIZE_SHAPE, NORMALIZE_MEAN, NORMALIZE_STD = import_reference(reference)
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

    with tempfile.TemporaryDirectory() as tmp:  # the test dataset globs <dir>/*/*.png; "good" has no mask
        (Path(tmp) / "good").mkdir()
        shutil.copy(RAW, Path(tmp) / "good" / "000.png")
        dataset = MVTecDataset(is_train=False, mvtec_dir=tmp + "/", resize_shape=RESIZE_SHAPE,
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
    with Image.open(RAW) as im:
        raw_size = (im.height, im.width)
    np.savez_compressed(
        GOLDEN, seg_raw=seg_raw, seg_map=seg_map, segmentation_score=output_segmentation_sample[0].numpy(),
        dest_raw=dest_raw, dest_map_strided=dest_map[::STRIDE, ::STRIDE].copy(),
        dest_score=output_de_st_sample[0].numpy(), input_sha256=input_digest(img),
        input_size=np.array(img.shape[-2:]), raw_size=np.array(raw_size), seed=SEED,
        reference=f"apple/ml-destseg@{COMMIT}")

    x = read_input(ours)
    line = [f"input equal: {input_digest((x - net.teacher.mean) / net.teacher.std) == input_digest(img)}"]
    with torch.inference_mode():
        for source, ref_map, ref_score in (("segmentation", seg_map, output_segmentation_sample[0]),
                                           ("dest", dest_map, output_de_st_sample[0])):
            cfg.map_source = source
            scores, maps = ours.postprocess().apply(ours.predict(x)[1], None)
            line.append(f"{source}: map rel {relative(maps[0].numpy(), ref_map):.3e}, score rel "
                        f"{abs(float(scores[0]) - float(ref_score)) / abs(float(ref_score)):.3e}")
    print(f"{GOLDEN} ({GOLDEN.stat().st_size} bytes), {n} tensors copied; segmentation map range "
          f"[{seg_map.min():.4f}, {seg_map.max():.4f}], DeST map range [{dest_map.min():.4f}, {dest_map.max():.4f}]")
    print("; ".join(line))


if __name__ == "__main__":
    main()
