"""Image-quality and rate metrics, defined once and shared by tests, bench and training validation.

Definitions (all on float64 unless noted):

* ``psnr(a, b, peak)``: 10*log10(peak^2 / MSE).  ``peak`` is the data range of the reference
  (255 for uint8, max-min for others unless given).
* ``ssim`` / ``ms_ssim``: Wang et al. 2003/2004 with an 11x11 Gaussian window (sigma 1.5, separable, float32),
  K1=0.01, K2=0.03, computed with the given data range; MS-SSIM uses the standard five weights
  (fewer scales for small images, weights renormalised).
* ``bias_db``: mean(b_dB - a_dB) over valid pixels: the shift of the dB image.  Not a level
  bias on speckled data: the mean of log-intensity lies below the log of the mean intensity by up
  to 2.5 dB (single look), so a codec that smooths in the log domain keeps this at 0 while lowering
  the backscatter, and one that smooths linear values raises it while keeping the backscatter.
* ``level_db``: 10*log10(mean(b) / mean(a)) of *intensity* over valid pixels: the bias of the
  mean backscatter (what a calibrated sigma0 product must keep).
* ``local_level_db``: the same per ``block`` x ``block`` block of valid pixels, RMS over blocks:
  how far regional backscatter levels (a field, a parcel) move.
* ``enl``: equivalent number of looks mean^2/var of *intensity* over homogeneous windows, found
  automatically as the windows with the lowest coefficient of variation of the reference.
* ``ratio_stats``: mean and std of the ratio image a/b (reference over reconstruction intensity,
  the despeckling literature's ratio image): 1 and 0 for a lossless codec; a reconstruction
  that estimates the reflectivity without bias keeps the mean at 1 and leaves the speckle in
  the ratio (std ~ 1/sqrt(looks)).
* ``bd_rate`` / ``bd_psnr``: Bjontegaard deltas with cubic fits of log-rate vs PSNR integrated over
  the overlapping PSNR (resp. log-rate) range.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def mse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray, peak: float | None = None) -> float:
    a = a.astype(np.float64)
    if peak is None:
        peak = float(a.max() - a.min()) or 1.0
    m = mse(a, b)
    return float("inf") if m == 0 else 10.0 * math.log10(peak * peak / m)


def _gauss_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def _ssim_maps(a: torch.Tensor, b: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    size = min(11, min(a.shape[-2:]))
    size = size if size % 2 else size - 1
    g = _gauss_1d(max(1, size)).to(a)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a = _blur(a, g)
    mu_b = _blur(b, g)
    saa = _blur(a * a, g) - mu_a**2
    sbb = _blur(b * b, g) - mu_b**2
    sab = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * sab + c2) / (saa + sbb + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return lum * cs, cs


def _as4d(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    # float32: the filters run on fast kernels; SSIM is reported to a few decimals
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    if data_range is None:
        data_range = float(np.max(a) - np.min(a)) or 1.0
    s, _ = _ssim_maps(_as4d(a), _as4d(b), data_range)
    return float(s.mean())


MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    if data_range is None:
        data_range = float(np.max(a) - np.min(a)) or 1.0
    x, y = _as4d(a), _as4d(b)
    levels = max(1, min(len(MS_WEIGHTS), int(math.log2(max(1, min(x.shape[-2:]) // 11))) + 1))
    w = torch.tensor(MS_WEIGHTS[:levels], dtype=torch.float32)
    w = w / w.sum()
    vals = []
    for i in range(levels):
        s, cs = _ssim_maps(x, y, data_range)
        vals.append((s if i == levels - 1 else cs).mean().clamp_min(1e-8))
        if i < levels - 1:
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
    return float(torch.prod(torch.stack(vals) ** w))


def bias_db(ref_db: np.ndarray, rec_db: np.ndarray) -> float:
    return float(np.mean(rec_db.astype(np.float64) - ref_db.astype(np.float64)))


def level_db(ref_int: np.ndarray, rec_int: np.ndarray) -> float:
    """Bias of the mean intensity in dB (nan without positive reference intensity)."""
    m = float(np.mean(ref_int, dtype=np.float64)) if ref_int.size else 0.0
    return 10.0 * math.log10(max(float(np.mean(rec_int, dtype=np.float64)), 1e-300) / m) if m > 0 else float("nan")


def block_means(x: np.ndarray, block: int) -> np.ndarray:
    """Means (float64) of the whole ``block`` x ``block`` blocks of a 2-D array (a partial last row/column is left out)."""
    h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
    return x[:h, :w].astype(np.float64).reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def local_level_db(ref_int: np.ndarray, rec_int: np.ndarray, valid: np.ndarray | None = None, block: int = 32) -> float:
    """RMS over the ``block`` x ``block`` blocks (all pixels valid) of their mean-intensity bias in dB."""
    if ref_int.shape[0] < block or ref_int.shape[1] < block:
        return float("nan")
    full = block_means(np.ones_like(ref_int) if valid is None else valid, block) == 1.0
    a, b = block_means(ref_int, block)[full], block_means(rec_int, block)[full]
    ok = (a > 0) & (b > 0)
    return float(np.sqrt(np.mean((10.0 * np.log10(b[ok] / a[ok])) ** 2))) if ok.any() else float("nan")


def homogeneous_windows(intensity: np.ndarray, win: int = 16, count: int = 8) -> list[tuple[int, int]]:
    """Top-left corners of the ``count`` windows with the lowest coefficient of variation."""
    h, w = intensity.shape
    if h < win or w < win:
        return []
    cands = []
    for r in range(0, h - win + 1, win):
        for c in range(0, w - win + 1, win):
            blk = intensity[r : r + win, c : c + win].astype(np.float64)
            m = blk.mean()
            if m > 0 and np.all(np.isfinite(blk)):
                cands.append((blk.std() / m, r, c))
    cands.sort()
    return [(r, c) for _, r, c in cands[:count]]


def enl(intensity: np.ndarray, windows: list[tuple[int, int]], win: int = 16) -> float:
    """Mean over windows of mean^2/var of the intensity (nan if no window)."""
    vals = []
    for r, c in windows:
        blk = intensity[r : r + win, c : c + win].astype(np.float64)
        v = blk.var()
        if v > 0:
            vals.append(blk.mean() ** 2 / v)
    return float(np.mean(vals)) if vals else float("nan")


def ratio_stats(ref_int: np.ndarray, rec_int: np.ndarray) -> tuple[float, float]:
    ok = rec_int > 0
    r = ref_int[ok].astype(np.float64) / rec_int[ok].astype(np.float64)
    return (float(r.mean()), float(r.std())) if r.size else (float("nan"), float("nan"))


def _mean_gap(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> float:
    """Mean of (fit2 - fit1) over the overlapping x range, fits of y against x (cubic at most)."""
    deg = min(3, len(x1) - 1, len(x2) - 1)
    if deg < 1:
        return float("nan")
    lo, hi = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if not hi > lo:
        return float("nan")
    i1, i2 = (np.polyint(np.polyfit(x, y, deg)) for x, y in ((x1, y1), (x2, y2)))
    return float((np.polyval(i2, hi) - np.polyval(i2, lo) - np.polyval(i1, hi) + np.polyval(i1, lo)) / (hi - lo))


def bd_rate(r1: list[float], p1: list[float], r2: list[float], p2: list[float]) -> float:
    """Average bitrate difference (%) of curve 2 vs curve 1 at equal PSNR (negative: 2 is better)."""
    avg = _mean_gap(np.asarray(p1, float), np.log(np.asarray(r1, float)), np.asarray(p2, float), np.log(np.asarray(r2, float)))
    return float((math.exp(avg) - 1.0) * 100.0) if math.isfinite(avg) else float("nan")


def bd_psnr(r1: list[float], p1: list[float], r2: list[float], p2: list[float]) -> float:
    """Average PSNR difference (dB) of curve 2 vs curve 1 at equal rate (positive: 2 is better)."""
    return _mean_gap(np.log(np.asarray(r1, float)), np.asarray(p1, float), np.log(np.asarray(r2, float)), np.asarray(p2, float))
