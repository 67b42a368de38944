"""Perlin noise and the anomaly masks cut from it.

Why: every draw's mask is thresholded Perlin noise, but each reference renders it its own way
(a random lattice phase evaluated at rotated coordinates, or DRAEM's pixel-aligned lattice
rotated as an image); both renderings, and the image rotation with zero corners, live here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(res_x: torch.Tensor, res_y: torch.Tensor, angle: torch.Tensor, size: int,
                 generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched 2-D gradient (Perlin) noise, (N, size, size), roughly in [-1, 1].

    Sample i has `res_x[i]` x `res_y[i]` lattice cells across the image and is rotated by
    `angle[i]` radians about the centre. Rotation is done by evaluating the noise at
    rotated coordinates over a lattice large enough to cover them, so no corner is left
    empty (an image rotation would have to fill corners with a constant).
    """
    n = int(res_x.shape[0])
    rmax = int(max(int(res_x.max()), int(res_y.max()), 1))
    lat = 3 * rmax + 3  # rotated coordinates span [-0.21 r, 1.21 r]; offset r, +1 shift, +1 corner
    theta = torch.rand(n, lat * lat, generator=generator) * (2 * math.pi)
    shift = torch.rand(n, 2, generator=generator)  # random lattice phase
    grads = torch.stack((theta.cos(), theta.sin()), dim=-1).to(device)  # (N, L*L, 2)
    rx = res_x.to(device=device, dtype=torch.float32).view(n, 1, 1)
    ry = res_y.to(device=device, dtype=torch.float32).view(n, 1, 1)
    cos = angle.to(device=device, dtype=torch.float32).cos().view(n, 1, 1)
    sin = angle.to(device=device, dtype=torch.float32).sin().view(n, 1, 1)
    shift = shift.to(device)
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    u = (cos * xx - sin * yy + 0.5) * rx + rx + shift[:, 0].view(n, 1, 1)
    v = (sin * xx + cos * yy + 0.5) * ry + ry + shift[:, 1].view(n, 1, 1)
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    iu, iv = u0.long(), v0.long()

    def corner(du: int, dv: int) -> torch.Tensor:
        idx = ((iv + dv) * lat + (iu + du)).view(n, -1)
        g = torch.gather(grads, 1, idx.unsqueeze(-1).expand(-1, -1, 2)).view(n, size, size, 2)
        return g[..., 0] * (fu - du) + g[..., 1] * (fv - dv)

    wu, wv = _fade(fu), _fade(fv)
    top = torch.lerp(corner(0, 0), corner(1, 0), wu)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), wu)
    return math.sqrt(2.0) * torch.lerp(top, bottom, wv)


def lattice_perlin(angles: torch.Tensor, res_rows: torch.Tensor, res_cols: torch.Tensor, size: int) -> torch.Tensor:
    """DRAEM's `rand_perlin_2d_np`, batched: (N, size, size).

    Sample i has `res_rows[i]` x `res_cols[i]` lattice cells; pixel (r, c) lies at
    (r res_rows / size, c res_cols / size) in cell units, so lattice points fall on pixels
    (where the noise is 0) and there is no random phase. `angles` (N, L, L) holds the angle of
    the gradient (cos, sin) at lattice point (a, b) in [:, a, b], its cosine paired with the row
    offset as in the reference (L > every resolution; each sample uses its first res + 1 rows and
    columns). Rows and columns interpolate independently, so the noise is two matrix products
    per gradient component: (row weights) @ gradients @ (column weights)^T.
    """
    n, lat = angles.shape[0], angles.shape[-1]
    device = angles.device

    def weights(res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, size, L): each pixel's interpolation weights on its cell's two lattice lines, and
        those weights times the pixel's offset from each line."""
        t = torch.arange(size, device=device, dtype=torch.float32).view(1, size)
        t = t * res.to(device=device, dtype=torch.float32).view(n, 1) / size
        cell = t.floor()
        f = t - cell
        w = _fade(f)
        idx = cell.long().unsqueeze(-1)
        lerp = torch.zeros(n, size, lat, device=device)
        lerp.scatter_(2, idx, (1 - w).unsqueeze(-1)).scatter_(2, idx + 1, w.unsqueeze(-1))
        ramp = torch.zeros(n, size, lat, device=device)
        ramp.scatter_(2, idx, ((1 - w) * f).unsqueeze(-1)).scatter_(2, idx + 1, (w * (f - 1)).unsqueeze(-1))
        return lerp, ramp

    row_lerp, row_ramp = weights(res_rows)
    col_lerp, col_ramp = weights(res_cols)
    along_rows = row_ramp @ angles.cos() @ col_lerp.transpose(1, 2)
    along_cols = row_lerp @ angles.sin() @ col_ramp.transpose(1, 2)
    return math.sqrt(2.0) * (along_rows + along_cols)


def draem_masks(n: int, size: int, generator: torch.Generator, device: torch.device | str = "cpu",
                min_scale: int = 0, max_scale: int = 5, threshold: float = 0.5) -> torch.Tensor:
    """The masks of DRAEM's `augment_image` (and of RealNet's and DeSTSeg's loaders), (N,1,size,size)
    0/1: `rand_perlin_2d_np` with 2^t cells per axis, t in min_scale..max_scale, rotated as an image
    by U(-90, 90) degrees (zero corners), > threshold; an empty mask is kept."""
    rows = 2 ** torch.randint(min_scale, max_scale + 1, (n,), generator=generator)
    cols = 2 ** torch.randint(min_scale, max_scale + 1, (n,), generator=generator)
    lat = int(max(rows.max(), cols.max())) + 1
    angles = torch.rand(n, lat, lat, generator=generator) * (2 * math.pi)
    turn = torch.rand(n, generator=generator) * math.pi - math.pi / 2
    noise = lattice_perlin(angles.to(device), rows, cols, size)
    return (rotate_zero_fill(noise.unsqueeze(1), turn) > threshold).float()


def rotate(x: torch.Tensor, angle: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Rotate each (N,C,H,W) image about its centre by its angle (radians), bilinear; outside the
    image `padding` ("zeros", or "reflection")."""
    n = x.shape[0]
    c, s = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def rotate_zero_fill(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each (N,C,H,W) image about its centre by its angle (radians), zeros outside."""
    return rotate(x, angle, "zeros")

