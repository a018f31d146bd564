"""Fidelity of a generator's images to a reference's on the same inputs (a quantized file against its fp32
source): PSNR and SSIM on the uint8 images a user sees. SSIM is Wang et al. (2004) with scikit-image's standard
settings (Gaussian window sigma 1.5 truncated at 3.5 sigma, K1 0.01, K2 0.03, population covariance, data range
255), the mean over pixels, channels and images; tests/test_spec_inputs.py checks it against skimage."""

from __future__ import annotations

import numpy as np

PSNR_CAP = 100.0  # dB for identical images (an infinite PSNR is not a number JSON can hold)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the per-image PSNR (dB) of uint8 [N, H, W, C] images, identical images capped at
    PSNR_CAP."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = (d * d).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        per = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), PSNR_CAP)
    return float(np.minimum(per, PSNR_CAP).mean())


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM of uint8 [N, H, W, C] images."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)
    sig = (0, sigma, sigma, 0)  # blur H and W only

    def f(v):
        return gaussian_filter(v, sig, truncate=3.5, mode="reflect")
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    r = int(3.5 * sigma + 0.5)  # skimage crops the border the window does not cover
    if s.shape[1] > 2 * r and s.shape[2] > 2 * r:
        s = s[:, r:-r, r:-r, :]
    return float(s.mean())


def fidelity(images: np.ndarray, reference: np.ndarray) -> dict:
    return {"psnr_fp32": psnr(images, reference), "ssim_fp32": ssim(images, reference)}
