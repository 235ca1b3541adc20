"""T5 v1.1 encoder in Flax Linen (D9: the text encoder of the denoiser is T5-XXL).

transformers v5 ships no Flax T5, so this is our own module; `encoders.loaders.load_t5`
fills it from a Hugging Face safetensors folder and the tests check it against
`transformers.T5EncoderModel` to 1e-4. What makes T5 T5, each reproduced here:

- RMSNorm without mean subtraction and without bias, computed in float32;
- no `1/sqrt(d_kv)` scaling of the attention logits (T5 folds it into the init of `q`);
- one bucketed relative position bias table, owned by the first layer in HF and added to
  the logits of every layer (we hold it at the top level: the layers become identical,
  so they are stacked under `nn.scan`, which keeps T5-XXL's 24 layers one compiled body);
- gated-GELU feed-forward for v1.1 (`gelu_new`, the tanh approximation), ReLU for v1.0;
- padding handled by masking keys only: padded query rows still get outputs, as in HF.

Parameters carry the logical names of `motionaura_jax.parallel.axes`; the stacked layer
axis is `'layers'`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.encoders.hf_checkpoint import HF_ACTIVATIONS
from motionaura_jax.nn.layers import Projection
from motionaura_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder stack (the HF `T5Config` fields we use)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self):
        act = self.activation
        if act not in HF_ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use one of "
                f"'relu', 'gated-gelu', 'gelu', 'gated-silu'"
            )

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        # HF maps "gated-gelu" to the tanh approximation (`gelu_new`); plain "gelu" stays exact.
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> T5Config:
        """Builds the config from a HF `config.json` dict or a `transformers.T5Config`."""
        if not isinstance(hf, Mapping):
            hf = hf.to_dict()
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: hf[k] for k in names if k in hf and hf[k] is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        return cls(**kwargs)


def t5_v1_1_xxl_config() -> T5Config:
    """The encoder of `google/t5-v1_1-xxl` (its config.json, written down so no download)."""
    return T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
    )


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 relative-position buckets, int32 (query_length, key_length).

    Half the buckets hold the sign; of the rest, distances below `num_buckets // 4` get
    their own bucket and larger ones share logarithmically wider bins up to
    `max_distance`. Computed in NumPy float32 at trace time (lengths are static) with
    the same float32 log as the reference so that bin edges agree exactly.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
    scaled = (
        log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    )
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(is_small, distance, large)).astype(np.int32)


class RMSNorm(nn.Module):
    """T5 layer norm: `x / rms(x) * scale`, no mean, no bias; statistics in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def _normal(stddev: float, names: tuple) -> Any:
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


class T5Attention(nn.Module):
    """Multi-head self-attention without logit scaling; bias (1|B, H, L, L) added to logits."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        cfg = self.config
        heads_kv = (cfg.num_heads, cfg.d_kv)

        # HF's T5 init: q absorbs the missing 1/sqrt(d_kv) of the logits.
        def proj(name, std):
            return Projection(
                heads_kv,
                (axes.EMBED, axes.HEADS, axes.KV),
                kernel_init=nn.initializers.normal(std),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        q = proj("query", (cfg.d_model * cfg.d_kv) ** -0.5)(x)
        k = proj("key", cfg.d_model**-0.5)(x)
        v = proj("value", cfg.d_model**-0.5)(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return Projection(
            (cfg.d_model,),
            (axes.HEADS, axes.KV, axes.EMBED),
            kernel_init=nn.initializers.normal((cfg.num_heads * cfg.d_kv) ** -0.5),
            num_in=2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)


class T5FeedForward(nn.Module):
    """`wo(act(wi_0 x) * wi_1 x)` for gated configs, `wo(act(wi x))` otherwise."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        act = HF_ACTIVATIONS[cfg.activation]

        def dense(name, features, std, names):
            return nn.Dense(
                features,
                use_bias=False,
                dtype=self.dtype,
                name=name,
                param_dtype=self.param_dtype,
                kernel_init=_normal(std, names),
            )

        up = (axes.EMBED, axes.MLP)
        if cfg.is_gated:
            h = act(dense("wi_0", cfg.d_ff, cfg.d_model**-0.5, up)(x))
            h = h * dense("wi_1", cfg.d_ff, cfg.d_model**-0.5, up)(x)
        else:
            h = act(dense("wi", cfg.d_ff, cfg.d_model**-0.5, up)(x))
        return dense("wo", cfg.d_model, cfg.d_ff**-0.5, (axes.MLP, axes.EMBED))(h)


class T5Block(nn.Module):
    """Pre-norm residual block: `x + attn(norm x)`, then `x + ff(norm x)`; scan-shaped."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> tuple[jax.Array, None]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.layer_norm_epsilon
        x = x + T5Attention(self.config, name="attention", **kw)(
            RMSNorm(eps, name="attention_norm", **kw)(x), bias
        )
        x = x + T5FeedForward(self.config, name="mlp", **kw)(RMSNorm(eps, name="mlp_norm", **kw)(x))
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        return x, None


class T5Encoder(nn.Module):
    """T5 encoder stack.

    Call with `ids` int32 (B, L) and `mask` bool (B, L) (True = real token); returns the
    last hidden state (B, L, d_model) in `dtype` (after the final RMSNorm, as HF's
    `last_hidden_state`).
    """

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        batch, length = ids.shape
        if mask is None:
            mask = jnp.ones((batch, length), bool)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            name="token_embed",
            **kw,
            embedding_init=_normal(1.0, (axes.VOCAB, axes.EMBED)),
        )(ids)
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))

        # One bias table for all layers (HF keeps it in block 0 and passes it on).
        table = self.param(
            "relative_attention_bias",
            _normal(cfg.d_model**-0.5, (None, axes.HEADS)),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            self.param_dtype,
        )
        buckets = relative_position_buckets(
            length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        position_bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]
        key_mask = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
        bias = position_bias + key_mask  # (B, H, L, L) float32

        blocks = nn.scan(
            T5Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )
        x, _ = blocks(cfg, name="layers", **kw)(x, bias)
        return RMSNorm(cfg.layer_norm_epsilon, name="final_norm", **kw)(x)


def init_t5_params_numpy(config: T5Config, seed: int) -> dict[str, Any]:
    """Random T5 encoder params from NumPy's legacy `RandomState(seed)`, with HF's T5 init.

    `jax.random` streams may change between JAX releases (e.g. the threefry partitionable
    switch); `RandomState` streams are frozen by NumPy's compatibility policy (NEP 19).
    A frozen random encoder built from this therefore stays the same function across
    upgrades, so precomputed embeddings and checkpoints trained on them stay valid.
    Returns a tree shaped like `T5Encoder(config).init(...)['params']`, float32.
    """
    rng = np.random.RandomState(seed)
    c = config
    d, h, dk, f, n = c.d_model, c.num_heads, c.d_kv, c.d_ff, c.num_layers

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    ff = {"wo": {"kernel": normal((n, f, d), f**-0.5)}}
    for name in ("wi_0", "wi_1") if c.is_gated else ("wi",):
        ff[name] = {"kernel": normal((n, d, f), d**-0.5)}
    return {
        "token_embed": {"embedding": normal((c.vocab_size, d), 1.0)},
        "relative_attention_bias": normal((c.relative_attention_num_buckets, h), d**-0.5),
        "layers": {
            "attention": {
                "query": {"kernel": normal((n, d, h, dk), (d * dk) ** -0.5)},
                "key": {"kernel": normal((n, d, h, dk), d**-0.5)},
                "value": {"kernel": normal((n, d, h, dk), d**-0.5)},
                "out": {"kernel": normal((n, h, dk, d), (h * dk) ** -0.5)},
            },
            "attention_norm": {"scale": np.ones((n, d), np.float32)},
            "mlp": ff,
            "mlp_norm": {"scale": np.ones((n, d), np.float32)},
        },
        "final_norm": {"scale": np.ones((d,), np.float32)},
    }
