"""Causal / depthwise 3D convolutions and the MB / Inception-Fused-MB blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.nn import conv3d
from motionaura_jax.parallel import axes

KEY = jax.random.key(0, impl="rbg")  # rbg: init compiles ~4x faster than threefry


def _numpy_depthwise(xp, k):
    """Independent reference: one output position at a time, window * kernel summed."""
    kt, kh, kw, _ = k.shape
    b, tp, hp, wp, c = xp.shape
    out = np.zeros((b, tp - kt + 1, hp - kh + 1, wp - kw + 1, c), np.float64)
    for t in range(out.shape[1]):
        for h in range(out.shape[2]):
            for w in range(out.shape[3]):
                window = xp[:, t : t + kt, h : h + kh, w : w + kw, :]
                out[:, t, h, w, :] = np.einsum("bthwc,thwc->bc", window, k)
    return out


def _numpy_causal_conv(x, k, strides):
    """Dense conv reference with causal (front) time padding and TF-'SAME' space padding."""
    kt, kh, kw, cin, cout = k.shape
    st, sh, sw = strides
    b, t, h, w, _ = x.shape
    ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
    pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
    xp = np.pad(x, ((0, 0), (kt - 1, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    to, ho, wo = (xp.shape[1] - kt) // st + 1, -(-h // sh), -(-w // sw)
    out = np.zeros((b, to, ho, wo, cout))
    for i in range(to):
        for j in range(ho):
            for m in range(wo):
                win = xp[:, i * st : i * st + kt, j * sh : j * sh + kh, m * sw : m * sw + kw]
                out[:, i, j, m] = np.einsum("bthwc,thwco->bo", win, k)
    return out


def test_depthwise_impls_match_numpy():
    rng = np.random.default_rng(0)
    xp = rng.normal(size=(2, 6, 7, 8, 5)).astype(np.float32)
    k = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    ref = _numpy_depthwise(xp.astype(np.float64), k.astype(np.float64))
    grouped = conv3d.depthwise_grouped(jnp.asarray(xp), jnp.asarray(k))
    shifted = conv3d.depthwise_shifted(jnp.asarray(xp), jnp.asarray(k))
    np.testing.assert_allclose(grouped, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(shifted, ref, rtol=1e-4, atol=1e-4)


def test_depthwise_layer_impls_agree_fwd_and_grad():
    x = jax.random.normal(KEY, (2, 5, 6, 6, 4))
    grouped = conv3d.DepthwiseConv3D(impl="grouped")
    shifted = conv3d.DepthwiseConv3D(impl="shifted")
    params = jax.jit(grouped.init)(KEY, x)

    def loss(layer, p, x):
        return jnp.sum(jnp.sin(layer.apply(p, x)))

    np.testing.assert_allclose(grouped.apply(params, x), shifted.apply(params, x), atol=1e-5)
    g1 = jax.jit(jax.grad(lambda p, x: loss(grouped, p, x), argnums=(0, 1)))(params, x)
    g2 = jax.jit(jax.grad(lambda p, x: loss(shifted, p, x), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_depthwise_default_impl_follows_backend():
    expected = "shifted" if jax.default_backend() == "cpu" else "grouped"
    assert conv3d.default_depthwise_impl() == expected
    with pytest.raises(ValueError, match="depthwise impl"):
        conv3d.DepthwiseConv3D(impl="fft").init(KEY, jnp.zeros((1, 1, 4, 4, 2)))


@pytest.mark.parametrize("strides", [(1, 1, 1), (2, 2, 2), (1, 2, 2)])
def test_causal_conv_matches_numpy(strides):
    x = jax.random.normal(KEY, (1, 5, 6, 6, 3))
    layer = conv3d.CausalConv3D(4, (3, 3, 3), strides, use_bias=False)
    params = layer.init(KEY, x)
    k = np.asarray(nn.unbox(params)["params"]["kernel"], np.float64)
    ref = _numpy_causal_conv(np.asarray(x, np.float64), k, strides)
    np.testing.assert_allclose(layer.apply(params, x), ref, rtol=1e-4, atol=1e-4)


def test_conv_impls_agree_fwd_and_grad():
    # frames2d (sum of 2D convs over temporal taps, the CPU path) == XLA's Conv3D, for a
    # strided 3x3x3 conv and an Inception 3x1x3 kernel, values and gradients.
    x = jax.random.normal(KEY, (2, 5, 6, 6, 3))
    for kernel, strides in (((3, 3, 3), (2, 2, 2)), ((3, 1, 3), (1, 1, 1))):
        layers = [conv3d.CausalConv3D(4, kernel, strides, impl=i) for i in conv3d.CONV_IMPLS]
        params = layers[0].init(KEY, x)
        grads = []
        for layer in layers:

            @jax.jit
            def fwd_bwd(params, x, layer=layer):
                y, vjp = jax.vjp(layer.apply, params, x)
                return y, *vjp(jnp.sin(y))

            grads.append(fwd_bwd(params, x))
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="conv impl"):
        conv3d.CausalConv3D(2, impl="fft").init(KEY, x)
    assert conv3d.default_conv_impl() == ("frames2d" if jax.default_backend() == "cpu" else "xla3d")


@pytest.mark.parametrize("impl", conv3d.CONV_IMPLS)
def test_upsample_2x_conv_equals_conv_of_the_nearest_upsampled_input(impl):
    # The phase form (2 x 2 kernels on the low-resolution grid) against the numpy conv of
    # the explicitly upsampled input, values and gradients, odd H and W, same params.
    x = jax.random.normal(KEY, (2, 5, 3, 5, 3))
    up = conv3d.CausalConv3D(4, impl=impl, upsample_2x=True)
    plain = conv3d.CausalConv3D(4, impl=impl)
    params = up.init(KEY, x)
    x_up = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    k = np.asarray(nn.unbox(params)["params"]["kernel"], np.float64)
    ref = _numpy_causal_conv(np.asarray(x_up, np.float64), k, (1, 1, 1))
    y = up.apply(params, x)
    assert y.shape == (2, 5, 6, 10, 4)
    np.testing.assert_allclose(y - nn.unbox(params)["params"]["bias"], ref, rtol=1e-4, atol=1e-4)
    g_up = jax.grad(lambda p, x: jnp.sum(jnp.sin(up.apply(p, x))), argnums=(0, 1))(params, x)
    g_plain = jax.grad(
        lambda p, x: jnp.sum(jnp.sin(plain.apply(p, jnp.repeat(jnp.repeat(x, 2, 2), 2, 3)))),
        argnums=(0, 1),
    )(params, x)
    for a, b in zip(jax.tree.leaves(g_up), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="stride 1"):
        conv3d.CausalConv3D(4, strides=(1, 2, 2), upsample_2x=True).init(KEY, x)
    with pytest.raises(ValueError, match="3 x 3 spatial kernel"):
        conv3d.CausalConv3D(4, (3, 1, 3), upsample_2x=True).init(KEY, x)


def test_matmul_forms_of_the_conv_equal_frames2d():
    x = jax.random.normal(KEY, (2, 7, 6, 4, 3))
    k = jax.random.normal(KEY, (3, 2, 3, 3, 4))
    for strides, pads in (((1, 1, 1), ((1, 0), (1, 1))), ((2, 2, 1), ((0, 1), (1, 1)))):
        np.testing.assert_allclose(
            conv3d.conv_im2col(x, k, strides, pads),
            conv3d.conv_frames2d(x, k, strides, pads),
            rtol=1e-4,
            atol=1e-4,
        )
    k = jax.random.normal(KEY, (1, 3, 2, 3, 4))  # non-overlapping 3 x 2 patches
    np.testing.assert_allclose(
        conv3d.conv_patchify(x, k),
        conv3d.conv_frames2d(x, k, (1, 3, 2), ((0, 0), (0, 0))),
        rtol=1e-4,
        atol=1e-4,
    )
    # CausalConv3D takes the patch form for kernel == stride (the toy's stem).
    layer = conv3d.CausalConv3D(4, (1, 2, 2), (1, 2, 2), use_bias=False)
    params = layer.init(KEY, x)
    kernel = np.asarray(nn.unbox(params)["params"]["kernel"], np.float64)
    ref = _numpy_causal_conv(np.asarray(x, np.float64), kernel, (1, 2, 2))
    np.testing.assert_allclose(layer.apply(params, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", conv3d.TRANSPOSE_IMPLS)
@pytest.mark.parametrize(
    "kernel,strides",
    [
        ((1, 4, 4), (1, 2, 2)),
        ((1, 8, 8), (1, 4, 4)),
        ((1, 3, 5), (1, 2, 3)),
        ((1, 5, 5), (1, 1, 1)),
    ],
)
def test_conv_transpose_matches_3d_transpose(kernel, strides, impl):
    # The layer folds frames into the batch (and `subpixel` gathers the kernel into a
    # stride-1 conv + depth-to-space); reference: XLA's 3D transposed conv, values and
    # gradients.
    x = jax.random.normal(KEY, (2, 3, 4, 4, 5))
    layer = conv3d.ConvTranspose3D(3, kernel, strides, impl=impl)
    params = layer.init(KEY, x)
    p = nn.unbox(params)["params"]

    def ref_fn(p, x):
        y = jax.lax.conv_transpose(
            x, p["kernel"], strides, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        )
        return y + p["bias"]

    y = layer.apply(params, x)
    assert y.shape == (2, 3, 4 * strides[1], 4 * strides[2], 3)
    np.testing.assert_allclose(y, ref_fn(p, x), rtol=1e-5, atol=1e-5)
    cot = jnp.sin(y)
    ours = jax.vjp(lambda p, x: nn.unbox(layer.apply({"params": p}, x)), p, x)[1](cot)
    ref = jax.vjp(ref_fn, p, x)[1](cot)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_transpose_default_impl_follows_backend():
    cpu = jax.default_backend() == "cpu"
    assert conv3d.default_transpose_impl() == ("subpixel" if cpu else "xla")
    with pytest.raises(ValueError, match="transpose impl"):
        conv3d.ConvTranspose3D(3, impl="fft").init(KEY, jnp.zeros((1, 1, 2, 2, 2)))


@pytest.mark.parametrize("t", [1, 3, 5, 9])
def test_temporal_stride_maps_1_plus_2m_to_1_plus_m(t):
    layer = conv3d.CausalConv3D(2, (3, 3, 3), (2, 2, 2))
    y = jax.eval_shape(lambda: layer.init_with_output(KEY, jnp.zeros((1, t, 8, 8, 3)))[0])
    assert y.shape == (1, 1 + (t - 1) // 2, 4, 4, 2)


@pytest.mark.parametrize(
    "block",
    [
        conv3d.MBConv3D(8, 2),
        conv3d.InceptionFusedMB3D(8, 2),
    ],
    ids=["mb", "inception"],
)
def test_blocks_are_causal(block):
    x = jax.random.normal(KEY, (1, 6, 4, 4, 8))
    j = 3
    x2 = x.at[:, j].add(jax.random.normal(jax.random.key(1), x[:, j].shape))
    # One compile: init and both clips (as a batch of 2; norms are per sample) together.
    (y1, y2), _ = jax.jit(block.init_with_output)(KEY, jnp.concatenate([x, x2]))
    y1, y2 = y1[None], y2[None]
    np.testing.assert_allclose(y1[:, :j], y2[:, :j], atol=1e-6)
    assert float(jnp.abs(y1[:, j] - y2[:, j]).max()) > 1e-3
    assert y1.shape == x.shape


def test_inception_kernels_cover_time_height_width():
    # B.1.4's 3x3x1 / 3x1x3 / 1x3x3 read as (T, H, W): T-H, T-W, H-W planes.
    assert conv3d.INCEPTION_KERNELS == ((3, 3, 1), (3, 1, 3), (1, 3, 3))
    block = conv3d.InceptionFusedMB3D(8)
    params = jax.eval_shape(block.init, KEY, jnp.zeros((1, 1, 4, 4, 8)))
    shapes = {k: v["kernel"].shape for k, v in nn.unbox(params)["params"].items() if "conv" in k}
    assert shapes["branch0_conv"][:3] == (3, 3, 1)
    assert shapes["branch1_conv"][:3] == (3, 1, 3)
    assert shapes["branch2_conv"][:3] == (1, 3, 3)


def test_every_param_has_logical_names():
    block = conv3d.InceptionFusedMB3D(64)
    params = jax.eval_shape(block.init, KEY, jnp.zeros((1, 1, 4, 4, 64)))["params"]
    allowed = {axes.CONV_SPACE, axes.CONV_IN, axes.CONV_OUT, axes.NORM, None}
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
    for p in leaves:
        assert len(p.names) == len(p.value.shape)
        assert set(p.names) <= allowed, p.names
    names = {n for p in leaves for n in p.names}
    assert {axes.CONV_SPACE, axes.CONV_IN, axes.CONV_OUT, axes.NORM} <= names


def test_streaming_cache_equals_full_clip():
    layer = conv3d.MBConv3D(4, 2, depthwise_impl="shifted")
    down = conv3d.CausalConv3D(4, (3, 3, 3), (2, 1, 1))
    up = conv3d.CausalConv3D(4, upsample_2x=True)
    x = jax.random.normal(KEY, (1, 9, 4, 4, 4))
    for mod in (layer, down, up):
        p = jax.jit(mod.init)(KEY, x)
        full = jax.jit(mod.apply)(p, x)
        stream = jax.jit(lambda v, x, mod=mod: mod.apply(v, x, mutable=["cache"]))
        first, state = stream(p, x[:, :5])
        rest, _ = stream({**p, **state}, x[:, 5:])
        np.testing.assert_allclose(jnp.concatenate([first, rest], 1), full, atol=1e-5)
