"""Causal 3D convolutions and the 3D-MBQ-VAE blocks (Appendix B.1.3, B.1.4; DESIGN D2).

Layout is channels-last `(B, T, H, W, C)` (D1). Every temporal convolution is *causal*:
the time axis is padded only at the front, so output frame t sees input frames <= t. With
the kernel 3 / stride 2 temporal downsamplers this maps `T = 1 + 2m` frames to `1 + m`, so
`1 + 4k` frames become `1 + k` latent frames and a single image (`T = 1`) is a valid clip.

Normalisation and squeeze-excitation pool over (H, W) of each frame only: pooling over time
would let future frames change past latents, which breaks causality (D2) and the chunked
long-video path (`tokenizer/streaming.py`).

Streaming: when a module is applied with the `'cache'` collection mutable (and not while
initialising), each causal convolution prepends the tail of the previous chunk's input
(kept in `cache/tail`) instead of zero padding, and stores its own tail for the next
chunk. Chunks after the first must then have a length divisible by the total temporal
stride; see `tokenizer/streaming.py`.

Backends: dense causal convs run as one XLA Conv3D (`'xla3d'`, GPU/TPU) or, on CPU, as kt
2D convs over frames folded into the batch (`'frames2d'`, 3-5x faster fwd+bwd there);
depthwise ones as one grouped conv or 27 shifted multiply-adds with a hand-written
backward (`'shifted'`, CPU). Both read the same kernels, so checkpoints move between them.

Kernel naming: the paper writes kernels as N x H x W (frames first, B.1.4) and our layout
is (T, H, W), so paper kernels map one-to-one: 3x3x1 mixes time and height, 3x1x3 time and
width, 1x3x3 is purely spatial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from motionaura_jax.parallel import axes

Dtype = Any
_DIMS = ("NDHWC", "DHWIO", "NDHWC")
DEPTHWISE_IMPLS = ("grouped", "shifted")
CONV_IMPLS = ("xla3d", "frames2d")
TRANSPOSE_IMPLS = ("xla", "subpixel")
# Kernel tap axes (kt, kh, kw): Flax rejects a logical name used twice in one array, so
# only the temporal tap axis is named; the spatial ones are None (neither is ever sharded).
TAP_AXES = (axes.CONV_SPACE, None, None)


def channel_axis(n: int, name: str) -> str | None:
    """Logical name for a channel dim of size `n`; tiny dims (RGB, the d=8 latent) stay
    replicated because a mesh axis must divide whatever it shards."""
    return name if n >= 64 and n % 8 == 0 else None


def default_depthwise_impl() -> str:
    """`'shifted'` on CPU, where XLA's grouped Conv3D is ~10x slower (DESIGN section 7),
    `'grouped'` (one `feature_group_count` convolution) on GPU/TPU."""
    return "shifted" if jax.default_backend() == "cpu" else "grouped"


def default_conv_impl() -> str:
    """`'frames2d'` on CPU, where XLA's 3D convolution is 3-5x slower fwd+bwd than the
    same conv written as kt 2D convolutions over frames folded into the batch (toy shapes,
    `tools/bench_tokenizer.py`); `'xla3d'` (one Conv3D, cuDNN's native kernel) elsewhere."""
    return "frames2d" if jax.default_backend() == "cpu" else "xla3d"


def conv_frames2d(
    x_padded: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    spatial_pads: Sequence[tuple[int, int]],
) -> jax.Array:
    """A 3D conv, VALID in time, as the sum over temporal taps of 2D convs on shifted
    frames (frames folded into the batch). Same math as `lax.conv_general_dilated` on
    NDHWC / DHWIO; only the order of the sums differs.

    Args:
      x_padded: (B, Tp, H, W, Cin), time already (causally) padded.
      kernel: (kt, kh, kw, Cin, Cout).
      strides: (s_t, s_h, s_w).
      spatial_pads: ((lo, hi), (lo, hi)) for H and W.
    Returns:
      (B, (Tp - kt) // s_t + 1, H', W', Cout).
    """
    kt = kernel.shape[0]
    st, sh, sw = strides
    b, tp, h, w, cin = x_padded.shape
    t_out = (tp - kt) // st + 1
    out = None
    for a in range(kt):
        frames = x_padded[:, a : a + st * (t_out - 1) + 1 : st].reshape(b * t_out, h, w, cin)
        y = lax.conv_general_dilated(
            frames,
            kernel[a],
            window_strides=(sh, sw),
            padding=tuple(spatial_pads),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        out = y if out is None else out + y
    return out.reshape(b, t_out, *out.shape[1:])


def conv_im2col(
    x_padded: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    spatial_pads: Sequence[tuple[int, int]],
) -> jax.Array:
    """The same conv as `conv_frames2d` as one matmul: every kernel tap's (strided) window
    gathered into channels, (B, T', H', W', kt * kh * kw * Cin) @ (kt * kh * kw * Cin, Cout).
    On XLA CPU it runs the 2 x 2 kernels of `nearest2x_phase_kernel` 2.5x faster fwd+bwd
    than the 2D convs, whose kernel gradient takes a slow generic path for them (410 against
    21 ms at the toy decoder's shape, session 24); for 3 x 3 kernels it is no faster."""
    kt, kh, kw, _, cout = kernel.shape
    st, sh, sw = strides
    x = jnp.pad(x_padded, ((0, 0), (0, 0), *spatial_pads, (0, 0)))
    _, tp, h, w, _ = x.shape
    t_out, h_out, w_out = (tp - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1
    taps = [
        x[
            :,
            a : a + st * (t_out - 1) + 1 : st,
            i : i + sh * (h_out - 1) + 1 : sh,
            j : j + sw * (w_out - 1) + 1 : sw,
        ]
        for a in range(kt)
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1) @ kernel.reshape(-1, cout)


def conv_patchify(x_bthwc: jax.Array, kernel: jax.Array) -> jax.Array:
    """A (1, p, q) conv with stride (1, p, q) and no padding (the toy's patchify stem) as
    space-to-depth and one matmul: (B, T, H/p, W/q, p * q * Cin) @ (p * q * Cin, Cout).
    Exact; on XLA CPU the strided conv over 3 input channels is the slow part of the stem."""
    _, p, q, cin, cout = kernel.shape
    b, t, h, w, _ = x_bthwc.shape
    x = x_bthwc.reshape(b, t, h // p, p, w // q, q, cin).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h // p, w // q, p * q * cin) @ kernel.reshape(p * q * cin, cout)


def default_transpose_impl() -> str:
    """`'subpixel'` on CPU, where the kernel gradient of `lax.conv_transpose` takes XLA's
    slow generic path (about half of the toy tokenizer's train step, session 5); `'xla'`
    (the native transposed conv) elsewhere."""
    return "subpixel" if jax.default_backend() == "cpu" else "xla"


def _same_transpose_pad(k: int, s: int) -> int:
    """Front padding of the lhs-dilated conv behind `lax.conv_transpose(..., 'SAME')`."""
    return k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)


def conv_transpose_subpixel(
    x_nhwc: jax.Array, kernel_hwio: jax.Array, strides: Sequence[int]
) -> jax.Array:
    """`lax.conv_transpose(x, kernel, strides, 'SAME')` (NHWC / HWIO) as a stride-1 conv on
    the low-resolution grid to s_h * s_w * Cout channels, then depth-to-space (sub-pixel).

    Output pixel s*m + r of the transposed conv is sum_d x[m + d] * kernel[s*d + P - r]
    (P: the transposed conv's front padding), so the same kernel, gathered into a
    (n_d, n_d, Cin, s*s*Cout) one with zeros where s*d + P - r falls outside it, gives the
    same result. XLA CPU runs the lhs-dilated forward and, above all, the kernel gradient
    of `lax.conv_transpose` (an rhs-dilated, reversed conv) on its slow generic path
    (~60 ms of the toy's ~80-130 ms step); here both are ordinary stride-1 convs.
    """
    kh, kw, cin, cout = kernel_hwio.shape
    idx, pads = [], []
    for k, s in zip((kh, kw), strides, strict=True):
        p = _same_transpose_pad(k, s)
        ds = [d for d in range(-k, k + 1) if any(0 <= s * d + p - r < k for r in range(s))]
        table = np.array([[s * d + p - r for r in range(s)] for d in ds])
        idx.append(np.where((table >= 0) & (table < k), table, k))  # k = the zero row
        pads.append((-ds[0], ds[-1]))
    kp = jnp.pad(kernel_hwio, ((0, 1), (0, 1), (0, 0), (0, 0)))
    ih, iw = idx
    # (nd_h, nd_w, s_h, s_w, Cin, Cout) -> (nd_h, nd_w, Cin, s_h * s_w * Cout)
    w = kp[ih[:, None, :, None], iw[None, :, None, :]]
    nd_h, nd_w, sh, sw = w.shape[:4]
    w = w.transpose(0, 1, 4, 2, 3, 5).reshape(nd_h, nd_w, cin, sh * sw * cout)
    y = lax.conv_general_dilated(
        x_nhwc, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    b, h, wd, _ = y.shape
    y = y.reshape(b, h, wd, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * sh, wd * sw, cout)


def _nearest2x_taps(kernel: jax.Array, axis: int) -> jax.Array:
    """The 3 taps along `axis` -> (2 phases, ..., 2 taps there, ...). Nearest 2x upsampling
    then a 3-tap 'SAME' conv: output 2m + r reads upsampled rows 2m + r - 1 .. 2m + r + 1,
    i.e. low-resolution rows m - 1 + r and m + r, with taps (k0, k1 + k2) for r = 0 and
    (k0 + k1, k2) for r = 1."""
    k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
    return jnp.stack([jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)])


def nearest2x_phase_kernel(kernel: jax.Array) -> jax.Array:
    """(kt, 3, 3, Cin, Cout) -> (kt, 2, 2, Cin, 4 * Cout), output channels ordered
    (row phase, column phase, Cout): the 2 x 2 low-resolution kernels of each output
    phase of `conv(nearest_upsample_2x(x), kernel)` (see `interleave_nearest2x_phases`)."""
    if kernel.shape[1:3] != (3, 3):
        raise ValueError(
            f"the nearest-2x phase form needs a 3 x 3 spatial kernel, got {kernel.shape}"
        )
    kt, _, _, cin, cout = kernel.shape
    w = _nearest2x_taps(_nearest2x_taps(kernel, 1), 3)  # (q, p, kt, 2, 2, Cin, Cout)
    return w.transpose(2, 3, 4, 5, 1, 0, 6).reshape(kt, 2, 2, cin, 4 * cout)


def interleave_nearest2x_phases(y: jax.Array, h: int, w: int) -> jax.Array:
    """(B, T, h + 1, w + 1, 4 * C) phase outputs of a VALID 2 x 2 conv on the 1-padded
    low-resolution grid -> (B, T, 2h, 2w, C). Window j covers low rows j - 1 and j, which
    is phase 0 of output row j and phase 1 of output row j - 1: out[2m + r] = y[m + r, r]."""
    b, t = y.shape[:2]
    y = y.reshape(b, t, h + 1, w + 1, 2, 2, -1)
    rows = [
        jnp.stack([y[:, :, r : r + h, q : q + w, r, q] for q in (0, 1)], axis=4) for r in (0, 1)
    ]
    out = jnp.stack(rows, axis=3)  # (B, T, h, 2, w, 2, C)
    return out.reshape(b, t, 2 * h, 2 * w, out.shape[-1])


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def causal_front(module: nn.Module, x_bthwc: jax.Array, pad: int, keep: int) -> jax.Array:
    """Prepend `pad` causal frames to `x`: zeros, or in streaming mode the cached tail.

    Args:
      module: the calling module (owns the `cache/tail` variable).
      x_bthwc: (B, T, H, W, C) input.
      pad: front frames needed by the first chunk (kernel_t - 1).
      keep: frames the next chunk needs (kernel_t - stride_t); the cache is aligned so
        that the next chunk's first output continues the global output sequence.
    Returns:
      (B, T + pad, H, W, C) on the first chunk, (B, T + keep, ...) on later chunks.
    """
    if pad == 0:
        return x_bthwc
    streaming = module.is_mutable_collection("cache") and not module.is_initializing()
    if streaming and module.has_variable("cache", "tail"):
        tail = module.get_variable("cache", "tail")
        xp = jnp.concatenate([tail.astype(x_bthwc.dtype), x_bthwc], axis=1)
    else:
        xp = jnp.pad(x_bthwc, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
    if streaming and keep > 0:
        module.put_variable("cache", "tail", xp[:, xp.shape[1] - keep :])
    return xp


class CausalConv3D(nn.Module):
    """Dense 3D convolution, causal in time, 'SAME' in space.

    Input (B, T, H, W, Cin) -> (B, T', H / s_h, W / s_w, features) with
    T' = (T - 1) // s_t + 1 (first chunk) for temporal kernel 3 and stride s_t in {1, 2}.

    `upsample_2x=True` convolves the input upsampled 2x in H and W (nearest neighbour) with
    the same (kt, 3, 3) kernel, without making it: each of the four output phases is a
    2 x 2 conv on the low-resolution grid (`nearest2x_phase_kernel`), so the conv does
    16 / 36 of the multiply-adds per low-resolution pixel (about 1.8x fewer on an 8 x 8
    grid once the one-pixel border is counted) and the 4x input is never stored. Same
    parameters and, up to float rounding, the same outputs as upsampling first.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3, 3)
    strides: Sequence[int] = (1, 1, 1)
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    impl: str | None = None  # 'xla3d' | 'frames2d' | None = per backend (default_conv_impl)
    upsample_2x: bool = False  # conv of the nearest 2x upsampled input (stride 1 only)

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        impl = self.impl or default_conv_impl()
        if impl not in CONV_IMPLS:
            raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
        kt, kh, kw = self.kernel_size
        st, sh, sw = self.strides
        cin = x_bthwc.shape[-1]
        names = TAP_AXES + (
            channel_axis(cin, axes.CONV_IN),
            channel_axis(self.features, axes.CONV_OUT),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, names),
            (kt, kh, kw, cin, self.features),
            self.param_dtype,
        )
        x = causal_front(self, x_bthwc.astype(self.dtype), kt - 1, max(kt - st, 0))
        _, _, h, w, _ = x.shape
        kernel = kernel.astype(self.dtype)
        if self.upsample_2x:
            if (sh, sw) != (1, 1):
                raise ValueError(f"upsample_2x needs spatial stride 1, got {self.strides}")
            kernel, pads = nearest2x_phase_kernel(kernel), ((1, 1), (1, 1))
        else:
            pads = (_same_pads(h, kh, sh), _same_pads(w, kw, sw))
        patches = kt == st == 1 and (kh, kw) == (sh, sw) and pads == ((0, 0), (0, 0))
        if patches and not self.upsample_2x:
            y = conv_patchify(x, kernel)  # non-overlapping windows (incl. 1x1x1): one matmul
        elif impl == "frames2d" and self.upsample_2x:
            y = conv_im2col(x, kernel, (st, sh, sw), pads)  # 2 x 2 kernels: see conv_im2col
        elif impl == "frames2d":
            y = conv_frames2d(x, kernel, (st, sh, sw), pads)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(st, sh, sw),
                padding=((0, 0), *pads),
                dimension_numbers=_DIMS,
            )
        if self.upsample_2x:
            y = interleave_nearest2x_phases(y, h, w)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros, (channel_axis(self.features, axes.CONV_OUT),)
                ),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


def depthwise_grouped(x_padded: jax.Array, kernel_thwc: jax.Array) -> jax.Array:
    """Depthwise conv as one XLA grouped convolution. x (B, T+kt-1, H+kh-1, W+kw-1, C)
    already padded, kernel (kt, kh, kw, C) -> (B, T, H, W, C)."""
    c = x_padded.shape[-1]
    return lax.conv_general_dilated(
        x_padded,
        kernel_thwc[:, :, :, None, :],
        window_strides=(1, 1, 1),
        padding="VALID",
        dimension_numbers=_DIMS,
        feature_group_count=c,
    )


def _depthwise_taps(x_padded: jax.Array, kernel_thwc: jax.Array) -> jax.Array:
    kt, kh, kw, _ = kernel_thwc.shape
    b, tp, hp, wp, c = x_padded.shape
    t, h, w = tp - kt + 1, hp - kh + 1, wp - kw + 1
    out = jnp.zeros((b, t, h, w, c), x_padded.dtype)
    for a in range(kt):
        for i in range(kh):
            for j in range(kw):
                out = out + x_padded[:, a : a + t, i : i + h, j : j + w, :] * kernel_thwc[a, i, j]
    return out


@jax.custom_vjp
def depthwise_shifted(x_padded: jax.Array, kernel_thwc: jax.Array) -> jax.Array:
    """The same depthwise conv as kt*kh*kw shifted multiply-adds (DESIGN section 7: ~10x
    faster than the grouped conv on XLA CPU). Same shapes as `depthwise_grouped`.

    The backward pass is written out (`_depthwise_bwd`): autodiff of the taps pads each
    of the kt*kh*kw input-gradient terms to the full input separately, ~2x slower on CPU
    than one correlation with the flipped kernel."""
    return _depthwise_taps(x_padded, kernel_thwc)


def _depthwise_fwd(x_padded, kernel_thwc):
    return _depthwise_taps(x_padded, kernel_thwc), (x_padded, kernel_thwc)


def _depthwise_bwd(res, g_bthwc):
    x_padded, kernel_thwc = res
    kt, kh, kw, _ = kernel_thwc.shape
    _, t, h, w, _ = g_bthwc.shape
    # d/dx of a correlation is the correlation of the fully padded cotangent with the
    # flipped kernel; d/dk is one reduction per tap.
    g_pad = jnp.pad(g_bthwc, ((0, 0), (kt - 1, kt - 1), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    g_x = _depthwise_taps(g_pad, kernel_thwc[::-1, ::-1, ::-1])
    g_k = jnp.stack(
        [
            jnp.sum(x_padded[:, a : a + t, i : i + h, j : j + w] * g_bthwc, axis=(0, 1, 2, 3))
            for a in range(kt)
            for i in range(kh)
            for j in range(kw)
        ]
    ).reshape(kernel_thwc.shape)
    return g_x.astype(x_padded.dtype), g_k.astype(kernel_thwc.dtype)


depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv3D(nn.Module):
    """Per-channel 3D convolution, causal in time, stride 1: (B, T, H, W, C) -> same shape.

    `impl` is `'grouped'`, `'shifted'` or None (pick per backend, `default_depthwise_impl`);
    both read the same (kt, kh, kw, C) kernel, so checkpoints move between them.
    """

    kernel_size: Sequence[int] = (3, 3, 3)
    impl: str | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 2), out_axis=3
    )

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        impl = self.impl or default_depthwise_impl()
        if impl not in DEPTHWISE_IMPLS:
            raise ValueError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
        kt, kh, kw = self.kernel_size
        c = x_bthwc.shape[-1]
        cname = channel_axis(c, axes.CONV_OUT)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, TAP_AXES + (cname,)),
            (kt, kh, kw, c),
            self.param_dtype,
        )
        x = causal_front(self, x_bthwc.astype(self.dtype), kt - 1, kt - 1)
        x = jnp.pad(x, ((0, 0), (0, 0), _same_pads(1, kh, 1), _same_pads(1, kw, 1), (0, 0)))
        fn = depthwise_grouped if impl == "grouped" else depthwise_shifted
        y = fn(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (cname,)),
                (c,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class ConvTranspose3D(nn.Module):
    """Transposed conv with a temporal kernel of 1 (so it is trivially causal):
    (B, T, H, W, Cin) -> (B, T, H * s_h, W * s_w, features). The decoder's last layer (B.1.1)."""

    features: int
    kernel_size: Sequence[int] = (1, 4, 4)
    strides: Sequence[int] = (1, 2, 2)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    impl: str | None = None  # 'xla' | 'subpixel' | None (per backend)

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        impl = self.impl or default_transpose_impl()
        if impl not in TRANSPOSE_IMPLS:
            raise ValueError(f"transpose impl must be one of {TRANSPOSE_IMPLS}, got {impl!r}")
        if self.kernel_size[0] != 1 or self.strides[0] != 1:
            raise ValueError(
                "ConvTranspose3D is causal only with a temporal kernel and stride of 1, "
                f"got kernel {self.kernel_size}, strides {self.strides}"
            )
        cin = x_bthwc.shape[-1]
        names = TAP_AXES + (
            channel_axis(cin, axes.CONV_IN),
            channel_axis(self.features, axes.CONV_OUT),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
            (*self.kernel_size, cin, self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(
                nn.initializers.zeros, (channel_axis(self.features, axes.CONV_OUT),)
            ),
            (self.features,),
            self.param_dtype,
        )
        # Temporal kernel 1: a 2D transposed conv on frames folded into the batch, the
        # same math as the 3D one and faster on XLA CPU (see `default_conv_impl`).
        b, t, h, w, _ = x_bthwc.shape
        frames = x_bthwc.astype(self.dtype).reshape(b * t, h, w, cin)
        if impl == "subpixel":
            y = conv_transpose_subpixel(frames, kernel[0].astype(self.dtype), self.strides[1:])
        else:
            y = lax.conv_transpose(
                frames,
                kernel[0].astype(self.dtype),
                strides=tuple(self.strides[1:]),
                padding="SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        y = y.reshape(b, t, *y.shape[1:])
        return y + bias.astype(self.dtype)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics over (H, W, channel group) of each frame separately
    (pooling over T would leak future frames, see module docstring). Shape preserving."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        b, t, h, w, c = x_bthwc.shape
        g = math.gcd(self.num_groups, c)
        # Narrow layers: keep >= 4 channels per group, so statistics over a small frame
        # (a 1x1 latent) do not normalise every value to exactly zero.
        while g > 1 and c // g < 4:
            g //= 2
        # Statistics in float32: bf16 variances of large maps lose most of their bits.
        x = x_bthwc.astype(jnp.float32).reshape(b, t, h * w, g, c // g)
        mean = x.mean(axis=(2, 4), keepdims=True)
        var = jnp.square(x - mean).mean(axis=(2, 4), keepdims=True)
        x = ((x - mean) * lax.rsqrt(var + self.epsilon)).reshape(b, t, h, w, c)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
            (c,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (axes.NORM,)),
            (c,),
            self.param_dtype,
        )
        return (x * scale + bias).astype(self.dtype)


def _pointwise(features: int, cin: int, name: str, dtype: Dtype) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(),
            (channel_axis(cin, axes.CONV_IN), channel_axis(features, axes.CONV_OUT)),
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, (channel_axis(features, axes.CONV_OUT),)
        ),
        name=name,
    )


class SqueezeExcite3D(nn.Module):
    """3D squeeze-excitation (B.1.3): per-frame spatial pooling -> MLP -> sigmoid gate.
    (B, T, H, W, C) -> same shape; `hidden` is the bottleneck width."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        c = x_bthwc.shape[-1]
        s = x_bthwc.astype(jnp.float32).mean(axis=(2, 3), keepdims=True).astype(self.dtype)
        s = nn.silu(_pointwise(self.hidden, c, "reduce", self.dtype)(s))
        s = nn.sigmoid(_pointwise(c, self.hidden, "expand", self.dtype)(s))
        return x_bthwc * s


class MBConv3D(nn.Module):
    """3D Mobile-inverted block (B.1.3, D2): 3x3x3 conv C'->C, then the residual branch
    norm -> pointwise C->4C -> SiLU -> SE -> depthwise 3x3x3 -> norm -> SiLU ->
    pointwise 4C->C, added to the 3x3x3 conv's output. (B, T, H, W, C') -> (B, T, H, W, C).
    """

    features: int
    expansion: int = 4
    se_ratio: float = 0.25
    depthwise_impl: str | None = None
    conv_impl: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        c, wide = self.features, self.features * self.expansion
        h = CausalConv3D(c, (3, 3, 3), dtype=self.dtype, impl=self.conv_impl, name="conv_in")(
            x_bthwc
        )
        r = FrameGroupNorm(dtype=self.dtype, name="norm_in")(h)
        r = nn.silu(_pointwise(wide, c, "expand", self.dtype)(r))
        r = SqueezeExcite3D(max(8, int(c * self.se_ratio)), dtype=self.dtype, name="se")(r)
        r = DepthwiseConv3D(
            (3, 3, 3), impl=self.depthwise_impl, dtype=self.dtype, name="depthwise"
        )(r)
        r = nn.silu(FrameGroupNorm(dtype=self.dtype, name="norm_mid")(r))
        r = _pointwise(c, wide, "project", self.dtype)(r)
        return h + r


# B.1.4: paper kernels N x H x W == our (T, H, W), see the module docstring.
INCEPTION_KERNELS = ((3, 3, 1), (3, 1, 3), (1, 3, 3))


class InceptionFusedMB3D(nn.Module):
    """Inception-Fused-MB block (B.1.4, D2): three parallel branches, conv with kernel
    3x3x1 (T-H), 3x1x3 (T-W), 1x3x3 (H-W) each followed by an MBConv3D, concatenated and
    fused by a 1x1x1 conv. A residual around the whole block when C' == C is ours (the
    paper is silent); it keeps deep stacks trainable. (B, T, H, W, C') -> (B, T, H, W, C).
    """

    features: int
    expansion: int = 4
    depthwise_impl: str | None = None
    conv_impl: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc: jax.Array) -> jax.Array:
        branches = []
        for i, k in enumerate(INCEPTION_KERNELS):
            b = CausalConv3D(
                self.features, k, dtype=self.dtype, impl=self.conv_impl, name=f"branch{i}_conv"
            )(x_bthwc)
            b = MBConv3D(
                self.features,
                self.expansion,
                depthwise_impl=self.depthwise_impl,
                conv_impl=self.conv_impl,
                dtype=self.dtype,
                name=f"branch{i}_mb",
            )(b)
            branches.append(b)
        y = CausalConv3D(
            self.features, (1, 1, 1), dtype=self.dtype, impl=self.conv_impl, name="fuse"
        )(jnp.concatenate(branches, axis=-1))
        if x_bthwc.shape[-1] == self.features:
            y = y + x_bthwc.astype(y.dtype)
        return y
