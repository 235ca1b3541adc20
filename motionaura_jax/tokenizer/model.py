"""`VideoTokenizer`: the 3D-MBQ-VAE (section 3.1, Appendix B) as one Linen module.

    indices, aux = model.apply(params, video, method=VideoTokenizer.encode)
    video_hat = model.apply(params, indices, method=VideoTokenizer.decode)
    out = model.apply(params, masked_video, train=True, rngs={'gumbel': key})  # training

Video (B, 1 + 4k, H, W, 3) in [-1, 1] with H, W divisible by 16 <-> tokens
(B, 1 + k, H/16, W/16) int32 (D1). Build one from a config with `build_tokenizer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from motionaura_jax.nn.conv3d import channel_axis
from motionaura_jax.parallel import axes
from motionaura_jax.tokenizer.autoencoder import Decoder, Encoder, all_or
from motionaura_jax.tokenizer.quantizers import make_quantizer


def check_video_shape(shape: tuple[int, ...], temporal_factor: int, spatial_factor: int) -> None:
    """Raise a ValueError naming the fix unless shape is (B, 1 + tf*k, H, W, 3) with
    H and W divisible by `spatial_factor`."""
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"video must be (B, T, H, W, 3), got shape {tuple(shape)}")
    _, t, h, w, _ = shape
    if t < 1 or (t - 1) % temporal_factor:
        use = 1 + temporal_factor * max(1, math.ceil((t - 1) / temporal_factor))
        raise ValueError(
            f"frames must be 1 + {temporal_factor}k for a causal tokenizer, got {t}; use {use}"
        )
    if h % spatial_factor or w % spatial_factor:
        fix_h = max(spatial_factor, round(h / spatial_factor) * spatial_factor)
        fix_w = max(spatial_factor, round(w / spatial_factor) * spatial_factor)
        raise ValueError(
            f"height and width must be divisible by {spatial_factor}, got {h}x{w}; "
            f"use {fix_h}x{fix_w}"
        )


class MFIHead(nn.Module):
    """Masked-frame-index head (section 3.1, D4): logits over the input frames from the
    continuous latent z_c (B, n, h, w, d) -> (B, 1 + tf * (n - 1)).

    Each latent frame is pooled over space (mean and std), joined with its difference from
    the clip average (so the MLP can compare frames), and mapped to `temporal_factor`
    logits, one per input frame it covers; latent frame 0 covers only input frame 0, so
    its first tf - 1 logits are dropped. Resolution- and length-agnostic.
    """

    hidden: int = 256
    temporal_factor: int = 4

    @nn.compact
    def __call__(self, z_bnhwd: jax.Array) -> jax.Array:
        z = z_bnhwd.astype(jnp.float32)
        # sqrt(var + eps), not std: the gradient of std is inf where a latent frame is
        # constant over space (tiny widths hit it and the loss became NaN at step 2).
        std = jnp.sqrt(z.var(axis=(2, 3)) + 1e-6)
        f = jnp.concatenate([z.mean(axis=(2, 3)), std], axis=-1)
        f = jnp.concatenate([f, f - f.mean(axis=1, keepdims=True)], axis=-1)
        for i, width in enumerate((self.hidden, self.hidden, self.temporal_factor)):
            cin = f.shape[-1]
            f = nn.Dense(
                width,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(),
                    (channel_axis(cin, axes.EMBED), channel_axis(width, axes.MLP)),
                ),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros, (channel_axis(width, axes.MLP),)
                ),
                name=f"dense{i}",
            )(f)
            if i < 2:
                f = nn.gelu(f)
        b, n, tf = f.shape
        return f.reshape(b, n * tf)[:, tf - 1 :]


class VideoTokenizer(nn.Module):
    """Encoder + quantizer + decoder (+ MFI head for training).

    Attributes:
      encoder, decoder: `autoencoder.Encoder` / `Decoder`.
      quantizer: any module from `quantizers.py`.
      mfi_head: `MFIHead` or None (the w/o-MFI ablation).
    """

    encoder: Encoder
    decoder: Decoder
    quantizer: nn.Module
    mfi_head: MFIHead | None = None

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.encoder.temporal_down)

    @property
    def spatial_factor(self) -> int:
        # stem stride, then one 2x per downsampler that halves space
        enc = self.encoder
        return enc.stem_stride * 2 ** sum(all_or(enc.spatial_down, len(enc.temporal_down)))

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def encode(
        self, video_bthwc: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, dict[str, Any]]:
        """(B, 1 + 4k, H, W, 3) -> indices (B, 1 + k, H/16, W/16) int32 and aux with
        'z_c' (continuous latent), 'z_q' (quantized, straight-through) and 'quantizer'."""
        check_video_shape(video_bthwc.shape, self.temporal_factor, self.spatial_factor)
        z_c = self.encoder(video_bthwc)
        z_q, q_aux = self.quantizer(z_c, train=train)
        return q_aux["indices"], {"z_c": z_c, "z_q": z_q, "quantizer": q_aux}

    def encode_chunk(self, chunk_bthwc: jax.Array) -> jax.Array:
        """One chunk of a long clip -> its indices (B, n_chunk, h, w); apply with
        `mutable=['cache']` (see `streaming.py`): the first chunk has 1 + 4a frames,
        later ones 4b, and the causal caches carry the context between them."""
        return self.quantizer(self.encoder(chunk_bthwc), train=False)[1]["indices"]

    def decode(self, indices_bnhw: jax.Array) -> jax.Array:
        """(B, 1 + k, h, w) int32 -> video (B, 1 + 4k, 16h, 16w, 3)."""
        return self.decoder(self.quantizer.embed(indices_bnhw))

    def decode_latent(self, z_q_bnhwd: jax.Array) -> jax.Array:
        """Decode a quantized latent (B, 1 + k, h, w, d) -> (B, 1 + 4k, 16h, 16w, 3)."""
        return self.decoder(z_q_bnhwd)

    def __call__(self, video_bthwc: jax.Array, *, train: bool = True) -> dict[str, Any]:
        """Training forward pass on a (possibly masked) clip.

        Returns 'recon' (B, T, H, W, 3), 'indices', 'z_c', 'quantizer' (aux with the
        weighted 'loss') and 'mfi_logits' (B, T) or None.
        """
        indices, aux = self.encode(video_bthwc, train=train)
        recon = self.decoder(aux["z_q"])
        mfi = self.mfi_head(aux["z_c"]) if self.mfi_head is not None else None
        return {
            "recon": recon,
            "indices": indices,
            "z_c": aux["z_c"],
            "quantizer": aux["quantizer"],
            "mfi_logits": mfi,
        }


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_tokenizer(model: ml_collections.ConfigDict | Mapping[str, Any]) -> VideoTokenizer:
    """Build a `VideoTokenizer` from the `model` config section (`configs/tokenizer.py`).

    Fields: latent_dim, stem_width, widths, depths, decoder_widths, decoder_depths,
    temporal_down, spatial_down (empty = all True), stem_stride (default 2), expansion
    (default 4), depthwise_impl and conv_impl ('' = per backend), remat, dtype,
    mfi_hidden (0 = no head) and quantizer (a section with `name` plus its fields).
    """
    m = dict(model)
    dtype = _DTYPES[m.get("dtype", "float32")]
    impl = m.get("depthwise_impl") or None
    conv_impl = m.get("conv_impl") or None
    stem_stride = int(m.get("stem_stride", 2))
    expansion = int(m.get("expansion", 4))
    widths = tuple(m["widths"])
    depths = tuple(m["depths"])
    temporal = tuple(bool(t) for t in m.get("temporal_down", (False, True, True)))
    if len(temporal) != len(widths) - 1:
        raise ValueError(f"temporal_down needs {len(widths) - 1} entries, got {temporal}")
    spatial = tuple(bool(s) for s in m.get("spatial_down", ()))
    if spatial and len(spatial) != len(widths) - 1:
        raise ValueError(
            f"spatial_down needs {len(widths) - 1} entries (or none: all True), got {spatial}"
        )
    encoder = Encoder(
        latent_dim=m["latent_dim"],
        stem_width=m["stem_width"],
        widths=widths,
        depths=depths,
        temporal_down=temporal,
        spatial_down=spatial,
        stem_stride=stem_stride,
        expansion=expansion,
        depthwise_impl=impl,
        conv_impl=conv_impl,
        remat=m.get("remat", False),
        dtype=dtype,
    )
    decoder = Decoder(
        widths=tuple(m.get("decoder_widths") or widths),
        depths=tuple(m.get("decoder_depths") or depths),
        temporal_up=temporal,
        spatial_up=spatial,
        out_stride=stem_stride,
        expansion=expansion,
        depthwise_impl=impl,
        conv_impl=conv_impl,
        transpose_impl=m.get("transpose_impl") or None,
        remat=m.get("remat", False),
        dtype=dtype,
    )
    q = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(m["quantizer"]).items()}
    quantizer = make_quantizer(q.pop("name"), m["latent_dim"], **q)
    hidden = m.get("mfi_hidden", 256)
    mfi = MFIHead(hidden, 2 ** sum(temporal)) if hidden else None
    return VideoTokenizer(encoder, decoder, quantizer, mfi)


def param_counts(model: VideoTokenizer) -> dict[str, int]:
    """Parameter counts per part ('encoder', 'decoder', 'quantizer', 'mfi_head', 'total'),
    from `jax.eval_shape` (nothing is allocated; the counts do not depend on the input)."""
    x = jax.ShapeDtypeStruct(
        (1, 1 + model.temporal_factor, model.spatial_factor, model.spatial_factor, 3), jnp.float32
    )
    shapes = jax.eval_shape(
        lambda v: model.init({"params": jax.random.key(0), "gumbel": jax.random.key(1)}, v),
        x,
    )
    params = nn.unbox(shapes)["params"]
    counts = {
        name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(sub))
        for name, sub in params.items()
    }
    counts["total"] = sum(counts.values())
    return counts
