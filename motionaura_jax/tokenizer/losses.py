"""The 3D-MBQ-VAE training objective (Eq. 1 as fixed by DESIGN D4).

    L = ||V - V_hat||^2                (reconstruction; V is always the *unmasked* clip, D5)
      + quantizer terms                (VQ: codebook + beta * commitment; FSQ: commitment;
                                        LFQ: commitment + entropy; Gumbel: KL to uniform)
      + w_MFI * (-log P(f_i))          (masked frame index, only clips with a blanked frame)

The quantizer terms arrive already weighted in the quantizer's `aux['loss']`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax


def reconstruction_loss(target_bthwc: jax.Array, recon_bthwc: jax.Array) -> jax.Array:
    """Mean squared error over all pixels (Eq. 1, L_rec), computed in float32."""
    diff = recon_bthwc.astype(jnp.float32) - target_bthwc.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def mfi_loss(
    logits_bt: jax.Array, frame_index_b: jax.Array, has_masked_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Masked-frame-index cross entropy (Eq. 1, L_MFI) and accuracy, averaged over the
    clips that have a blanked frame (D5); both are 0 when no clip in the batch has one.

    Args:
      logits_bt: (B, T) scores over the input frames.
      frame_index_b: (B,) int32 index of the blanked frame.
      has_masked_b: (B,) bool.
    """
    weights = has_masked_b.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits_bt.astype(jnp.float32), frame_index_b
    )
    hit = (jnp.argmax(logits_bt, axis=-1) == frame_index_b).astype(jnp.float32)
    denom = jnp.maximum(weights.sum(), 1.0)
    return jnp.sum(ce * weights) / denom, jnp.sum(hit * weights) / denom


def tokenizer_loss(
    outputs: Mapping[str, jax.Array | Mapping[str, jax.Array]],
    target_bthwc: jax.Array,
    mask_info: Mapping[str, jax.Array] | None,
    *,
    mfi_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and metrics from `VideoTokenizer.__call__` outputs.

    Args:
      outputs: 'recon' (B, T, H, W, 3), 'quantizer' (aux dict with 'loss'), and
        'mfi_logits' (B, T) when the model has an MFI head.
      target_bthwc: the clean clip.
      mask_info: `masking.mask_video`'s info, or None when no frame masking ran.
      mfi_weight: weight of L_MFI; 0 disables it (the w/o-MFI ablation, section 4.2).
    """
    rec = reconstruction_loss(target_bthwc, outputs["recon"])
    quant = outputs["quantizer"]
    total = rec + quant["loss"]
    metrics = {"rec_loss": rec, "quant_loss": quant["loss"]}
    for k in ("commit_loss", "codebook_loss", "entropy_loss", "kl_loss"):
        if k in quant:
            metrics[k] = quant[k]
    if mfi_weight > 0 and mask_info is not None and outputs.get("mfi_logits") is not None:
        mfi, acc = mfi_loss(
            outputs["mfi_logits"], mask_info["frame_index"], mask_info["has_masked"]
        )
        total = total + mfi_weight * mfi
        metrics |= {"mfi_loss": mfi, "mfi_accuracy": acc}
    # PSNR of [-1, 1] video: peak-to-peak 2, so PSNR = 10 log10(4 / MSE).
    metrics["psnr"] = 10.0 * jnp.log10(4.0 / jnp.maximum(rec, 1e-10))
    metrics["loss"] = total
    return total, metrics
