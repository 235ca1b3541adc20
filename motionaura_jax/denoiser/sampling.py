"""Reverse process: iterative unmasking samplers with classifier-free guidance (D8).

* `maskgit_sample`: MaskGIT confidence re-masking. Each step samples every unknown token,
  keeps the most confident ones and re-masks the rest so that `floor(N * gamma(t'))`
  tokens stay masked (N = unknown tokens at the start, t' the next time), confidence =
  log p(sampled) + Gumbel noise whose temperature anneals linearly to 0.
* `posterior_sample`: VQ-Diffusion-style ancestral sampling of the absorbing process:
  a masked token at time t is revealed at time t' < t with probability
  `(gamma(t) - gamma(t')) / gamma(t)` (the posterior q(z_t' | z_t, z_0) with z_0 drawn
  from the model); revealed tokens never change again.
* `resample` (ours, `maskgit_sample(resample_steps=...)`): corrector passes after the last
  MaskGIT step, each redrawing a random fraction of the tokens given all the others.

Both are pure functions of the PRNG key (deterministic given a seed), run their steps in
`lax.scan` (jit-compatible, steps static), and never change tokens marked as fixed (for
inpainting). Guidance: `l_u + s (l_c - l_u)` on logits (default s = 10, 10 steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from motionaura_jax.denoiser.diffusion import mask_schedule, time_of_mask_ratio

# (tokens with the caller's shape, t (B,)) -> (B, L, K) logits over the codes.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def guided_logits_fn(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    text: jax.Array,
    text_mask: jax.Array | None = None,
    fps: jax.Array | None = None,
    guidance_scale: float | None = 10.0,
) -> LogitsFn:
    """Classifier-free-guided logits `l_u + s (l_c - l_u)`.

    The conditional and the unconditional (null-text) passes share one forward on a
    doubled batch. `guidance_scale=None` runs the conditional model alone.

    Args:
      apply_fn: `SpectralTransformer.apply`.
      params: denoiser params.
      text: (B, S, Dt); text_mask: (B, S) bool or None; fps: (B,) or None.
    """

    def fn(tokens: jax.Array, t: jax.Array) -> jax.Array:
        b = tokens.shape[0]
        if guidance_scale is None:
            return apply_fn({"params": params}, tokens, t, text, text_mask=text_mask, fps=fps)

        def two(x):
            return None if x is None else jnp.concatenate([x, x], axis=0)

        drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
        logits = apply_fn(
            {"params": params},
            two(tokens),
            two(t),
            two(text),
            text_mask=two(text_mask),
            fps=two(fps),
            drop_text=drop,
        )
        l_c, l_u = logits[:b].astype(jnp.float32), logits[b:].astype(jnp.float32)
        return l_u + guidance_scale * (l_c - l_u)

    return fn


def _initial(shape, mask_id, fixed_tokens, fixed_mask):
    tokens = jnp.full(shape, mask_id, jnp.int32)
    if fixed_mask is None:
        return tokens.reshape(shape[0], -1), jnp.zeros((shape[0], tokens[0].size), bool)
    if fixed_tokens is None or fixed_tokens.shape != tuple(shape):
        raise ValueError(f"fixed_tokens must have shape {tuple(shape)} with fixed_mask")
    tokens = jnp.where(fixed_mask, fixed_tokens, mask_id).astype(jnp.int32)
    return tokens.reshape(shape[0], -1), fixed_mask.reshape(shape[0], -1).astype(bool)


def _gumbel(rng, shape):
    return jax.random.gumbel(rng, shape, jnp.float32)


def _lowest(scores: jax.Array, count: jax.Array) -> jax.Array:
    """(B, L) bool: the `count[b]` positions of row b with the lowest scores."""
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    return rank < count[:, None]


def maskgit_schedule_counts(
    num_unknown: jax.Array, steps: int, schedule: str = "cosine"
) -> jax.Array:
    """(steps, B) number of tokens still masked after each step, before clamping.

    `floor(N * gamma(1 - (s + 1) / steps))`; 0 after the last step.
    """
    r = (jnp.arange(steps, dtype=jnp.float32) + 1.0) / steps
    gamma = mask_schedule(1.0 - r, schedule)
    # The epsilon keeps exact schedule points (e.g. N cos(pi/3) = N/2) from flooring down
    # through float32 rounding of the cosine.
    counts = num_unknown[None, :].astype(jnp.float32) * gamma[:, None]
    return jnp.floor(counts + 1e-4).astype(jnp.int32)


def maskgit_sample(
    rng: jax.Array,
    logits_fn: LogitsFn,
    shape: tuple[int, ...],
    mask_id: int,
    steps: int = 10,
    schedule: str = "cosine",
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    fixed_tokens: jax.Array | None = None,
    fixed_mask: jax.Array | None = None,
    return_history: bool = False,
    resample_steps: int = 0,
    resample_ratio: float = 0.25,
):
    """MaskGIT confidence re-masking sampler.

    Args:
      rng: PRNG key; the sample is a pure function of it.
      logits_fn: `(tokens of `shape`, t (B,)) -> (B, L, K)` (e.g. `guided_logits_fn`).
      shape: token shape, (B, n, h, w) or (B, L).
      mask_id: the [MASK] id (K).
      steps: number of model evaluations.
      temperature: softmax temperature of the token draws.
      choice_temperature: initial Gumbel temperature of the confidence; anneals to 0.
      fixed_tokens, fixed_mask: (shape) ints / bools; fixed positions are given and kept.
      return_history: also return (steps, B) counts of tokens still masked after each step.
      resample_steps, resample_ratio: corrector passes after the last step (see
        `resample`); 0 passes = plain MaskGIT.
    Returns:
      (shape) int32 tokens in [0, K) (and the history if asked).
    """
    tokens, fixed = _initial(shape, mask_id, fixed_tokens, fixed_mask)
    num_unknown = jnp.sum(~fixed, axis=1)
    targets = maskgit_schedule_counts(num_unknown, steps, schedule)

    def step(tokens, s):
        key = jax.random.fold_in(rng, s)
        k_sample, k_choice = jax.random.split(key)
        unknown = tokens == mask_id
        t = jnp.full((shape[0],), 1.0 - s / steps, jnp.float32)
        logits = logits_fn(tokens.reshape(shape), t).astype(jnp.float32) / temperature
        sampled = jnp.argmax(logits + _gumbel(k_sample, logits.shape), axis=-1)
        sampled = jnp.where(unknown, sampled, tokens).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
        ratio = (s + 1.0) / steps
        conf = logp + choice_temperature * (1.0 - ratio) * _gumbel(k_choice, logp.shape)
        conf = jnp.where(unknown, conf, jnp.inf)  # known and fixed tokens are never re-masked
        n_unknown = jnp.sum(unknown, axis=1)
        # Keep at least one token masked until the last step, never more than remain.
        hi = jnp.maximum(n_unknown - 1, 0)
        n_mask = jnp.clip(targets[s], jnp.minimum(1, hi), hi)
        n_mask = jnp.where(s == steps - 1, 0, n_mask)
        remask = _lowest(conf, n_mask)
        tokens = jnp.where(remask, mask_id, sampled).astype(jnp.int32)
        return tokens, jnp.sum(tokens == mask_id, axis=1)

    tokens, history = jax.lax.scan(step, tokens, jnp.arange(steps))
    if resample_steps:
        tokens = resample(
            jax.random.fold_in(rng, steps),
            logits_fn,
            tokens,
            fixed,
            shape,
            mask_id,
            resample_steps,
            resample_ratio,
            schedule,
            temperature,
        )
    out = tokens.reshape(shape)
    return (out, history) if return_history else out


def resample(
    rng: jax.Array,
    logits_fn: LogitsFn,
    tokens: jax.Array,
    fixed: jax.Array,
    shape: tuple[int, ...],
    mask_id: int,
    steps: int,
    ratio: float,
    schedule: str = "cosine",
    temperature: float = 1.0,
) -> jax.Array:
    """Corrector passes on a finished sample: each re-masks a random `ratio` of the free
    tokens and redraws them given all the others (a blocked Gibbs sweep of the model's
    conditionals, as ReMDM's re-masking). A MaskGIT step draws the tokens it reveals
    independently of each other, so two tokens drawn in one step can disagree (an
    object's edge drawn twice, two objects bridged); a redraw sees both.

    Args:
      tokens: (B, L) int32 codes without [MASK]; fixed: (B, L) bool, never redrawn.
      steps: passes; ratio: fraction of the free tokens each pass redraws, at the
        diffusion time whose mask ratio it is.
    Returns:
      (B, L) int32 tokens.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"resample_ratio={ratio}; use a fraction in (0, 1]")
    free = ~fixed
    count = jnp.floor(ratio * jnp.sum(free, axis=1)).astype(jnp.int32)
    t = jnp.full((shape[0],), time_of_mask_ratio(ratio, schedule), jnp.float32)

    def step(tokens, r):
        k_pick, k_sample = jax.random.split(jax.random.fold_in(rng, r))
        draw = jnp.where(free, jax.random.uniform(k_pick, tokens.shape), jnp.inf)
        pick = _lowest(draw, count)
        masked = jnp.where(pick, mask_id, tokens)
        logits = logits_fn(masked.reshape(shape), t).astype(jnp.float32) / temperature
        drawn = jnp.argmax(logits + _gumbel(k_sample, logits.shape), axis=-1)
        return jnp.where(pick, drawn, tokens).astype(jnp.int32), None

    tokens, _ = jax.lax.scan(step, tokens, jnp.arange(steps))
    return tokens


def posterior_sample(
    rng: jax.Array,
    logits_fn: LogitsFn,
    shape: tuple[int, ...],
    mask_id: int,
    steps: int = 10,
    schedule: str = "cosine",
    temperature: float = 1.0,
    fixed_tokens: jax.Array | None = None,
    fixed_mask: jax.Array | None = None,
    return_history: bool = False,
):
    """VQ-Diffusion-style ancestral sampler of the absorbing process (same API as MaskGIT's).

    Step s goes from t = 1 - s/steps to t' = 1 - (s+1)/steps; each masked token is
    revealed with probability (gamma(t) - gamma(t')) / gamma(t) with a code drawn from
    the model's p(z_0 | z_t); at the last step gamma(t') = 0 reveals everything.
    """
    tokens, _ = _initial(shape, mask_id, fixed_tokens, fixed_mask)

    def step(tokens, s):
        key = jax.random.fold_in(rng, s)
        k_sample, k_reveal = jax.random.split(key)
        unknown = tokens == mask_id
        t = 1.0 - s / steps
        t_next = 1.0 - (s + 1.0) / steps
        g, g_next = mask_schedule(t, schedule), mask_schedule(t_next, schedule)
        p_reveal = jnp.where(g > 0, (g - g_next) / jnp.maximum(g, 1e-12), 1.0)
        logits = logits_fn(tokens.reshape(shape), jnp.full((shape[0],), t, jnp.float32))
        logits = logits.astype(jnp.float32) / temperature
        sampled = jnp.argmax(logits + _gumbel(k_sample, logits.shape), axis=-1)
        reveal = unknown & (jax.random.uniform(k_reveal, unknown.shape) < p_reveal)
        tokens = jnp.where(reveal, sampled, tokens).astype(jnp.int32)
        return tokens, jnp.sum(tokens == mask_id, axis=1)

    tokens, history = jax.lax.scan(step, tokens, jnp.arange(steps))
    out = tokens.reshape(shape)
    return (out, history) if return_history else out


SAMPLERS = {"maskgit": maskgit_sample, "posterior": posterior_sample}


def sample(
    model: Any,
    params: Any,
    rng: jax.Array,
    text: jax.Array,
    token_shape: tuple[int, ...],
    text_mask: jax.Array | None = None,
    fps: jax.Array | None = None,
    steps: int = 10,
    guidance_scale: float | None = 10.0,
    method: str = "maskgit",
    **kwargs: Any,
) -> jax.Array:
    """Text-to-tokens generation with a `SpectralTransformer` (jit with static args).

    Args:
      model: the denoiser module (its `vocab_size` is the [MASK] id).
      text: (B, S, Dt) embeddings; token_shape: (B, n, h, w) or (B, L).
      method: 'maskgit' | 'posterior'; kwargs go to the sampler.
    Returns:
      token_shape int32 codes.
    """
    if method not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {method!r}")
    fn = guided_logits_fn(model.apply, params, text, text_mask, fps, guidance_scale)
    return SAMPLERS[method](rng, fn, token_shape, model.vocab_size, steps, **kwargs)


def sampler_kwargs(eval_config: Any, sampler: str, temperature: float) -> dict[str, Any]:
    """Keyword arguments of `SAMPLERS[sampler]` beyond the steps, from a stage's `eval`
    config (its choice temperature and corrector passes) and the call's temperature."""
    kwargs: dict[str, Any] = {"temperature": float(temperature)}
    if sampler == "maskgit":
        kwargs["choice_temperature"] = float(eval_config.choice_temperature)
        # Configs saved before the corrector have no field: no passes.
        kwargs["resample_steps"] = int(eval_config.get("resample_steps", 0))
        kwargs["resample_ratio"] = float(eval_config.get("resample_ratio", 0.25))
    return kwargs


def run_settings(
    eval_config: Any,
    *,
    steps: int | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    temperature: float | None = None,
) -> tuple[int, float | None, str, float]:
    """(steps, guidance scale or None, sampler, temperature) of a pipeline call.

    Each setting not given is the run's `eval` one, so a library or command-line call
    with no sampler arguments draws as the stage's `eval.json` was scored. A negative
    guidance scale means no guidance (None: the conditional model alone).
    """
    steps = int(eval_config.steps if steps is None else steps)
    if steps < 1:
        raise ValueError(f"steps={steps}; use at least 1 (the paper uses 10)")
    sampler = str(eval_config.sampler if sampler is None else sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; use one of {list(SAMPLERS)}")
    cfg = float(eval_config.cfg_scale if cfg is None else cfg)
    temperature = float(eval_config.temperature if temperature is None else temperature)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; use a positive value (1 = the model's)")
    return steps, (cfg if cfg >= 0 else None), sampler, temperature
