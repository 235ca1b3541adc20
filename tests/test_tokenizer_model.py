"""VideoTokenizer: shapes, causality, errors, parameter budget, chunked long-video path."""

import functools
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from motionaura_jax.tokenizer import losses, streaming
from motionaura_jax.tokenizer.model import VideoTokenizer, build_tokenizer, param_counts

KEY = jax.random.key(0, impl="rbg")  # rbg: init compiles much faster than threefry on CPU

# The toy's layout (patchify stem, three stages, both temporal downsamplers) at width 8:
# 32 x 32 frames -> 2 x 2 tokens with every block running at 8 x 8 or smaller.
TINY = dict(
    latent_dim=8,
    stem_width=8,
    stem_stride=4,
    widths=(8, 8, 16),
    depths=(1, 1, 1),  # the blocks themselves are tested in test_conv3d
    temporal_down=(True, True),
    expansion=2,
    depthwise_impl="grouped",  # fewer ops to compile; parity with 'shifted' is in test_conv3d
    quantizer=dict(name="fsq"),
    mfi_hidden=16,
)


@functools.cache
def tiny() -> tuple[VideoTokenizer, dict]:
    model = build_tokenizer(TINY)
    params = jax.jit(model.init)(KEY, jnp.zeros((1, 5, 32, 32, 3)))
    return model, params


@functools.cache
def _encode():
    model, _ = tiny()
    return jax.jit(lambda p, v: model.apply(p, v, method=VideoTokenizer.encode))


@functools.cache
def _decode():
    model, _ = tiny()
    return jax.jit(lambda p, i: model.apply(p, i, method=VideoTokenizer.decode))


def _video(t, b=2, hw=32, seed=1):
    return jax.random.uniform(jax.random.key(seed), (b, t, hw, hw, 3), minval=-1, maxval=1)


@pytest.mark.parametrize("t", [1, 5, 17])
def test_shapes(t):
    model, params = tiny()
    out = jax.eval_shape(lambda p, v: model.apply(p, v, train=True), params, _video(t))
    n = 1 + (t - 1) // 4
    assert out["recon"].shape == (2, t, 32, 32, 3) and out["recon"].dtype == jnp.float32
    assert out["indices"].shape == (2, n, 2, 2) and out["indices"].dtype == jnp.int32
    assert out["z_c"].shape == (2, n, 2, 2, 8)
    assert out["mfi_logits"].shape == (2, t)
    decoded = jax.eval_shape(
        lambda p, i: model.apply(p, i, method=VideoTokenizer.decode), params, out["indices"]
    )
    assert decoded.shape == (2, t, 32, 32, 3)


def test_decode_of_encode_is_the_training_reconstruction():
    model, params = tiny()
    # 9 frames, batch 1: the shapes of the chunked test, so `_decode` compiles once.
    out = jax.jit(lambda p, v: model.apply(p, v, train=False))(params, _video(9, b=1))
    assert int(out["indices"].min()) >= 0 and int(out["indices"].max()) < 12_800
    video = _decode()(params, out["indices"])
    np.testing.assert_allclose(video, out["recon"], atol=1e-5)


def test_encoder_is_causal():
    model, params = tiny()
    v = _video(9, b=1)
    j = 5  # input frame 5 belongs to latent frame ceil(5 / 4) = 2
    v2 = v.at[:, j].set(-v[:, j])
    z1 = _encode()(params, v)[1]["z_c"]
    z2 = _encode()(params, v2)[1]["z_c"]
    np.testing.assert_allclose(z1[:, :2], z2[:, :2], atol=1e-6)
    assert float(jnp.abs(z1[:, 2] - z2[:, 2]).max()) > 1e-4


def test_bad_frame_count_and_resolution_raise():
    model, params = tiny()
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 4k .* got 16; use 17"):
        model.apply(params, jnp.zeros((1, 16, 16, 16, 3)), method=VideoTokenizer.encode)
    with pytest.raises(ValueError, match="divisible by 16, got 24x32; use 32x32"):
        model.apply(params, jnp.zeros((1, 5, 24, 32, 3)), method=VideoTokenizer.encode)


def test_paper_widths_param_budget():
    from configs import tokenizer as tok_config

    counts = param_counts(build_tokenizer(tok_config.get_config("paper").model))
    # D2: within 15% of the paper's 140M encoder / 177M decoder.
    assert abs(counts["encoder"] / 140e6 - 1) < 0.15, counts
    assert abs(counts["decoder"] / 177e6 - 1) < 0.15, counts


def test_chunked_encode_decode_equals_full_clip():
    model, params = tiny()
    v = _video(9, b=1, seed=3)
    full_idx, _ = _encode()(params, v)
    chunk_idx = streaming.encode_chunked(model, params["params"], v, chunk_latents=1)
    np.testing.assert_array_equal(chunk_idx, full_idx)
    full_video = _decode()(params, full_idx)
    chunk_video = streaming.decode_chunked(model, params["params"], full_idx, chunk_latents=1)
    np.testing.assert_allclose(chunk_video, full_video, atol=1e-4)


def test_mfi_loss_falls_on_fixed_batch():
    model, params = tiny()
    rng = np.random.default_rng(0)
    v = np.array(_video(9, b=4, seed=4))
    frame_index = jnp.asarray(rng.integers(0, 9, size=4), jnp.int32)
    v[np.arange(4), np.asarray(frame_index)] = 0.0  # blank one frame per clip
    has = jnp.ones((4,), bool)
    # Train the encoder + MFI head only (the decoder plays no part in L_MFI).
    trainable = {k: params["params"][k] for k in ("encoder", "mfi_head")}

    def loss_fn(t):
        p = {"params": {**params["params"], **t}}
        _, aux = model.apply(p, jnp.asarray(v), method=VideoTokenizer.encode)
        logits = model.apply(p, aux["z_c"], method=lambda m, z: m.mfi_head(z))
        return losses.mfi_loss(logits, frame_index, has)[0]

    opt = optax.adam(5e-3)

    @jax.jit
    def step(t, s):
        loss, g = jax.value_and_grad(loss_fn)(t)
        u, s = opt.update(g, s, t)
        return optax.apply_updates(t, u), s, loss

    state = opt.init(trainable)
    first = None
    for _ in range(20):
        trainable, state, loss = step(trainable, state)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first, (first, float(loss))


def test_time_only_downsampler_gives_8x_layout_and_streams():
    """`spatial_down=(True, False)` (the toy's 8x layout): the second downsampler halves
    only T, the decoder mirrors it, and the chunked path still equals the full clip."""
    model = build_tokenizer({**TINY, "depths": (0, 0, 0), "spatial_down": (True, False)})
    assert (model.spatial_factor, model.temporal_factor) == (8, 4)
    v = _video(9, b=1, seed=4)
    params = jax.jit(model.init)(KEY, v)
    idx, _ = jax.jit(lambda p, x: model.apply(p, x, method=VideoTokenizer.encode))(params, v)
    assert idx.shape == (1, 3, 4, 4)
    video = jax.jit(lambda p, i: model.apply(p, i, method=VideoTokenizer.decode))(params, idx)
    assert video.shape == (1, 9, 32, 32, 3)
    np.testing.assert_array_equal(
        streaming.encode_chunked(model, params["params"], v, chunk_latents=1), idx
    )
    np.testing.assert_allclose(
        streaming.decode_chunked(model, params["params"], idx, chunk_latents=1), video, atol=1e-4
    )
    with pytest.raises(ValueError, match="spatial_down needs 2 entries"):
        build_tokenizer({**TINY, "spatial_down": (True,)})


def test_mfi_head_gradient_is_finite_on_a_constant_latent():
    """A latent frame that is constant over space (tiny widths at init) must not give an
    inf/NaN gradient through the head's spatial spread."""
    from motionaura_jax.tokenizer.model import MFIHead

    head = MFIHead(8, 4)
    z = jnp.ones((1, 2, 4, 4, 8))
    params = head.init(KEY, z)
    grad = jax.grad(lambda x: head.apply(params, x).sum())(z)
    assert bool(jnp.isfinite(grad).all())


def test_memory_tool_counts_fewer_saved_residuals_under_remat(monkeypatch):
    # tools/tokenizer_memory.py adds 32 fake devices to XLA_FLAGS on import: keep that local.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    tool = importlib.import_module("tools.tokenizer_memory")
    with_remat = tool.saved_for_backward_per_clip(5, 32, "grouped", True, "float32")
    without = tool.saved_for_backward_per_clip(5, 32, "grouped", False, "float32")
    clip_bytes = 5 * 32 * 32 * 3 * 4
    assert clip_bytes < with_remat < without / 10
