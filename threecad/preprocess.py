"""A method's input pipeline, declared as data and applied once by the dataset and its cache.

Why: each reference reads and resizes its images its own way (PIL with antialiasing, or
OpenCV's bilinear without it; the whole image squashed to a square, or the shorter side
resized and a centre crop taken; RGB or BGR channels). A method fed other pixels than its
reference's computes something else. So a method declares its reference's pipeline
(`Method.preprocess()`), `threecad.dataset.ThreeCAD` applies it to training and test images
alike (the cache keys on it), each mask follows the same geometry (nearest neighbour), and
the model card and results record it. Normalisation stays with each method's backbone.

Geometries:
- "square": the whole image resized to `size` x `size`, aspect not kept (the 3CAD release);
- "shorter_side_crop": the shorter side resized to `resize_to` (aspect kept, the longer side
  truncated as torchvision's `Resize(int)` does), then the centre `size` x `size` crop
  (torchvision's `CenterCrop`): pixels outside the crop are not seen, and the evaluation
  covers the crop only (its masks are cropped the same way).

Resize libraries: "pil" (bilinear; PIL widens the filter when downsizing, which antialiases:
what torchvision's transforms do on PIL images) and "cv2" (OpenCV `INTER_LINEAR`: no
antialiasing, so thin marks keep their contrast on a downsize).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from threecad.errors import ThreecadError

LIBRARIES = ("pil", "cv2")
COLOURS = ("rgb", "bgr")
GEOMETRIES = ("square", "shorter_side_crop")


@dataclass(frozen=True)
class Preprocess:
    size: int  # side of the square image the method sees
    library: str = "pil"
    colour: str = "rgb"  # channel order of the image tensor
    geometry: str = "square"
    resize_to: int = 0  # "shorter_side_crop": the shorter side's length before the crop

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ThreecadError(f"preprocess size must be a positive integer, got {self.size!r}")
        for name, value, valid in (("library", self.library, LIBRARIES), ("colour", self.colour, COLOURS),
                                   ("geometry", self.geometry, GEOMETRIES)):
            if value not in valid:
                raise ThreecadError(f"preprocess {name} must be one of {', '.join(valid)}, got {value!r}")
        if self.geometry == "shorter_side_crop" and not (isinstance(self.resize_to, int)
                                                          and self.resize_to >= self.size):
            raise ThreecadError(f"preprocess resize_to={self.resize_to}: the shorter side must be resized to at "
                                f"least the crop size {self.size}")
        if self.library == "cv2":
            opencv()  # a missing OpenCV is said before any image is read

    def key(self) -> str:
        """What the cache keys on beyond the size ('' for the default pipeline, so that caches
        built before pipelines were declared stay valid)."""
        if (self.library, self.colour, self.geometry) == ("pil", "rgb", "square"):
            return ""
        crop = f"{self.resize_to}" if self.geometry == "shorter_side_crop" else ""
        return f"{self.library}-{self.colour}-{self.geometry}{crop}"

    def as_dict(self) -> dict:
        out = asdict(self)
        if self.geometry != "shorter_side_crop":
            del out["resize_to"]
        return out

    # ------------------------------------------------------------------ geometry
    def _resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, before any crop."""
        if self.geometry == "square":
            return self.size, self.size
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize_to * long / short)
        return (self.resize_to, new_long) if height <= width else (new_long, self.resize_to)

    def _crop_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop in the resized image (torchvision's rounding)."""
        if self.geometry == "square":
            return 0, 0
        return int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))

    # ------------------------------------------------------------------ applied
    def image(self, rgb: Image.Image) -> np.ndarray:
        """An RGB PIL image -> (3, size, size) uint8 in the declared channel order."""
        height, width = self._resized_shape(rgb.height, rgb.width)
        if self.library == "pil":
            resized = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR))
        else:
            cv2 = opencv()
            resized = cv2.resize(np.asarray(rgb), (width, height), interpolation=cv2.INTER_LINEAR)
        top, left = self._crop_box(height, width)
        out = resized[top:top + self.size, left:left + self.size]
        if self.colour == "bgr":
            out = out[..., ::-1]
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def mask(self, mask: np.ndarray, out_size: int) -> np.ndarray:
        """A (H, W) 0/1 mask -> (1, out_size, out_size) uint8 0/1: the image's geometry at the
        image's size (nearest), then nearest to `out_size` (the evaluation's grid)."""
        im = Image.fromarray(mask.astype(np.uint8))
        if self.geometry == "shorter_side_crop":
            height, width = self._resized_shape(im.height, im.width)
            im = im.resize((width, height), Image.Resampling.NEAREST)
            top, left = self._crop_box(height, width)
            im = im.crop((left, top, left + self.size, top + self.size))
        if im.size != (out_size, out_size):
            im = im.resize((out_size, out_size), Image.Resampling.NEAREST)
        return np.asarray(im)[None]


def opencv():
    """The cv2 module, or one line saying how to install it (the references that read with OpenCV)."""
    try:
        import cv2
    except ImportError:
        raise ThreecadError("this preset resizes with OpenCV as its reference does: "
                            "pip install opencv-python-headless") from None
    return cv2
