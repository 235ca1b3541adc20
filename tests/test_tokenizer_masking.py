"""D5 masking schedules and masks, and the D4 loss terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.metrics.image import psnr, ssim
from motionaura_jax.tokenizer import losses
from motionaura_jax.tokenizer.masking import (
    MaskingConfig,
    cosine_schedule,
    mask_video,
    patch_mask,
)

KEY = jax.random.key(0)
# jit: eager dispatch of the many small mask ops is slower than compiling them.
jit_mask_video = jax.jit(mask_video, static_argnums=3)
jit_patch_mask = jax.jit(patch_mask, static_argnums=(1, 3))


def test_cosine_schedule_end_points():
    # B.2.2: patch ratio 20% -> 60%, frame masking 10% -> 50%.
    np.testing.assert_allclose(cosine_schedule(0, 1000, 0.2, 0.6), 0.2, atol=1e-7)
    np.testing.assert_allclose(cosine_schedule(1000, 1000, 0.2, 0.6), 0.6, atol=1e-7)
    np.testing.assert_allclose(cosine_schedule(500, 1000, 0.2, 0.6), 0.4, atol=1e-6)
    np.testing.assert_allclose(cosine_schedule(5000, 1000, 0.1, 0.5), 0.5, atol=1e-7)
    np.testing.assert_allclose(cosine_schedule(0, 1000, 0.1, 0.5), 0.1, atol=1e-7)
    steps = jnp.arange(0, 1001, 50)
    values = cosine_schedule(steps, 1000, 0.1, 0.5)
    assert bool(jnp.all(jnp.diff(values) > 0))


@pytest.mark.parametrize("ratio", [0.2, 0.6])
def test_patch_mask_ratio_and_patch_structure(ratio):
    mask = np.asarray(jit_patch_mask(KEY, (64, 3, 64, 64), ratio, (16, 32)))
    assert abs(mask.mean() - ratio) < 0.03
    for clip in mask:
        blocks16 = clip.reshape(3, 4, 16, 4, 16)
        # Every 16x16 cell is all-or-nothing (32-patches are unions of 16-cells).
        assert np.all(blocks16.min(axis=(2, 4)) == blocks16.max(axis=(2, 4)))
    # Both patch sizes occur: some clip has a 16-cell that differs from its 32-cell mates.
    cells = mask.reshape(64, 3, 4, 16, 4, 16)[:, :, :, 0, :, 0].reshape(64, 3, 2, 2, 2, 2)
    uniform32 = np.all(cells == cells[:, :, :, :1, :, :1], axis=(3, 5)).all(axis=(1, 2, 3))
    assert uniform32.any() and not uniform32.all()


def test_mask_video_blanks_one_frame_and_reports_it():
    video = jnp.ones((256, 5, 32, 32, 3))
    cfg = MaskingConfig(patch=False, frame=True, frame_prob=(0.1, 0.5), total_steps=100)
    masked, info = jit_mask_video(KEY, video, 100, cfg)  # end of schedule: p = 0.5
    blank = np.asarray(jnp.all(masked == 0, axis=(2, 3, 4)))
    has = np.asarray(info["has_masked"])
    assert abs(has.mean() - 0.5) < 0.1
    np.testing.assert_array_equal(blank.sum(1), has.astype(int))
    rows = np.nonzero(has)[0]
    np.testing.assert_array_equal(blank[rows].argmax(1), np.asarray(info["frame_index"])[rows])
    assert set(np.asarray(info["frame_index"])[rows]) == set(range(5))  # uniform over frames
    np.testing.assert_allclose(info["frame_prob"], 0.5, atol=1e-6)


def test_masking_switches_off():
    video = jax.random.uniform(KEY, (4, 5, 32, 32, 3), minval=0.1, maxval=1.0)
    off = MaskingConfig(patch=False, frame=False)
    masked, info = jit_mask_video(KEY, video, 10, off)
    np.testing.assert_array_equal(masked, video)
    assert not bool(info["has_masked"].any())
    only_patch = MaskingConfig(patch=True, frame=False, patch_sizes=(16,), total_steps=1)
    masked, info = jit_mask_video(KEY, video, 1, only_patch)
    frac = float(jnp.mean(masked == 0))
    assert 0.45 < frac < 0.75 and not bool(info["has_masked"].any())


def test_mfi_loss_counts_only_masked_clips():
    logits = jnp.asarray([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [9.0, -9.0, 0.0]])
    idx = jnp.asarray([0, 0, 1])
    has = jnp.asarray([True, False, False])
    loss, acc = losses.mfi_loss(logits, idx, has)
    expected = -jax.nn.log_softmax(logits[0])[0]
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(acc, 1.0)
    zero, _ = losses.mfi_loss(logits, idx, jnp.zeros(3, bool))
    assert float(zero) == 0.0


def test_tokenizer_loss_uses_clean_target():
    clean = jnp.ones((2, 5, 16, 16, 3))
    outputs = {
        "recon": clean,
        "quantizer": {"loss": jnp.asarray(0.5), "commit_loss": jnp.asarray(2.0)},
        "mfi_logits": jnp.zeros((2, 5)),
    }
    info = {"frame_index": jnp.asarray([1, 2]), "has_masked": jnp.asarray([True, False])}
    total, metrics = losses.tokenizer_loss(outputs, clean, info, mfi_weight=1.0)
    np.testing.assert_allclose(metrics["rec_loss"], 0.0)
    np.testing.assert_allclose(total, 0.5 + np.log(5.0), rtol=1e-6)
    total_no_mfi, metrics = losses.tokenizer_loss(outputs, clean, info, mfi_weight=0.0)
    np.testing.assert_allclose(total_no_mfi, 0.5)
    assert "mfi_loss" not in metrics


def test_psnr_and_ssim():
    x = jax.random.uniform(KEY, (2, 3, 32, 32, 3), minval=-1, maxval=1)
    noise = 0.1 * jax.random.normal(jax.random.key(1), x.shape)
    mse = np.mean(np.asarray(noise) ** 2, axis=(2, 3, 4))
    np.testing.assert_allclose(psnr(x + noise, x), 10 * np.log10(4.0 / mse), rtol=1e-4)
    assert psnr(x, x).shape == (2, 3)
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)
    s_noisy, s_noisier = ssim(x + noise, x), ssim(x + 3 * noise, x)
    assert bool(jnp.all(s_noisy < 0.999)) and bool(jnp.all(s_noisier < s_noisy))
    # Against a direct per-window NumPy SSIM.
    img = jax.random.uniform(KEY, (1, 16, 16, 1), minval=-0.5, maxval=0.5)
    _ref = _numpy_ssim(np.asarray(img[0, :, :, 0]), np.asarray(img[0, :, :, 0] * 0.5))
    np.testing.assert_allclose(ssim(img * 0.5, img)[0], _ref, rtol=1e-4)


def _numpy_ssim(y, x, data_range=2.0):
    """Direct per-window SSIM (Wang et al. 2004) with an 11x11 Gaussian, valid region."""
    r = np.arange(11) - 5
    g = np.exp(-0.5 * (r / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
            cov = (w * a * b).sum() - ma * mb
            vals.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return np.mean(vals)
