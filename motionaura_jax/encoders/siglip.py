"""SigLIP vision tower in Flax Linen (D10: the sketch encoder of stage 3 inpainting).

Mirrors HF's `SiglipVisionModel`: a non-overlapping patch convolution, learned position
embeddings (no class token), a pre-LayerNorm transformer with biased projections and
scaled dot-product attention, a post-LayerNorm, and the multi-head attention pooling
("MAP") head: a learned probe attends over the patch tokens, then a residual MLP.
`encoders.loaders.load_siglip_vision` fills it from a Hugging Face safetensors folder;
the tests check it against transformers to 1e-4.

Images are channels-last (B, H, W, C) at the configured resolution, already normalised
as SigLIP's processor does ((x - 0.5) / 0.5, i.e. [-1, 1], the range of our videos, D1).
Position embeddings are not interpolated: another resolution is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from motionaura_jax.encoders.hf_checkpoint import HF_ACTIVATIONS
from motionaura_jax.nn.layers import Projection
from motionaura_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """Hyper-parameters of the SigLIP vision tower (HF `SiglipVisionConfig` fields)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True

    def __post_init__(self):
        if self.hidden_act not in HF_ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of "
                f"{sorted(HF_ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> SiglipVisionConfig:
        """From a HF config dict / `SiglipVisionConfig`; a full `siglip` config uses its
        `vision_config`."""
        if not isinstance(hf, Mapping):
            hf = hf.to_dict()
        if hf.get("model_type") == "siglip" or "vision_config" in hf:
            hf = hf["vision_config"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: hf[k] for k in names if k in hf and hf[k] is not None})


def _dense(features, names, dtype, param_dtype, name, in_dims=1):
    # Xavier-uniform as HF's SigLIP init; Projection applies it to the equivalent 2D
    # (fan_in, fan_out) matrix, so the fans are those of the real multi-axis shape.
    out = (features,) if isinstance(features, int) else tuple(features)
    return Projection(
        out,
        names,
        kernel_init=nn.initializers.xavier_uniform(),
        num_in=in_dims,
        use_bias=True,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def _layer_norm(eps, dtype, param_dtype, name):
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.NORM,)),
    )


class SiglipAttention(nn.Module):
    """Multi-head attention with biases; queries from `x_q`, keys/values from `x_kv`."""

    config: SiglipVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array) -> jax.Array:
        cfg = self.config
        hk = (cfg.num_attention_heads, cfg.head_dim)
        names = (axes.EMBED, axes.HEADS, axes.KV)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = _dense(hk, names, name="query", **kw)(x_q)
        k = _dense(hk, names, name="key", **kw)(x_kv)
        v = _dense(hk, names, name="value", **kw)(x_kv)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * cfg.head_dim**-0.5, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return _dense(
            cfg.hidden_size, (axes.HEADS, axes.KV, axes.EMBED), name="out", in_dims=2, **kw
        )(out)


class SiglipMLP(nn.Module):
    """`fc2(act(fc1 x))` with biases."""

    config: SiglipVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _dense(cfg.intermediate_size, (axes.EMBED, axes.MLP), name="fc1", **kw)(x)
        h = HF_ACTIVATIONS[cfg.hidden_act](h)
        return _dense(cfg.hidden_size, (axes.MLP, axes.EMBED), name="fc2", **kw)(h)


class SiglipBlock(nn.Module):
    """Pre-LN block `x + attn(ln1 x)`, `x + mlp(ln2 x)`; scan-shaped."""

    config: SiglipVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _layer_norm(cfg.layer_norm_eps, name="norm1", **kw)(x)
        x = x + SiglipAttention(cfg, name="attention", **kw)(h, h)
        x = x + SiglipMLP(cfg, name="mlp", **kw)(
            _layer_norm(cfg.layer_norm_eps, name="norm2", **kw)(x)
        )
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        return x, None


class SiglipMAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over tokens, residual MLP."""

    config: SiglipVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param(
            "probe",
            nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(), (None, None, axes.EMBED)
            ),
            (1, 1, cfg.hidden_size),
            self.param_dtype,
        )
        probe = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, cfg.hidden_size))
        h = SiglipAttention(cfg, name="attention", **kw)(probe, x)
        h = h + SiglipMLP(cfg, name="mlp", **kw)(
            _layer_norm(cfg.layer_norm_eps, name="norm", **kw)(h)
        )
        return h[:, 0]


class SiglipVisionTower(nn.Module):
    """SigLIP vision encoder.

    Call with `images` (B, H, W, C) float, H = W = `image_size`. Returns
    `(pooled (B, D), last_hidden_state (B, P, D))` with P = (image_size / patch_size)^2;
    `pooled` is None when the config has no head (`vision_use_head=False`).
    """

    config: SiglipVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"SigLIP expects images (B, {cfg.image_size}, {cfg.image_size}, "
                f"{cfg.num_channels}), got {tuple(images.shape)}; resize the "
                f"sketches to {cfg.image_size}x{cfg.image_size} channels-last first"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = cfg.patch_size
        patches = nn.Conv(
            cfg.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            name="patch_embed",
            **kw,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(),
                # Flax forbids repeating a logical name; taps and the 3 input
                # channels are tiny, so only the width is named.
                (None, None, None, axes.EMBED),
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
        )(images)
        x = patches.reshape(images.shape[0], -1, cfg.hidden_size)  # row-major, as HF's flatten
        pos = self.param(
            "position_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(cfg.hidden_size**-0.5), (None, axes.EMBED)
            ),
            (cfg.num_patches, cfg.hidden_size),
            self.param_dtype,
        )
        x = x + pos.astype(self.dtype)[None]
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))

        blocks = nn.scan(
            SiglipBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=cfg.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )
        x, _ = blocks(cfg, name="layers", **kw)(x, None)
        x = _layer_norm(cfg.layer_norm_eps, name="post_norm", **kw)(x)
        pooled = SiglipMAPHead(cfg, name="head", **kw)(x) if cfg.vision_use_head else None
        return pooled, x
