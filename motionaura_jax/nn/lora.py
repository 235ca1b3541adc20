"""Low-rank adapters for fine-tuning a frozen denoiser (Sec. 4, Appendix F.2; D10).

Two kinds, both `y' = y + delta(x)` with `delta = 0` at initialisation, so the adapted model
starts *exactly* equal to the base model:

* `Adapter` (the paper's): `delta(x) = W_up(GELU(W_down(x)))`. Used in parallel on the Q and
  K projections of self- and cross-attention, and sequentially after the output
  feed-forward layer (`delta` then reads the feed-forward's output). The GELU makes it
  non-mergeable. `W_down` is drawn from the statistics (mean, std) of the base weights it
  adapts (`redraw_down_from_base`) so its output has the scale the base layer's
  activations have; `W_up = 0`.
* `LinearLoRA` (Hu et al.): `delta(x) = (x A) B * alpha / rank`; mergeable into the base
  kernel for export (`merge_linear`), after which the model has no adapter at all.

Parameter naming (what the tree utilities below rely on): an adapter module holds `down`
(in, rank) and `up` (rank, *features); `LinearLoRA` holds `a` and `b` of the same shapes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from motionaura_jax.parallel import axes

Dtype = Any
PyTree = Any
ADAPTER_KINDS = ("adapter", "linear")


def _partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


def _low_rank_factors(
    module: nn.Module, width: int, names: tuple[str, str]
) -> tuple[jax.Array, jax.Array]:
    """The (D, rank) input factor and the zero (rank, *features) output factor."""
    rank = module.rank
    if not 0 < rank < width:
        raise ValueError(f"LoRA rank must be in (0, {width}), got {rank}")
    first = module.param(
        names[0],
        _partitioned(nn.initializers.lecun_normal(), (axes.EMBED, None)),
        (width, rank),
        module.param_dtype,
    )
    second = module.param(
        names[1],
        _partitioned(nn.initializers.zeros, (None, *module.out_names)),
        (rank, *module.features),
        module.param_dtype,
    )
    return first.astype(module.dtype), second.astype(module.dtype)


class Adapter(nn.Module):
    """`W_up(GELU(W_down x))` from (..., D) to (..., *features); zero at initialisation.

    Attributes:
      features: output shape, e.g. (heads, head_dim) for a Q projection.
      rank: bottleneck width l < D (Table 6 uses 8-64).
      out_names: logical names of the output axes (for `up`'s sharding).
    """

    features: tuple[int, ...]
    rank: int
    out_names: tuple[str | None, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        down, up = _low_rank_factors(self, x.shape[-1], ("down", "up"))
        h = jax.nn.gelu(x.astype(self.dtype) @ down)
        return jnp.tensordot(h, up, axes=1)


class LinearLoRA(nn.Module):
    """`(x A) B * alpha / rank` from (..., D) to (..., *features); zero at initialisation."""

    features: tuple[int, ...]
    rank: int
    out_names: tuple[str | None, ...]
    alpha: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a, b = _low_rank_factors(self, x.shape[-1], ("a", "b"))
        return jnp.tensordot(x.astype(self.dtype) @ a, b, axes=1) * (self.alpha / self.rank)


def make_adapter(
    kind: str,
    features: tuple[int, ...],
    rank: int,
    out_names: tuple[str | None, ...],
    *,
    alpha: float = 1.0,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """The adapter of `kind` ('adapter' = the paper's GELU adapter, 'linear' = LoRA)."""
    if kind == "adapter":
        return Adapter(features, rank, out_names, dtype, param_dtype, name=name)
    if kind == "linear":
        return LinearLoRA(features, rank, out_names, alpha, dtype, param_dtype, name=name)
    raise ValueError(f"unknown LoRA kind {kind!r}; use one of {ADAPTER_KINDS}")


def linear_delta(lora_params: PyTree, alpha: float) -> jax.Array:
    """The dense weight `A B alpha / rank` of a `LinearLoRA`, shaped (D, *features)."""
    a, b = lora_params["a"], lora_params["b"]
    rank = a.shape[1]
    return jnp.tensordot(a, b, axes=1) * (alpha / rank)


def redraw_down_from_base(lora_params: PyTree, base_kernel: jax.Array, rng: jax.Array) -> PyTree:
    """Redraws an adapter's `down` from N(mean, std) of the (trained) base kernel (D10).

    Called after the base checkpoint is loaded: at `init` the base weights are random, so
    their statistics are not yet the ones to match.
    """
    base = jnp.asarray(base_kernel, jnp.float32)
    down = lora_params["down"]
    fresh = base.mean() + base.std() * jax.random.normal(rng, down.shape, jnp.float32)
    return {**lora_params, "down": fresh.astype(down.dtype)}


def count_params(tree: PyTree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
