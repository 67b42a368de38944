"""One mask reader: every mode gives the documented pixels, and verify, stats and the
Dataset count the same defect pixels in the same file (or refuse it alike)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_dataset
from threecad.dataset import ThreeCAD
from threecad.errors import ThreecadError
from threecad.layout import layout_errors, scan_root
from threecad.masks import MaskError, inspect_mask, read_mask
from threecad.stats import compute_stats
from threecad.verify import verify

SIZE = 64
CS = "Copper_Stator"


def _shape() -> np.ndarray:
    """A 5x7 block and three lone pixels: 38 defect pixels."""
    m = np.zeros((SIZE, SIZE), bool)
    m[10:15, 20:27] = True
    m[40, 3] = m[50, 60] = m[63, 63] = True
    return m


SHAPE = _shape()
N = int(SHAPE.sum())  # 38


def _rgb(on, off=(0, 0, 0)) -> np.ndarray:
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    a[:] = off
    a[SHAPE] = on
    return a


def _palette() -> Image.Image:
    idx = np.zeros((SIZE, SIZE), np.uint8)
    idx[SHAPE] = 1
    idx[0, :10] = 2  # dark blue: largest channel 100, not a defect
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 100] + [0] * (256 * 3 - 9))
    return im


def _grey_levels() -> np.ndarray:
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[SHAPE] = 128  # just above the threshold: defect
    a[0, :10] = 127  # just below: not a defect
    return a


# mode name -> (image, file format, expected defect pixels)
CASES = {
    "L 0/255": (lambda: Image.fromarray(SHAPE.astype(np.uint8) * 255), "PNG", N),
    "L 127/128": (lambda: Image.fromarray(_grey_levels()), "PNG", N),
    "1 bit": (lambda: Image.fromarray(SHAPE), "PNG", N),
    "RGB red": (lambda: Image.fromarray(_rgb((255, 0, 0))), "PNG", N),  # luminance 76: lost before
    "RGB grey": (lambda: Image.fromarray(_rgb((200, 200, 200), (100, 100, 100))), "PNG", N),
    "RGBA transparent": (lambda: Image.fromarray(np.dstack([_rgb((0, 255, 0)), np.zeros((SIZE, SIZE), np.uint8)])),
                         "PNG", N),
    "LA": (lambda: Image.fromarray(np.dstack([SHAPE.astype(np.uint8) * 255, np.full((SIZE, SIZE), 255, np.uint8)]),
                                   "LA"), "PNG", N),
    "P palette": (_palette, "PNG", N),
    "I;16 0/65535": (lambda: Image.fromarray(SHAPE.astype(np.uint16) * 65535), "PNG", N),
    "I;16 0/40000": (lambda: Image.fromarray(SHAPE.astype(np.uint16) * 40000), "PNG", N),
    "I 32-bit TIFF": (lambda: Image.fromarray(SHAPE.astype(np.int32) * 65535), "TIFF", N),
    "F float TIFF": (lambda: Image.fromarray(SHAPE.astype(np.float32) * 255), "TIFF", N),
}


def _save(im: Image.Image, path: Path, fmt: str) -> Path:
    im.save(path, format=fmt)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_each_mode_reads_the_documented_pixels(tmp_path, case):
    make, fmt, expected = CASES[case]
    path = _save(make(), tmp_path / "m.png", fmt)
    mask = read_mask(path, expected_size=(SIZE, SIZE))
    assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
    assert int(mask.sum()) == expected
    assert np.array_equal(mask, SHAPE)


def test_sixteen_bit_masks_that_would_read_empty_are_refused(tmp_path):
    for values, top in ((1, 1), (255, 255), (32767, 32767)):
        path = _save(Image.fromarray(SHAPE.astype(np.uint16) * values), tmp_path / f"m{values}.png", "PNG")
        with pytest.raises(MaskError, match=f"16-bit mask .*m{values}.png has values up to {top}") as err:
            read_mask(path)
        assert err.value.kind == "mask_16bit_scale" and isinstance(err.value, ThreecadError)
    empty = _save(Image.fromarray(np.zeros((SIZE, SIZE), np.uint16)), tmp_path / "empty.png", "PNG")
    assert read_mask(empty).sum() == 0  # an empty 16-bit mask is just empty


def test_size_mismatch_and_garbage_are_refused_naming_the_file(tmp_path):
    path = _save(Image.fromarray(SHAPE[:32, :32].astype(np.uint8) * 255), tmp_path / "half.png", "PNG")
    with pytest.raises(MaskError, match=r"mask .*half.png is 32x32 but its image is 64x64") as err:
        read_mask(path, expected_size=(SIZE, SIZE))
    assert err.value.kind == "mask_size"
    assert read_mask(path).shape == (32, 32)  # without an image to compare with, it reads
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(MaskError, match="cannot read mask .*junk.png"):
        read_mask(junk)


def test_inspect_counts_grey_and_colour_pixels(tmp_path):
    info = inspect_mask(Image.fromarray(_grey_levels()))
    assert (info.n_defect, info.n_between, info.n_colour) == (N, N + 10, 0)
    info = inspect_mask(Image.fromarray(_rgb((255, 0, 0))))
    assert (info.n_defect, info.n_between, info.n_colour) == (N, 0, N)


# ------------------------------------------------------------ the three consumers agree


def _one_defect_root(tmp_path: Path) -> tuple[Path, Path]:
    root = make_tiny_dataset(tmp_path / "root", categories=(CS,), n_train=1, n_good=1, n_defect=1,
                             defect_types=("bump",), size=SIZE)
    return root, root / CS / "ground_truth" / "bump" / "000.png"


def _stats_pixels(root: Path, mask: Path) -> tuple[str, int]:
    s = compute_stats(scan_root(root), workers=1, cache=False, progress=False)
    row = s.images[s.images["mask_path"] == str(mask)].iloc[0]
    return row["status"], int(s.regions.loc[s.regions["image"] == row.name, "area"].sum())


def _dataset_pixels(root: Path) -> int:
    ds = ThreeCAD(root, "CS", "test", image_size=SIZE, cache=False)
    return int(sum(ds[i]["mask"].sum().item() for i in range(len(ds))))


@pytest.mark.parametrize("case", list(CASES))
def test_verify_stats_and_dataset_count_the_same_pixels(tmp_path, case):
    make, fmt, expected = CASES[case]
    root, mask = _one_defect_root(tmp_path)
    _save(make(), mask, fmt)
    report = verify(root, workers=1, progress=False)
    assert report.mask_pixels == {str(mask): expected}
    assert _stats_pixels(root, mask) == ("ok", expected)
    assert _dataset_pixels(root) == expected
    assert not layout_errors(scan_root(root))


@pytest.mark.parametrize("case, kind", [
    ("half_size", "mask_size"),
    ("sixteen_bit_0_1", "mask_16bit_scale"),
])
def test_refused_masks_are_refused_by_all_three(tmp_path, case, kind):
    root, mask = _one_defect_root(tmp_path)
    if case == "half_size":
        Image.fromarray(SHAPE[:32, :32].astype(np.uint8) * 255).save(mask)
    else:
        Image.fromarray(SHAPE.astype(np.uint16)).save(mask)
    report = verify(root, workers=1, progress=False)
    assert [(p.kind, p.path) for p in report.errors] == [(kind, str(mask))]
    assert report.mask_pixels == {}
    status, pixels = _stats_pixels(root, mask)
    assert (status, pixels) == ({"mask_size": "mask_size"}.get(kind, "unreadable_mask"), 0)
    with pytest.raises(ThreecadError, match=str(mask)):
        _dataset_pixels(root)
    # the size mismatch is a layout error (from the headers): bench refuses the root
    assert [p.kind for p in layout_errors(scan_root(root))] == (["mask_size"] if kind == "mask_size" else [])
