"""What the golden weight-transfer tests and their make_golden.py scripts share.

A test reads `RAW` through its method's declared preprocess, runs `predict` and the declared
post-processing and compares with `load_golden(method)` by `relative`; the weights it builds
are made non-trivial from a seeded generator (fresh norm layers are identities, which would hide
a mix-up of their tensors). A script runs the reference's own code on the same weights and PNG,
with the set-up helpers below. Tests import this as `golden.common` (pytest puts tests/ on the
path); a script puts the repository root and tests/ on the path before importing it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
RAW = HERE / "raw" / "part.png"  # the one raw image every golden fixture was made from
TOLERANCE = 1e-5  # max |ours - reference| / max |reference|, float32


# ---------------------------------------------------------------- the raw image and the fixtures

def golden_path(method: str) -> Path:
    return HERE / method / "golden.npz"


def raw_sha256() -> str:
    return hashlib.sha256(RAW.read_bytes()).hexdigest()


def raw_hw() -> np.ndarray:
    """The raw image's (height, width)."""
    with Image.open(RAW) as im:
        return np.asarray((im.height, im.width))


def load_golden(method: str) -> dict:
    """A method's golden values; where they record the raw image's digest, checked against the committed PNG."""
    path = golden_path(method)
    golden = dict(np.load(path))
    if "raw_sha256" in golden:
        assert raw_sha256() == str(golden["raw_sha256"]), \
            f"{RAW.name} is not the image {path} was made from: rerun its make_golden.py"
    return golden


def relative(ours, reference) -> float:
    """max |ours - reference| / max |reference| in float64, of arrays or scalars."""
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - reference).max() / np.abs(reference).max())


def input_digest(x: torch.Tensor) -> str:
    """sha256 of a network input's float32 bytes: equal inputs, bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(x.numpy(), dtype=np.float32).tobytes()).hexdigest()


# ---------------------------------------------------------------- our side

def raw_rgb() -> Image.Image:
    with Image.open(RAW) as im:
        return im.convert("RGB")


def read_raw(method) -> torch.Tensor:
    """The raw PNG through the method's declared preprocess -> (1, 3, S, S) float32 in [0, 1],
    as the dataset gives it to the method."""
    return torch.from_numpy(method.preprocess().image(raw_rgb())).float().div_(255.0)[None]


def predict(method, image: torch.Tensor, own_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`predict` and the declared post-processing -> (raw maps, image scores, post-processed maps).
    The scores are the post-processing's rule on the map, or with `own_scores` those `predict` gives."""
    with torch.inference_mode():
        scores, raw = method.predict(image)
        scores, maps = method.postprocess().apply(raw, scores if own_scores else None)
    return raw, scores, maps


def randomise_affine(norm: torch.nn.Module, generator: torch.Generator) -> None:
    """A norm layer's weight from U(0.5, 1.5) and bias from N(0, 0.1^2), around the identity."""
    with torch.no_grad():
        norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))


def randomise_statistics(bn: torch.nn.Module, generator: torch.Generator) -> None:
    """A BatchNorm's running mean from N(0, 0.1^2) and variance from U(0.5, 1.5)."""
    with torch.no_grad():
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=generator))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=generator))


def randomise_batchnorm(bn: torch.nn.Module, generator: torch.Generator) -> None:
    randomise_affine(bn, generator)
    randomise_statistics(bn, generator)


def randomise_batchnorms(net: torch.nn.Module, generator: torch.Generator,
                         kind: type = torch.nn.modules.batchnorm._BatchNorm) -> None:
    """Every BatchNorm of `kind` in `net`, in module order."""
    for m in net.modules():
        if isinstance(m, kind):
            randomise_batchnorm(m, generator)


def randomise_convolutions(net: torch.nn.Module, seed: int, std: Callable[[int], float]) -> None:
    """From one generator seeded with `seed`, in module order: each Conv2d's weight from
    N(0, std(fan_in)^2) and bias from N(0, 0.1^2), each BatchNorm2d as `randomise_batchnorm`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                randomise_batchnorm(m, g)


# ---------------------------------------------------------------- the scripts' set-up of the reference

def reference_setup(doc: str, reference: str, packages: str | None = None) -> argparse.Namespace:
    """`--reference SRC` (and `--packages PKGS`, a `pip install --no-deps --target` folder, never
    the project's environment) from the command line, both put first on the path so that the
    reference's own modules are the ones imported; one torch thread."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help=reference)
    if packages:
        parser.add_argument("--packages", required=True, type=Path, help=packages)
    args = parser.parse_args()
    sys.path[:0] = [str(args.reference.resolve())] + ([str(args.packages.resolve())] if packages else [])
    torch.set_num_threads(1)
    return args


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


def timm_without_downloads():
    """timm with `create_model` forced to pretrained=False: nothing to download, and every
    weight is overwritten by ours afterwards."""
    import timm

    create_model = timm.create_model
    timm.create_model = lambda *a, **k: create_model(*a, **{**k, "pretrained": False})
    return timm


def cuda_as_identity() -> None:
    """`Tensor.cuda` as the identity from here on: the references call it (in UniAD's attention
    mask, in their evaluation's pooling), and these scripts run on the CPU."""
    torch.Tensor.cuda = lambda self, *a, **k: self


def copy_in_order(src: torch.nn.Module, dst: torch.nn.Module, label: str = "") -> int:
    """src's state dict into dst entry by entry in registration order, shapes asserted equal;
    returns the number of tensors."""
    s, d = list(src.state_dict().items()), list(dst.state_dict().items())
    assert len(s) == len(d), f"{label}: {len(s)} tensors vs {len(d)}"
    for (ks, vs), (kd, vd) in zip(s, d):
        assert vs.shape == vd.shape, f"{label}: {ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}"
    dst.load_state_dict({kd: vs.detach().clone() for (_, vs), (kd, _) in zip(s, d)}, strict=True)
    return len(s)


@contextlib.contextmanager
def raw_in_folder(*parts: str, name: str = RAW.name) -> Iterator[Path]:
    """A temporary folder holding only the raw PNG, as <folder>/<parts...>/<name>: the layout a
    reference's test loader globs."""
    with tempfile.TemporaryDirectory() as folder:
        place = Path(folder).joinpath(*parts)
        place.mkdir(parents=True, exist_ok=True)
        shutil.copy(RAW, place / name)
        yield Path(folder)


def meta_file(path: Path, filename: str, clsname: str) -> Path:
    """The one-line JSON meta file of the UniAD family's loaders (UniAD, CRAD, RealNet): one good image."""
    path.write_text(json.dumps({"filename": filename, "label": 0, "clsname": clsname}) + "\n")
    return path
