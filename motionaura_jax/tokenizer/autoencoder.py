"""3D-MBQ-VAE encoder and decoder (Appendix B.1, B.1.1; DESIGN D2).

Encoder (default depths (2, 2, 2, 3), numbering blocks from 1 after the stem):

    stem   Conv3D k=(1,3,3) s=(1,2,2)  3 -> stem_width                       H/2
    1-2    stage 1: MB, Inception                      width w1
    3      Downsample (1,2,2)            w1 -> w2                              H/4
    4-5    stage 2: MB, Inception
    6      Downsample (2,2,2)            w2 -> w3    first 2x temporal (B.1.4)  H/8
    7-8    stage 3: MB, Inception
    9      Downsample (2,2,2)            w3 -> w4    second 2x temporal         H/16
    10-12  stage 4: MB, Inception, MB
    out    norm, SiLU, Conv3D 3x3x3 -> latent_dim                     (z_c of section 3.1)

so `(B, 1 + 4k, H, W, 3) -> (B, 1 + k, H/16, W/16, latent_dim)`. The decoder mirrors it:
Conv3D latent_dim -> w4, stages 4..1 with Upsample blocks in between (temporal ones
causal: a conv to 2x channels, depth-to-time, drop the first frame, which maps
`1 + m -> 1 + 2m` frames), norm, SiLU and a final ConvTranspose (1,4,4) s=(1,2,2) to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from motionaura_jax.nn.conv3d import (
    CausalConv3D,
    ConvTranspose3D,
    FrameGroupNorm,
    InceptionFusedMB3D,
    MBConv3D,
)
from motionaura_jax.parallel import axes

Dtype = Any
# Activations stay batch-sharded (CONV_RULES): without the constraint XLA's sharding
# propagation follows the FSDP-sharded kernels and gathers the batch instead.
_ACT = (axes.BATCH, axes.FRAMES, axes.HEIGHT, axes.WIDTH, axes.CHANNELS)


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, _ACT)


def _block_cls(kind: str, remat: bool) -> type[nn.Module]:
    cls = {"mb": MBConv3D, "inception": InceptionFusedMB3D}[kind]
    return nn.remat(cls) if remat else cls


def all_or(flags: Sequence[bool], n: int) -> tuple[bool, ...]:
    """`flags` as a tuple, or n x True when empty (every downsampler also halves space)."""
    return tuple(bool(f) for f in flags) if len(flags) else (True,) * n


def stage_kinds(depth: int) -> tuple[str, ...]:
    """Block kinds of a stage: MB and Inception-Fused-MB alternate, MB first (B.1)."""
    return tuple("mb" if i % 2 == 0 else "inception" for i in range(depth))


class Downsample3D(nn.Module):
    """norm -> SiLU -> strided causal 3x3x3 conv. Temporal stride 2 maps 1 + 2m -> 1 + m;
    `spatial=False` keeps H and W (a time-only downsampler, the CPU toy's 8x layout)."""

    features: int
    temporal: bool
    spatial: bool = True
    conv_impl: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        x = nn.silu(FrameGroupNorm(dtype=self.dtype, name="norm")(x_bthwc))
        s = 2 if self.spatial else 1
        strides = (2 if self.temporal else 1, s, s)
        return CausalConv3D(
            self.features, (3, 3, 3), strides, dtype=self.dtype, impl=self.conv_impl, name="conv"
        )(x)


class Upsample3D(nn.Module):
    """norm -> SiLU -> nearest 2x in space -> causal 3x3x3 conv (the two fused: the conv
    runs on the low-resolution grid, `CausalConv3D(upsample_2x=True)`); if `temporal`, the conv
    makes 2x channels that become 2 frames each (depth-to-time) and the first frame is
    dropped, so 1 + m -> 1 + 2m frames and output frame t sees latent frames <= ceil(t/2).
    In streaming mode only the first chunk drops a frame (m -> 2m afterwards).
    `spatial=False` skips the 2x in space (mirrors a time-only `Downsample3D`)."""

    features: int
    temporal: bool
    spatial: bool = True
    conv_impl: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        x = nn.silu(FrameGroupNorm(dtype=self.dtype, name="norm")(x_bthwc))
        mult = 2 if self.temporal else 1
        x = CausalConv3D(
            self.features * mult,
            (3, 3, 3),
            dtype=self.dtype,
            impl=self.conv_impl,
            upsample_2x=self.spatial,  # the nearest 2x in space, inside the conv
            name="conv",
        )(x)
        if not self.temporal:
            return x
        b, t, h, w, _ = x.shape
        x = x.reshape(b, t, h, w, 2, self.features).transpose(0, 1, 4, 2, 3, 5)
        x = x.reshape(b, 2 * t, h, w, self.features)
        streaming = self.is_mutable_collection("cache") and not self.is_initializing()
        if streaming:
            first = not self.has_variable("cache", "started")
            self.put_variable("cache", "started", jnp.ones((), jnp.bool_))
            return x[:, 1:] if first else x
        return x[:, 1:]


class Encoder(nn.Module):
    """(B, 1 + 4k, H, W, 3) -> continuous latent z_c (B, 1 + k, H/16, W/16, latent_dim).

    Attributes:
      widths: channel width of stages 1..4.
      depths: blocks per stage; the default (2, 2, 2, 3) puts the temporal downsamplers
        at blocks 6 and 9 (B.1.4).
      temporal_down: which of the downsamplers (after stages 1 .. n-1) also halve T.
      spatial_down: which of them halve H and W (empty = all, the paper's layout).
      stem_stride: spatial stride of the stem: 2 with a (1, 3, 3) kernel (B.1.1), or
        e.g. 4 with a (1, 4, 4) patchify kernel (space-to-depth, the CPU toy).
      expansion: MB expansion ratio (B.1.3: 4).
      conv_impl: dense conv implementation, `conv3d.CONV_IMPLS` or None (per backend).
    """

    latent_dim: int = 8
    stem_width: int = 64
    widths: Sequence[int] = (128, 256, 512, 512)
    depths: Sequence[int] = (2, 2, 2, 3)
    temporal_down: Sequence[bool] = (False, True, True)
    spatial_down: Sequence[bool] = ()
    stem_stride: int = 2
    expansion: int = 4
    depthwise_impl: str | None = None
    conv_impl: str | None = None
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video_bthwc: jax.Array) -> jax.Array:
        s0 = self.stem_stride
        k0 = 3 if s0 <= 2 else s0
        x = CausalConv3D(
            self.stem_width,
            (1, k0, k0),
            (1, s0, s0),
            dtype=self.dtype,
            impl=self.conv_impl,
            name="stem",
        )(_constrain(video_bthwc))
        for s, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
            for i, kind in enumerate(stage_kinds(depth)):
                x = _block_cls(kind, self.remat)(
                    width,
                    self.expansion,
                    depthwise_impl=self.depthwise_impl,
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"stage{s + 1}_{i}_{kind}",
                )(_constrain(x))
            if s < len(self.widths) - 1:
                x = Downsample3D(
                    self.widths[s + 1],
                    self.temporal_down[s],
                    spatial=all_or(self.spatial_down, len(self.temporal_down))[s],
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"down{s + 1}",
                )(_constrain(x))
        x = nn.silu(FrameGroupNorm(dtype=self.dtype, name="norm_out")(_constrain(x)))
        z = CausalConv3D(
            self.latent_dim, (3, 3, 3), dtype=self.dtype, impl=self.conv_impl, name="conv_out"
        )(x)
        return z.astype(jnp.float32)


class Decoder(nn.Module):
    """Quantized latent (B, 1 + k, h, w, latent_dim) -> video (B, 1 + 4k, 16h, 16w, 3).

    `widths` / `depths` / `temporal_up` are listed from the finest stage (1) to the
    coarsest (4), as in the encoder; the decoder runs them in reverse. `out_stride`
    mirrors the encoder's `stem_stride`: the last ConvTranspose has kernel 2 * out_stride
    and stride out_stride ((1, 4, 4) / (1, 2, 2) for the paper's stride 2).
    """

    out_channels: int = 3
    widths: Sequence[int] = (128, 256, 512, 512)
    depths: Sequence[int] = (2, 2, 2, 3)
    temporal_up: Sequence[bool] = (False, True, True)
    spatial_up: Sequence[bool] = ()
    out_stride: int = 2
    expansion: int = 4
    depthwise_impl: str | None = None
    conv_impl: str | None = None
    transpose_impl: str | None = None  # last layer: 'subpixel' | 'xla' | None (per backend)
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_bthwd: jax.Array) -> jax.Array:
        n = len(self.widths)
        x = CausalConv3D(
            self.widths[-1], (3, 3, 3), dtype=self.dtype, impl=self.conv_impl, name="conv_in"
        )(z_bthwd)
        for s in reversed(range(n)):
            width = self.widths[s]
            for i, kind in enumerate(stage_kinds(self.depths[s])):
                x = _block_cls(kind, self.remat)(
                    width,
                    self.expansion,
                    depthwise_impl=self.depthwise_impl,
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"stage{s + 1}_{i}_{kind}",
                )(_constrain(x))
            if s > 0:
                x = Upsample3D(
                    self.widths[s - 1],
                    self.temporal_up[s - 1],
                    spatial=all_or(self.spatial_up, len(self.temporal_up))[s - 1],
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"up{s}",
                )(_constrain(x))
        x = nn.silu(FrameGroupNorm(dtype=self.dtype, name="norm_out")(_constrain(x)))
        # B.1.1: the last layer is a Conv3D transpose back to the input resolution.
        s0 = self.out_stride
        y = ConvTranspose3D(
            self.out_channels,
            (1, 2 * s0, 2 * s0),
            (1, s0, s0),
            dtype=self.dtype,
            impl=self.transpose_impl,
            name="conv_out",
        )(x)
        return y.astype(jnp.float32)
