"""Compiled (numba) passes of bounded exact metrics (threecad.metrics.runs, bounded): copying a
batch's normal scores, coding sorted float32 runs as byte steps and back, and counting a sorted
run's scores per defect-score slot. Kept apart from threecad.metrics.kernels (the histogram and
labelling passes) so that each module holds one engine's kernels; `AVAILABLE` and `ENABLED` are
that module's: numba is one optional dependency, switched on and off in one place.
"""
from __future__ import annotations

import numpy as np

from threecad.metrics.kernels import AVAILABLE

if AVAILABLE:
    from numba import njit

    _I32 = np.int32

    @njit(cache=True, nogil=True)
    def copy_normals(flat, mask, out, at):
        """Copy the scores of `flat` whose mask byte is 0 to out[at:], in order; returns the new end."""
        for j in range(flat.size):
            if mask[j] == 0:
                out[at] = flat[j]
                at += 1
        return at

    @njit(cache=True, nogil=True)
    def count_slots(x, u, counts):
        """Add ascending scores x to their slots among ascending distinct scores u: counts[2k + 1]
        holds the scores equal to u[k], counts[2k] those strictly between u[k - 1] and u[k]
        (counts[0]: below u[0], counts[2 len(u)]: above the last).  One merge of two sorted lists."""
        m = u.size
        n = x.size
        if n == 0:
            return
        lo, hi = 0, m
        while lo < hi:                        # k: the first u >= x[0]
            mid = (lo + hi) >> 1
            if u[mid] < x[0]:
                lo = mid + 1
            else:
                hi = mid
        k = lo
        j = 0
        while j < n:
            v = x[j]
            while k < m and u[k] < v:
                k += 1
            if k == m:
                counts[2 * m] += n - j
                return
            b = u[k]
            c = 0
            if b == v:
                while j < n and x[j] == b:
                    c += 1
                    j += 1
                counts[2 * k + 1] += c
            else:
                while j < n and x[j] < b:
                    c += 1
                    j += 1
                counts[2 * k] += c


    @njit(cache=True, nogil=True)
    def encode_sorted_f32(bits, prev, deltas, escapes):
        """Ascending float32 scores (their int32 bits) as one byte each: the step from the
        previous order-preserving key (`prev` before the first), or 255 with the key itself in
        `escapes`; -0.0 is stored as +0.0 (they compare equal).  Returns (escapes used, or -1
        when more than `escapes` holds would be needed; the last key)."""
        n_esc = 0
        for j in range(bits.size):
            v = bits[j]
            key = np.int64(v ^ ((v >> 31) & 0x7FFFFFFF))
            if key == -1:
                key = 0
            step = key - prev
            if 0 <= step < 255:
                deltas[j] = np.uint8(step)
            else:
                if n_esc == escapes.size:
                    return -1, prev
                deltas[j] = np.uint8(255)
                escapes[n_esc] = _I32(key)
                n_esc += 1
            prev = key
        return n_esc, prev

    @njit(cache=True, nogil=True)
    def decode_sorted_f32(deltas, escapes, at_esc, key, out):
        """Inverse of encode_sorted_f32 for one piece: `key` is the last key before the piece,
        at_esc the escapes read before it; fills out (int32 bits); returns (at_esc, key)."""
        for j in range(deltas.size):
            d = deltas[j]
            if d == 255:
                key = np.int64(escapes[at_esc])
                at_esc += 1
            else:
                key += d
            k = _I32(key)
            out[j] = k ^ ((k >> 31) & 0x7FFFFFFF)
        return at_esc, key
