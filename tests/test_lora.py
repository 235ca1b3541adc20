"""LoRA building blocks (D10): zero at init, linear LoRA merges exactly, W_down statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.nn import lora
from motionaura_jax.nn.layers import Projection
from motionaura_jax.parallel import axes

X = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))


@pytest.mark.parametrize("kind", lora.ADAPTER_KINDS)
def test_adapter_is_zero_at_init(kind):
    module = lora.make_adapter(kind, (4, 8), rank=8, out_names=(axes.HEADS, axes.KV))
    params = module.init(jax.random.PRNGKey(1), X)
    out = module.apply(params, X)
    assert out.shape == (2, 5, 4, 8)
    assert jnp.all(out == 0)


def test_linear_lora_merges_into_the_base_kernel():
    base = Projection((4, 8), (axes.EMBED, axes.HEADS, axes.KV))
    base_params = nn.meta.unbox(base.init(jax.random.PRNGKey(2), X)["params"])
    module = lora.LinearLoRA((4, 8), rank=6, out_names=(axes.HEADS, axes.KV), alpha=3.0)
    p = nn.meta.unbox(module.init(jax.random.PRNGKey(3), X)["params"])
    p = {"a": p["a"], "b": jax.random.normal(jax.random.PRNGKey(4), p["b"].shape)}
    unmerged = base.apply({"params": base_params}, X) + module.apply({"params": p}, X)
    merged_kernel = base_params["kernel"] + lora.linear_delta(p, alpha=3.0)
    merged = base.apply({"params": {"kernel": merged_kernel}}, X)
    np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_gelu_adapter_is_not_linear():
    module = lora.Adapter((16,), rank=4, out_names=(axes.EMBED,))
    p = nn.meta.unbox(module.init(jax.random.PRNGKey(5), X)["params"])
    p = {"down": p["down"], "up": jax.random.normal(jax.random.PRNGKey(6), p["up"].shape)}
    f = lambda x: module.apply({"params": p}, x)
    assert not np.allclose(f(2 * X), 2 * f(X), atol=1e-3)


def test_down_redrawn_from_base_statistics():
    base_kernel = 0.5 + 0.02 * jax.random.normal(jax.random.PRNGKey(7), (256, 256))
    params = {"down": jnp.zeros((256, 16)), "up": jnp.zeros((16, 256))}
    out = lora.redraw_down_from_base(params, base_kernel, jax.random.PRNGKey(8))
    assert abs(float(out["down"].mean()) - 0.5) < 0.01
    assert abs(float(out["down"].std()) - 0.02) < 0.002
    assert jnp.all(out["up"] == 0)


def test_bad_rank_is_a_clear_error():
    module = lora.Adapter((8,), rank=64, out_names=(axes.EMBED,))
    with pytest.raises(ValueError, match=r"rank must be in \(0, 32\), got 64"):
        module.init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="unknown LoRA kind"):
        lora.make_adapter("dora", (8,), 4, (axes.EMBED,))
