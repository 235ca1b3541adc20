"""Per-frame image quality metrics: PSNR and SSIM (Tables 1, 7, 8, 9 report both).

Both take images with the spatial and channel axes last, `(..., H, W, C)`, and reduce
those three, so a video batch `(B, T, H, W, C)` gives per-frame scores `(B, T)`. Pixel
range is `data_range` (2.0 for our [-1, 1] videos, 1.0 for [0, 1], 255.0 for uint8).

SSIM follows Wang et al. (2004) as most papers compute it (and `skimage`'s
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`):
an 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, valid region only,
averaged over pixels and channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB over the last three axes: (..., H, W, C) -> (...).
    Identical images give a finite large value (MSE floored at 1e-10 * range^2)."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-10 * data_range**2))


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (r / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable 'valid' filtering of (..., H, W, C) along H then W, as shifted adds (no
    grouped convolution: those are slow on XLA CPU, DESIGN section 7)."""
    k = len(taps)
    h, w = x.shape[-3], x.shape[-2]
    out = sum(x[..., i : i + h - k + 1, :, :] * float(t) for i, t in enumerate(taps))
    return sum(out[..., :, j : j + w - k + 1, :] * float(t) for j, t in enumerate(taps))


def ssim(
    x: jax.Array,
    y: jax.Array,
    data_range: float = 2.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Structural similarity over the last three axes: (..., H, W, C) -> (...).

    H and W must be at least `window`.
    """
    if min(x.shape[-3], x.shape[-2]) < window:
        raise ValueError(f"SSIM needs H, W >= window={window}, got {x.shape[-3]}x{x.shape[-2]}")
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    taps = _gaussian_taps(window, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return jnp.mean(num / den, axis=(-3, -2, -1))
