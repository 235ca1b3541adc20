"""Shared small layers: sinusoidal embeddings, the conditioning MLP, AdaLN, feed-forward.

Every parameter carries logical axis names from `motionaura_jax.parallel.axes` so that
one rules table can place it on any mesh (DESIGN.md section 5). Parameters are kept in
`param_dtype` (float32 by default) and the matmuls run in `dtype` (bfloat16 at scale).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from motionaura_jax.nn import lora as lora_lib
from motionaura_jax.parallel import axes

Dtype = Any


def dense_init(std: float | None = None) -> nn.initializers.Initializer:
    """Truncated-normal init (std 0.02 by default, as in BERT/ViT) or fan-in scaled."""
    if std is None:
        return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    return nn.initializers.truncated_normal(stddev=std)


def partitioned(init: nn.initializers.Initializer, names: tuple[str | None, ...]):
    """Attach logical axis names to an initializer (`nn.with_logical_partitioning`)."""
    return nn.with_logical_partitioning(init, names)


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer sinusoidal features of scalars.

    Args:
      x: (...,) float positions or timesteps.
      dim: even feature size.
    Returns:
      (..., dim) float32, `[cos(x w_i), sin(x w_i)]` with log-spaced frequencies w_i.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding size must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(x, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def silu_mlp(
    x: jax.Array,
    *,
    width: int,
    name: str,
    dtype: Dtype,
    param_dtype: Dtype,
    in_axis: str | None = axes.MLP,
) -> jax.Array:
    """Two-layer SiLU MLP of a conditioning vector (DiT), params `{name}_in` / `{name}_out`.

    Call it inside a compact method: the two Dense layers join the calling module.
    `in_axis` is the logical axis of the input features (None leaves them replicated).
    """
    dense = functools.partial(
        nn.Dense,
        width,
        dtype=dtype,
        param_dtype=param_dtype,
        bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
    )
    x = dense(kernel_init=partitioned(dense_init(0.02), (in_axis, axes.EMBED)), name=f"{name}_in")(
        x
    )
    return dense(
        kernel_init=partitioned(dense_init(0.02), (axes.MLP, axes.EMBED)), name=f"{name}_out"
    )(nn.silu(x))


class ConditionEmbedding(nn.Module):
    """Timestep + FPS conditioning vector (Sec. 3.3: AdLN(z_t, t, FPS)).

    Each scalar goes through a `freq_dim`-d sinusoidal embedding (512, Table 10) and a
    two-layer SiLU MLP (DiT); the two results are summed.

    Call args:
      t: (B,) diffusion time in [0, 1] (1 = fully masked).
      fps: (B,) frames per second.
    Returns:
      (B, width) conditioning vector.
    """

    width: int
    freq_dim: int = 512
    time_scale: float = 1000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array, fps: jax.Array) -> jax.Array:
        # t in [0, 1] is stretched to DDPM-like step units so the sinusoid spans many periods.
        t_emb = sinusoidal_embedding(t * self.time_scale, self.freq_dim)
        fps_emb = sinusoidal_embedding(fps, self.freq_dim)
        mlp = functools.partial(
            silu_mlp, width=self.width, dtype=self.dtype, param_dtype=self.param_dtype
        )
        return mlp(t_emb, name="time") + mlp(fps_emb, name="fps")


class Projection(nn.Module):
    """Linear map contracting the last `len(in_shape)` axes into `features` (no bias).

    `nn.DenseGeneral` initialises a flattened 2D kernel and reshapes it, which breaks
    logical-partitioning metadata of rank > 2; this declares the kernel at its true
    shape `in_shape + features` with one logical name per axis.

    Call args:
      x: (..., *in_shape).
    Returns:
      (..., *features) in `dtype`.
    """

    features: tuple[int, ...]
    names: tuple[str | None, ...]
    num_in: int = 1
    kernel_init: nn.initializers.Initializer = dense_init()
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.num_in :]
        shape = tuple(in_shape) + tuple(self.features)
        if len(self.names) != len(shape):
            raise ValueError(
                f"need {len(shape)} logical names for kernel {shape}, got {self.names}"
            )
        fan_in = math.prod(in_shape)

        def init(key, shape, dtype):
            # Initialise as the equivalent 2D (fan_in, fan_out) matrix so scaling matches.
            flat = self.kernel_init(key, (fan_in, math.prod(self.features)), dtype)
            return flat.reshape(shape)

        kernel = self.param("kernel", partitioned(init, self.names), shape, self.param_dtype)
        contract = tuple(range(x.ndim - self.num_in, x.ndim))
        y = jax.lax.dot_general(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            ((contract, tuple(range(self.num_in))), ((), ())),
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                partitioned(nn.initializers.zeros, self.names[self.num_in :]),
                tuple(self.features),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class AdaLNModulation(nn.Module):
    """adaLN-single (PixArt-alpha): one shared projection of the condition, per-block offsets.

    A per-block `Linear(width -> n * width)` (DiT) would add 15 * width^2 parameters per
    block (252M per block at L's width 4096); the shared projection plus a learned
    (n, width) table per block keeps the conditioning cheap. Initialisation follows
    PixArt-alpha: projection N(0, 0.02), per-block table N(0, 1/width), so gates start small
    (blocks start near the identity) but non-zero (every sub-layer reaches the output and
    gets gradients from the first step; exact zero gates would also hide the text and any
    stage-3 adapter until the gates moved).

    Call args:
      cond: (B, width) conditioning vector.
    Returns:
      (B, n, width) modulation vectors (shifts, scales, gates), before per-block offsets.
    """

    width: int
    num: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cond: jax.Array) -> jax.Array:
        mod = Projection(
            (self.num, self.width),
            (axes.EMBED, None, axes.MLP),
            kernel_init=dense_init(0.02),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )(nn.silu(cond))
        return mod.astype(jnp.float32)


class LayerNorm(nn.Module):
    """LayerNorm without affine parameters, computed in float32 (AdaLN supplies the affine)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return ((x - mean) * jax.lax.rsqrt(var + self.eps)).astype(dtype)


def modulate(x_bld: jax.Array, shift_bd: jax.Array, scale_bd: jax.Array) -> jax.Array:
    """AdaLN affine `x (1 + scale) + shift` with per-example (B, D) vectors."""
    return (x_bld * (1.0 + scale_bd[:, None, :]) + shift_bd[:, None, :]).astype(x_bld.dtype)


class FeedForward(nn.Module):
    """Two-layer GELU MLP, width -> mlp_ratio * width -> width.

    With `lora_rank > 0`, D10's feed-forward LoRA (`out_lora`) is applied sequentially to
    the output: `y + delta(y)`, zero at initialisation.

    Call args:
      x: (B, L, width).
    Returns:
      (B, L, width).
    """

    width: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lora_rank: int = 0
    lora_kind: str = "adapter"
    lora_alpha: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = int(self.width * self.mlp_ratio)
        h = nn.Dense(
            hidden,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (axes.EMBED, axes.MLP)),
            bias_init=partitioned(nn.initializers.zeros, (axes.MLP,)),
            name="wi",
        )(x)
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        # tanh-GELU: XLA fuses it into the matmul epilogue; erf-GELU is slower on CPU.
        h = nn.gelu(h, approximate=True)
        y = nn.Dense(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (axes.MLP, axes.EMBED)),
            bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
            name="wo",
        )(h)
        if self.lora_rank:
            y = y + lora_lib.make_adapter(
                self.lora_kind,
                (self.width,),
                self.lora_rank,
                (axes.EMBED,),
                alpha=self.lora_alpha,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="out_lora",
            )(y)
        return y
