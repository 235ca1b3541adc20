"""Quantizers (Table 7, D3): round trips, straight-through gradients, losses."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.tokenizer import quantizers as q

KEY = jax.random.key(0, impl="rbg")

CASES = {
    "fsq": q.make_quantizer("fsq", 8),
    "lfq": q.make_quantizer("lfq", 6),
    "vq": q.make_quantizer("vq", 4, codebook_size=32),
    "gumbel": q.make_quantizer("gumbel", 4, codebook_size=16),
}


def _init(name, z):
    module = CASES[name]
    return module, jax.jit(module.init)({"params": KEY, "gumbel": KEY}, z)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_indices_codes_indices(name):
    module = CASES[name]
    z = jax.random.normal(jax.random.key(1), (2, 3, 4, module.latent_dim))
    _, params = _init(name, z)
    k = module.codebook_size

    @jax.jit
    def run(params, z):
        indices = jnp.arange(k, dtype=jnp.int32)
        codes = module.apply(params, indices, method="indices_to_codes")
        back = module.apply(params, codes, method="codes_to_indices")
        z_q, aux = module.apply(params, z, rngs={"gumbel": KEY})
        return indices, back, z_q, aux, module.apply(params, aux["indices"], method="embed")

    indices, back, z_q, aux, embedded = run(params, z)
    np.testing.assert_array_equal(back, indices)
    # And the forward pass's indices are consistent with its output codes.
    assert aux["indices"].shape == z.shape[:-1] and aux["indices"].dtype == jnp.int32
    assert 0 <= int(aux["indices"].min()) and int(aux["indices"].max()) < k
    np.testing.assert_allclose(embedded, z_q, atol=1e-5)


def test_fsq_has_12800_distinct_codes_in_range():
    fsq = CASES["fsq"]
    assert fsq.codebook_size == 12_800
    params = jax.jit(fsq.init)(KEY, jnp.zeros((1, 8)))
    codes = fsq.apply(params, jnp.arange(12_800), method="indices_to_codes")
    assert codes.shape == (12_800, 5)
    assert len({tuple(c) for c in np.asarray(codes).round(4)}) == 12_800
    assert float(jnp.abs(codes).max()) <= 1.0
    with pytest.raises(ValueError, match=">= 3"):
        q.FSQ(levels=(2, 8)).init(KEY, jnp.zeros((1, 8)))


def test_fsq_reaches_every_level():
    # Large inputs saturate the tanh bound: every level value must still be reachable.
    fsq = q.FSQ(latent_dim=5)
    z = jnp.linspace(-6, 6, 2001)[:, None] * jnp.ones((1, 5))
    bounded = fsq.apply({}, z, method=fsq._bound)
    for i, lv in enumerate(fsq.levels):
        assert len(np.unique(np.round(np.asarray(bounded[:, i])))) == lv


@pytest.mark.parametrize("name", ["fsq", "lfq", "vq"])
def test_straight_through_gradient(name):
    module = CASES[name]
    z = jax.random.normal(jax.random.key(2), (5, module.latent_dim))
    _, params = _init(name, z)
    if name == "fsq":
        # Through the rounding the gradient is that of the bounded (pre-round) value.
        f_q = lambda z: module.apply(params, z)[0]
        f_ref = lambda z: module.apply(
            params,
            z,
            method=lambda m, z: m.project_out(
                m._bound(m.project_in(z)) / jnp.asarray([4, 4, 4, 2, 2.0])
            ),
        )
        w = jax.random.normal(jax.random.key(3), (5, module.latent_dim))
        g_q = jax.grad(lambda z: jnp.sum(f_q(z) * w))(z)
        g_ref = jax.grad(lambda z: jnp.sum(f_ref(z) * w))(z)
        np.testing.assert_allclose(g_q, g_ref, rtol=1e-5, atol=1e-6)
        assert float(jnp.abs(g_q).max()) > 0
    else:
        # LFQ / VQ: z_q = z + sg(e - z), so d(sum z_q * w)/dz = w exactly.
        w = jax.random.normal(jax.random.key(3), z.shape)
        g = jax.grad(lambda z: jnp.sum(module.apply(params, z)[0] * w))(z)
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_gumbel_gradient_flows_to_logits_and_codebook():
    module = CASES["gumbel"]
    z = jax.random.normal(jax.random.key(2), (5, module.latent_dim))
    _, params = _init("gumbel", z)
    g = jax.grad(lambda p: jnp.sum(module.apply(p, z, train=True, rngs={"gumbel": KEY})[0] ** 2))(
        params
    )
    assert float(jnp.abs(g["params"]["logits"]["kernel"].value).max()) > 0
    assert float(jnp.abs(g["params"]["codebook"].value).max()) > 0


def test_vq_loss_terms_match_formula():
    module = CASES["vq"]
    z = jax.random.normal(jax.random.key(4), (7, 4))
    _, params = _init("vq", z)
    _, aux = module.apply(params, z)
    codebook = np.asarray(params["params"]["codebook"].value)
    d = ((np.asarray(z)[:, None] - codebook[None]) ** 2).sum(-1)
    idx = d.argmin(-1)
    np.testing.assert_array_equal(aux["indices"], idx)
    mse = np.mean((np.asarray(z) - codebook[idx]) ** 2)
    np.testing.assert_allclose(aux["loss"], mse * 1.25, rtol=1e-5)


def test_lfq_entropy_matches_brute_force_sample_entropy():
    d, tau = 4, 0.5
    lfq = q.BinaryLFQ(latent_dim=d, tau=tau)
    z = np.asarray(jax.random.normal(jax.random.key(5), (6, d))) * 0.3
    _, aux = lfq.apply({}, jnp.asarray(z))
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    logits = -((z[:, None] - codes[None]) ** 2).sum(-1) / tau
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    sample_entropy = -(p * np.log(p)).sum(-1).mean()
    np.testing.assert_allclose(aux["sample_entropy"], sample_entropy, rtol=1e-4)
    # The bit-marginal codebook entropy upper-bounds the exact one.
    avg = p.mean(0)
    assert float(aux["codebook_entropy"]) >= -(avg * np.log(avg)).sum() - 1e-5


def test_codebook_stats():
    stats = q.codebook_stats(jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3]), 8)
    np.testing.assert_allclose(stats["codebook_usage"], 0.5)
    np.testing.assert_allclose(stats["perplexity"], 4.0, rtol=1e-5)


def test_unknown_quantizer_raises():
    with pytest.raises(ValueError, match="unknown quantizer 'pq'"):
        q.make_quantizer("pq", 8)
