"""Spectral attention (Sec. 3.3, Eqs. 2-5; D6): 2D Fourier mixing, RoPE, multi-head attention.

`spectral_mix` is the `Re fft2D` of Eqs. 2 and 4 and the `Re ifft2D` of Eqs. 3 and 5:

* `'real'`: `Re fft2(x)` over (sequence, embedding), orthonormal scaling. For a real input
  `Re ifft2(x) = Re fft2(x)` under the orthonormal convention (ifft2(x) = conj(fft2(x)) for
  real x), so the forward and the "inverse" are the same operator. It is *not* invertible:
  applied twice it returns the even part `(x[n, d] + x[-n, -d]) / 2` (the paper's Re drops
  the odd part; the learned projections in between make the block expressive anyway).
* `'hartley'` (ours): `Re fft2(x) - Im fft2(x)`, the 2D Hartley-like transform. With
  orthonormal scaling it is its own exact inverse (unnormalised: itself up to 1/N, N = L*D),
  so nothing is lost between the spatial and frequency domains.
* `'none'`: identity (the paper's "w/o fft" ablation, Table 3).

Orthonormal scaling (`norm='ortho'`) keeps activations at unit variance; the unnormalised
FFT would multiply them by sqrt(L*D) (~2300 at L's width and 1280 tokens), which
overflows attention logits in bfloat16. XLA has no bfloat16 FFT, so the transform runs in
float32 and the result is cast back (D6). Under a mesh the FFT is wrapped in
`jax.shard_map` over the batch's mesh axes: the FFT's sequence and embedding axes are
local to each example, so each device transforms its own examples and the partitioner
never gathers the batch (checked on compiled HLO in tests/test_attention.py).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from motionaura_jax.nn import lora as lora_lib
from motionaura_jax.nn.layers import Projection
from motionaura_jax.parallel import axes

Dtype = Any
SPECTRAL_MODES = ("real", "none", "hartley")
# Mesh axes that shard the batch when a mesh is active but no logical rules are set.
DEFAULT_BATCH_MESH_AXES = ("data", "fsdp")


def _fft_mix_local(x: jax.Array, mode: str) -> jax.Array:
    b, length, width = x.shape
    # XLA:CPU's FFT thunk needs a row-major operand, but layout assignment can hand it the
    # column-major layout of an all-gather over the embedding axis (or of a consumer).
    # Flattening behind optimisation barriers pins row-major layouts on both sides of
    # the FFT (free when the layout already is row-major).
    x = jax.lax.optimization_barrier(x.reshape(b, -1)).reshape(x.shape)
    # x is real, so its spectrum is Hermitian: F[k, j] = conj(F[-k, -j]). Half the
    # embedding-axis bins (rfft) determine the rest, which halves the FFT work.
    f = jnp.fft.rfft(x.astype(jnp.float32), axis=-1, norm="ortho")
    f = jnp.fft.fft(f, axis=-2, norm="ortho")  # (B, L, D // 2 + 1)
    f = jax.lax.optimization_barrier(f.reshape(b, -1)).reshape(f.shape)
    if mode == "real":
        half, mirror = f.real, f.real  # Re F[k, j] = Re F[-k, D - j]
    else:
        half, mirror = f.real - f.imag, f.real + f.imag  # Im F[k, j] = -Im F[-k, D - j]
    neg = (-np.arange(length)) % length
    src = width - np.arange(width // 2 + 1, width)
    rest = jnp.take(jnp.take(mirror, neg, axis=1), src, axis=2)
    return jnp.concatenate([half, rest], axis=-1).astype(x.dtype)


def batch_mesh_axes(batch_size: int) -> tuple[str, ...]:
    """Mesh axes that shard the batch under the active mesh and logical rules.

    Returns () when no mesh is active, the batch is not sharded, or `batch_size` does not
    divide evenly over those axes (then no shard_map is needed or possible).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    rules = nn.get_logical_axis_rules()
    if rules:
        spec = nn.logical_to_mesh_axes((axes.BATCH,), rules)[0]
        names = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    else:
        names = tuple(a for a in DEFAULT_BATCH_MESH_AXES if a in mesh.axis_names)
    # Axes already manual (inside an enclosing shard_map) cannot be mapped again.
    manual = {
        a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Manual
    }
    names = tuple(a for a in names if a in mesh.axis_names and a not in manual)
    size = math.prod(mesh.shape[a] for a in names)
    if not names or size == 1 or batch_size % size:
        return ()
    return names


def spectral_mix(x_bld: jax.Array, mode: str) -> jax.Array:
    """`Re fft2D` (or Hartley, or identity) over the sequence and embedding axes.

    Args:
      x_bld: (B, L, D) activations, any float dtype.
      mode: one of `SPECTRAL_MODES`.
    Returns:
      (B, L, D) in `x_bld.dtype`; the transform itself runs in float32.
    """
    if mode not in SPECTRAL_MODES:
        raise ValueError(f"spectral must be one of {SPECTRAL_MODES}, got {mode!r}")
    if mode == "none":
        return x_bld
    names = batch_mesh_axes(x_bld.shape[0])
    if not names:
        return _fft_mix_local(x_bld, mode)
    # Manual over every (non-manual) mesh axis, split over the batch axes only: each device
    # holds whole (L, D) examples, so the FFT is purely local. Left in auto mode, the
    # partitioner may split D over 'tensor' and emit a wrong-length FFT per shard.
    mesh = jax.sharding.get_abstract_mesh()
    manual = {
        a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Manual
    }
    spec = P(names)
    fn = jax.shard_map(
        lambda x: _fft_mix_local(x, mode),
        in_specs=spec,
        out_specs=spec,
        axis_names=set(mesh.axis_names) - manual,
    )
    return fn(x_bld)


def rope_angles(positions_ln: jax.Array, head_dim: int, base: float = 10_000.0) -> jax.Array:
    """Rotation angles of (factorised) rotary embeddings.

    Args:
      positions_ln: (L, n) integer coordinates; n = 1 for 1D RoPE, n = 3 for `rope3d`
        (frame, row, column). The head_dim/2 rotation pairs are split between the n
        coordinates (earlier coordinates get the remainder), each with its own
        log-spaced frequency ladder.
      head_dim: even per-head width.
    Returns:
      (L, head_dim // 2) float32 angles.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    pairs = head_dim // 2
    n = positions_ln.shape[-1]
    sizes = [pairs // n + (1 if i < pairs % n else 0) for i in range(n)]
    if min(sizes) == 0:
        raise ValueError(f"head_dim {head_dim} too small for {n}-axis RoPE")
    parts = []
    for i, size in enumerate(sizes):
        freqs = base ** (-jnp.arange(size, dtype=jnp.float32) / size)
        parts.append(positions_ln[:, i : i + 1].astype(jnp.float32) * freqs)
    return jnp.concatenate(parts, axis=-1)


def apply_rope(x_blhk: jax.Array, angles_lp: jax.Array) -> jax.Array:
    """Rotate (rotate-half layout) queries or keys by per-position angles.

    Args:
      x_blhk: (B, L, H, Dh).
      angles_lp: (L, Dh // 2) from `rope_angles`.
    Returns:
      (B, L, H, Dh) in the input dtype; the rotation is computed in float32.
    """
    dtype = x_blhk.dtype
    x = x_blhk.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos = jnp.cos(angles_lp)[None, :, None, :]
    sin = jnp.sin(angles_lp)[None, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(dtype)


# Name of the cross-attention maps a `SpectralAttention` sows into 'intermediates' when
# the caller makes that collection mutable (the binding loss, denoiser/diffusion.py).
ATTENTION_MAPS = "cross_attention_map"


def cross_attention_map(
    q_blhk: jax.Array, k_bshk: jax.Array, mask_bs: jax.Array | None
) -> jax.Array:
    """(B, L, S) float32 softmax attention of each query over the keys, mean over heads:
    the weights `jax.nn.dot_product_attention` applies, which it does not return."""
    scale = q_blhk.shape[-1] ** -0.5
    logits = jnp.einsum("blhk,bshk->bhls", q_blhk, k_bshk).astype(jnp.float32) * scale
    if mask_bs is not None:
        logits = jnp.where(mask_bs[:, None, None, :], logits, -1e30)
    return jax.nn.softmax(logits, axis=-1).mean(axis=1)


class SpectralAttention(nn.Module):
    """Multi-head attention in the frequency domain (Eq. 2 for self, Eq. 4 for cross).

    Self-attention: `Re ifft2D(MSA(Q, K, V)(Re fft2D x))` with RoPE on Q and K and one fused
    QKV projection. Cross-attention: Q from `Re fft2D x`, K and V from `context`, which the
    caller passes already transformed (`Re fft2D` of the projected text does not depend on
    the block, so the model computes it once instead of once per block). With
    `lora_rank > 0`, D10's attention LoRA (`q_lora`, `k_lora`, see `nn.lora`) runs in
    parallel to the Q and K projections, reading the same inputs.

    Call args:
      x: (B, L, D) input (already AdLN-normalised).
      context: (B, S, D) keys/values source for cross-attention; None for self-attention.
      context_mask: (B, S) bool, True for valid keys; None = all valid.
      rope: (L, Dh // 2) RoPE angles for self-attention; None = no RoPE.
    Returns:
      (B, L, D) attention output mapped back by the inverse transform (Eqs. 3 and 5).
    """

    num_heads: int
    spectral: str = "real"
    lora_rank: int = 0
    lora_kind: str = "adapter"
    lora_alpha: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _lora(self, name: str, x: jax.Array, head_dim: int) -> jax.Array:
        """D10 attention LoRA, in parallel to the Q or K projection (zero at init)."""
        return lora_lib.make_adapter(
            self.lora_kind,
            (self.num_heads, head_dim),
            self.lora_rank,
            (axes.HEADS, axes.KV),
            alpha=self.lora_alpha,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(x)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        rope: jax.Array | None = None,
    ) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        qkv_names = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)
        x_freq = spectral_mix(x, self.spectral)  # Eq. 2 / Eq. 4: Re fft2D
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if context is None:
            qkv = Projection(
                (3, self.num_heads, head_dim),
                (axes.EMBED, None, axes.HEADS, axes.KV),
                **dense,
                name="qkv",
            )(x_freq)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            if self.lora_rank:
                q = q + self._lora("q_lora", x_freq, head_dim)
                k = k + self._lora("k_lora", x_freq, head_dim)
        else:
            q = Projection(
                (self.num_heads, head_dim), (axes.EMBED, axes.HEADS, axes.KV), **dense, name="q"
            )(x_freq)
            kv = Projection(
                (2, self.num_heads, head_dim),
                (axes.EMBED, None, axes.HEADS, axes.KV),
                **dense,
                name="kv",
            )(context)
            k, v = kv[:, :, 0], kv[:, :, 1]
            if self.lora_rank:
                q = q + self._lora("q_lora", x_freq, head_dim)
                k = k + self._lora("k_lora", context, head_dim)
        q = nn.with_logical_constraint(q, qkv_names)
        k = nn.with_logical_constraint(k, qkv_names)
        v = nn.with_logical_constraint(v, qkv_names)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        if context is not None and self.is_mutable_collection("intermediates"):
            self.sow("intermediates", ATTENTION_MAPS, cross_attention_map(q, k, context_mask))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        out = nn.with_logical_constraint(out, qkv_names)
        out = Projection(
            (width,), (axes.HEADS, axes.KV, axes.EMBED), num_in=2, **dense, name="out"
        )(out)
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.EMBED))
        return spectral_mix(out, self.spectral)  # Eq. 3 / Eq. 5: Re ifft2D
