"""Optimizers: Muon picks its matrices by logical axis names and orthogonalises them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base_config
from motionaura_jax import config as config_lib
from motionaura_jax.parallel import axes
from motionaura_jax.train import loop, optim
from tests.test_loop import TINY, _final_state


def _boxed(shape, names):
    return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names=names)


def _abstract_params():
    return {
        # scanned fused Q/K/V: layers and the unnamed 3 are batch axes
        "qkv": {
            "kernel": _boxed((2, 16, 3, 4, 8), (axes.LAYERS, axes.EMBED, None, axes.HEADS, axes.KV))
        },
        "out": {"kernel": _boxed((4, 8, 16), (axes.HEADS, axes.KV, axes.EMBED))},
        "mlp": {
            "kernel": _boxed((64, 16), (axes.MLP, axes.EMBED)),
            "bias": _boxed((16,), (axes.EMBED,)),
        },
        "conv": {
            "kernel": _boxed(
                (1, 3, 3, 16, 24), (axes.CONV_SPACE,) * 3 + (axes.CONV_IN, axes.CONV_OUT)
            )
        },
        # channel axes named only where shardable: the rule reads a convolution's shape
        "conv_partly_named": {
            "kernel": _boxed((3, 3, 3, 16, 32), (axes.CONV_SPACE,) + (None,) * 4)
        },
        "rgb_out": {"kernel": _boxed((1, 8, 8, 32, 3), (axes.CONV_SPACE,) + (None,) * 4)},
        "depthwise": {"kernel": _boxed((3, 3, 3, 16), (axes.CONV_SPACE,) * 3 + (axes.CONV_OUT,))},
        # a LoRA adapter's factors (nn/lora.py), scanned: (D, rank) and (rank, heads, kv)
        "lora": {
            "down": _boxed((2, 16, 4), (axes.LAYERS, axes.EMBED, None)),
            "up": _boxed((2, 4, 4, 8), (axes.LAYERS, None, axes.HEADS, axes.KV)),
        },
        "head": {"kernel": _boxed((16, 32), (axes.EMBED, axes.VOCAB))},
        "table": _boxed((32, 16), (axes.VOCAB, axes.EMBED)),
    }


def test_muon_axes_come_from_logical_names():
    dims = optim.muon_dimension_numbers(_abstract_params())
    mdn = optax.contrib.MuonDimensionNumbers
    assert dims["qkv"]["kernel"] == mdn((1,), (3, 4))
    assert dims["out"]["kernel"] == mdn((0, 1), (2,))
    assert dims["mlp"]["kernel"] == mdn((0,), (1,))
    assert dims["conv"]["kernel"] == mdn((0, 1, 2, 3), (4,))
    assert dims["conv_partly_named"]["kernel"] == mdn((0, 1, 2, 3), (4,))
    assert dims["lora"]["down"] == mdn((1,), (2,))
    assert dims["lora"]["up"] == mdn((1,), (2, 3))
    # Adam: biases, depthwise kernels, RGB layers, anything with a vocabulary axis
    adam = ("mlp", "bias"), ("depthwise", "kernel"), ("rgb_out", "kernel"), ("head", "kernel")
    for leaf in (dims[a][b] for a, b in adam):
        assert leaf is None
    assert dims["table"] is None


def _opt_config(name):
    c = base_config("t")
    c.optimizer.update(name=name, lr=0.1, schedule="constant", weight_decay=0.0)
    return c.optimizer


def test_muon_update_is_orthogonal_on_matrices_and_adam_elsewhere():
    abstract = _abstract_params()
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(abstract))
    rng = np.random.default_rng(0)
    # gradients with a wide singular-value spread
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape) * np.linspace(1.0, 20.0, p.shape[-1])),
        params,
    )
    tx, _ = optim.make_optimizer(_opt_config("muon"), 10, abstract)
    updates, _ = tx.update(grads, tx.init(params), params)
    for layer in range(2):
        for i in range(3):  # each of Q, K, V in each layer is its own matrix
            m = np.asarray(updates["qkv"]["kernel"][layer, :, i]).reshape(16, 32)
            s = np.linalg.svd(m, compute_uv=False)
            assert s.max() / s.min() < 2.0, s
    g = np.asarray(grads["mlp"]["kernel"])
    assert np.linalg.cond(g) > 20
    assert np.linalg.cond(np.asarray(updates["mlp"]["kernel"])) < 2.0
    # Adam's first step moves every entry by about lr, whatever the gradient's scale.
    bias = np.abs(np.asarray(updates["mlp"]["bias"]))
    np.testing.assert_allclose(bias, bias.mean(), rtol=0.05)


def test_muon_needs_the_params_axis_names():
    with pytest.raises(ValueError, match="logical axis names"):
        optim.make_optimizer(_opt_config("muon"), 10)


def test_muon_trains_a_stage_through_the_loop_and_resumes_exactly(tmp_path):
    untrained = config_lib.load_config(TINY, ["train.num_steps=6", "optimizer.lr=0.0"])
    muon = ["train.num_steps=6", "optimizer.name=muon", "optimizer.lr=0.03"]
    before = loop.train(untrained, str(tmp_path / "a"))
    after = loop.train(config_lib.load_config(TINY, muon), str(tmp_path / "b"))
    assert np.isfinite(after["mse"]) and after["mse"] < 0.7 * before["mse"], (before, after)
    # Muon's state holds empty nodes where Adam's params are: it must checkpoint and restore.
    loop.train(config_lib.load_config(TINY, muon + ["train.stop_at_step=3"]), str(tmp_path / "c"))
    resumed = loop.train(config_lib.load_config(TINY, muon), str(tmp_path / "c"))
    assert resumed == after
    config = config_lib.load_config(TINY, muon)
    a, b = _final_state(tmp_path / "b", config, 6), _final_state(tmp_path / "c", config, 6)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a.params, b.params)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a.opt_state, b.opt_state)
