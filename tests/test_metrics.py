"""Metric functions against hand-computed values."""
from __future__ import annotations

import math

import numpy as np

from sarcodec import metrics


def test_psnr_hand_computed():
    a = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    b = np.array([[1, 10], [20, 27]], dtype=np.uint8)
    mse = (1 + 9) / 4
    assert math.isclose(metrics.psnr(a, b, 255.0), 10 * math.log10(255**2 / mse))
    assert metrics.psnr(a, a, 255.0) == float("inf")


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    assert math.isclose(metrics.ssim(a, a, 1.0), 1.0, abs_tol=1e-6)
    assert metrics.ssim(a, a + rng.normal(0, 0.2, a.shape), 1.0) < 0.9
    assert math.isclose(metrics.ms_ssim(a, a, 1.0), 1.0, abs_tol=1e-6)


def test_ssim_constant_images_hand_computed():
    # constant images: SSIM = luminance term (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1)
    a = np.full((32, 32), 0.5)
    b = np.full((32, 32), 0.25)
    c1 = (0.01 * 1.0) ** 2
    expect = (2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1)
    assert math.isclose(metrics.ssim(a, b, 1.0), expect, rel_tol=1e-6)


def test_bd_rate_known_answer():
    rates = [0.1, 0.3, 0.7, 1.5, 3.0]
    psnr = [25.0, 28.0, 31.0, 34.0, 37.0]
    assert math.isclose(metrics.bd_rate(rates, psnr, [r * 0.8 for r in rates], psnr), -20.0, abs_tol=1e-6)
    assert math.isclose(metrics.bd_rate(rates, psnr, [r * 1.5 for r in rates], psnr), 50.0, abs_tol=1e-6)
    assert math.isclose(metrics.bd_psnr(rates, psnr, rates, [p + 0.7 for p in psnr]), 0.7, abs_tol=1e-9)
    assert math.isnan(metrics.bd_rate([1, 2], [10, 11], [1, 2], [30, 31]))  # no PSNR overlap


def test_enl_and_ratio_on_gamma_speckle():
    rng = np.random.default_rng(1)
    looks = 4
    inten = rng.gamma(looks, 1.0 / looks, (256, 256))
    wins = metrics.homogeneous_windows(inten, 16, 16)
    assert len(wins) == 16
    # on pure speckle every window is homogeneous: ENL close to the number of looks
    assert abs(metrics.enl(inten, [(r, c) for r in range(0, 256, 16) for c in range(0, 256, 16)]) - looks) < 0.4
    m, s = metrics.ratio_stats(inten, inten * 2)
    assert math.isclose(m, 2.0) and math.isclose(s, 0.0, abs_tol=1e-12)
    assert math.isclose(metrics.bias_db(np.zeros(4), np.full(4, 1.5)), 1.5)
