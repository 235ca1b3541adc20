"""Text conditioning for the denoiser: captions -> (embeddings, mask) (D9, Table 10).

Two encoders behind one interface, `TextEncoder`:

- `kind='t5'`: a Hugging Face T5 checkpoint folder (T5-XXL in the paper) loaded into our
  Flax `T5Encoder`, with the tokenizer saved next to it (`AutoTokenizer`, never
  downloading).
- `kind='builtin'`: what the synthetic `shapes` dataset uses, needing no download: UTF-8
  bytes as tokens (0 = pad, 1 = EOS, byte b -> b + 3, as in ByT5) feeding a small T5
  encoder (d_model 128, 2 layers) initialised from a fixed seed and frozen.

Why a frozen *random* encoder is enough for `shapes`. The denoiser never reads the
embeddings directly; it cross-attends to them through trainable key/value projections
(D6), so all it needs is an injective, well-conditioned, position-aware code of the
caption, not a semantic one. The random T5 gives that: (1) the byte embedding table has
i.i.d. N(0, 1) rows in 128 dimensions, so the 256 byte codes are nearly orthogonal
(|cos| ~ 1/sqrt(128) ~ 0.09); (2) every block is residual (`x + f(norm x)`), so each
position's output keeps its own byte code plus a random but fixed mixture of its
neighbours chosen by the relative position bias; that mixture is what turns letters into
word-level features (the token at the end of "red" differs from the one at the end of
"bed"); (3) the final RMSNorm puts every position at the same scale, so no caption
dominates the cross-attention logits. Captions of the template "a red circle moves left"
differ in whole words, hence in many bytes at once, and their embeddings differ a lot;
`tests/test_encoders_text.py` checks that distinct captions give distinct embeddings and
that colour, shape and motion are linearly decodable from them. Byte tokens also mean no
vocabulary file, no unknown words, and any caption at all can be encoded. With word
tokens (the `shapes` toy) `builtin.window` replaces the random position bias by a phrase
window, so that each word's output holds its own phrase and not the whole caption
(`phrase_bias`: which colour moves which way). The weights
come from NumPy's frozen `RandomState` stream (`t5.init_t5_params_numpy`), so the
encoder is the same function on every machine and JAX version; it is never trained and
never needs saving.

Modes (`config.mode`): `'online'` yields token ids and mask from the input pipeline
(`batch_fields`) and the train step calls `encoder.encode(frozen_params, ids, mask)`
(its params belong in `Stage.frozen`); `'precomputed'` reads embeddings written by
`tools/precompute_text_embeddings.py` (see `encoders.precomputed`). Either way the
denoiser receives `text_emb` float32 (B, L, D), zero at padding, and `text_mask` bool
(B, L). An all-False mask row encodes to zeros: a natural null caption for CFG.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from motionaura_jax.encoders import loaders
from motionaura_jax.encoders.t5 import (
    T5Config,
    T5Encoder,
    init_t5_params_numpy,
    relative_position_buckets,
)

KINDS = ("builtin", "t5")
MODES = ("online", "precomputed")
ON_OVERLONG = ("truncate", "error")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Tokenizer(Protocol):
    """What `TextEncoder` needs from a tokenizer: content ids without special tokens."""

    pad_id: int
    eos_id: int

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = EOS, 2 unused (ByT5's layout), byte b -> b + 3."""

    pad_id = 0
    eos_id = 1
    offset = 3
    vocab_size = 256 + offset

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        return [[b + self.offset for b in c.encode("utf-8")] for c in captions]


class WordTokenizer:
    """Words as tokens, hashed into a fixed table: 0 = pad, 1 = EOS, 2 unused, a word w ->
    3 + crc32(w) mod 8189. Words are lower-cased runs of letters, digits, "'" and "-"
    ("down-right" is one word); every other non-space character is a word of its own.

    Hashing needs no vocabulary file and encodes any caption; two words can share an id
    (probability ~1/8189 per pair; the 31 words of the `shapes` templates do not).
    """

    pad_id = 0
    eos_id = 1
    offset = 3
    vocab_size = 8192
    _WORD = re.compile(r"[\w'-]+|[^\w\s]")

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        buckets = self.vocab_size - self.offset
        return [
            [
                self.offset + zlib.crc32(w.encode("utf-8")) % buckets
                for w in self._WORD.findall(c.lower())
            ]
            for c in captions
        ]


BUILTIN_TOKENIZERS = {"bytes": ByteTokenizer, "words": WordTokenizer}


class HFTokenizer:
    """A `transformers` tokenizer seen through the `Tokenizer` protocol."""

    def __init__(self, tokenizer: Any, path: str = ""):
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        if self.pad_id is None or self.eos_id is None:
            raise ValueError(
                f"the tokenizer in {path!r} has pad_token_id={self.pad_id}, "
                f"eos_token_id={self.eos_id}; a T5 tokenizer defines both"
            )

    def token_ids(self, captions: Sequence[str]) -> list[list[int]]:
        # EOS is appended by `TextEncoder.tokenize` after truncation, as HF does.
        return self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]


@dataclasses.dataclass
class TextEncoder:
    """A frozen text encoder: tokenizer, Flax T5 module and its parameters.

    Attributes:
      name: identifies the encoder in precomputed files (`builtin:...` or the folder).
      module: the `T5Encoder` (pure; `encode` applies it).
      tokenizer: a `Tokenizer`.
      params: the frozen parameters (NumPy or device arrays).
      max_length: L, the padded token length including EOS (256 in Table 10).
      on_overlong: `'truncate'` (warn, keep the first L - 1 tokens + EOS) or `'error'`.
    """

    name: str
    module: T5Encoder
    tokenizer: Tokenizer
    params: Any
    max_length: int = 256
    on_overlong: str = "truncate"

    def __post_init__(self):
        if self.on_overlong not in ON_OVERLONG:
            raise ValueError(f"on_overlong={self.on_overlong!r}; use one of {ON_OVERLONG}")
        if self.max_length < 2:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for a token and EOS; "
                f"use at least 2 (the paper uses 256)"
            )

    @property
    def dim(self) -> int:
        """D, the width of the embeddings."""
        return self.module.config.d_model

    def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> `(ids int32 (B, L), mask bool (B, L))`, EOS-terminated, right-padded.

        Raises ValueError for an empty caption, and for one longer than L tokens when
        `on_overlong='error'` (otherwise it is truncated with a warning).
        """
        if isinstance(captions, (str, bytes)):
            raise TypeError(
                f"captions must be a list of strings, got the single string "
                f"{captions!r}; wrap it in a list"
            )
        captions = list(captions)
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(
                    f"caption {i} is {type(caption).__name__} {caption!r}; captions must be str"
                )
            if not caption.strip():
                raise ValueError(
                    f"caption {i} is empty ({caption!r}); every clip needs a "
                    f"caption: fix or drop it (for unconditional CFG samples, "
                    f"use an all-False mask instead)"
                )
        rows = self.tokenizer.token_ids(captions) if captions else []
        limit = self.max_length - 1  # room for EOS
        overlong = [i for i, row in enumerate(rows) if len(row) > limit]
        if overlong:
            lengths = {i: len(rows[i]) + 1 for i in overlong[:5]}
            message = (
                f"{len(overlong)} caption(s) exceed max_length={self.max_length} tokens "
                f"(index: tokens incl. EOS {lengths}), e.g. {captions[overlong[0]][:80]!r}"
            )
            if self.on_overlong == "error":
                raise ValueError(
                    message + "; shorten them, raise max_length, or set on_overlong='truncate'"
                )
            warnings.warn(message + f"; truncating to {self.max_length} tokens", stacklevel=2)
        ids = np.full((len(rows), self.max_length), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), self.max_length), bool)
        vocab = self.module.config.vocab_size
        for i, row in enumerate(rows):
            row = list(row[:limit]) + [self.tokenizer.eos_id]
            if max(row) >= vocab:
                raise ValueError(
                    f"caption {i} has token id {max(row)} >= the model's "
                    f"vocab_size {vocab}: tokenizer and weights do not match"
                )
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        return ids, mask

    def encode(self, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """`(ids (B, L), mask (B, L))` -> embeddings float32 (B, L, D), zero at padding.

        Pure and jittable; pass the frozen params explicitly (e.g. from `Stage.frozen`).
        """
        hidden = self.module.apply({"params": params}, ids, mask)
        return jnp.where(mask[..., None], hidden.astype(jnp.float32), 0.0)

    def embed(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Host convenience: captions -> `(emb float32 (B, L, D), mask bool (B, L))`."""
        ids, mask = self.tokenize(captions)
        encode = _jitted_encode(self.module.config, self.module.dtype, self.module.param_dtype)
        emb = encode(self.params, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(emb), mask

    def batch_fields(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """The numeric batch fields of `online` mode: `text_ids` and `text_mask`."""
        ids, mask = self.tokenize(captions)
        return {"text_ids": ids, "text_mask": mask}


@functools.cache
def _jitted_encode(config: T5Config, dtype: Any, param_dtype: Any):
    # One compiled encoder per architecture, shared by every TextEncoder instance.
    module = T5Encoder(config, dtype=dtype, param_dtype=param_dtype)

    def encode(params, ids, mask):
        hidden = module.apply({"params": params}, ids, mask)
        return jnp.where(mask[..., None], hidden.astype(jnp.float32), 0.0)

    return jax.jit(encode)


def text_config(kind: str = "builtin", **overrides: Any) -> ml_collections.ConfigDict:
    """Config of the text encoder; `overrides` set any top-level field.

    Fields: kind ('builtin' | 't5'), mode ('online' | 'precomputed'), max_length (256,
    Table 10), on_overlong ('truncate' | 'error'), dtype ('float32' | 'bfloat16': the
    compute and parameter dtype), path (T5 folder with config.json, safetensors and the
    tokenizer), precomputed_path (file written by tools/precompute_text_embeddings.py),
    builtin (tokens, width, depth, heads, seed and phrase window of the built-in encoder).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}; use one of {KINDS}")
    cfg = ml_collections.ConfigDict()
    cfg.kind = kind
    cfg.mode = "online"
    cfg.max_length = 256
    cfg.on_overlong = "truncate"
    cfg.dtype = "float32"
    cfg.path = ""
    cfg.precomputed_path = ""
    # window: 0 keeps the random relative-position bias; W > 0 makes every head of the
    # built-in encoder read only the words from itself up to W ahead (`phrase_bias`).
    cfg.builtin = ml_collections.ConfigDict(
        dict(
            tokens="bytes",
            d_model=128,
            num_layers=2,
            num_heads=4,
            d_kv=32,
            d_ff=256,
            seed=0,
            window=0,
        )
    )
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"unknown text config field {key!r}; fields are {sorted(cfg)}")
        cfg[key] = value
    return cfg


def builtin_tokenizer(builtin: ml_collections.ConfigDict) -> ByteTokenizer | WordTokenizer:
    """The built-in encoder's tokenizer: `builtin.tokens` is 'bytes' or 'words'."""
    kind = builtin.get("tokens", "bytes")
    if kind not in BUILTIN_TOKENIZERS:
        raise ValueError(f"text.builtin.tokens={kind!r}; use one of {sorted(BUILTIN_TOKENIZERS)}")
    return BUILTIN_TOKENIZERS[kind]()


def builtin_t5_config(builtin: ml_collections.ConfigDict) -> T5Config:
    """The T5 hyper-parameters of the built-in encoder."""
    tokenizer = builtin_tokenizer(builtin)
    return T5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=builtin.d_model,
        d_kv=builtin.d_kv,
        d_ff=builtin.d_ff,
        num_layers=builtin.num_layers,
        num_heads=builtin.num_heads,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
    )


# Attention logit of the words outside the window: exp(-30) ~ 1e-13 of a word inside it.
_OUTSIDE_WINDOW = -30.0


def phrase_bias(config: T5Config, window: int) -> np.ndarray:
    """(buckets, heads) relative-position bias: 0 for keys 0..`window` words ahead of the
    query, `_OUTSIDE_WINDOW` for every other offset.

    Why: with the random bias (std d^-0.5) and random queries, the built-in encoder's
    attention is nearly uniform, so every word's output carries the same mixture of the
    whole caption. In "a red circle moves left and a blue square moves up" the embedding
    at "red" then says as much about "up" as about "left": a least-squares probe on 3,000
    two-object captions read the motion of the word's own object from it 75% of the time
    and the other object's motion 74% (chance 25%), so the denoiser cannot tell which
    colour moves which way. Reading forward, as a pretrained encoder composes "red circle
    moves left" into one phrase, window 2 (two layers: 4 words ahead) lets the same probe
    read, at "red", its own motion and shape 100% of the time, the other object's motion
    26% and its colour 15% (chance 12.5%); window 3 leaks the other colour (80%). Only
    offsets with an exact T5 bucket (< num_buckets // 4) are allowed, so the window is
    exact.
    """
    exact = config.relative_attention_num_buckets // 4
    if not 0 < window < exact:
        raise ValueError(
            f"text.builtin.window={window}; use 0 (random bias) or 1..{exact - 1} words"
        )
    span = 2 * exact + 1
    offsets = np.arange(span) - exact  # key - query, -exact..exact
    buckets = relative_position_buckets(
        span, span, config.relative_attention_num_buckets, config.relative_attention_max_distance
    )[exact]
    table = np.full((config.relative_attention_num_buckets, config.num_heads), _OUTSIDE_WINDOW)
    table[buckets[(offsets >= 0) & (offsets <= window)]] = 0.0
    return table.astype(np.float32)


def make_text_encoder(config: ml_collections.ConfigDict) -> TextEncoder:
    """Builds the `TextEncoder` that `config` (from `text_config`) describes."""
    if config.kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {config.kind!r}; use one of {KINDS}")
    if config.mode not in MODES:
        raise ValueError(f"unknown text mode {config.mode!r}; use one of {MODES}")
    if config.dtype not in _DTYPES:
        raise ValueError(f"text dtype {config.dtype!r}; use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[config.dtype]
    common = dict(max_length=int(config.max_length), on_overlong=config.on_overlong)
    if config.kind == "builtin":
        b = config.builtin
        t5_cfg = builtin_t5_config(b)
        params = init_t5_params_numpy(t5_cfg, b.seed)
        window = int(b.get("window", 0))  # configs saved before the field have none
        name = (
            f"builtin:{b.get('tokens', 'bytes')}-d{b.d_model}-l{b.num_layers}-h{b.num_heads}"
            f"-kv{b.d_kv}-ff{b.d_ff}-seed{b.seed}"
        )
        if window:
            params["relative_attention_bias"] = phrase_bias(t5_cfg, window)
            name += f"-window{window}"
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        module = T5Encoder(t5_cfg, dtype=dtype, param_dtype=dtype)
        return TextEncoder(name, module, builtin_tokenizer(b), params, **common)
    if not config.path:
        raise ValueError(
            "text config kind='t5' needs config.path: a local folder with the T5 "
            "config.json, safetensors weights and tokenizer (e.g. a copy of "
            "google/t5-v1_1-xxl); nothing is downloaded"
        )
    t5_cfg, params = loaders.load_t5(config.path, dtype=dtype)
    tokenizer = HFTokenizer(loaders.load_tokenizer(config.path), config.path)
    module = T5Encoder(t5_cfg, dtype=dtype, param_dtype=dtype)
    return TextEncoder(os.path.abspath(config.path), module, tokenizer, params, **common)
