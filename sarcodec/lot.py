"""Separable lapped transform of the fast preset: one definition for numpy (codec) and torch (training).

Why this module exists: the default model's transforms cost ~27 k MACs per pixel and need torch,
whose import alone takes ~2 s; the fast preset must code a 4096 x 4096 image in about that time.
Its transform is a separable lapped transform with 8 x 8 blocks and 16-tap basis functions (each
block's basis overlaps its neighbours by 4 pixels on every side): analysis ``C = A P A^T`` over the
16 x 16 patch ``P`` around each block, synthesis ``P' = S^T C S`` overlap-added.  ``A`` and ``S``
(8 x 16 each) are learned; they start as the 8 x 8 DCT (zero overlap taps), so the untrained model
is a JPEG-like block transform coder that training turns into a lapped one.  Cost: 32 MACs per pixel
each way.

The functions below use only ``@``, ``reshape``, slicing and three small helpers, so the very same code
runs on numpy arrays (encode/decode, no torch) and on torch tensors (training, with gradients).
"""
from __future__ import annotations

import math

import numpy as np

B = 8  # block size: latent stride
OVERLAP = 4  # basis taps beyond the block on each side (basis length B + 2 * OVERLAP = 16)
GAIN = 32.0  # same convention as the default model: unit quantisation step = 1/32 of the range


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _perm(x, dims: tuple[int, ...]):
    return x.permute(*dims) if _is_torch(x) else x.transpose(dims)


def _overlap_add(first, second, axis: int):
    """Chunks k = first[k] + second[k-1] along ``axis`` (length n -> n + 1)."""
    if _is_torch(first):
        import torch

        zero = torch.zeros_like(first.narrow(axis, 0, 1))
        return torch.cat([first, zero], axis) + torch.cat([zero, second], axis)
    shape = list(first.shape)
    shape[axis] += 1
    out = np.empty(shape, dtype=first.dtype)
    n = first.shape[axis]
    lead = (slice(None),) * (axis % first.ndim)
    out[lead + (slice(0, n),)] = first
    out[lead + (slice(n, n + 1),)] = 0
    out[lead + (slice(1, n + 1),)] += second
    return out


def _take(x, idx: np.ndarray, axis: int):
    if _is_torch(x):
        import torch

        return x.index_select(axis, torch.from_numpy(idx).to(x.device))
    return np.take(x, idx, axis=axis)


def dct_matrix(n: int = B) -> np.ndarray:
    """Orthonormal DCT-II matrix (rows = basis functions)."""
    k = np.arange(n, dtype=np.float64)
    c = np.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def init_bases() -> tuple[np.ndarray, np.ndarray]:
    """(A, S), each (8, 16): the block DCT centred in the 16 taps, analysis scaled by sqrt(GAIN)."""
    a = np.zeros((B, B + 2 * OVERLAP))
    a[:, OVERLAP : OVERLAP + B] = dct_matrix()
    return (a * math.sqrt(GAIN)).astype(np.float32), (a / math.sqrt(GAIN)).astype(np.float32)


def _reflect_index(n: int, pad: int) -> np.ndarray:
    i = np.arange(-pad, n + pad)
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def analysis(x, a):
    """x: (..., H, W), H and W multiples of 8 -> coefficients (..., 64, H/8, W/8).

    Channel ``8 * i + j`` holds vertical frequency i and horizontal frequency j.  The image is
    mirrored by 4 pixels at its edges.
    """
    *lead, h, w = x.shape
    nh, nw = h // B, w // B
    x = _take(_take(x, _reflect_index(h, OVERLAP), x.ndim - 2), _reflect_index(w, OVERLAP), x.ndim - 1)
    a0, a1 = a[:, :B], a[:, B:]
    r = x.reshape(*lead, nh + 1, B, w + 2 * OVERLAP)  # 8-row chunks starting 4 rows above each block
    t = a0 @ r[..., :-1, :, :] + a1 @ r[..., 1:, :, :]  # (..., nh, 8i, W+8)
    t = t.reshape(*lead, nh, B, nw + 1, B)
    c = t[..., :-1, :] @ a0.T + t[..., 1:, :] @ a1.T  # (..., nh, 8i, nw, 8j)
    k = len(lead)
    c = _perm(c, tuple(range(k)) + (k + 1, k + 3, k, k + 2))  # (..., 8i, 8j, nh, nw)
    return c.reshape(*lead, B * B, nh, nw)


def synthesis(c, s):
    """Inverse of ``analysis`` with synthesis basis ``s``: (..., 64, nh, nw) -> (..., 8 nh, 8 nw)."""
    *lead, _, nh, nw = c.shape
    k = len(lead)
    y = _perm(c.reshape(*lead, B, B, nh, nw), tuple(range(k)) + (k + 2, k, k + 3, k + 1))  # (..., nh, 8i, nw, 8j)
    s0, s1 = s[:, :B], s[:, B:]
    # first / second 8 columns of each block's 16-column footprint -> 8-column chunks (..., nh, 8i, nw+1, 8)
    cols = _overlap_add(y @ s0, y @ s1, k + 2)
    u = cols.reshape(*lead, nh, B, (nw + 1) * B)[..., OVERLAP : OVERLAP + nw * B]  # (..., nh, 8i, W)
    # first / second 8 rows of the footprint -> 8-row chunks (..., nh+1, 8, W)
    rows = _overlap_add(s0.T @ u, s1.T @ u, k)
    return rows.reshape(*lead, (nh + 1) * B, nw * B)[..., OVERLAP : OVERLAP + nh * B, :]
