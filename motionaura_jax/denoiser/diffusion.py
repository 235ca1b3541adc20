"""Absorbing-state ([MASK]) discrete diffusion (Sec. 3.2, Table 10; D8).

Time runs from t = 0 (clean tokens) to t = 1 (every token is [MASK]). A mask schedule
gamma(t) in [0, 1] gives the probability that a token is masked at time t; the forward
process masks each token independently with probability gamma(t); the denoiser predicts
the original codes and is trained with the cross-entropy on the masked positions (the
NLL L_diff of Sec. 3.2). The text condition is dropped with probability `p_uncond` for
classifier-free guidance.

Schedules are written in diffusion time. MaskGIT's cosine schedule `cos(pi/2 * r)` of the
unmasking progress r = 1 - t is `sin(pi/2 * t)` here; with t ~ U(0, 1] it yields the same
mask-ratio distribution MaskGIT trains with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.denoiser.model import patch_order
from motionaura_jax.nn.attention import ATTENTION_MAPS
from motionaura_jax.tokenizer.quantizers import fsq_digits

SCHEDULES = ("cosine", "linear", "square", "cubic", "sqrt")


def mask_schedule(t: jax.Array, kind: str = "cosine") -> jax.Array:
    """gamma(t): probability that a token is [MASK] at diffusion time t in [0, 1].

    Monotone with gamma(0) = 0 and gamma(1) = 1 for every kind.
    """
    t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0)
    if kind == "cosine":
        return jnp.sin(0.5 * jnp.pi * t)
    if kind == "linear":
        return t
    if kind == "square":
        return t**2
    if kind == "cubic":
        return t**3
    if kind == "sqrt":
        return jnp.sqrt(t)
    raise ValueError(f"mask schedule must be one of {SCHEDULES}, got {kind!r}")


def time_of_mask_ratio(ratio: jax.Array, kind: str = "cosine") -> jax.Array:
    """The inverse of `mask_schedule`: the diffusion time t at which gamma(t) = `ratio`."""
    ratio = jnp.clip(jnp.asarray(ratio, jnp.float32), 0.0, 1.0)
    inverses = {
        "cosine": lambda r: jnp.arcsin(r) * 2.0 / jnp.pi,
        "linear": lambda r: r,
        "square": jnp.sqrt,
        "cubic": jnp.cbrt,
        "sqrt": lambda r: r**2,
    }
    if kind not in inverses:
        raise ValueError(f"mask schedule must be one of {SCHEDULES}, got {kind!r}")
    return inverses[kind](ratio)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Training-time diffusion settings (field names match `config.diffusion`).

    Attributes:
      vocab_size: K; the [MASK] id is K.
      schedule: one of `SCHEDULES`.
      num_steps: 0 for continuous t ~ U(0, 1]; T > 0 for the discrete schedule
        t = k / T, k ~ U{1..T} (T = 30, Table 10).
      p_uncond: probability of dropping the text condition (CFG; 0.1).
      label_smoothing: optional smoothing of the masked-token targets.
      code_levels: the denoiser's digit head levels (`SpectralTransformer.code_levels`);
        non-empty: the loss reads per-digit logits (see `masked_cross_entropy`).
      patch: the denoiser's `patch`; a patched denoiser returns its logits in patch order
        (`grid_order=False`) and the loss puts the targets in the same order.
      binding_weight: > 0 adds `binding_weight * binding_loss` (ours), which needs the
        batch's 'object_cells' and 'phrase_ids' (the `shapes` token cache).
      object_extra_weight: masked tokens in cells an object touches count
        1 + object_extra_weight in the loss, the rest 1 (ours; > 0 needs the batch's
        'object_cells'; 0, off, so that configs saved before it count as unchanged).
      object_mask_prob: the fraction of examples that also have every token of one of
        their objects masked (`mask_objects`, ours; > 0 needs 'object_cells').
    """

    vocab_size: int = 12_800
    schedule: str = "cosine"
    num_steps: int = 0
    p_uncond: float = 0.1
    label_smoothing: float = 0.0
    code_levels: tuple[int, ...] = ()
    patch: tuple[int, ...] = (1, 1, 1)
    binding_weight: float = 0.0
    object_extra_weight: float = 0.0
    object_mask_prob: float = 0.0

    @property
    def mask_id(self) -> int:
        return self.vocab_size


def sample_time(rng: jax.Array, batch: int, num_steps: int = 0) -> jax.Array:
    """(B,) diffusion times: U(0, 1] or, with `num_steps` T > 0, uniform on {1/T, ..., 1}."""
    if num_steps > 0:
        k = jax.random.randint(rng, (batch,), 1, num_steps + 1)
        return k.astype(jnp.float32) / num_steps
    # 1 - U[0, 1) lies in (0, 1]: t = 0 would mask nothing and give no loss.
    return 1.0 - jax.random.uniform(rng, (batch,))


def corrupt(
    rng: jax.Array,
    tokens: jax.Array,
    t: jax.Array,
    mask_id: int,
    schedule: str = "cosine",
    known: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Forward process q(z_t | z_0): mask each token with probability gamma(t).

    At least one token per example is masked (the one with the smallest uniform draw) so
    that every example contributes to the loss.

    Args:
      tokens: (B, ...) int32 clean codes z_0.
      t: (B,) diffusion times.
      known: optional (B, ...) bool; True positions are never masked (inpainting context).
    Returns:
      (z_t, masked): (B, ...) int32 corrupted tokens and (B, ...) bool mask.
    """
    b = tokens.shape[0]
    u = jax.random.uniform(rng, tokens.shape)
    if known is not None:
        u = jnp.where(known, 2.0, u)  # never below gamma(t) <= 1, never the minimum
    gamma = mask_schedule(t, schedule).reshape((b,) + (1,) * (tokens.ndim - 1))
    flat = u.reshape(b, -1)
    is_min = (flat == flat.min(axis=1, keepdims=True)).reshape(u.shape)
    masked = (u < gamma) | is_min
    if known is not None:
        masked = masked & ~known
    return jnp.where(masked, mask_id, tokens).astype(jnp.int32), masked


def _token_cross_entropy(
    logits: jax.Array, targets: jax.Array, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """(B, L, K) logits, (B, L) targets -> (B, L) cross-entropy and (B, L) argmax hit."""
    logits = logits.astype(jnp.float32)
    # One max pass serves the stable logsumexp and the accuracy (logits are the largest
    # tensor of the step: B * L * 12,800 floats, so each extra pass over them costs).
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    lse = top[..., 0] + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0:
        # optax.smooth_labels: (1 - a) one_hot + a / K, so the target term mixes the label
        # logit with the mean logit.
        mean_logit = jnp.mean(logits, axis=-1)
        ce = lse - (1 - label_smoothing) * target_logit - label_smoothing * mean_logit
    else:
        ce = lse - target_logit
    return ce, target_logit >= top[..., 0]


def masked_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    masked: jax.Array,
    label_smoothing: float = 0.0,
    code_levels: tuple[int, ...] = (),
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over masked positions of the whole batch, plus metrics.

    Args:
      logits: (B, L, K) float; with `code_levels`, (B, L, sum(code_levels)) per-digit
        logits of a digit head, and the cross-entropy of a code is the sum of its
        digits' (exactly -log p(code) of the factorised head; label smoothing applies
        per digit).
      targets: (B, L) int32 clean codes.
      masked: (B, L) bool.
      weights: optional (B, L) float; the returned loss is then the weighted mean over
        masked positions, while metrics['loss'] stays the plain mean (comparable across
        runs).
    Returns:
      (loss, {'loss', 'masked_accuracy', 'mask_ratio'}).
    """
    if code_levels:
        if logits.shape[-1] != sum(code_levels):
            raise ValueError(
                f"code_levels {tuple(code_levels)} need (..., {sum(code_levels)}) per-digit "
                f"logits, got {logits.shape}: call the denoiser with digit_logits=True"
            )
        digits = fsq_digits(targets, code_levels)
        parts = jnp.split(logits, np.cumsum(code_levels[:-1]), axis=-1)
        per_digit = [
            _token_cross_entropy(part, digits[..., i], label_smoothing)
            for i, part in enumerate(parts)
        ]
        ce = sum(c for c, _ in per_digit)
        hit = jnp.all(jnp.stack([h for _, h in per_digit]), axis=0)
    else:
        ce, hit = _token_cross_entropy(logits, targets, label_smoothing)
    w = masked.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    mean_ce = (ce * w).sum() / n
    metrics = {"loss": mean_ce, "masked_accuracy": (hit * w).sum() / n, "mask_ratio": w.mean()}
    if weights is None:
        return mean_ce, metrics
    ww = w * weights.astype(jnp.float32)
    return (ce * ww).sum() / jnp.maximum(ww.sum(), 1e-6), metrics


def mask_objects(
    rng: jax.Array,
    z_t: jax.Array,
    masked: jax.Array,
    object_cells: jax.Array,
    prob: float,
    mask_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Also masks every token of one object, in a `prob` fraction of the examples (ours).

    Token-by-token masking almost always leaves some of each object's tokens visible, so
    the denoiser learns to copy colour from an object's visible tokens. Drawing the
    second of two objects, with the first already drawn, asks for something it rarely
    practises: a whole object from its phrase, beside another object it must not copy.

    Args:
      z_t, masked: (B, n, h, w) from `corrupt`.
      object_cells: (B, M, n, h, w) bool, the cells each object touches.
    Returns:
      (z_t, masked) with the chosen object's cells masked too; examples without objects
      are left as they were.
    """
    b, m = object_cells.shape[:2]
    present = object_cells.reshape(b, m, -1).any(-1)  # (B, M)
    r_apply, r_pick = jax.random.split(rng)
    pick = jax.random.categorical(r_pick, jnp.where(present, 0.0, -jnp.inf))  # (B,)
    chosen = jnp.take_along_axis(object_cells, pick[:, None, None, None, None], axis=1)[:, 0]
    apply = jax.random.bernoulli(r_apply, prob, (b,)) & present.any(-1)
    extra = chosen & apply[:, None, None, None]
    return jnp.where(extra, mask_id, z_t), masked | extra


def attention_maps(intermediates: Any) -> jax.Array:
    """(B, L, S) the mean over blocks of the cross-attention maps the denoiser sowed
    (`nn.attention.ATTENTION_MAPS`; scanned blocks sow one (depth, B, L, S) stack)."""
    leaves = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
        if any(getattr(key, "key", None) == ATTENTION_MAPS for key in path)
    ]
    if not leaves:
        raise ValueError(
            "the denoiser sowed no cross-attention maps: the binding loss needs a model "
            "with cross-attention (text conditioning)"
        )
    shape = leaves[0].shape[-3:]
    return jnp.concatenate([m.reshape(-1, *shape) for m in leaves]).mean(axis=0)


def binding_loss(
    maps: jax.Array,
    object_cells: jax.Array,
    phrase_ids: jax.Array,
    drop_text: jax.Array,
    patch: tuple[int, ...] = (1, 1, 1),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """How much of each caption phrase's cross-attention falls outside its object (ours).

    TokenCompose's token loss (Wang et al., 2024) on the latent grid: for object k, a_k(q)
    is the attention query position q pays to the tokens of phrase k, and the loss is
    1 - sum_{q in cells_k} a_k(q) / sum_q a_k(q), averaged over the objects of the
    captioned examples. It tells the positions an object covers to read that object's
    phrase (its colour, shape and motion), not the other one's.

    Args:
      maps: (B, L, S) attention of the sequence's rows over the text tokens; the first
        P rows are the video positions (P = grid size / patch size).
      object_cells: (B, M, n, h, w) bool, the token cells each object touches.
      phrase_ids: (B, S) int, k + 1 on phrase k's text tokens, 0 elsewhere.
      drop_text: (B,) bool; examples whose caption CFG dropped are left out.
      patch: the denoiser's patch: a position covers an object if any of its cells does.
    Returns:
      (loss, {'binding_loss', 'binding_inside'}): the loss and the mean fraction of a
      phrase's attention inside its object.
    """
    b, m = object_cells.shape[:2]
    cells = patch_order(object_cells.reshape(b * m, *object_cells.shape[2:]), patch)
    inside = cells.reshape(b, m, -1, math.prod(patch)).any(axis=-1)  # (B, M, P)
    positions = inside.shape[-1]
    phrase = (phrase_ids[:, :, None] == jnp.arange(1, m + 1)).astype(jnp.float32)  # (B, S, M)
    attention = jnp.einsum("bps,bsm->bmp", maps[:, :positions].astype(jnp.float32), phrase)
    total = attention.sum(axis=-1)
    fraction = (attention * inside).sum(axis=-1) / jnp.maximum(total, 1e-9)  # (B, M)
    valid = inside.any(axis=-1) & (phrase.sum(axis=1) > 0) & ~drop_text[:, None]
    w = valid.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    inside_mean = (fraction * w).sum() / n
    loss = 1.0 - inside_mean
    return loss, {"binding_loss": loss, "binding_inside": inside_mean}


def _batch_field(batch: dict[str, jax.Array], key: str, option: str, off: str) -> jax.Array:
    """batch[key], or a ValueError that names the option needing it and how to turn it off."""
    if key not in batch:
        raise ValueError(
            f"{option} needs batch[{key!r}] (a token cache written from `shapes` clips by "
            f"this version); rebuild the cache or set --config.diffusion.{off}"
        )
    return batch[key]


def diffusion_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    config: DiffusionConfig,
) -> tuple[jax.Array, dict]:
    """The stage-2 training objective for one batch (D8).

    Args:
      apply_fn: `SpectralTransformer.apply`-like `(variables, tokens, t, text, text_mask=,
        fps=, drop_text=) -> (B, L, K) logits`.
      params: the denoiser's params (passed as `{'params': params}`).
      batch: 'tokens' (B, n, h, w) or (B, L) int32; 'text' (B, S, Dt); optional
        'text_mask' (B, S) bool, 'fps' (B,) float, 'known' (B, ...) bool.
      rng: key for time, masking and text dropout.
    Returns:
      (scalar loss, metrics).
    """
    if not jnp.issubdtype(batch["tokens"].dtype, jnp.integer):
        raise ValueError(f"batch['tokens'] must be integer codes, got {batch['tokens'].dtype}")
    tokens = batch["tokens"].astype(jnp.int32)
    b = tokens.shape[0]
    r_t, r_mask, r_drop = jax.random.split(rng, 3)
    t = sample_time(r_t, b, config.num_steps)
    z_t, masked = corrupt(r_mask, tokens, t, config.mask_id, config.schedule, batch.get("known"))
    if config.object_mask_prob > 0:
        if "known" in batch:
            raise ValueError(
                "diffusion.object_mask_prob would mask known (inpainting context) tokens; "
                "set it to 0 for a batch with 'known'"
            )
        option = f"diffusion.object_mask_prob={config.object_mask_prob}"
        cells = _batch_field(batch, "object_cells", option, "object_mask_prob=0")
        # A key of its own (folded in), so the draws above stay those of a run without it.
        z_t, masked = mask_objects(
            jax.random.fold_in(rng, 1), z_t, masked, cells, config.object_mask_prob, config.mask_id
        )
    drop = jax.random.bernoulli(r_drop, config.p_uncond, (b,))
    options = {"digit_logits": True} if config.code_levels else {}
    weights = None
    if config.object_extra_weight > 0:
        option = f"diffusion.object_extra_weight={config.object_extra_weight}"
        cells = _batch_field(batch, "object_cells", option, "object_extra_weight=0")
        on_object = jnp.any(cells, axis=1)  # (B, n, h, w)
        weights = jnp.where(on_object, 1.0 + config.object_extra_weight, 1.0)
    if tuple(config.patch) != (1, 1, 1):
        options["grid_order"] = False  # the mean over masked tokens ignores their order
        tokens, masked = patch_order(tokens, config.patch), patch_order(masked, config.patch)
        if weights is not None:
            weights = patch_order(weights, config.patch)
    binding = config.binding_weight > 0
    if binding:
        options["mutable"] = ["intermediates"]  # the cross-attention maps
    out = apply_fn(
        {"params": params},
        z_t,
        t,
        batch["text"],
        text_mask=batch.get("text_mask"),
        fps=batch.get("fps"),
        drop_text=drop,
        **options,
    )
    logits, state = out if binding else (out, None)
    loss, metrics = masked_cross_entropy(
        logits,
        tokens.reshape(b, -1),
        masked.reshape(b, -1),
        config.label_smoothing,
        config.code_levels,
        None if weights is None else weights.reshape(b, -1),
    )
    metrics["mean_t"] = t.mean()
    if binding:
        option = f"diffusion.binding_weight={config.binding_weight}"
        bind, bind_metrics = binding_loss(
            attention_maps(state["intermediates"]),
            _batch_field(batch, "object_cells", option, "binding_weight=0"),
            _batch_field(batch, "phrase_ids", option, "binding_weight=0"),
            drop,
            tuple(config.patch),
        )
        loss = loss + config.binding_weight * bind
        metrics.update(bind_metrics)
    return loss, metrics
