"""Sketch-guided inpainting at inference (Sec. 4, Fig. 5; D8, D10): one jitted function.

    video, masked video, hole, sketch, text
      -> z_0 = E(V), z_m = E(V_m), SigLIP(sketch)
      -> iterative unmasking of z_t with classifier-free guidance (text dropped in the
         unconditional branch, and the sketch too with `guide_sketch`; z_m always stays:
         it is the inpainting context)
      -> D(z) -> V_hat  (the caller composites `V (1 - m) + V_hat m`)

With `known_outside` the latent cells that do not touch the mask start as (and stay) the
codes of E(V), the sampler's fixed tokens; only the hole is generated. Without it every
token is generated from z_m, the sketch and the text (the paper's setting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from motionaura_jax.denoiser import sampling
from motionaura_jax.inpaint.model import InpaintDenoiser, merge_params
from motionaura_jax.inpaint.sketch import SketchEncoder
from motionaura_jax.parallel.rules import TRANSFORMER_RULES

PyTree = Any


def guided_inpaint_logits(
    model: InpaintDenoiser,
    params: PyTree,
    z_m: jax.Array,
    sketch_feats: jax.Array,
    text: jax.Array,
    text_mask: jax.Array,
    fps: jax.Array,
    guidance_scale: float | None,
    guide_sketch: bool = False,
) -> sampling.LogitsFn:
    """`(z_t, t) -> (B, L, K)` logits `l_u + s (l_c - l_u)`; one forward on a doubled batch.

    l_u drops the text, and with `guide_sketch` the sketch as well, so that guidance pulls
    towards the sketched shape too (needs a model trained with `diffusion.sketch_drop`).
    """

    def fn(tokens: jax.Array, t: jax.Array) -> jax.Array:
        if guidance_scale is None:
            return model.apply(
                {"params": params}, tokens, z_m, sketch_feats, t, text, text_mask, fps
            )
        b = tokens.shape[0]
        two = lambda x: jnp.concatenate([x, x], axis=0)  # noqa: E731
        drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
        logits = model.apply(
            {"params": params},
            two(tokens),
            two(z_m),
            two(sketch_feats),
            two(t),
            two(text),
            two(text_mask),
            two(fps),
            drop,
            drop_sketch=drop if guide_sketch else None,
        )
        l_c, l_u = logits[:b].astype(jnp.float32), logits[b:].astype(jnp.float32)
        return l_u + guidance_scale * (l_c - l_u)

    return fn


def make_inpaint_fn(
    model: InpaintDenoiser,
    tokenizer,
    sketch: SketchEncoder,
    *,
    steps: int = 10,
    cfg_scale: float | None = 3.0,
    sampler: str = "maskgit",
    known_outside: bool = True,
    sampler_kwargs: dict[str, Any] | None = None,
    guide_sketch: bool = False,
) -> Callable:
    """Jitted `(trainable, base, tokenizer_params, sketch_params, video, masked_video, hole,
    sketch, text_emb, text_mask, fps, rng) -> (tokens, video_hat)`.

    Shapes: video / masked_video (B, T, H, W, 3) in [-1, 1]; hole (B, n, h, w) bool;
    sketch (B, S, S, 3) at the sketch encoder's size; text_emb (B, L, D), text_mask (B, L);
    fps (B,) -> tokens (B, n, h, w) int32, video_hat (B, T, H, W, 3) float32 in [-1, 1]
    (not composited). `sampler_kwargs` go to the sampler (temperatures, corrector passes:
    `sampling.sampler_kwargs`). One compile per input shape.
    """
    if sampler not in sampling.SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; use one of {list(sampling.SAMPLERS)}")
    kwargs = dict(sampler_kwargs or {})
    mask_id = model.base.vocab_size

    def run(
        trainable,
        base,
        tokenizer_params,
        sketch_params,
        video,
        masked_video,
        hole,
        sketch_img,
        text_emb,
        text_mask,
        fps,
        rng,
    ):
        with nn.logical_axis_rules(TRANSFORMER_RULES):
            params = merge_params(trainable, base)
            codes = tokenizer.raw.encode(tokenizer_params, video)  # E(V), every code
            z_0 = tokenizer.codes_to_ids(codes)
            z_m = tokenizer.encode(tokenizer_params, masked_video)
            feats = sketch.features(sketch_params, sketch_img)
            fn = guided_inpaint_logits(
                model, params, z_m, feats, text_emb, text_mask, fps, cfg_scale, guide_sketch
            )
            fixed = dict(fixed_tokens=z_0, fixed_mask=~hole) if known_outside else {}
            tokens = sampling.SAMPLERS[sampler](
                rng, fn, z_0.shape, mask_id, steps, **kwargs, **fixed
            )
            out_codes = tokenizer.ids_to_codes(tokens)
            if known_outside:
                # The given cells decode from E(V)'s own codes, not the nearest codes of
                # the denoiser's vocabulary (`tokens.vocabulary`): outside the hole the
                # clip is the tokenizer's full reconstruction.
                out_codes = jnp.where(hole, out_codes, codes)
            return tokens, tokenizer.raw.decode(tokenizer_params, out_codes)

    return jax.jit(run)
