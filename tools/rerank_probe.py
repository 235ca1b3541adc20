"""Can a caption matcher pick the right one of N t2v samples? A measurement, not a stage.

  python tools/rerank_probe.py --workdir=DIR [--steps=2500] [--candidates=4] [--prompts=64]

Why ask: the toy denoiser draws two-object captions wrongly about half the time (one
object, or one colour twice), yet among 4 samples of a caption there is usually a right
one (the oracle's best of 4 reaches object count 0.89), and the denoiser's own caption
likelihood cannot tell which (docs/EXPERIMENTS.md, session 29). DALL-E reranked its
samples with CLIP; `CaptionMatcher` is a small cross-encoder for the same job:
`[CLS] + patched token embeddings + projected caption rows`, pre-norm self-attention
blocks with 1D RoPE over the joint sequence, a logit read from CLS.

1. Trains a `CaptionMatcher` on DIR's t2v token cache: each clip with its
   own caption (label 1) and with a near miss (label 0): the caption with one edit
   (`shapes.near_miss_caption`: a colour, a motion, two colours or motions swapped, one
   colour repeated, an object dropped or added), or 15% of the time another clip's
   caption. Shape edits are left out: the tokenizer itself loses shapes (the oracle
   reads 0.71-0.78 in its reconstructions), and the caption scores that miss are colour,
   motion and the object count. The tokens enter as ids plus their quantizer vectors
   (`FrozenTokenizer.id_vectors`: FSQ's scaled digits).
2. Reports how often the matcher scores a held-out cache clip's caption above its near
   miss (`heldout_pos_above_neg`; the last `--heldout` rows of the cache, never trained on).
3. Samples `--candidates` clips per held-out caption with the run's t2v model and eval
   settings (seeds 0..N-1), and prints the oracle's scores of each candidate, of the
   candidate the matcher scores highest (`rerank`) and lowest (`worst`), as JSON.

Session 30, the session-30 main job (6,542 t2v steps), defaults (2,500 steps of 32 pairs
of each kind, 7 minutes alone; 4 candidates; eval prompts 0-63): a held-out caption
outscored its near miss 0.82 of the time; the matcher's picks scored colour / motion /
object count 0.687 / 0.737 / 0.859, against 0.689 / 0.684 / 0.805 for the candidates'
mean and 0.667 / 0.687 / 0.812 for its lowest-scored picks. Earlier runs that differed
only in their random draws moved motion and count by as much the other way, and colour
never gained: no dependable gain (docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from motionaura_jax import pipelines  # noqa: E402
from motionaura_jax.data import pipeline  # noqa: E402
from motionaura_jax.data.oracle import score_clips  # noqa: E402
from motionaura_jax.data.shapes import NEAR_MISS_EDITS, near_miss_caption  # noqa: E402
from motionaura_jax.denoiser.model import PatchEmbed  # noqa: E402
from motionaura_jax.nn.attention import SpectralAttention, rope_angles  # noqa: E402
from motionaura_jax.nn.layers import FeedForward, LayerNorm, dense_init, partitioned  # noqa: E402
from motionaura_jax.parallel import axes  # noqa: E402
from motionaura_jax.train import t2v  # noqa: E402
from motionaura_jax.train.t2v_data import TokenCache  # noqa: E402
from tools.text_usage_probe import print_json  # noqa: E402

PROBE_EDITS = tuple(e for e in NEAR_MISS_EDITS if e != "reshape")
OTHER_CAPTION = 0.15  # share of negatives that are another clip's caption
REPORTED = ("caption_color", "caption_motion", "caption_count", "caption_color_2obj")


class CaptionMatcher(nn.Module):
    """Match logit of (token clip, caption) pairs.

    Call args:
      tokens: (B, n, h, w) int32 token ids in [0, vocab_size).
      text: (B, L, D) caption embeddings; text_mask: (B, L) bool, True for real tokens.
      token_features: optional (B, n, h, w, F) per-token features added to the
        embeddings (e.g. FSQ digits, so that codes that share digits start alike).
    Returns:
      (B,) float32 logits: > 0 says the clip shows the caption.
    """

    vocab_size: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    patch: tuple[int, int, int] = (1, 2, 2)
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _projection(self, in_axis: str | None, name: str) -> nn.Dense:
        """A Dense to the model width (inputs of other widths: features, caption rows)."""
        return nn.Dense(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(dense_init(), (in_axis, axes.EMBED)),
            bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        text: jax.Array,
        text_mask: jax.Array,
        token_features: jax.Array | None = None,
    ) -> jax.Array:
        b, *grid = tokens.shape
        if any(g % p for g, p in zip(grid, self.patch)):
            raise ValueError(f"token grid {tuple(grid)} is not divisible by patch {self.patch}")
        table = self.param(
            "token_embed",
            partitioned(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
            (self.vocab_size, self.width),
            self.param_dtype,
        )
        x = jnp.take(table, tokens.reshape(b, -1), axis=0).astype(self.dtype)
        if token_features is not None:
            features = token_features.reshape(b, x.shape[1], -1).astype(self.dtype)
            x = x + self._projection(None, "feature_proj")(features)
        x = PatchEmbed(self.width, self.patch, self.dtype, self.param_dtype, name="patch_embed")(
            x, tuple(grid)
        )
        rows = self._projection(axes.MLP, "text_proj")(text.astype(self.dtype))
        cls = self.param(
            "cls",
            partitioned(nn.initializers.normal(0.02), (None, axes.EMBED)),
            (1, self.width),
            self.param_dtype,
        )
        video = 1 + x.shape[1]  # CLS and the patched clip
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (b, 1, self.width)).astype(self.dtype), x, rows], 1
        )
        valid = jnp.concatenate([jnp.ones((b, video), bool), text_mask.astype(bool)], 1)
        rope = rope_angles(jnp.arange(x.shape[1])[:, None], self.width // self.num_heads)
        for i in range(self.depth):
            h = LayerNorm()(x)
            x = x + SpectralAttention(
                self.num_heads,
                spectral="none",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"attn_{i}",
            )(h, context_mask=valid, rope=rope)
            x = x + FeedForward(
                self.width, self.mlp_ratio, self.dtype, self.param_dtype, name=f"mlp_{i}"
            )(LayerNorm()(x))
        logit = nn.Dense(
            1,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.zeros, (axes.EMBED, None)),
            bias_init=partitioned(nn.initializers.zeros, (None,)),
            name="head",
        )(LayerNorm()(x[:, 0]).astype(jnp.float32))
        return logit[:, 0]


def negatives(captions: list[str], rng: np.random.Generator, data_config) -> list[str]:
    """One near miss per caption; another caption where no edit applies or by chance."""
    out = []
    for caption in captions:
        miss = near_miss_caption(caption, rng, data_config, PROBE_EDITS)
        if miss is None or rng.random() < OTHER_CAPTION:
            draws = (captions[i] for i in rng.integers(len(captions), size=10))
            others = [c for c in draws if c != caption]
            miss = others[0] if others else miss
        if miss is None:
            raise ValueError(f"no negative for {caption!r}: the cache needs other captions")
        out.append(miss)
    return out


def embed(text, *caption_sets: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(emb, mask) of each set, all cut to the longest caption's length (the padding rows
    beyond it are masked out anyway, and cost time in every step)."""
    out = []
    for captions in caption_sets:
        parts = [text.embed(captions[i : i + 1024]) for i in range(0, len(captions), 1024)]
        out.append((np.concatenate([e for e, _ in parts]), np.concatenate([m for _, m in parts])))
    length = max(int(mask.sum(axis=1).max()) for _, mask in out)
    return [(emb[:, :length], mask[:, :length]) for emb, mask in out]


def train_matcher(pipe, cache: TokenCache, args) -> tuple:
    """Trains the matcher; returns (score_fn(params, ids, emb, mask), params, and how often
    a held-out clip's caption outscores its near miss)."""
    tokenizer, text = pipe.tokenizer, pipe.text
    ids = np.asarray(tokenizer.codes_to_ids(jnp.asarray(cache.arrays["tokens"])))
    captions = [str(c) for c in cache.arrays["caption"]]
    rng = np.random.default_rng(args.seed)
    pos, *negs = embed(
        text, captions, *(negatives(captions, rng, pipe.config.data) for _ in range(2))
    )
    train_rows = len(captions) - args.heldout
    if train_rows < args.batch:
        raise ValueError(f"the cache has {len(captions)} clips; lower --heldout={args.heldout}")

    model = CaptionMatcher(tokenizer.vocab_size, width=args.width, depth=args.depth)

    # Each id's code as its quantizer writes it (FSQ: scaled digits), beside its embedding.
    vectors = jnp.asarray(tokenizer.id_vectors())

    def apply(params, tokens, emb, mask):
        return model.apply(params, tokens, emb, mask, vectors[tokens])

    params = model.init(
        jax.random.key(args.seed),
        ids[:1],
        pos[0][:1],
        pos[1][:1],
        vectors[ids[:1]],
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(100, args.steps // 10), args.steps, args.lr * 0.05
    )
    opt = optax.adamw(schedule, weight_decay=0.01)
    state = opt.init(params)

    @jax.jit
    def step(params, state, tokens, emb, mask, labels):
        def loss_fn(p):
            return optax.sigmoid_binary_cross_entropy(apply(p, tokens, emb, mask), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    labels = np.repeat(np.float32([1, 0]), args.batch)
    start = time.time()
    for i in range(args.steps):
        rows = rng.integers(0, train_rows, args.batch)
        neg_emb, neg_mask = negs[int(rng.integers(2))]
        batch = (
            np.concatenate([ids[rows], ids[rows]]),
            np.concatenate([pos[0][rows], neg_emb[rows]]),
            np.concatenate([pos[1][rows], neg_mask[rows]]),
        )
        params, state, loss = step(params, state, *batch, labels)
        if (i + 1) % 500 == 0:
            print(f"step {i + 1}: loss {float(loss):.3f} ({time.time() - start:.0f}s)", flush=True)
    score = jax.jit(apply)
    held = np.arange(train_rows, len(captions))
    above = score(params, ids[held], pos[0][held], pos[1][held]) > score(
        params, ids[held], negs[0][0][held], negs[0][1][held]
    )
    return score, params, float(np.mean(above))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder with t2v/")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=32, help="clips a step (x2 pairs)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=500, help="cache rows kept out")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.candidates < 2:
        raise ValueError(f"--candidates={args.candidates}: reranking needs at least 2")

    pipe = pipelines.TextToVideo.from_workdir(args.workdir)
    cache = TokenCache(t2v.cache_path(pipe.config, args.workdir))
    score, params, heldout = train_matcher(pipe, cache, args)

    batches = pipeline.eval_batches(pipe.config.data, args.prompts, args.prompts, split="eval")
    prompts = [str(c) for b in batches for c in b["caption"]]
    [(emb, mask)] = embed(pipe.text, prompts)
    videos, logits = [], []
    for seed in range(args.candidates):
        frames, tokens = pipe.generate(prompts, seed=seed, return_tokens=True)
        videos.append(frames.astype(np.float32) / 127.5 - 1.0)
        logits.append(np.asarray(score(params, tokens, emb, mask)))
    logits = np.stack(logits)  # (candidates, prompts)

    def scores(pick: np.ndarray) -> dict[str, float]:
        clips = [videos[c][j] for j, c in enumerate(pick)]
        result = score_clips(clips, prompts, pipe.config.data, by_count=True)
        return {k: round(result[k], 4) for k in REPORTED}

    every = [scores(np.full(len(prompts), c)) for c in range(args.candidates)]
    print_json(
        {
            "heldout_pos_above_neg": round(heldout, 4),
            "candidates": every,
            "candidate_mean": {
                k: round(float(np.mean([s[k] for s in every])), 4) for k in REPORTED
            },
            "rerank": scores(logits.argmax(axis=0)),
            "worst": scores(logits.argmin(axis=0)),
        },
        args.out,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
