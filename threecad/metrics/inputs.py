"""Turn what callers pass (numpy arrays or torch tensors, CPU or CUDA) into checked numpy arrays.

Why here: every metric entry point accepts the same shapes and fails the same way, with
one line that names what is wrong and what to do, instead of a NaN far downstream.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from threecad.errors import ThreecadError
from threecad.metrics import kernels


def to_numpy(x, name: str) -> np.ndarray:
    """A numpy view or copy of `x`; torch tensors are detached and moved to the CPU."""
    if type(x).__module__.split(".")[0] == "torch":
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype.is_floating_point and t.element_size() < 4:  # float16 / bfloat16
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists, exotic objects
        raise ThreecadError(f"metrics: {name} cannot be read as an array ({exc}); "
                            "pass a numpy array or a torch tensor") from None


def _squeeze_channel(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ThreecadError(f"metrics: {name} must have shape (N, H, W) (or (N, 1, H, W)); "
                            f"got shape {tuple(a.shape)}")
    if a.shape[0] and not a.shape[1] * a.shape[2]:
        raise ThreecadError(f"metrics: {name} hold empty images (shape {tuple(a.shape)})")
    return a


def as_maps(maps, name: str = "maps", check: bool = True) -> np.ndarray:
    """Anomaly maps as an (N, H, W) real array; float16 becomes float32; NaN/inf are refused
    (unless check=False: the caller then runs map_extremes, which checks too)."""
    a = _squeeze_channel(to_numpy(maps, name), name)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    if a.dtype.kind not in "fiu":
        raise ThreecadError(f"metrics: {name} must hold real numbers; got dtype {a.dtype}")
    if check:
        check_finite(a, name)
    return a


def map_extremes(maps: np.ndarray, name: str = "maps") -> tuple[np.ndarray, np.ndarray]:
    """Per-image min and max of (N, H, W) maps, refusing NaN/inf, reused as the default
    image score and as the streaming histogram's range.  Contiguous float32 maps take one
    compiled pass (kernels.row_extremes) when numba is there; others a numpy pass each."""
    flat = maps.reshape(len(maps), -1)
    if kernels.ENABLED and kernels.AVAILABLE and flat.dtype == np.float32 and flat.flags.c_contiguous:
        lo, hi, bad = kernels.row_extremes(flat)
        if bad >= 0:
            check_finite(maps, name)
        return lo, hi
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if maps.dtype.kind == "f" and not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        check_finite(maps, name)
    return lo, hi


def check_finite(a: np.ndarray, name: str) -> None:
    """Refuse NaN and inf, naming the first image that holds one (min/max: two cheap passes)."""
    if a.dtype.kind != "f" or a.size == 0:
        return
    if np.isfinite(a.min()) and np.isfinite(a.max()):
        return
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    bad = int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
    raise ThreecadError(f"metrics: {name} contain NaN or inf (first at index {bad} of this batch); "
                        "fix the method's output (e.g. np.nan_to_num) before evaluating")


def as_binary(x, name: str, what: str = "masks") -> np.ndarray:
    """A boolean copy/view of a 0/1 or boolean array; anything else is an error."""
    a = to_numpy(x, name)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "fiu":
        raise ThreecadError(f"metrics: {name} must be boolean or 0/1; got dtype {a.dtype}")
    if a.size and a.dtype.kind in "iu":
        ok = a.min() >= 0 and a.max() <= 1
    else:
        ok = bool(((a == 0) | (a == 1)).all())
    if not ok:
        vals = np.unique(a)[:6]
        raise ThreecadError(f"metrics: {name} must be boolean or 0/1, got values {vals.tolist()}; "
                            f"binarize the {what} first (3CAD masks: pixel > 127)")
    return a.astype(bool)


def as_masks(masks, shape: tuple[int, ...], name: str = "masks") -> np.ndarray:
    """Ground-truth masks as a boolean (N, H, W) array of exactly `shape`."""
    a = _squeeze_channel(to_numpy(masks, name), name)
    if a.shape != tuple(shape):
        raise ThreecadError(f"metrics: {name} shape {tuple(a.shape)} differs from maps shape "
                            f"{tuple(shape)}; resize masks (nearest) or maps (bilinear) to one size")
    return as_binary(a, name)


def as_vector(x, n: int, name: str) -> np.ndarray:
    """A 1-D array of length `n` (image scores or labels)."""
    a = to_numpy(x, name)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or len(a) != n:
        raise ThreecadError(f"metrics: {name} must be a vector of {n} values (one per image); "
                            f"got shape {tuple(np.shape(a))}")
    return a


def as_scores(x, n: int, name: str = "scores") -> np.ndarray:
    """Image scores: `n` finite real numbers."""
    a = as_vector(x, n, name)
    if a.dtype == np.bool_ or a.dtype.kind not in "fiu":
        raise ThreecadError(f"metrics: {name} must be real numbers; got dtype {a.dtype}")
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    check_finite(a, name)
    return a


def as_types(x: Sequence[str] | None, n: int) -> list[str] | None:
    """Defect-type names, one string per image ("good" for good images)."""
    if x is None:
        return None
    if isinstance(x, str) or len(x) != n:
        raise ThreecadError(f"metrics: defect_types must be a list of {n} strings (one per image, "
                            "'good' for good images)")
    out = [str(t) for t in x]
    if any(not t for t in out):
        raise ThreecadError("metrics: defect_types contains an empty name; use 'good' for good images")
    return out
