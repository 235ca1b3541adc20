"""Input masking for tokenizer pre-training (section 3.1, B.2.2; DESIGN D5).

Two corruptions of the *input* clip (the reconstruction target stays the clean clip):

* patch masking: each clip picks a patch size from {16, 32} (uniformly), and every patch
  of every frame is blanked with probability `ratio`; `ratio` follows a cosine schedule
  from 20% to 60% over training (B.2.2).
* full-frame masking: with probability `prob` (cosine 10% -> 50%) one uniformly chosen
  frame is blanked; its index is the MFI head's target (D4).

Blanked pixels take `fill` (0 = mid grey in [-1, 1]). All draws come from the key passed
in, so a (seed, step) pair fixes the masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def cosine_schedule(step: jax.Array | int, total_steps: int, start: float, end: float) -> jax.Array:
    """Half-cosine ramp from `start` at step 0 to `end` at `total_steps` (held after)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return start + (end - start) * 0.5 * (1.0 - jnp.cos(jnp.pi * frac))


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """Switches and schedules of D5; `total_steps` is the length of both ramps."""

    patch: bool = True
    patch_sizes: Sequence[int] = (16, 32)
    patch_ratio: tuple[float, float] = (0.2, 0.6)
    frame: bool = True
    frame_prob: tuple[float, float] = (0.1, 0.5)
    total_steps: int = 100_000
    fill: float = 0.0


def patch_mask(
    rng: jax.Array, shape_bthw: Sequence[int], ratio: jax.Array | float, patch_sizes: Sequence[int]
) -> jax.Array:
    """Boolean (B, T, H, W) mask, True = blanked; per clip one patch size from
    `patch_sizes`, per frame and patch an independent Bernoulli(`ratio`). Sizes that do
    not divide H or W use a ceil grid cropped to the frame."""
    b, t, h, w = shape_bthw
    k_size, *k_cells = jax.random.split(rng, 1 + len(patch_sizes))
    choice = jax.random.randint(k_size, (b,), 0, len(patch_sizes))
    mask = jnp.zeros((b, t, h, w), jnp.bool_)
    for i, (p, key) in enumerate(zip(patch_sizes, k_cells, strict=True)):
        gh, gw = -(-h // p), -(-w // p)
        cells = jax.random.bernoulli(key, ratio, (b, t, gh, gw))
        pix = jnp.repeat(jnp.repeat(cells, p, axis=2), p, axis=3)[:, :, :h, :w]
        mask = jnp.where((choice == i)[:, None, None, None], pix, mask)
    return mask


def frame_mask(
    rng: jax.Array, batch: int, frames: int, prob: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """Which clips get a blanked frame and which frame: (has_masked bool (B,),
    frame_index int32 (B,) uniform in [0, frames))."""
    k_has, k_idx = jax.random.split(rng)
    has = jax.random.bernoulli(k_has, prob, (batch,))
    idx = jax.random.randint(k_idx, (batch,), 0, frames, dtype=jnp.int32)
    return has, idx


def mask_video(
    rng: jax.Array, video_bthwc: jax.Array, step: jax.Array | int, config: MaskingConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Apply D5 masking to a clip batch.

    Args:
      rng: key for this step.
      video_bthwc: (B, T, H, W, C) clean clip in [-1, 1].
      step: global training step (drives both cosine schedules).
      config: switches and schedules.
    Returns:
      masked (B, T, H, W, C) and info: 'frame_index' int32 (B,), 'has_masked' bool (B,),
      'patch_ratio' and 'frame_prob' (scalars, the scheduled values at `step`).
    """
    b, t, h, w, _ = video_bthwc.shape
    k_patch, k_frame = jax.random.split(rng)
    ratio = cosine_schedule(step, config.total_steps, *config.patch_ratio)
    prob = cosine_schedule(step, config.total_steps, *config.frame_prob)
    blank = jnp.zeros((b, t, h, w), jnp.bool_)
    if config.patch:
        blank = patch_mask(k_patch, (b, t, h, w), ratio, config.patch_sizes)
    if config.frame:
        has, idx = frame_mask(k_frame, b, t, prob)
    else:
        has, idx = jnp.zeros((b,), jnp.bool_), jnp.zeros((b,), jnp.int32)
    whole = has[:, None] & (jnp.arange(t)[None] == idx[:, None])
    blank = blank | whole[:, :, None, None]
    masked = jnp.where(blank[..., None], jnp.asarray(config.fill, video_bthwc.dtype), video_bthwc)
    info = {"frame_index": idx, "has_masked": has, "patch_ratio": ratio, "frame_prob": prob}
    return masked, info
