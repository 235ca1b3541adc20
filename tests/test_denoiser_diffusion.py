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
    binding_loss,
    corrupt,
    diffusion_loss,
    mask_objects,
    mask_schedule,
    masked_cross_entropy,
    sample_time,
    time_of_mask_ratio,
)
from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.nn.attention import cross_attention_map


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


def test_cross_attention_map_is_the_weights_the_attention_applies():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, n, 1, 8)), jnp.float32) for n in (5, 4, 4))
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    maps = cross_attention_map(q, k, mask)  # one head: the mean over heads is that head
    want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    np.testing.assert_allclose(
        jnp.einsum("bls,bsd->bld", maps, v[:, :, 0]), want[:, :, 0], atol=1e-5
    )
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.abs(maps[:, :, 3]).max()) == 0.0 and float(maps[1, :, 2].max()) == 0.0


def test_binding_loss_is_the_phrase_attention_outside_each_object():
    # 1 x 2 x 2 cells, patch (1, 1, 2): two positions, the left (cells 0, 1) and the right
    # (cells 2, 3); then 2 rows of text tokens that get no loss. Object 1 covers cell 0
    # (the left position), object 2 cells 2 and 3 (the right one). Phrase 1 is text token
    # 0, phrase 2 tokens 1 and 2; token 3 is EOS.
    cells = np.zeros((2, 2, 1, 2, 2), bool)
    cells[:, 0, 0, 0, 0] = True
    cells[:, 1, 0, 1, :] = True
    phrases = jnp.asarray([[1, 2, 2, 0], [1, 2, 2, 0]])
    maps = np.zeros((2, 4, 4), np.float32)
    maps[:, 0] = [0.6, 0.1, 0.1, 0.2]  # left: phrase 1 0.6, phrase 2 0.2
    maps[:, 1] = [0.2, 0.3, 0.3, 0.2]  # right: phrase 1 0.2, phrase 2 0.6
    maps[:, 2:] = 0.25  # text rows: never read
    keep = jnp.asarray([False, False])
    loss, metrics = binding_loss(jnp.asarray(maps), jnp.asarray(cells), phrases, keep, (1, 1, 2))
    # Inside fractions: phrase 1 0.6 / 0.8, phrase 2 0.6 / 0.8.
    assert float(metrics["binding_inside"]) == pytest.approx(0.75)
    assert float(loss) == pytest.approx(0.25)
    # A dropped caption and an absent object leave the mean over the rest.
    maps[1, 0] = [0.2, 0.1, 0.1, 0.6]  # example 1, phrase 1: 0.2 of 0.4 inside
    cells[1, 1] = False  # example 1 has no second object
    drop = jnp.asarray([True, False])
    loss, _ = binding_loss(jnp.asarray(maps), jnp.asarray(cells), phrases, drop, (1, 1, 2))
    assert float(loss) == pytest.approx(0.5)


def _binding_setup(scan_layers):
    model, batch, params, cfg = _toy_setup()
    model = model.clone(cross_spectral="none", scan_layers=scan_layers)
    if not scan_layers:  # the same weights, one block each
        blocks = params["blocks"]
        params = {k: v for k, v in params.items() if k != "blocks"}
        for i in range(model.depth):
            params[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
    cells = np.zeros((4, 2, 2, 2, 4), bool)
    cells[:, 0, :, :, :2] = True  # object 1 on the left half, object 2 on the right
    cells[:3, 1, :, :, 2:] = True  # the last example has one object
    batch = {
        **batch,
        "object_cells": jnp.asarray(cells),
        "phrase_ids": jnp.asarray([[1, 2, 0], [1, 2, 0], [1, 0, 0], [1, 1, 0]]),
    }
    return model, batch, params, cfg


def test_binding_weight_adds_the_binding_loss_to_the_token_loss():
    # Scanned blocks only: the next test checks that unrolled ones give the same loss.
    model, batch, params, cfg = _binding_setup(scan_layers=True)
    bound = dataclasses.replace(cfg, binding_weight=0.5)
    key = jax.random.key(2)
    loss = jax.jit(lambda p, b, c: diffusion_loss(model.apply, p, b, key, c), static_argnums=2)
    plain, plain_metrics = loss(params, batch, cfg)
    total, metrics = loss(params, batch, bound)
    assert float(metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-6)
    assert 0.0 < float(metrics["binding_loss"]) < 1.0
    want = float(plain) + 0.5 * float(metrics["binding_loss"])
    assert float(total) == pytest.approx(want, rel=1e-6)
    without = {k: v for k, v in batch.items() if k != "object_cells"}
    with pytest.raises(ValueError, match="object_cells"):
        diffusion_loss(model.apply, params, without, key, bound)


def test_object_extra_weight_is_the_weighted_mean_over_masked_tokens_in_grid_cells():
    """`object_extra_weight`: masked tokens on an object's cells count 1 + w times; the
    weights follow a patched model's tokens into patch order; metrics['loss'] stays the
    plain mean."""
    model, batch, params, cfg = _toy_setup(p_uncond=0.0, patch=(1, 2, 2))
    cells = np.zeros((4, 2, 2, 2, 4), bool)
    cells[:, 0, :, 0, :3] = True  # object 1: three cells of the top row
    cells[:2, 1, 1, 1, 3] = True  # object 2: one cell, first two examples only
    batch = {**batch, "object_cells": jnp.asarray(cells)}
    key = jax.random.key(3)
    weighted = dataclasses.replace(cfg, object_extra_weight=3.0)
    loss, metrics = diffusion_loss(model.apply, params, batch, key, weighted)
    _, plain = diffusion_loss(model.apply, params, batch, key, cfg)
    assert float(metrics["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-6)
    # The reference in grid order, from the same draws as diffusion_loss makes.
    r_t, r_mask, _ = jax.random.split(key, 3)
    t = sample_time(r_t, 4)
    z_t, masked = corrupt(r_mask, batch["tokens"], t, cfg.mask_id)
    logits = model.apply(
        {"params": params},
        z_t,
        t,
        batch["text"],
        text_mask=batch["text_mask"],
        drop_text=jnp.zeros(4, bool),
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -np.take_along_axis(np.asarray(logp), np.asarray(batch["tokens"]).reshape(4, -1, 1), -1)
    w = np.where(cells.any(axis=1), 4.0, 1.0).reshape(4, -1) * np.asarray(masked).reshape(4, -1)
    assert w.max() == 4.0 and (w == 1.0).any()  # both kinds of masked token are present
    assert float(loss) == pytest.approx(float((ce[..., 0] * w).sum() / w.sum()), rel=1e-5)
    assert float(loss) != pytest.approx(float(plain["loss"]), rel=1e-3)
    with pytest.raises(ValueError, match="object_extra_weight=3.0 needs batch\\['object_cells'\\]"):
        without = {k: v for k, v in batch.items() if k != "object_cells"}
        diffusion_loss(model.apply, params, without, key, weighted)


def test_mask_objects_hides_one_whole_present_object_in_the_chosen_examples():
    rng = np.random.default_rng(0)
    b, grid = 256, (2, 4, 4)
    cells = np.zeros((b, 2, *grid), bool)
    cells[:, 0, :, :2, :2] = True  # object 1: top left
    cells[: b // 2, 1, :, 2:, 2:] = True  # object 2 (first half only): bottom right
    cells[-8:] = False  # no objects: nothing to hide
    z = jnp.asarray(rng.integers(0, 32, size=(b, *grid)), jnp.int32)
    masked = jnp.asarray(rng.random((b, *grid)) < 0.2)
    z_t = jnp.where(masked, 32, z)
    out, out_masked = mask_objects(jax.random.key(0), z_t, masked, jnp.asarray(cells), 0.5, 32)
    out, out_masked = np.asarray(out), np.asarray(out_masked)
    extra = out_masked & ~np.asarray(masked)
    assert (out[out_masked] == 32).all() and (out[~out_masked] == np.asarray(z)[~out_masked]).all()
    assert (out_masked >= np.asarray(masked)).all()  # nothing was unmasked
    hidden = [
        [bool(out_masked[i][cells[i, k]].all()) for k in range(2) if cells[i, k].any()]
        for i in range(b)
    ]
    chosen = np.array([any(h) for h in hidden])
    # Each extra cell belongs to a wholly hidden object; about half the examples get one,
    # none of those without objects; both objects get picked.
    for i in np.flatnonzero(extra.reshape(b, -1).any(-1)):
        assert chosen[i] and (cells[i][:, extra[i]].any(0)).all()
    assert not extra[-8:].any()
    assert 0.35 < chosen[:-8].mean() < 0.65
    second = [i for i in range(b // 2) if out_masked[i][cells[i, 1]].all()]
    assert len(second) > 10
    # prob 0 changes nothing.
    same = mask_objects(jax.random.key(0), z_t, masked, jnp.asarray(cells), 0.0, 32)
    assert (np.asarray(same[0]) == np.asarray(z_t)).all()


def test_object_mask_prob_needs_object_cells_and_keeps_the_other_draws():
    model, batch, params, cfg = _toy_setup()
    cells = np.zeros((4, 2, 2, 2, 4), bool)
    cells[:, 0, :, 0, :2] = True
    key = jax.random.key(1)
    with_objects = dataclasses.replace(cfg, object_mask_prob=1.0)
    _, plain = diffusion_loss(model.apply, params, batch, key, cfg)
    _, more = diffusion_loss(
        model.apply, params, {**batch, "object_cells": jnp.asarray(cells)}, key, with_objects
    )
    assert float(more["mask_ratio"]) > float(plain["mask_ratio"])
    # Clips without objects get exactly the draws of a run without the option.
    _, none = diffusion_loss(
        model.apply, params, {**batch, "object_cells": jnp.zeros_like(cells)}, key, with_objects
    )
    assert float(none["loss"]) == float(plain["loss"])
    with pytest.raises(ValueError, match="object_mask_prob=1.0 needs batch"):
        diffusion_loss(model.apply, params, batch, key, with_objects)


def test_binding_loss_is_the_same_for_scanned_and_unrolled_blocks_and_trains():
    losses = {}
    for scan_layers in (True, False):
        model, batch, params, cfg = _binding_setup(scan_layers)
        bound = dataclasses.replace(cfg, binding_weight=1.0, p_uncond=0.0)
        losses[scan_layers] = float(
            diffusion_loss(model.apply, params, batch, jax.random.key(5), bound)[1]["binding_loss"]
        )
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    # Its gradient reaches the attention: trained on it alone, on this batch, it falls.
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def binding(p, key):
        return diffusion_loss(model.apply, p, batch, key, bound)[1]["binding_loss"]

    @jax.jit
    def step(params, state, key):
        value, grads = jax.value_and_grad(binding)(params, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    values = [float(step(params, state, jax.random.key(0))[2])]
    for i in range(25):
        params, state, value = step(params, state, jax.random.key(i % 3))
    values.append(float(value))
    # Each object covers half the cells, so uniform attention scores 0.5.
    assert values[0] == pytest.approx(0.5, abs=0.02) and values[1] < 0.35, values
