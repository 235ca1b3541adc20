"""Spectral mixing, RoPE and the sharded FFT (D6)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.nn import attention
from motionaura_jax.nn.attention import apply_rope, rope_angles, spectral_mix
from motionaura_jax.parallel.mesh import make_mesh
from motionaura_jax.parallel.rules import get_rules


def _x(shape=(3, 6, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 6, 8), (2, 5, 7)])
def test_real_mode_is_real_part_of_orthonormal_fft2(shape):
    x = _x(shape)
    ref = np.fft.fft2(x, axes=(-2, -1), norm="ortho").real
    np.testing.assert_allclose(spectral_mix(jnp.asarray(x), "real"), ref, atol=1e-5)
    # For real inputs Re ifft2 (ortho) is the same operator, so Eq. 3's inverse is this too.
    inv = np.fft.ifft2(x, axes=(-2, -1), norm="ortho").real
    np.testing.assert_allclose(spectral_mix(jnp.asarray(x), "real"), inv, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 6, 8), (2, 5, 7)])
def test_hartley_mode_matches_numpy_and_is_self_inverse(shape):
    x = _x(shape, seed=1)
    f = np.fft.fft2(x, axes=(-2, -1), norm="ortho")
    y = spectral_mix(jnp.asarray(x), "hartley")
    np.testing.assert_allclose(y, f.real - f.imag, atol=1e-5)
    np.testing.assert_allclose(spectral_mix(y, "hartley"), x, atol=1e-5)
    # The paper's real part alone is not invertible: it keeps only the even part.
    twice = spectral_mix(spectral_mix(jnp.asarray(x), "real"), "real")
    even = 0.5 * (x + np.roll(x[:, ::-1, ::-1], 1, axis=(1, 2)))
    np.testing.assert_allclose(twice, even, atol=1e-5)


@pytest.mark.parametrize("mode", ["real", "hartley"])
@pytest.mark.parametrize("shape", [(2, 6, 8), (2, 5, 7)])
def test_spectral_mix_gradient_is_the_transposed_transform(mode, shape):
    # Both transforms are symmetric matrices over (sequence, embedding) (F2 is), so the
    # gradient of <w, mix(x)> is mix(w); the backward pass of the bin mirroring must agree.
    x, w = _x(shape, seed=2), _x(shape, seed=3)
    grad = jax.grad(lambda v: jnp.sum(jnp.asarray(w) * spectral_mix(v, mode)))(jnp.asarray(x))
    f = np.fft.fft2(w, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(grad, f.real - (mode == "hartley") * f.imag, atol=1e-5)


def test_spectral_mix_keeps_dtype_and_rejects_unknown_mode():
    x = jnp.asarray(_x(seed=2), jnp.bfloat16)
    y = spectral_mix(x, "real")
    assert y.dtype == jnp.bfloat16
    ref = np.fft.fft2(np.asarray(x, np.float32), axes=(-2, -1), norm="ortho").real
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=3e-2)
    assert spectral_mix(x, "none") is x
    with pytest.raises(ValueError, match="spectral must be one of"):
        spectral_mix(x, "imag")


@pytest.mark.parametrize("ndims", [1, 3])
def test_rope_scores_depend_only_on_relative_position(ndims):
    rng = np.random.default_rng(3)
    length, heads, head_dim = 7, 2, 12
    q = jnp.asarray(rng.normal(size=(1, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, length, heads, head_dim)), jnp.float32)
    pos = jnp.asarray(rng.integers(0, 5, size=(length, ndims)))

    def scores(p):
        ang = rope_angles(p, head_dim)
        return jnp.einsum("blhd,bmhd->bhlm", apply_rope(q, ang), apply_rope(k, ang))

    shift = jnp.asarray([11, 3, 5][:ndims])
    np.testing.assert_allclose(scores(pos), scores(pos + shift), rtol=1e-4, atol=1e-4)
    # ...and do depend on position (RoPE is not a no-op).
    moved = pos.at[0].add(1)
    assert not np.allclose(scores(pos), scores(moved), atol=1e-3)


def test_rope_keeps_norms():
    x = jnp.asarray(_x((2, 5, 3, 8), seed=4))
    y = apply_rope(x, rope_angles(jnp.arange(5)[:, None], 8))
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


# ---- sharding: 8 fake CPU devices (tests/conftest.py) ---------------------------------

B, GRID, TEXT_LEN, TEXT_DIM = 16, (2, 3, 4), 5, 20


def _sharded_setup():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = get_rules("transformer")
    model = SpectralTransformer(
        vocab_size=64,
        width=32,
        num_heads=4,
        depth=1,
        text_dim=TEXT_DIM,
        spectral="real",
        scan_layers=True,
    )
    rng = np.random.default_rng(5)
    inputs = (
        jnp.asarray(rng.integers(0, 65, size=(B,) + GRID), jnp.int32),
        jnp.asarray(rng.uniform(size=(B,)), jnp.float32),
        jnp.asarray(rng.normal(size=(B, TEXT_LEN, TEXT_DIM)), jnp.float32),
    )
    params = model.init(jax.random.key(0), *inputs, drop_text=jnp.zeros((B,), bool))
    return mesh, rules, model, params, inputs


def _compile_sharded(mesh, rules, model, params, inputs):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
        params = jax.device_put(params, shardings)
        batch = NamedSharding(mesh, P(("data", "fsdp")))
        inputs = [jax.device_put(x, batch) for x in inputs]
        fn = jax.jit(lambda v, tok, t, text: model.apply(v, tok, t, text))
        compiled = fn.lower(params, *inputs).compile()
        return compiled.as_text(), np.asarray(compiled(params, *inputs))


def _fft_batches(hlo):
    return [int(m.group(1)) for m in re.finditer(r"= c64\[(\d+),[\d,]*\][^ ]* fft\(", hlo)]


def _batch_gathers(hlo):
    """all-gather instructions that rebuild the global batch of a 3D activation."""
    pat = rf"= \w+\[{B},\d+,\d+\][^ ]* all-gather\("
    return re.findall(pat, hlo)


def test_sharded_forward_keeps_fft_local_and_matches_unsharded(monkeypatch):
    mesh, rules, model, params, inputs = _sharded_setup()
    hlo, sharded = _compile_sharded(mesh, rules, model, params, inputs)
    local_batch = B // 4  # batch over ('data', 'fsdp') = 2 x 2
    ffts = _fft_batches(hlo)
    assert ffts, "no FFT in the compiled forward"
    assert set(ffts) == {local_batch}, f"FFT batch sizes {ffts}, want per-device {local_batch}"
    assert not _batch_gathers(hlo)
    np.testing.assert_allclose(sharded, jax.jit(model.apply)(params, *inputs), rtol=2e-4, atol=2e-4)

    # Control: without the shard_map, XLA gathers the batch before the FFT, which the
    # checks above detect.
    monkeypatch.setattr(attention, "batch_mesh_axes", lambda batch_size: ())
    hlo_plain, _ = _compile_sharded(mesh, rules, model, params, inputs)
    assert B in _fft_batches(hlo_plain) or _batch_gathers(hlo_plain)
