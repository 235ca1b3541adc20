"""Samplers (D8): schedule of unmasking, fixed tokens, determinism, CFG."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.denoiser.sampling import (
    guided_logits_fn,
    maskgit_sample,
    posterior_sample,
    run_settings,
    sample,
)

K, L, BATCH = 11, 24, 3


def _table_logits(seed=0):
    """A fake denoiser: fixed random logits per position, sharpened as t falls."""
    table = jnp.asarray(np.random.default_rng(seed).normal(size=(L, K)), jnp.float32)

    def fn(tokens, t):
        assert tokens.shape[0] == BATCH
        return jnp.broadcast_to(table, (BATCH, L, K)) * (2.0 - t)[:, None, None]

    return fn


@functools.cache
def _runner(sampler, steps):
    """One compiled sampler per (sampler, steps), shared by the tests below."""
    run = jax.jit(
        functools.partial(
            sampler,
            logits_fn=_table_logits(),
            shape=(BATCH, L),
            mask_id=K,
            steps=steps,
            return_history=True,
        )
    )

    def call(key, fixed_tokens, fixed_mask, temperature=1.0, choice_temperature=4.5):
        # Temperatures are traced arguments, so every call shares one compile.
        kw = {"choice_temperature": choice_temperature} if sampler is maskgit_sample else {}
        return run(
            key, fixed_tokens=fixed_tokens, fixed_mask=fixed_mask, temperature=temperature, **kw
        )

    return call


def _no_fixed():
    return jnp.zeros((BATCH, L), jnp.int32), jnp.zeros((BATCH, L), bool)


def _expected_masked_counts(n, steps):
    """MaskGIT schedule written out in NumPy: masked tokens left after each step."""
    out, left = [], n
    for s in range(steps):
        target = int(np.floor(n * np.cos(np.pi / 2 * (s + 1) / steps)))
        target = 0 if s == steps - 1 else min(max(target, 1), left - 1)
        out.append(target)
        left = target
    return out


def test_maskgit_unmasks_the_scheduled_number_per_step(steps=10):
    fixed_tokens, fixed_mask = _no_fixed()
    tokens, history = _runner(maskgit_sample, steps)(jax.random.key(0), fixed_tokens, fixed_mask)
    want = _expected_masked_counts(L, steps)
    np.testing.assert_array_equal(np.asarray(history), np.tile(np.array(want)[:, None], BATCH))
    assert tokens.shape == (BATCH, L) and tokens.dtype == jnp.int32
    assert np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < K))


@pytest.mark.parametrize("sampler", [maskgit_sample, posterior_sample])
def test_fixed_tokens_are_never_changed(sampler):
    rng = np.random.default_rng(1)
    fixed_mask = jnp.asarray(rng.uniform(size=(BATCH, L)) < 0.4)
    fixed_tokens = jnp.asarray(rng.integers(0, K, size=(BATCH, L)), jnp.int32)
    tokens, history = _runner(sampler, 6)(jax.random.key(3), fixed_tokens, fixed_mask)
    tokens, fm = np.asarray(tokens), np.asarray(fixed_mask)
    np.testing.assert_array_equal(tokens[fm], np.asarray(fixed_tokens)[fm])
    assert np.all(tokens < K)
    history = np.asarray(history)
    assert np.all(np.diff(history, axis=0) <= 0) and np.all(history[-1] == 0)
    if sampler is maskgit_sample:  # the schedule counts only the unknown tokens
        for b in range(BATCH):
            want = _expected_masked_counts(int((~fm[b]).sum()), 6)
            np.testing.assert_array_equal(history[:, b], want)


@pytest.mark.parametrize("sampler", [maskgit_sample, posterior_sample])
def test_samplers_are_deterministic_given_a_seed(sampler):
    fixed_tokens, fixed_mask = _no_fixed()

    def run(seed):
        return _runner(sampler, 6)(jax.random.key(seed), fixed_tokens, fixed_mask)[0]

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_low_temperature_maskgit_picks_the_argmax():
    tokens, _ = _runner(maskgit_sample, 6)(
        jax.random.key(0), *_no_fixed(), temperature=1e-3, choice_temperature=0.0
    )
    table = _table_logits()(jnp.zeros((BATCH, L), jnp.int32), jnp.ones(BATCH))
    want = np.argmax(np.asarray(table), -1)
    np.testing.assert_array_equal(tokens, want)


def _toy_model():
    model = SpectralTransformer(
        vocab_size=K, width=16, num_heads=2, depth=1, text_dim=6, mlp_ratio=2.0, pos_emb="rope3d"
    )
    rng = np.random.default_rng(4)
    tokens = jnp.full((BATCH, 2, 3, 4), K, jnp.int32)
    text = jnp.asarray(rng.normal(size=(BATCH, 3, 6)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0], [1, 1, 0]], bool)
    # Random parameters from the abstract shapes (non-zero adaLN gates, so the text
    # reaches the logits; and no init compile).
    shapes = nn.unbox(
        jax.eval_shape(
            model.init,
            jax.random.key(0),
            tokens,
            jnp.ones(BATCH),
            text,
            drop_text=jnp.zeros(BATCH, bool),
        )
    )
    leaves, tree = jax.tree.flatten(shapes["params"])
    params = jax.tree.unflatten(
        tree, [jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32) for x in leaves]
    )
    return model, params, tokens, text, mask


def test_cfg_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    model, params, tokens, text, mask = _toy_model()
    t = jnp.full((BATCH,), 0.7)
    apply = jax.jit(model.apply)
    cond = apply({"params": params}, tokens, t, text, mask, drop_text=jnp.zeros(BATCH, bool))
    uncond = apply({"params": params}, tokens, t, text, mask, drop_text=jnp.ones(BATCH, bool))
    assert not np.allclose(cond, uncond, atol=1e-3)
    guided = jax.jit(
        lambda s: guided_logits_fn(model.apply, params, text, mask, guidance_scale=s)(tokens, t)
    )
    np.testing.assert_allclose(guided(1.0), cond, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(guided(0.0), uncond, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(guided(10.0), uncond + 10.0 * (cond - uncond), rtol=1e-3, atol=1e-3)
    no_cfg = guided_logits_fn(model.apply, params, text, mask, guidance_scale=None)
    np.testing.assert_allclose(jax.jit(no_cfg)(tokens, t), cond, rtol=1e-4, atol=1e-4)


def test_sample_with_the_model_and_cfg(method="maskgit"):
    model, params, tokens, text, mask = _toy_model()
    run = jax.jit(
        functools.partial(
            sample, model, token_shape=tokens.shape, steps=10, guidance_scale=10.0, method=method
        )
    )
    out = run(params, jax.random.key(0), text, text_mask=mask)
    assert out.shape == tokens.shape and out.dtype == jnp.int32
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < K))
    np.testing.assert_array_equal(out, run(params, jax.random.key(0), text, text_mask=mask))
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(model, params, jax.random.key(0), text, tokens.shape, method="ddim")


def test_run_settings_default_to_the_eval_config_and_refuse_bad_values():
    """What `TextToVideo.generate` and `Inpainter.inpaint` draw with when not told."""
    ev = ml_collections.ConfigDict(
        dict(steps=24, cfg_scale=3.0, sampler="maskgit", temperature=0.5)
    )
    assert run_settings(ev) == (24, 3.0, "maskgit", 0.5)
    given = run_settings(ev, steps=2, cfg=-1.0, sampler="posterior", temperature=1.0)
    assert given == (2, None, "posterior", 1.0)  # a negative scale: no guidance
    bad = {"steps=0": dict(steps=0), "'greedy'": dict(sampler="greedy")}
    bad["temperature=0.0"] = dict(temperature=0.0)
    for match, kwargs in bad.items():
        with pytest.raises(ValueError, match=match):
            run_settings(ev, **kwargs)


def _copy_model(tokens, t):
    """A fake denoiser of the joint 'every token is the same code, uniform over K': a
    masked token copies the first visible token, or is uniform when none is visible."""
    del t
    visible = tokens < K
    first = jnp.argmax(visible, axis=1)
    code = jnp.take_along_axis(tokens, first[:, None], axis=1)[:, 0]
    copy = jax.nn.one_hot(code, K) * 50.0
    logits = jnp.where(visible.any(axis=1)[:, None], copy, 0.0)
    return jnp.broadcast_to(logits[:, None, :], (*tokens.shape, K))


def test_resample_repairs_tokens_drawn_apart_and_keeps_fixed_ones():
    # One MaskGIT step draws all 4 tokens of a row at once, so they rarely agree; each
    # corrector pass redraws half of them given the rest, which pulls the row together.
    @functools.partial(jax.jit, static_argnums=0)
    def run(resample_steps, fixed_tokens, fixed_mask):
        return maskgit_sample(
            jax.random.key(0),
            _copy_model,
            (256, 4),
            K,
            steps=1,
            resample_steps=resample_steps,
            resample_ratio=0.5,
            fixed_tokens=fixed_tokens,
            fixed_mask=fixed_mask,
        )

    def agreement(tokens):
        tokens = np.asarray(tokens)
        return np.mean(np.all(tokens == tokens[:, :1], axis=1))

    free = jnp.zeros((256, 4), bool)
    fixed_tokens = jnp.full((256, 4), 5, jnp.int32)
    assert agreement(run(0, fixed_tokens, free)) < 0.05
    assert agreement(run(12, fixed_tokens, free)) > 0.95
    tokens = run(12, fixed_tokens, free.at[:, 3].set(True))
    assert np.all(np.asarray(tokens)[:, 3] == 5) and agreement(tokens) > 0.95
    with pytest.raises(ValueError, match="resample_ratio"):
        maskgit_sample(
            jax.random.key(0), _copy_model, (2, 4), K, resample_steps=1, resample_ratio=0
        )
