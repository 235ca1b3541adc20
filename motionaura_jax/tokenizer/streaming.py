"""Long-video encode/decode in temporal chunks with causal caches (flat device memory).

Approach. Every temporal operator of the tokenizer is causal and everything else
(per-frame GroupNorm, per-frame squeeze-excitation, pointwise layers, the quantizer) acts
on one frame at a time, so a clip can be processed chunk by chunk if each causal conv
remembers the last `kernel_t - stride_t` frames of its (padded) input. `conv3d.causal_front`
keeps that tail in the Linen `'cache'` collection: the first chunk is zero-padded as in
full-clip mode; later chunks prepend the cached tail instead. Temporal upsamplers drop
their leading frame only on the first chunk. Hence, with the default 4x temporal factor:

    encoder: first chunk 1 + 4a frames -> 1 + a latents; later chunks 4b frames -> b latents
    decoder: first chunk 1 + a latents -> 1 + 4a frames; later chunks b latents -> 4b frames

and the concatenated outputs equal the full-clip ones (up to float reassociation). Device
memory is that of one chunk plus the caches (a few frames per conv layer), independent
of clip length; outputs are gathered on the host. Each distinct chunk shape compiles once
(first, steady-state, and a shorter last chunk).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from motionaura_jax.tokenizer.model import VideoTokenizer, check_video_shape


def _chunks(total: int, first: int, rest: int) -> list[tuple[int, int]]:
    bounds, start, size = [], 0, first
    while start < total:
        bounds.append((start, min(total, start + size)))
        start, size = start + size, rest
    return bounds


def encode_chunked(
    model: VideoTokenizer, params: Any, video_bthwc: np.ndarray | jax.Array, chunk_latents: int = 4
) -> np.ndarray:
    """Encode (B, 1 + 4k, H, W, 3) -> indices (B, 1 + k, H/16, W/16) int32 (numpy),
    `chunk_latents` latent frames (4 * chunk_latents input frames) per device call."""
    tf = model.temporal_factor
    check_video_shape(tuple(video_bthwc.shape), tf, model.spatial_factor)
    step = jax.jit(
        lambda p, cache, x: model.apply(
            {"params": p, **cache}, x, method=VideoTokenizer.encode_chunk, mutable=["cache"]
        )
    )
    cache: dict[str, Any] = {}
    out = []
    for start, stop in _chunks(video_bthwc.shape[1], 1 + tf * chunk_latents, tf * chunk_latents):
        idx, cache = step(params, cache, video_bthwc[:, start:stop])
        out.append(np.asarray(idx))
    return np.concatenate(out, axis=1)


def decode_chunked(
    model: VideoTokenizer, params: Any, indices_bnhw: np.ndarray | jax.Array, chunk_latents: int = 4
) -> np.ndarray:
    """Decode indices (B, 1 + k, h, w) -> video (B, 1 + 4k, 16h, 16w, 3) float32 (numpy),
    `chunk_latents` latent frames per device call."""
    step = jax.jit(
        lambda p, cache, z: model.apply(
            {"params": p, **cache}, z, method=VideoTokenizer.decode, mutable=["cache"]
        )
    )
    cache: dict[str, Any] = {}
    out = []
    for start, stop in _chunks(indices_bnhw.shape[1], 1 + chunk_latents, chunk_latents):
        frames, cache = step(params, cache, indices_bnhw[:, start:stop])
        out.append(np.asarray(frames))
    return np.concatenate(out, axis=1)
