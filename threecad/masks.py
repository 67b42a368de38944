"""The one mask reader: verify, stats, the Dataset (and so bench) all see the same pixels.

Why one module: three readers with three rules meant an RGB mask lost its defects in bench
(luminance of pure red is 76), a 16-bit 0/1 mask passed verify but was empty for the loader,
and a half-size mask was stretched without a word. Here is the single rule, for every mode:

- A defect pixel is one whose *level* is above half the mode's full scale: > 127 for 8-bit
  masks (DESIGN.md's "defect pixels > 127"), > 32767 for 16-bit and 32-bit integer masks
  (the 8-bit rule applied to the top byte).
- The level of a pixel: "1" its bit (set = 255); "L" its value; "LA" its L value; "RGB",
  "RGBA" and every other colour mode (also palette "P"/"PA" after its palette is applied)
  the **largest of R, G, B**, so that a red-on-black annotation keeps its defects and a
  grey RGB mask reads like its "L" copy; "I;16*" and "I" the value; "F" the value on the
  8-bit scale. Alpha is ignored everywhere (a transparent pixel counts by its colour).
- A 16-bit mask whose non-zero pixels are all <= 32767 (a 0/1 or 0/255 mask saved as 16
  bits) is refused: it would read as empty, and guessing its scale from its content would
  let the same file mean different things. Save masks as 8-bit 0/255 (or 16-bit 0/65535).
- A mask whose size differs from its image's is refused (MaskError, kind "mask_size"):
  resizing it would move every defect.

Errors are MaskError (a DatasetError, so a ThreecadError) carrying a `kind` that verify
reports as the problem kind, and a message that names the file.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

from threecad.errors import DatasetError

THRESHOLD_8BIT = 127
THRESHOLD_16BIT = 32767
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}

MaskSource = Union[str, os.PathLike, bytes, Image.Image]


class MaskError(DatasetError):
    """A mask that cannot be read under the rule above; `kind` names the problem
    ("corrupt_mask", "mask_size", "mask_16bit_scale")."""

    def __init__(self, message: str, kind: str = "corrupt_mask"):
        super().__init__(message)
        self.kind = kind


@dataclass
class MaskInfo:
    """What verify needs beyond the bool mask: how clean the file is."""

    mask: np.ndarray  # bool (H, W)
    mode: str
    full_scale: int  # 255 or 65535: the level of a clean defect pixel
    n_between: int  # pixels whose level is neither 0 nor full scale
    n_colour: int  # pixels whose R, G, B differ (colour modes only)

    @property
    def n_defect(self) -> int:
        return int(np.count_nonzero(self.mask))


def _levels(im: Image.Image) -> tuple[np.ndarray, int, int]:
    """(level array (H, W), full scale, pixels whose colour channels differ)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * np.uint8(255), 255, 0
    if mode == "L":
        return np.asarray(im), 255, 0
    if mode in ("LA", "La"):
        return np.asarray(im)[..., 0], 255, 0
    if mode in _INT_MODES:
        return np.asarray(im).astype(np.int64), 65535, 0
    if mode == "F":
        return np.asarray(im, dtype=np.float64), 255, 0
    if mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        im = im.convert("RGBA" if mode in ("P", "PA") else "RGB")  # palette applied
    rgb = np.asarray(im)[..., :3]
    colour = int(np.count_nonzero((rgb != rgb[..., :1]).any(axis=-1)))
    return rgb.max(axis=-1), 255, colour


def _name(source: MaskSource, name: str | os.PathLike | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "filename", None) or "<mask>"


def _open(source: MaskSource, name: str) -> Image.Image:
    try:
        if isinstance(source, Image.Image):
            im = source
        elif isinstance(source, bytes):
            im = Image.open(io.BytesIO(source))
        else:
            im = Image.open(source)
        im.load()
        return im
    except OSError as exc:
        reason = exc.strerror.lower() if isinstance(exc.strerror, str) else str(exc)
        raise MaskError(f"cannot read mask {name}: {reason}") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user problem
        raise MaskError(f"cannot read mask {name}: {exc}") from exc


def _check_size(im: Image.Image, expected_size: tuple[int, int] | None, name: str) -> None:
    if expected_size is None:
        return
    h, w = int(expected_size[0]), int(expected_size[1])
    if (im.height, im.width) != (h, w):
        raise MaskError(f"mask {name} is {im.width}x{im.height} but its image is {w}x{h} (WxH); "
                        "masks must have their image's size", kind="mask_size")


def _binary(level: np.ndarray, full: int, name: str) -> np.ndarray:
    mask = level > (THRESHOLD_16BIT if full == 65535 else THRESHOLD_8BIT)
    if full == 65535 and not mask.any() and level.any():
        raise MaskError(f"16-bit mask {name} has values up to {int(level.max())} and none above "
                        f"{THRESHOLD_16BIT}: it would read as empty; save masks as 8-bit 0/255 "
                        "(or 16-bit 0/65535)", kind="mask_16bit_scale")
    return mask


def inspect_mask(source: MaskSource, expected_size: tuple[int, int] | None = None,
                 name: str | os.PathLike | None = None) -> MaskInfo:
    """The bool mask and how far the file is from a clean 0/full-scale mask (for verify)."""
    label = _name(source, name)
    im = _open(source, label)
    try:
        _check_size(im, expected_size, label)
        level, full, colour = _levels(im)
        mask = _binary(level, full, label)
        between = int(np.count_nonzero((level != 0) & (level != full)))
        return MaskInfo(mask=mask, mode=im.mode, full_scale=full, n_between=between, n_colour=colour)
    finally:
        if not isinstance(source, Image.Image):
            im.close()


def read_mask_box(source: MaskSource, expected_size: tuple[int, int] | None = None,
                  name: str | os.PathLike | None = None) -> tuple[int, int, int, int, np.ndarray | None]:
    """(height, width, y0, x0, crop): the mask's size and the bool pixels of the box that
    holds every defect pixel, placed at (y0, x0); crop is None for an empty mask.

    Why the box: masks are mostly empty and copying a whole 1024 x 1024 decode into numpy
    costs as much as decoding it; for "L" and "1" masks Pillow's `getbbox` (nearly free)
    bounds the non-zero pixels, and only that part is copied.
    """
    label = _name(source, name)
    im = _open(source, label)
    try:
        _check_size(im, expected_size, label)
        height, width = im.height, im.width
        if im.mode in ("L", "1"):
            box = im.getbbox()
            if box is None:
                return height, width, 0, 0, None
            crop = np.asarray(im.crop(box))
            pixels = crop.astype(bool) if im.mode == "1" else crop > THRESHOLD_8BIT
            y0, x0 = box[1], box[0]
        else:
            level, full, _ = _levels(im)
            pixels = _binary(level, full, label)
            y0 = x0 = 0
        rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
        if rows.size == 0:
            return height, width, 0, 0, None
        crop = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        return height, width, y0 + int(rows[0]), x0 + int(cols[0]), crop
    finally:
        if not isinstance(source, Image.Image):
            im.close()


def read_mask(source: MaskSource, expected_size: tuple[int, int] | None = None,
              name: str | os.PathLike | None = None) -> np.ndarray:
    """The mask as a bool (H, W) array under the module's rule.

    `expected_size` (height, width) is the image's size: a mask of another size raises
    MaskError (kind "mask_size") naming the file. Unreadable files and 16-bit masks that
    would read as empty raise MaskError too.
    """
    height, width, y0, x0, crop = read_mask_box(source, expected_size, name)
    mask = np.zeros((height, width), dtype=bool)
    if crop is not None:
        mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return mask
