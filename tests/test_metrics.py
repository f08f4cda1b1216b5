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
    m, s = metrics.ratio_stats(inten, inten * 2)  # reference / reconstruction
    assert math.isclose(m, 0.5) and math.isclose(s, 0.0, abs_tol=1e-12)
    assert math.isclose(metrics.bias_db(np.zeros(4), np.full(4, 1.5)), 1.5)


def test_level_metrics_tell_log_smoothing_from_linear_smoothing():
    """Single-look speckle over two reflectivities. Averaging each 32x32 block in the log domain
    (what an MSE codec of the dB image converges to) keeps the mean dB but lowers the backscatter by
    2.5 dB (Euler's constant in dB); averaging intensities keeps the backscatter and raises the mean dB."""
    rng = np.random.default_rng(2)
    sigma = np.where(np.arange(256)[None, :] < 128, 1.0, 10.0) * np.ones((256, 1))
    inten = sigma * rng.exponential(1.0, (256, 256))

    def block_mean(x):
        return np.kron(x.reshape(8, 32, 8, 32).mean(axis=(1, 3)), np.ones((32, 32)))

    log_smooth = np.exp(block_mean(np.log(inten)))
    lin_smooth = block_mean(inten)
    euler_db = 10 * np.log10(np.exp(np.euler_gamma))  # 2.507 dB
    db = lambda x: 10 * np.log10(x)  # noqa: E731
    assert abs(metrics.bias_db(db(inten), db(log_smooth))) < 1e-9
    assert abs(metrics.level_db(inten, log_smooth) + euler_db) < 0.1
    assert abs(metrics.local_level_db(inten, log_smooth) - euler_db) < 0.3
    assert abs(metrics.bias_db(db(inten), db(lin_smooth)) - euler_db) < 0.1
    assert abs(metrics.level_db(inten, lin_smooth)) < 1e-9 and metrics.local_level_db(inten, lin_smooth) < 1e-9
    # the ratio image of an unbiased reflectivity estimate: mean 1, the speckle's std (1 look)
    m, s = metrics.ratio_stats(inten, sigma)
    assert abs(m - 1) < 0.02 and abs(s - 1) < 0.05
    # blocks with an invalid pixel are left out; none left: nan
    valid = np.ones((256, 256), bool)
    valid[:, :128] = False
    assert metrics.local_level_db(inten, np.where(valid, inten, 0), valid) == 0.0
    assert math.isnan(metrics.local_level_db(inten[:16, :16], inten[:16, :16]))
