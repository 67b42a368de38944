"""DRAEM's texture augmentations: the ten imgaug operations of its `randAugmenter`, in NumPy,
OpenCV and PIL.

Why: the "draem" draw must give what imgaug 0.4.0 gives on uint8 textures without depending on
imgaug; the synthesizer draws each operation's parameters and applies them through
`draem_augmentation`.
"""
from __future__ import annotations

import math

import numpy as np

from threecad.preprocess import opencv

DRAEM_AUGMENTATIONS = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize",
                       "posterize", "invert", "autocontrast", "equalize", "rotate")
BRIGHTNESS_SPACES = ("YCrCb", "HSV", "HLS", "Lab", "Luv", "YUV")  # imgaug's WithBrightnessChannels choices


def draem_augmentation(name: str, image: np.ndarray, **params) -> np.ndarray:
    """One of DRAEM's imgaug augmentations (`DRAEM_AUGMENTATIONS`) of an (H, W, 3) uint8 image
    with its parameters given (`AnomalySynthesizer` draws them); written to give imgaug 0.4.0's
    output, which treats the array as RGB whatever its channel order (as in the reference), and
    takes real parameters in float32 as imgaug samples them."""
    from PIL import Image, ImageEnhance, ImageOps

    if name == "gamma":  # 255 (v / 255)^gamma per channel, truncated
        ramp = np.linspace(0, 1.0, 256, dtype=np.float32)
        tables = [np.clip(ramp ** np.float32(g) * 255, 0, 255).astype(np.uint8) for g in params["gammas"]]
        return np.stack([table[image[..., c]] for c, table in enumerate(tables)], axis=-1)
    if name == "brightness":  # multiply and add (lookup tables) on one colour space's brightness channel
        cv2 = opencv()
        forward, back, channel = _brightness_space(params["space"])
        converted = cv2.cvtColor(image, forward)
        levels = np.arange(256)
        mul = np.clip(levels.astype(np.float32) * np.float32(params["mul"]), 0, 255).astype(np.uint8)
        add = np.clip(levels + int(np.clip(np.round(np.float32(params["add"])), -255, 255)), 0, 255).astype(np.uint8)
        first, second = (add, mul) if params["add_first"] else (mul, add)
        converted[..., channel] = second[first[converted[..., channel]]]
        return cv2.cvtColor(converted, back)
    if name == "sharpness":
        return np.array(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(float(np.float32(params["factor"]))))
    if name == "hue_saturation":  # OpenCV's HSV: hue 0..179, the shift scaled from 0..255 as imgaug does
        cv2 = opencv()
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
        hue = int((np.array([params["hue"]], dtype=np.float32) / 255.0 * 180.0)[0])
        hsv[..., 0] = (hsv[..., 0] + hue) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + int(params["saturation"]), 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if name == "solarize":  # values at or above the threshold inverted, when applied at all
        if not params["apply"]:
            return image
        return np.where(image >= int(np.float32(params["threshold"])), 255 - image, image).astype(np.uint8)
    if name == "posterize":  # the top `bits` bits kept
        return image & np.uint8((0xFF << (8 - int(params["bits"]))) & 0xFF)
    if name == "invert":
        return 255 - image
    if name == "autocontrast":  # per channel, `cutoff` % of the pixels clipped at each end
        return np.array(ImageOps.autocontrast(Image.fromarray(image), cutoff=float(params["cutoff"])))
    if name == "equalize":
        return _equalize(image)
    if name == "rotate":  # about the centre, bilinear, black corners
        cv2 = opencv()
        height, width = image.shape[:2]
        return cv2.warpAffine(image, _imgaug_rotation(params["degrees"], height, width)[:2], (width, height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    raise ValueError(f"unknown DRAEM augmentation {name}")


def _brightness_space(space: str) -> tuple[int, int, int]:
    """(conversion from RGB, conversion back, brightness channel) of one of `BRIGHTNESS_SPACES`."""
    cv2 = opencv()
    return {"YCrCb": (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0), "HSV": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
            "HLS": (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1), "Lab": (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
            "Luv": (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0), "YUV": (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0)}[space]


def _equalize(image: np.ndarray) -> np.ndarray:
    """imgaug's Equalize for images of 64 x 64 and larger: PIL's lookup table per channel, except
    that the step leaves out bin 255 (PIL: the last non-empty bin)."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        step = int(hist[:-1].sum()) // 255
        if np.count_nonzero(hist) <= 1 or not step:
            out[..., c] = channel
            continue
        lut = (step // 2 + np.concatenate(([0], np.cumsum(hist)[:-1]))) // step
        out[..., c] = np.minimum(lut, 255).astype(np.uint8)[channel]
    return out


def _imgaug_rotation(degrees: float, height: int, width: int) -> np.ndarray:
    """imgaug's Affine(rotate=degrees) matrix (3 x 3, source to output pixels), composed in its order
    from the angle in float32 as imgaug samples it. The entries stay float64, as under the reference's
    NumPy 1 (under NumPy 2 imgaug rounds them to float32, which moves a few pixels by one level)."""
    def rotation(rad: float) -> np.ndarray:
        return np.array([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0], [0.0, 0.0, 1.0]])

    def shift(x: float, y: float) -> np.ndarray:
        return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])

    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    matrix = shift(-cx, -cy)
    # its shear-along-y step: a quarter turn (imgaug's 3.141592 / 2) there and back around a zero shear
    for step in (rotation(-3.141592 / 2), rotation(3.141592 / 2), rotation(float(np.deg2rad(np.float32(degrees)))),
                 shift(cx, cy)):
        matrix = step @ matrix
    return matrix
