"""Masked discrete diffusion (D8): schedules, corruption, the masked loss, training."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from motionaura_jax.denoiser.diffusion import (
    SCHEDULES,
    DiffusionConfig,
    corrupt,
    diffusion_loss,
    mask_schedule,
    masked_cross_entropy,
    sample_time,
    time_of_mask_ratio,
)
from motionaura_jax.denoiser.model import SpectralTransformer


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_are_monotone_from_0_to_1(kind):
    t = jnp.linspace(0.0, 1.0, 101)
    g = np.asarray(mask_schedule(t, kind))
    assert g[0] == pytest.approx(0.0, abs=1e-7) and g[-1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(g) >= 0)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_time_of_mask_ratio_inverts_the_schedule(kind):
    t = jnp.linspace(0.0, 1.0, 21)
    np.testing.assert_allclose(time_of_mask_ratio(mask_schedule(t, kind), kind), t, atol=2e-3)


def test_cosine_schedule_is_maskgit_cosine_in_diffusion_time():
    r = np.linspace(0, 1, 11)  # MaskGIT's unmasking progress r = 1 - t
    np.testing.assert_allclose(mask_schedule(1 - r, "cosine"), np.cos(np.pi / 2 * r), atol=1e-6)
    with pytest.raises(ValueError, match="mask schedule must be one of"):
        mask_schedule(0.5, "exp")


def test_sample_time_ranges():
    t = np.asarray(sample_time(jax.random.key(0), 4096))
    assert t.min() > 0 and t.max() <= 1 and abs(t.mean() - 0.5) < 0.03
    td = np.asarray(sample_time(jax.random.key(1), 4096, num_steps=30))
    np.testing.assert_allclose(np.sort(np.unique(td * 30)), np.arange(1, 31), atol=1e-4)


def test_corrupt_masks_at_rate_gamma_and_at_least_one():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, size=(3, 20000)), jnp.int32)
    t = jnp.asarray([0.5, 1e-6, 1.0])
    z, masked = jax.jit(corrupt, static_argnums=3)(jax.random.key(0), tokens, t, 50)
    rate = np.asarray(masked).mean(axis=1)
    assert abs(rate[0] - np.sin(np.pi / 4)) < 0.01
    assert np.asarray(masked).sum(axis=1)[1] == 1  # t ~ 0: exactly the forced one
    assert rate[2] == 1.0
    np.testing.assert_array_equal(np.where(masked, 50, tokens), z)


def test_corrupt_never_masks_known_tokens():
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 9, size=(4, 2, 3, 5)), jnp.int32)
    known = jnp.asarray(rng.uniform(size=tokens.shape) < 0.4)
    z, masked = jax.jit(corrupt, static_argnums=(3, 4))(
        jax.random.key(2), tokens, jnp.ones(4), 9, "linear", known
    )
    assert not np.any(np.asarray(masked) & np.asarray(known))
    np.testing.assert_array_equal(np.asarray(z)[np.asarray(known)], np.asarray(tokens)[known])
    assert np.all(np.asarray(masked).reshape(4, -1).sum(1) >= 1)


def test_masked_cross_entropy_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    masked = rng.uniform(size=(2, 5)) < 0.5
    masked[0, 0] = True
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    ce = jax.jit(masked_cross_entropy, static_argnums=3)
    loss, metrics = ce(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(masked), 0.0)
    assert float(loss) == pytest.approx(nll[masked].mean(), rel=1e-5)
    acc = (logits.argmax(-1) == targets)[masked].mean()
    assert float(metrics["masked_accuracy"]) == pytest.approx(acc)
    smooth, _ = ce(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(masked), 0.1)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 7), 0.1)
    want = optax.softmax_cross_entropy(jnp.asarray(logits), labels)
    assert float(smooth) == pytest.approx(float(want[masked].mean()), rel=1e-5)


@functools.cache
def _toy_setup(p_uncond=0.1, patch=(1, 1, 1)):
    model = SpectralTransformer(
        vocab_size=32, width=32, num_heads=4, depth=2, text_dim=8, mlp_ratio=2.0, patch=patch
    )
    rng = np.random.default_rng(4)
    batch = {
        "tokens": jnp.asarray(rng.integers(0, 32, size=(4, 2, 2, 4)), jnp.int32),
        "text": jnp.asarray(rng.normal(size=(4, 3, 8)), jnp.float32),
        "text_mask": jnp.asarray([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool),
    }
    # Random parameters from the abstract shapes: no init compile (tests are compile-bound).
    shapes = nn.unbox(
        jax.eval_shape(
            model.init,
            jax.random.key(0),
            batch["tokens"],
            jnp.ones(4),
            batch["text"],
            drop_text=jnp.zeros(4, bool),
        )
    )
    leaves, tree = jax.tree.flatten(shapes["params"])
    params = jax.tree.unflatten(
        tree, [jnp.asarray(0.05 * rng.normal(size=x.shape), jnp.float32) for x in leaves]
    )
    return model, batch, params, DiffusionConfig(vocab_size=32, p_uncond=p_uncond, patch=patch)


def test_loss_falls_on_a_fixed_batch():
    model, batch, params, cfg = _toy_setup()
    opt = optax.adamw(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        (loss, _), grads = jax.value_and_grad(
            lambda p: diffusion_loss(model.apply, p, batch, key, cfg), has_aux=True
        )(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(30):
        params, state, loss = step(params, state, jax.random.key(i % 3))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_text_dropout_replaces_the_text():
    model, batch, params, cfg = _toy_setup(p_uncond=1.0)
    loss = jax.jit(lambda b: diffusion_loss(model.apply, params, b, jax.random.key(0), cfg)[0])
    other = {**batch, "text": batch["text"] + 1.0}
    # p_uncond = 1 drops every text: the loss cannot depend on it (that the text matters
    # when kept is tested in test_denoiser_model.test_dropped_text_ignores_the_text).
    assert float(loss(batch)) == pytest.approx(float(loss(other)), abs=1e-6)
    with pytest.raises(ValueError, match="integer codes"):
        diffusion_loss(
            model.apply, params, {**batch, "tokens": batch["text"]}, jax.random.key(0), cfg
        )


def test_patched_loss_on_patch_order_logits_equals_the_grid_order_loss():
    # A patched denoiser's loss reads its logits in patch order (no ungrouping of the
    # largest tensor); the targets and mask are permuted alike, so loss, accuracy and
    # gradients are those of the grid-order logits.
    model, batch, params, cfg = _toy_setup(patch=(1, 2, 2))
    grid_cfg = dataclasses.replace(cfg, patch=(1, 1, 1))

    def loss_and_grads(config):
        fn = lambda p: diffusion_loss(model.apply, p, batch, jax.random.key(3), config)
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

    (loss, metrics), grads = loss_and_grads(cfg)
    (want, want_metrics), want_grads = loss_and_grads(grid_cfg)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert float(metrics["masked_accuracy"]) == pytest.approx(
        float(want_metrics["masked_accuracy"])
    )
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), grads, want_grads
    )
