"""Quantizers for the 3D-MBQ-VAE latent (Table 7; DESIGN D3, D4).

Every quantizer is a Linen module with the same surface:

    z_q, aux = q(z, train=...)     z (..., d) -> z_q (..., d) float32 (straight-through)
                                   aux: 'indices' int32 (...), 'loss' (weighted scalar), terms
    q.indices_to_codes(indices)    (...) -> codes (..., code_dim)
    q.codes_to_indices(codes)      (..., code_dim) -> (...) int32
    q.embed(indices)               (...) -> z_q (..., d), the decoder's input
    q.codebook_size                K

* `FSQ` (default): lookup-free finite scalar quantization; d=8 -> 5 dims with levels
  (8, 8, 8, 5, 5) = 12,800 codes -> d=8. Codes are the 5-dim points in [-1, 1].
* `BinaryLFQ`: MAGVIT-v2 lookup-free quantization, codes in {-1, 1}^d, K = 2^d, with the
  entropy penalty (per-sample entropy - gamma * codebook entropy).
* `VectorQuantizer`: Euclidean nearest neighbour in a learned (K, d) codebook (VQ-VAE).
* `GumbelQuantizer`: logits over K codes, straight-through Gumbel-softmax while training.

All math runs in float32 whatever the model's compute dtype (D3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.nn.conv3d import channel_axis
from motionaura_jax.parallel import axes

Aux = dict[str, jax.Array]


def straight_through(x: jax.Array, x_q: jax.Array) -> jax.Array:
    """Value of `x_q`, gradient of the identity w.r.t. `x`."""
    return x + jax.lax.stop_gradient(x_q - x)


def codebook_stats(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """Fraction of the K codes used by `indices` and the perplexity exp(H(histogram))."""
    counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
    p = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def _dense(features: int, cin: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(),
            (channel_axis(cin, axes.EMBED), channel_axis(features, axes.EMBED)),
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        name=name,
    )


def fsq_digits(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """(...) int mixed-radix code indices -> (..., len(levels)) int32 digits, digit 0
    varying fastest (index = sum_i digit_i * prod(levels[:i]))."""
    basis = jnp.asarray(np.cumprod([1, *levels[:-1]]), jnp.int32)
    return (indices[..., None].astype(jnp.int32) // basis) % jnp.asarray(levels, jnp.int32)


class FSQ(nn.Module):
    """Finite scalar quantization (D3 default): project d -> len(levels), bound each dim
    to `levels[i]` integer values with tanh, round (straight-through), project back."""

    latent_dim: int = 8
    levels: Sequence[int] = (8, 8, 8, 5, 5)
    commit_weight: float = 0.25  # D4: commitment replaces the codebook terms
    eps: float = 1e-3

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    def _consts(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        levels = jnp.asarray(self.levels, jnp.float32)
        half_width = jnp.asarray([lv // 2 for lv in self.levels], jnp.float32)
        basis = jnp.asarray(np.cumprod([1, *self.levels[:-1]]), jnp.int32)
        return levels, half_width, basis

    def setup(self) -> None:
        # Level 2 dims start with ~13% of their codes in use (D3); refuse them.
        if any(lv < 3 for lv in self.levels):
            raise ValueError(f"FSQ levels must all be >= 3, got {tuple(self.levels)}")
        self.project_in = _dense(len(self.levels), self.latent_dim, "project_in")
        self.project_out = _dense(self.latent_dim, len(self.levels), "project_out")

    def _bound(self, z: jax.Array) -> jax.Array:
        levels, _, _ = self._consts()
        half_l = (levels - 1) * (1 + self.eps) / 2
        # Even level counts get a half-step offset so that rounding yields exactly L values.
        offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
        shift = jnp.arctanh(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def __call__(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, Aux]:
        del train
        _, half_width, _ = self._consts()
        bounded = self._bound(self.project_in(z.astype(jnp.float32)))
        rounded = jnp.round(bounded)
        codes = straight_through(bounded, rounded) / half_width
        commit = jnp.mean(jnp.square(bounded - jax.lax.stop_gradient(rounded)) / half_width**2)
        aux = {
            "indices": self.codes_to_indices(codes),
            "commit_loss": commit,
            "loss": self.commit_weight * commit,
        }
        return self.project_out(codes), aux

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """(..., len(levels)) codes in [-1, 1] -> (...) int32 mixed-radix index."""
        _, half_width, basis = self._consts()
        digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """(...) int32 -> (..., len(levels)) codes in [-1, 1]."""
        _, half_width, _ = self._consts()
        digits = fsq_digits(indices, self.levels)
        return (digits.astype(jnp.float32) - half_width) / half_width

    def embed(self, indices: jax.Array) -> jax.Array:
        return self.project_out(self.indices_to_codes(indices))


def _binary_entropy(p: jax.Array) -> jax.Array:
    p = jnp.clip(p, 1e-7, 1 - 1e-7)
    return -(p * jnp.log(p) + (1 - p) * jnp.log(1 - p))


class BinaryLFQ(nn.Module):
    """MAGVIT-v2 lookup-free quantization: code = sign(z) in {-1, 1}^d, K = 2^d.

    Entropy penalty (D3): mean per-sample entropy - gamma * codebook entropy of the batch,
    both of softmax(-||z - c||^2 / tau) over codes c. That distribution factorises over
    bits (p(bit=1) = sigmoid(4 z / tau)), so the per-sample term is exact as a sum of bit
    entropies; the codebook term uses the bits' batch marginals (an upper bound that is
    tight when bits are independent), which avoids materialising 2^d probabilities.
    """

    latent_dim: int = 13
    entropy_weight: float = 0.1
    commit_weight: float = 0.25
    gamma: float = 1.0
    tau: float = 0.01

    @property
    def codebook_size(self) -> int:
        return 2**self.latent_dim

    def __call__(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, Aux]:
        del train
        z = z.astype(jnp.float32)
        q = jnp.where(z > 0, 1.0, -1.0)
        p_bits = jax.nn.sigmoid(4.0 * z / self.tau).reshape(-1, self.latent_dim)
        sample_entropy = jnp.mean(jnp.sum(_binary_entropy(p_bits), axis=-1))
        codebook_entropy = jnp.sum(_binary_entropy(jnp.mean(p_bits, axis=0)))
        entropy = sample_entropy - self.gamma * codebook_entropy
        commit = jnp.mean(jnp.square(z - jax.lax.stop_gradient(q)))
        aux = {
            "indices": self.codes_to_indices(q),
            "commit_loss": commit,
            "entropy_loss": entropy,
            "sample_entropy": sample_entropy,
            "codebook_entropy": codebook_entropy,
            "loss": self.commit_weight * commit + self.entropy_weight * entropy,
        }
        return straight_through(z, q), aux

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        basis = 2 ** jnp.arange(self.latent_dim, dtype=jnp.int32)
        return jnp.sum((codes > 0).astype(jnp.int32) * basis, axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        bits = (indices[..., None] >> jnp.arange(self.latent_dim, dtype=jnp.int32)) & 1
        return bits.astype(jnp.float32) * 2.0 - 1.0

    def embed(self, indices: jax.Array) -> jax.Array:
        return self.indices_to_codes(indices)


def _codebook_param(module: nn.Module, k: int, d: int) -> jax.Array:
    return module.param(
        "codebook",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_out", "normal"),
            (channel_axis(k, axes.VOCAB), channel_axis(d, axes.EMBED)),
        ),
        (k, d),
        jnp.float32,
    )


def _nearest(z_nd: jax.Array, codebook_kd: jax.Array) -> jax.Array:
    """argmin_k ||z - e_k||^2 without forming (N, K, d)."""
    dist = (
        jnp.sum(z_nd**2, axis=-1, keepdims=True)
        - 2.0 * z_nd @ codebook_kd.T
        + jnp.sum(codebook_kd**2, axis=-1)[None]
    )
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


class VectorQuantizer(nn.Module):
    """VQ-VAE quantizer (section 3.1, Eq. 1 / D4): Euclidean nearest neighbour,
    loss ||sg[z] - e||^2 + beta ||z - sg[e]||^2, straight-through gradient."""

    num_codes: int = 4096
    latent_dim: int = 256
    beta: float = 0.25

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def setup(self) -> None:
        self.codebook = _codebook_param(self, self.num_codes, self.latent_dim)

    def __call__(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, Aux]:
        del train
        z = z.astype(jnp.float32)
        idx = self.codes_to_indices(z)
        e = self.codebook[idx]
        codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e))
        commit = jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
        aux = {
            "indices": idx,
            "codebook_loss": codebook_loss,
            "commit_loss": commit,
            "loss": codebook_loss + self.beta * commit,
        }
        return straight_through(z, e), aux

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        return self.codebook[indices]

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        flat = codes.astype(jnp.float32).reshape(-1, self.latent_dim)
        return _nearest(flat, self.codebook).reshape(codes.shape[:-1])

    def embed(self, indices: jax.Array) -> jax.Array:
        return self.indices_to_codes(indices)


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax quantization (Table 7): logits over K codes from z; while training a
    hard one-hot sample with the soft sample's gradient (needs the 'gumbel' rng), argmax at
    eval; KL(q || uniform) keeps codes in use. Codes are rows of a (K, d) codebook."""

    num_codes: int = 256
    latent_dim: int = 512
    temperature: float = 1.0
    kl_weight: float = 5e-4

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def setup(self) -> None:
        self.to_logits = _dense(self.num_codes, self.latent_dim, "logits")
        self.codebook = _codebook_param(self, self.num_codes, self.latent_dim)

    def __call__(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, Aux]:
        k = self.num_codes
        logits = self.to_logits(z.astype(jnp.float32))
        if train:
            g = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
            soft = jax.nn.softmax((logits + g) / self.temperature, axis=-1)
        else:
            soft = jax.nn.softmax(logits, axis=-1)
        idx = jnp.argmax(soft, axis=-1).astype(jnp.int32)
        onehot = straight_through(soft, jax.nn.one_hot(idx, k, dtype=jnp.float32))
        log_q = jax.nn.log_softmax(logits, axis=-1)
        kl = jnp.mean(jnp.sum(jnp.exp(log_q) * (log_q + jnp.log(float(k))), axis=-1))
        aux = {"indices": idx, "kl_loss": kl, "loss": self.kl_weight * kl}
        return onehot @ self.codebook, aux

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        return self.codebook[indices]

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        flat = codes.astype(jnp.float32).reshape(-1, self.latent_dim)
        return _nearest(flat, self.codebook).reshape(codes.shape[:-1])

    def embed(self, indices: jax.Array) -> jax.Array:
        return self.indices_to_codes(indices)


QUANTIZERS = ("fsq", "lfq", "vq", "gumbel")


def make_quantizer(name: str, latent_dim: int, **kwargs: Any) -> nn.Module:
    """Build a quantizer by config name; `kwargs` are its fields (e.g. `levels`,
    `codebook_size`, `beta`, `entropy_weight`)."""
    if "codebook_size" in kwargs:
        kwargs["num_codes"] = kwargs.pop("codebook_size")
    if name == "fsq":
        return FSQ(latent_dim=latent_dim, **kwargs)
    if name == "lfq":
        return BinaryLFQ(latent_dim=latent_dim, **kwargs)
    if name == "vq":
        return VectorQuantizer(latent_dim=latent_dim, **kwargs)
    if name == "gumbel":
        return GumbelQuantizer(latent_dim=latent_dim, **kwargs)
    raise ValueError(f"unknown quantizer {name!r}; use one of {QUANTIZERS}")
