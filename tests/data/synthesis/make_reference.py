"""Writes the reference fixtures of tests/test_synthesis_statistics.py from the references' own code.

    python tests/data/synthesis/make_reference.py --src SRC --refpkgs PKGS

SRC holds the reference repositories at the commits the fidelity audit used (fidA's README):
SRC/DRAEM (VitjanZ/DRAEM 2dbf673), SRC/ml-destseg (apple/ml-destseg f6ea31f), SRC/RealNet
(cnulab/RealNet ab75012). PKGS is a folder with imgaug 0.4.0 and its pure-Python needs
(`pip install --no-deps --target PKGS imgaug==0.4.0 shapely six imageio`); OpenCV, NumPy, Pillow,
scikit-image and torch come from threecad's environment. NumPy 2 gets the aliases imgaug 0.4.0
still uses, and pillike.Autocontrast's cutoff is handed to Pillow as a float (names and types
only, as fidA's np_compat.py and fidcommon.imgaug_compat do).

Writes, next to this script:
- probe.png: a 64 x 64 texture (made here), read with OpenCV and resized to 256 x 256 by both sides;
- reference.json: per draw at 256 px, the anomalous pixel count of each reference's mask
  (DRAEM's Perlin mask alone and `augment_image` with its 50% clean samples, DeSTSeg's
  `perlin_noise`, RealNet's `generate_perlin_noise_mask` with its 50% normal samples and a full
  foreground) and the mean absolute change of the probe under DRAEM's `randAugmenter`;
- golden.npz: DRAEM's `rand_perlin_2d_np` for given gradient angles, and each of DRAEM's ten
  augmentations with fixed parameters through imgaug.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE, DRAWS, TEXTURE_DRAWS = 256, 500, 500


def numpy_aliases() -> None:
    """NumPy 1's names that imgaug 0.4.0 (and RealNet's np.bool) use; no numerics change."""
    if "sctypes" not in np.__dict__:
        np.sctypes = {"int": [np.int8, np.int16, np.int32, np.int64],
                      "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
                      "float": [np.float16, np.float32, np.float64, np.longdouble],
                      "complex": [np.complex64, np.complex128, np.clongdouble],
                      "others": [bool, object, bytes, str, np.void]}
    for name, value in (("bool", bool), ("int", int), ("float", float), ("complex", complex), ("object", object),
                        ("str", str)):
        if name not in np.__dict__:
            setattr(np, name, value)


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe_texture() -> np.ndarray:
    """A blocky, striped, slightly noisy colour texture: something for every augmentation to change."""
    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[:64, :64] / 64.0
    low = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1)))
    img = 0.45 * low + 0.25 * (np.sin(2 * np.pi * (3 * xx + 2 * yy)) > 0)[..., None] + 0.2 * yy[..., None]
    img[..., 1] += 0.15 * np.cos(2 * np.pi * 5 * xx)
    img += 0.08 * rng.random((64, 64, 3))
    return (img.clip(0, 1) * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--refpkgs", required=True)
    args = ap.parse_args()
    src = Path(args.src)
    sys.path.insert(0, args.refpkgs)
    numpy_aliases()
    import cv2
    import imgaug
    import imgaug.augmenters as iaa
    import imgaug.augmenters.pillike as pillike
    import torch
    from imgaug.augmenters import contrast
    from PIL import Image

    original_autocontrast = pillike._autocontrast_pil
    pillike._autocontrast_pil = lambda image, cutoff, ignore: original_autocontrast(
        image, float(np.asarray(cutoff).reshape(-1)[0]), ignore)

    cv2.imwrite(str(HERE / "probe.png"), probe_texture())  # stored as written: BGR on disk, read back the same
    probe_path = str(HERE / "probe.png")
    probe = cv2.resize(cv2.imread(probe_path), (SIZE, SIZE))

    sys.path.insert(0, str(src / "DRAEM"))
    draem = load("draem_data_loader", src / "DRAEM" / "data_loader.py")
    destseg = load("destseg_data_utils", src / "ml-destseg" / "data" / "data_utils.py")
    sys.path.insert(0, str(src / "RealNet"))
    realnet = load("realnet_dataset", src / "RealNet" / "datasets" / "realnet_dataset.py")

    def count(mask) -> int:
        return int(np.asarray(mask).sum())

    out: dict = {"size": SIZE, "made_by": "tests/data/synthesis/make_reference.py",
                 "references": {"DRAEM": "VitjanZ/DRAEM 2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef",
                                "DeSTSeg": "apple/ml-destseg f6ea31fb5b097698b195f85b1d5e3efaedce9eb6",
                                "RealNet": "cnulab/RealNet ab75012c1d58da9789f6a6137fbeb444e203b314"},
                 "versions": {"python": platform.python_version(), "numpy": np.__version__,
                              "imgaug": imgaug.__version__, "opencv": cv2.__version__, "torch": torch.__version__}}

    ds = draem.MVTecDRAEMTrainDataset("/nonexistent/", str(HERE), resize_shape=[SIZE, SIZE])
    torch.manual_seed(0)
    np.random.seed(0)
    imgaug.random.seed(0)
    masks = []
    for _ in range(DRAWS):  # augment_image's Perlin mask, before its 50% coin
        sx = 2 ** torch.randint(0, 6, (1,)).item()
        sy = 2 ** torch.randint(0, 6, (1,)).item()
        masks.append(count(ds.rot(image=draem.rand_perlin_2d_np((SIZE, SIZE), (sx, sy))) > 0.5))
    out["draem_mask"] = masks
    image = np.full((SIZE, SIZE, 3), 0.5, np.float32)
    out["draem_sample"] = [count(ds.augment_image(image, probe_path)[1]) for _ in range(DRAWS)]

    torch.manual_seed(1)
    np.random.seed(1)
    imgaug.random.seed(1)
    grey = Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8))
    texture = Image.fromarray(probe[..., ::-1].copy())
    out["destseg_mask"] = [count(destseg.perlin_noise(grey, texture, aug_prob=1.0)[1]) for _ in range(DRAWS)]

    rn = realnet.RealNetDataset.__new__(realnet.RealNetDataset)
    rn.resize, rn.min_perlin_scale, rn.perlin_scale, rn.perlin_noise_threshold = [SIZE, SIZE], 0, 6, 0.5
    rn.anomaly_types, rn.training = {"normal": 0.5, "dtd": 0.5}, True
    torch.manual_seed(2)
    np.random.seed(2)
    imgaug.random.seed(2)
    out["realnet_sample"] = [0 if rn.choice_anomaly_type() == "normal" else count(rn.generate_perlin_noise_mask())
                             for _ in range(DRAWS)]

    np.random.seed(3)
    imgaug.random.seed(3)
    out["draem_texture_change"] = [
        round(float(np.abs(ds.randAugmenter()(image=probe).astype(np.float32) - probe).mean() / 255), 7)
        for _ in range(TEXTURE_DRAWS)]
    (HERE / "reference.json").write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items())
                                         + "\n}\n")

    golden: dict[str, np.ndarray] = {}
    perlin_cases = [(16, (4, 2), 0), (16, (1, 8), 1), (16, (16, 8), 2)]
    for i, (size, res, seed) in enumerate(perlin_cases):
        np.random.seed(seed)
        golden[f"perlin_angles_{i}"] = 2 * math.pi * np.random.rand(res[0] + 1, res[1] + 1)
        np.random.seed(seed)
        golden[f"perlin_noise_{i}"] = draem.rand_perlin_2d_np((size, size), res)
    golden["perlin_cases"] = np.array([(size, *res) for size, res, _ in perlin_cases])

    yy, xx = np.mgrid[:32, :48]  # 32 x 48: imgaug's large-image paths; smooth, so that the fixture stays small
    image = np.stack([xx * 5 + 8, 250 - yy * 7, 128 + 100 * np.sin(xx / 5.0) * np.cos(yy / 4.0)], -1)
    image = (image // 16 * 16 + (xx // 8 + yy // 8)[..., None] % 3 * 5).clip(0, 255).astype(np.uint8)
    dim = (image // 4 + 100).astype(np.uint8)  # no pixel at 255: Equalize's step differs from PIL's there
    golden["image"], golden["dim"] = image, dim
    cases, outputs = [], []

    def case(name: str, params: dict, result: np.ndarray, source: str = "image") -> None:
        cases.append({"name": name, "params": params, "input": source})
        outputs.append(result)

    gammas = [0.55, 1.0, 1.9]
    case("gamma", {"gammas": gammas},
         np.stack([contrast.adjust_contrast_gamma(image[..., c], g) for c, g in enumerate(gammas)], -1))
    for i, space in enumerate(("YCrCb", "HSV", "HLS", "Lab", "Luv", "YUV")):
        mul, add, add_first = ((1.13, 17.4, False), (0.84, -23.6, True))[i % 2]
        steps = [iaa.Add(add), iaa.Multiply(mul)] if add_first else [iaa.Multiply(mul), iaa.Add(add)]
        aug = iaa.WithBrightnessChannels(iaa.Sequential(steps), to_colorspace=space)
        case("brightness", {"space": space, "mul": mul, "add": add, "add_first": add_first}, aug(image=image))
    for factor in (0.3, 1.7):
        case("sharpness", {"factor": factor}, pillike.enhance_sharpness(image, factor))
    for hue, saturation in ((17, -50), (-50, 33), (50, 0)):
        aug = iaa.AddToHueAndSaturation(value_hue=hue, value_saturation=saturation)
        case("hue_saturation", {"hue": hue, "saturation": saturation}, aug(image=image))
    for threshold in (32.0, 77.9):
        case("solarize", {"apply": True, "threshold": threshold}, iaa.Solarize(1.0, threshold=threshold)(image=image))
    for bits in (1, 6):
        case("posterize", {"bits": bits}, iaa.Posterize(bits)(image=image))
    case("invert", {}, iaa.Invert()(image=image))
    for cutoff in (0, 7, 20):
        case("autocontrast", {"cutoff": cutoff}, iaa.pillike.Autocontrast(cutoff)(image=image))
    case("equalize", {}, iaa.pillike.Equalize()(image=image))
    case("equalize", {}, iaa.pillike.Equalize()(image=dim), source="dim")
    for degrees in (-45.0, -12.34, 30.0):
        case("rotate", {"degrees": degrees}, iaa.Affine(rotate=degrees)(image=image))
    golden["cases"], golden["outputs"] = np.array(json.dumps(cases)), np.stack(outputs)
    np.savez_compressed(HERE / "golden.npz", **golden)


if __name__ == "__main__":
    main()
