"""The spectral transformer denoiser (Sec. 3.3, Fig. 4, Eqs. 2-5; D6, D7).

Tokens `(B, n, h, w)` (or already flat `(B, L)`) with ids in `[0, K]` (`K` = [MASK]) are
embedded, run through `depth` spectral blocks conditioned on the diffusion time, the FPS
and the text, and mapped to logits over the K codes.

Residual wiring (`residual`):

* `'paper'` (Eqs. 3, 5): `h = AdLN_in(x)`; `x = gate * AdLN_out(f(h)) + h` for each of
  self-attention, cross-attention and the MLP. Eq. 4 writes the cross-attention query
  from `z_out`; we feed `AdLN(z_out)`, the tensor Eq. 5 adds back, as Eq. 2 does.
* `'prenorm'` (DiT adaLN-Zero): `x = x + gate * f(AdLN_in(x))`.

AdLN shifts/scales/gates come from adaLN-single (see `AdaLNModulation`); gates start small.
RoPE (Sec. 3.3) rotates the self-attention Q and K only: cross-attention keys are frequency
bins of the text, which have no token positions to rotate by.
The model knows no mesh: it names logical axes only (DESIGN.md section 5).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.nn.attention import SPECTRAL_MODES, SpectralAttention, rope_angles, spectral_mix
from motionaura_jax.nn.layers import (
    AdaLNModulation,
    ConditionEmbedding,
    FeedForward,
    LayerNorm,
    dense_init,
    modulate,
    partitioned,
    silu_mlp,
    sinusoidal_embedding,
)
from motionaura_jax.parallel import axes
from motionaura_jax.tokenizer.quantizers import fsq_digits

Dtype = Any
POS_EMBS = ("rope", "sinusoidal", "rope3d")
RESIDUALS = ("paper", "prenorm")
REMAT_POLICIES = ("none", "full", "dots")
# Modulation vectors per block: (shift, scale) in + (shift, scale, gate) out for 'paper',
# (shift, scale, gate) for 'prenorm'; three sub-layers (self-attn, cross-attn, MLP).
NUM_MODS = {"paper": 15, "prenorm": 9}

# Table 2 shapes (D7); text width 4096 = T5-XXL (Table 10); 12,800 codes (D3).
VARIANTS: dict[str, dict[str, Any]] = {
    "toy": dict(width=256, num_heads=4, depth=6, text_dim=256),
    "S": dict(width=1024, num_heads=16, depth=17, text_dim=4096),
    "M": dict(width=2048, num_heads=16, depth=28, text_dim=4096),
    "L": dict(width=4096, num_heads=32, depth=37, text_dim=4096),
}


def padded_vocab_rows(vocab_size: int) -> int:
    """Rows of a token table for K codes + [MASK], padded to a multiple of 128 so that the
    vocab axis divides evenly over any tensor-parallel mesh axis (unused rows are never
    read)."""
    return -(-(vocab_size + 1) // 128) * 128


def token_table(
    module: nn.Module,
    name: str,
    vocab_size: int,
    width: int,
    param_dtype: Dtype,
    init: Callable = nn.initializers.normal(0.02),
) -> jax.Array:
    """`module`'s (padded_vocab_rows(K), width) embedding table of K codes + [MASK]."""
    return module.param(
        name,
        partitioned(init, (axes.VOCAB, axes.EMBED)),
        (padded_vocab_rows(vocab_size), width),
        param_dtype,
    )


class SpectralBlock(nn.Module):
    """One spectral transformer block: spectral self-attn, spectral cross-attn, MLP.

    Call args:
      x: (B, L, D) residual stream.
      mods: (B, NUM_MODS[residual], D) shared adaLN-single modulation (float32).
      context: (B, S, D) `Re fft2D` of the projected text (spectral mode applied).
      context_mask: (B, S) bool or None.
      rope: (L, Dh // 2) angles or None.
    Returns:
      ((B, L, D), None), the scan carry convention.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    spectral: str = "real"
    cross_spectral: str = "real"
    residual: str = "paper"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lora_rank: int = 0
    lora_kind: str = "adapter"
    lora_alpha: float = 1.0

    @nn.compact
    def __call__(self, x, mods, context, context_mask, rope):
        width = x.shape[-1]
        n = NUM_MODS[self.residual]
        table = self.param(
            "mod_table",
            partitioned(nn.initializers.normal(width**-0.5), (None, axes.NORM)),
            (n, width),
            self.param_dtype,
        )
        mods = mods + table.astype(jnp.float32)[None]
        mods = [mods[:, i] for i in range(n)]
        lora = dict(lora_rank=self.lora_rank, lora_kind=self.lora_kind, lora_alpha=self.lora_alpha)
        attn = dict(
            num_heads=self.num_heads,
            spectral=self.spectral,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            **lora,
        )
        sublayers = [
            lambda h: SpectralAttention(**attn, name="self_attn")(h, rope=rope),
            lambda h: SpectralAttention(
                **{**attn, "spectral": self.cross_spectral}, name="cross_attn"
            )(h, context, context_mask),
            lambda h: FeedForward(
                width, self.mlp_ratio, self.dtype, self.param_dtype, **lora, name="mlp"
            )(h),
        ]
        norm = LayerNorm()
        for i, f in enumerate(sublayers):
            if self.residual == "paper":
                sh_in, sc_in, sh_out, sc_out, gate = mods[5 * i : 5 * i + 5]
                h = modulate(norm(x), sh_in, sc_in)  # B_t = AdLN(z_t, t, FPS)
                out = modulate(norm(f(h)), sh_out, sc_out)  # AdLN(Re ifft2D Z_attn)
                x = (gate[:, None, :] * out + h).astype(self.dtype)  # Eqs. 3, 5
            else:
                sh, sc, gate = mods[3 * i : 3 * i + 3]
                x = (x + gate[:, None, :] * f(modulate(norm(x), sh, sc))).astype(self.dtype)
            x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
        return x, None


def _remat_policy(name: str):
    if name == "full":
        return None
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {name!r}")


def token_positions(grid: tuple[int, ...]) -> jax.Array:
    """(L, len(grid)) integer coordinates of a row-major flattened token grid."""
    mesh = jnp.meshgrid(*[jnp.arange(g) for g in grid], indexing="ij")
    return jnp.stack([m.reshape(-1) for m in mesh], axis=-1)


def group_patches(x: jax.Array, grid: tuple[int, ...], patch: tuple[int, ...]) -> jax.Array:
    """(B, n*h*w, D) per-token rows in grid order -> (B, patches, prod(patch) * D): each row
    the concatenation of one (pt, ph, pw) patch's tokens, patches in grid order."""
    (pt, ph, pw), (n, h, w) = patch, grid
    b, _, d = x.shape
    x = x.reshape(b, n // pt, pt, h // ph, ph, w // pw, pw, d)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * d)


def ungroup_patches(y: jax.Array, grid: tuple[int, ...], patch: tuple[int, ...]) -> jax.Array:
    """The inverse of `group_patches`: (B, patches, prod(patch) * D) -> (B, n*h*w, D)."""
    (pt, ph, pw), (n, h, w) = patch, grid
    b = y.shape[0]
    y = y.reshape(b, n // pt, h // ph, w // pw, pt, ph, pw, -1)
    return y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, n * h * w, -1)


def patch_order(tokens: jax.Array, patch: tuple[int, ...]) -> jax.Array:
    """(B, n, h, w) per-token values -> (B, n*h*w) in patch order: the order of the logits
    `SpectralTransformer(..., grid_order=False)` returns (each patch's tokens together)."""
    b, *grid = tokens.shape
    return group_patches(tokens.reshape(b, -1, 1), tuple(grid), patch).reshape(b, -1)


class PatchEmbed(nn.Module):
    """(B, n*h*w, D) token embeddings -> (B, patches, width): `group_patches`, then a Dense."""

    width: int
    patch: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, grid: tuple[int, ...]) -> jax.Array:
        return nn.Dense(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (axes.MLP, axes.EMBED)),
            bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
            name="proj",
        )(group_patches(x, grid, self.patch))


class SpectralTransformer(nn.Module):
    """Text-conditioned masked-token denoiser (Fig. 4). Fields map 1:1 onto `config.model`.

    Attributes:
      vocab_size: K codes; id K is [MASK].
      width, num_heads, depth, mlp_ratio: Table 2 shapes (see `VARIANTS`).
      text_dim: width of the text encoder's embeddings.
      spectral: 'real' | 'none' | 'hartley' (D6).
      cross_spectral: the same choice for the cross-attention on the text; '' = `spectral`
        (the paper's Eq. 4). 'none' with spectral 'real' (ours) keeps the Fourier mixing on
        the video tokens but lets each token attend to the text tokens directly.
      pos_emb: 'rope' | 'sinusoidal' | 'rope3d' (rope3d: factorised frame/row/column RoPE).
        Under spectral 'real' / 'hartley' RoPE rotates the queries and keys of frequency
        bins (Eq. 2 comes before the projections), so no token's position enters the
        residual stream; 'sinusoidal' adds absolute positions to it. On the CPU toy this
        did not decide the caption scores: after ~1,200 steps spectral 'none' with RoPE
        reached loss 2.03 and 'real' with 'sinusoidal' 2.36 ('real' with RoPE: 2.35 after
        1,500), and all three scored colour 0.47-0.53 and motion 0.23-0.29.
      residual: 'paper' | 'prenorm'.
      scan_layers: stack blocks with `nn.scan` (params get a leading 'layers' axis).
      remat: 'none' | 'full' | 'dots'.
      time_emb_dim: sinusoidal timestep embedding size (512, Table 10).
      default_fps: FPS used when the caller passes none.
      dtype / param_dtype: compute dtype (bfloat16 at scale) / parameter dtype.
      logits_dtype: dtype of the returned logits.
      code_levels: () for the paper's head, a softmax over the K codes and a K-row token
        table. The FSQ levels (ours, e.g. (8, 8, 8, 5, 5) for K = 12,800) factorise both
        over the code's digits, as Open-MAGVIT2 and MaskBit do for large codebooks: a code
        is embedded as the sum of its digits' embeddings, and the head predicts each digit
        with its own softmax, log p(code) = sum_i log p_i(digit_i). The returned (B, L, K)
        logits are those log-probabilities, so CFG and the samplers are the same for both
        heads; training asks for the digit logits (`digit_logits=True`) and sums per-digit
        cross-entropies, which is the same loss without the (B, L, K) tensor. The head
        costs sum(levels) = 34 outputs instead of 12,800, and codes that share digits
        (similar colours, FSQ's grid) share statistics.
      patch: (frames, rows, columns) of tokens that share one sequence position (ours,
        DiT's patch size on the token grid; (1, 1, 1) = one token a position, the paper).
        Each position embeds the concatenation of its tokens' embeddings (`patch_embed`),
        and the head predicts every token of the patch from that position's output, so the
        blocks see prod(patch) times fewer positions. The paper's denoiser reads a 16x
        tokenizer, one position per 16 x 16 pixels; the CPU toy's tokenizer is 8x
        (configs/tokenizer.py), and patch (1, 2, 2) restores the paper's 16 x 16 pixels a
        position at 0.41x the step time of one token a position. The t2v toy uses it, its
        `unpatched` variant the paper's (DESIGN D6 note for the scores). Needs (B, n, h, w)
        tokens, a grid divisible by the patch, and the K-way head (no `code_levels`).
      lora_rank, lora_kind, lora_alpha: D10 adapters (stage 3); rank 0 = none, and then
        the parameter tree is exactly stage 2's.
      code_vectors: None, or a (K, F) array: each code's vector in the tokenizer's
        quantizer (FSQ: its F scaled digits; ours, `model.code_features`). With it a code's
        embedding is its table row plus a linear map of its vector, and its logit in every
        cell gains a dot product of that vector with a query from the cell's output. The
        K-way table and head keep every code free; the vector terms let codes that decode
        alike (an object's colour) share what is learnt about any of them, which a table
        row of a rarely seen code cannot (DESIGN D6 note). Needs the K-way head.
      text_tokens: also append the caption's tokens (their own projection, padding rows
        zeroed) to the sequence (ours, joint attention as SD3's MM-DiT and DiT's in-context
        conditioning): every block's self-attention then updates them from the video
        tokens, so a word can carry whether the clip already shows it, which the
        cross-attention's fixed text keys cannot. They get no logits; RoPE positions
        continue after the video and `extra_embeds` tokens. The cross-attention stays.
      text_pool: also add an MLP of the mean of the caption's valid rows to the timestep
        + FPS conditioning (ours, SD3's pooled text vector), so that every AdaLN
        modulation sees the whole caption (how many objects, which colours).

    Call args:
      tokens: (B, n, h, w) or (B, L) int32 in [0, K].
      t: (B,) diffusion time in [0, 1].
      text: (B, S, text_dim) text embeddings.
      text_mask: (B, S) bool, True on real (non-padding) text tokens; None = all valid.
      fps: (B,) float or None.
      drop_text: (B,) bool; True replaces the text by the learned null embedding (CFG).
      extra_embeds: (B, S', width) embeddings appended to the token sequence (stage 3:
        masked-video tokens and sketch features, D10); they take part in every block but
        get no logits. RoPE positions continue the sequence (rope3d: as further frames of
        the same h x w grid of positions). They are not patched: one embedding, one position.
      token_offsets: (B, L, width) embeddings added to the token embeddings position by
        position (stage 3's `context="sum"`: the masked video's token at the same cell).
      digit_logits: with `code_levels`, return the (B, L, sum(code_levels)) per-digit
        logits instead of the K-way log-probabilities (training; see `code_levels`).
      grid_order: False (patched models): the logits stay in patch order (`patch_order`),
        for a loss that does not care about token order. It skips moving the largest
        tensor of the step twice (ungrouping, and its transpose in the backward pass).
    Returns:
      (B, L, K) logits, L = n * h * w.
    """

    vocab_size: int = 12_800
    width: int = 256
    num_heads: int = 4
    depth: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 256
    spectral: str = "real"
    cross_spectral: str = ""
    pos_emb: str = "rope"
    residual: str = "paper"
    scan_layers: bool = True
    remat: str = "none"
    time_emb_dim: int = 512
    rope_base: float = 10_000.0
    default_fps: float = 8.0
    code_levels: tuple[int, ...] = ()
    patch: tuple[int, int, int] = (1, 1, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    logits_dtype: Dtype = jnp.float32
    lora_rank: int = 0
    lora_kind: str = "adapter"
    lora_alpha: float = 1.0
    code_vectors: Any = None
    text_tokens: bool = False
    text_pool: bool = False

    def _check(self, tokens: jax.Array) -> None:
        for name, value, allowed in [
            ("spectral", self.spectral, SPECTRAL_MODES),
            ("cross_spectral", self.cross_spectral, ("", *SPECTRAL_MODES)),
            ("pos_emb", self.pos_emb, POS_EMBS),
            ("residual", self.residual, RESIDUALS),
            ("remat", self.remat, REMAT_POLICIES),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.pos_emb == "rope3d" and tokens.ndim != 4:
            raise ValueError(f"pos_emb='rope3d' needs (B, n, h, w) tokens, got {tokens.shape}")
        if self.code_levels and math.prod(self.code_levels) != self.vocab_size:
            raise ValueError(
                f"code_levels {tuple(self.code_levels)} give {math.prod(self.code_levels)} "
                f"codes but vocab_size is {self.vocab_size}; pass the tokenizer's FSQ levels"
            )
        if tokens.ndim not in (2, 4):
            raise ValueError(f"tokens must be (B, L) or (B, n, h, w), got {tokens.shape}")
        if self.code_vectors is not None:
            shape = np.shape(self.code_vectors)
            if self.code_levels or len(shape) != 2 or shape[0] != self.vocab_size:
                raise ValueError(
                    f"code_vectors must be ({self.vocab_size}, F) for the K-way head, got "
                    f"{shape} with code_levels {tuple(self.code_levels)}; set "
                    "model.code_features=False or model.digit_head=False"
                )
        if self.patched:
            patch = tuple(self.patch)
            if len(patch) != 3 or min(patch) < 1:
                raise ValueError(f"patch must be 3 positive ints (frames, rows, cols), got {patch}")
            if self.code_levels:
                raise ValueError(
                    f"patch={patch} needs the K-way head; set code_levels=() "
                    "(model.digit_head=False) or patch=(1, 1, 1)"
                )
            if tokens.ndim != 4 or any(g % p for g, p in zip(tokens.shape[1:], patch)):
                raise ValueError(
                    f"patch={patch} needs (B, n, h, w) tokens with n, h, w divisible by it, "
                    f"got {tokens.shape}; pick a patch that divides the token grid"
                )

    def _conditioning_text(self, text, text_mask, drop_text):
        """(text, valid): the text with dropped rows swapped for the CFG null condition."""
        b, s, _ = text.shape
        valid = jnp.ones((b, s), bool) if text_mask is None else text_mask.astype(bool)
        # CFG null condition: one learned null token in slot 0, the rest padding. Declared
        # unconditionally so that params do not depend on whether drop_text was passed.
        null = self.param(
            "null_text",
            partitioned(nn.initializers.normal(0.02), (None,)),
            (self.text_dim,),
            self.param_dtype,
        )
        if drop_text is not None:
            null_text = jnp.zeros_like(text).at[:, 0].set(null.astype(text.dtype))
            null_valid = jnp.arange(s)[None, :] == 0
            drop = drop_text.astype(bool)[:, None]
            text = jnp.where(drop[..., None], null_text, text)
            valid = jnp.where(drop, null_valid, valid)
        return text, valid

    def _text_rows(self, text, valid, name: str) -> jax.Array:
        """(B, S, width) projection of the text, padding rows zeroed."""
        rows = nn.Dense(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (axes.MLP, axes.EMBED)),
            bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
            name=name,
        )(text.astype(self.dtype))
        rows = jnp.where(valid[..., None], rows, 0).astype(self.dtype)
        return nn.with_logical_constraint(rows, (axes.BATCH, axes.LENGTH, axes.EMBED))

    def _pooled_text(self, text, valid):
        """(B, width): a two-layer SiLU MLP of the mean of the valid text rows."""
        weights = valid.astype(jnp.float32)[..., None]
        mean = (text.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return silu_mlp(
            mean.astype(self.dtype),
            width=self.width,
            name="pool",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            in_axis=None,
        )

    def _text_context(self, text, valid):
        """Projected text, padding zeroed, then `Re fft2D` once for all blocks (Eq. 4)."""
        # Padding rows are zeroed so that they cannot leak into the frequency bins.
        ctx = spectral_mix(self._text_rows(text, valid, "text_proj"), self._cross_spectral)
        # After the FFT every frequency bin mixes all valid tokens, so the padding mask only
        # applies to keys in the spatial ('none') mode.
        mask = valid if self._cross_spectral == "none" else None
        return ctx, mask

    @property
    def patched(self) -> bool:
        """More than one token a sequence position (`patch`)."""
        return tuple(self.patch) != (1, 1, 1)

    @property
    def _cross_spectral(self) -> str:
        return self.cross_spectral or self.spectral

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """(B, L) ids in [0, K] -> (B, L, width) embeddings (see `code_levels`)."""
        if not self.code_levels:
            embed = token_table(self, "token_embed", self.vocab_size, self.width, self.param_dtype)
            x = jnp.take(embed, tokens, axis=0).astype(self.dtype)
            if self.code_vectors is not None:
                x = x + self._code_vector_embed(tokens)
            return x
        # One table: each digit's rows at its offset, then one [MASK] row.
        offsets = np.cumsum([0, *self.code_levels[:-1]])
        embed = self.param(
            "digit_embed",
            partitioned(nn.initializers.normal(0.02), (None, axes.EMBED)),
            (sum(self.code_levels) + 1, self.width),
            self.param_dtype,
        )
        rows = fsq_digits(tokens, self.code_levels) + jnp.asarray(offsets, jnp.int32)
        x = jnp.take(embed, rows, axis=0).sum(-2)
        is_mask = (tokens == self.vocab_size)[..., None]
        return jnp.where(is_mask, embed[-1], x).astype(self.dtype)

    def _head(self, x: jax.Array, digit_logits: bool = False) -> jax.Array:
        """(B, L, width) -> (B, L, K) logits (log-probabilities with `code_levels`), or
        with `digit_logits` the (B, L, sum(code_levels)) per-digit logits themselves."""
        if not self.code_levels:
            logits = nn.Dense(
                math.prod(self.patch) * self.vocab_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=partitioned(dense_init(0.02), (axes.EMBED, axes.VOCAB)),
                bias_init=partitioned(nn.initializers.zeros, (axes.VOCAB,)),
                name="head",
            )(x)
            if self.code_vectors is not None:
                logits = logits + self._code_vector_logits(x)
            return logits
        levels = tuple(self.code_levels)
        logits = nn.Dense(
            sum(levels),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(0.02), (axes.EMBED, None)),
            bias_init=partitioned(nn.initializers.zeros, (None,)),
            name="digit_head",
        )(x).astype(jnp.float32)
        if digit_logits:
            return logits
        # Code c = sum_i digit_i * prod(levels[:i]): in C order its last axis is digit 0,
        # so the K axis is the (levels[-1], ..., levels[0]) grid flattened.
        lead, n = x.shape[:-1], len(levels)
        splits = np.cumsum(levels[:-1])
        log_probs = jnp.zeros(lead + (1,) * n, jnp.float32)
        for i, part in enumerate(jnp.split(logits, splits, axis=-1)):
            shape = [1] * n
            shape[n - 1 - i] = levels[i]
            log_probs = log_probs + jax.nn.log_softmax(part, -1).reshape(lead + tuple(shape))
        return log_probs.reshape(lead + (self.vocab_size,))

    def _code_vector_embed(self, tokens: jax.Array) -> jax.Array:
        """(B, L) ids -> (B, L, width): a linear map of each code's vector ([MASK]: 0)."""
        vectors = jnp.asarray(self.code_vectors, jnp.float32)
        vectors = jnp.concatenate([vectors, jnp.zeros((1, vectors.shape[1]), jnp.float32)])
        return nn.Dense(
            self.width,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (None, axes.EMBED)),
            name="code_vector_embed",
        )(jnp.take(vectors, tokens, axis=0))

    def _code_vector_logits(self, x: jax.Array) -> jax.Array:
        """(B, P, width) -> (B, P, cells * K): in each of a position's cells, a query in
        the code-vector space dotted with every code's vector (cells in `group_patches`
        order, as the K-way head's outputs)."""
        vectors = jnp.asarray(self.code_vectors, jnp.float32)
        cells, dim = math.prod(self.patch), vectors.shape[1]
        query = nn.Dense(
            cells * dim,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(0.02), (axes.EMBED, None)),
            name="code_vector_head",
        )(x)
        query = query.reshape(*x.shape[:-1], cells, dim)
        logits = jnp.einsum("...cf,kf->...ck", query, vectors.astype(query.dtype))
        return logits.reshape(*x.shape[:-1], cells * self.vocab_size)

    def _blocks(self):
        block = SpectralBlock
        if self.remat != "none":
            block = nn.remat(
                block, policy=_remat_policy(self.remat), prevent_cse=not self.scan_layers
            )
        kw = dict(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            spectral=self.spectral,
            cross_spectral=self._cross_spectral,
            residual=self.residual,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            lora_rank=self.lora_rank,
            lora_kind=self.lora_kind,
            lora_alpha=self.lora_alpha,
        )
        if self.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},  # sown attention maps
                split_rngs={"params": True},
                in_axes=(nn.broadcast,) * 4,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: axes.LAYERS},
            )
            return [scanned(**kw, name="blocks")]
        return [block(**kw, name=f"block_{i}") for i in range(self.depth)]

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        t: jax.Array,
        text: jax.Array,
        text_mask: jax.Array | None = None,
        fps: jax.Array | None = None,
        drop_text: jax.Array | None = None,
        extra_embeds: jax.Array | None = None,
        digit_logits: bool = False,
        token_offsets: jax.Array | None = None,
        grid_order: bool = True,
    ) -> jax.Array:
        self._check(tokens)
        if digit_logits and not self.code_levels:
            raise ValueError("digit_logits=True needs a digit head (code_levels)")
        b = tokens.shape[0]
        token_grid = grid = tokens.shape[1:]  # grid: of sequence positions
        tokens = tokens.reshape(b, -1)
        if fps is None:
            fps = jnp.full((b,), self.default_fps, jnp.float32)

        x = self._embed(tokens)
        if token_offsets is not None:
            x = x + token_offsets.astype(self.dtype)
        if self.patched:
            x = PatchEmbed(
                self.width, self.patch, self.dtype, self.param_dtype, name="patch_embed"
            )(x, token_grid)
            grid = tuple(g // p for g, p in zip(grid, self.patch))
        positions = x.shape[1]
        text, valid = self._conditioning_text(text, text_mask, drop_text)
        if extra_embeds is not None:
            x = jnp.concatenate([x, extra_embeds.astype(self.dtype)], axis=1)
        if self.text_tokens:
            x = jnp.concatenate([x, self._text_rows(text, valid, "text_tokens")], axis=1)
        total = x.shape[1]
        rope = None
        if self.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(jnp.arange(total), self.width).astype(self.dtype)
        elif self.pos_emb == "rope3d":
            # Extra tokens continue the grid as further frames of the same h x w plane.
            n, h, w = grid
            frames = -(-total // (h * w))
            pos = token_positions((frames, h, w))[:total]
            rope = rope_angles(pos, self.width // self.num_heads, self.rope_base)
        else:
            rope = rope_angles(
                jnp.arange(total)[:, None], self.width // self.num_heads, self.rope_base
            )
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))

        cond = ConditionEmbedding(
            self.width,
            self.time_emb_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="cond",
        )(t, fps)
        if self.text_pool:
            cond = cond + self._pooled_text(text, valid)
        mods = AdaLNModulation(
            self.width, NUM_MODS[self.residual], self.dtype, self.param_dtype, name="block_mod"
        )(cond)
        context, context_mask = self._text_context(text, valid)

        for blocks in self._blocks():
            x, _ = blocks(x, mods, context, context_mask, rope)

        shift, scale = jnp.unstack(
            AdaLNModulation(self.width, 2, self.dtype, self.param_dtype, name="final_mod")(cond),
            axis=1,
        )
        x = x[:, :positions]  # extra tokens get no logits: the head never sees them
        logits = self._head(modulate(LayerNorm()(x), shift, scale), digit_logits)
        if digit_logits:
            return logits
        if self.patched and grid_order:
            logits = ungroup_patches(logits, token_grid, self.patch)
        elif self.patched:  # (B, patches, prod(patch) * K) -> (B, L, K): a free reshape
            logits = logits.reshape(b, -1, logits.shape[-1] // math.prod(self.patch))
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return logits.astype(self.logits_dtype)


def variant(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of a Table 2 variant ('toy', 'S', 'M', 'L') with overrides."""
    if name not in VARIANTS:
        raise ValueError(f"unknown denoiser variant {name!r}; choose from {list(VARIANTS)}")
    return {**VARIANTS[name], **overrides}


def abstract_params(
    model: SpectralTransformer, tokens_shape: tuple[int, ...] | None = None, text_len: int = 8
) -> Any:
    """Parameter ShapeDtypeStructs (boxed with logical names) via `jax.eval_shape`; the
    tokens default to one patch (parameter shapes do not depend on their number)."""
    tokens_shape = (1, *model.patch) if tokens_shape is None else tokens_shape
    tokens = jax.ShapeDtypeStruct(tokens_shape, jnp.int32)
    b = tokens_shape[0]
    t = jax.ShapeDtypeStruct((b,), jnp.float32)
    text = jax.ShapeDtypeStruct((b, text_len, model.text_dim), jnp.float32)
    drop = jax.ShapeDtypeStruct((b,), jnp.bool_)

    def init(tok, tt, tx, dr):
        return model.init(jax.random.key(0), tok, tt, tx, drop_text=dr)["params"]

    return jax.eval_shape(init, tokens, t, text, drop)


def count_params(model: SpectralTransformer) -> int:
    """Exact number of parameters, without allocating them (`jax.eval_shape`)."""
    shapes = nn.unbox(abstract_params(model))
    return sum(int(x.size) for x in jax.tree.leaves(shapes))


def config_dict(model: SpectralTransformer) -> dict[str, Any]:
    """The constructor fields of `model` (for config JSON next to exported params)."""
    return {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }
