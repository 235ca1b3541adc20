"""The codes a stage-2 denoiser predicts: all K codes of the tokenizer, or the V most used.

A tokenizer rarely uses its whole codebook: the toy's FSQ tokenizer (12,800 codes) put
2,618 distinct codes on the 6,000 clips of its t2v token cache, and the 2,048 most frequent
cover 99.94% of the tokens (session 5). The denoiser's K-way output layer is the largest
matmul of the toy's train step, so predicting V = 2,048 classes instead of 12,800 halves
the step: 0.68 s -> 0.33 s, and sampling (10 steps, CFG) 1.2 -> 4.7 clips/s, on the
2-core CPU with another job beside it (`tools/bench_denoiser.py --batch 8 --seq 192
--dim 128 --depth 4 --heads 4 --text-len 24 --text-dim 128 --skip-peer --vocab V`).
This is ours, not the paper's, and the default only for the toy (`tokens.vocabulary` in
configs/t2v.py).

`tokens.vocabulary = V` is a ceiling: a tokenizer that uses fewer than V codes on the
cache gets a vocabulary of exactly its used codes (the session-5 toy tokenizer: 923),
since a code that never occurs is never a target and its logit is wasted work.

A `CodeVocabulary` keeps the V most frequent codes (ids 0..V-1 in code order) and sends
every other code to the kept code whose decoder input (`quantizer.embed`) is nearest, so
any clip still tokenizes: an unseen code decodes to its nearest neighbour. It is written
once per t2v stage folder (`vocabulary.npz`) and travels with the checkpoint and its
export; inpainting and generation read it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

FILE_NAME = "vocabulary.npz"
_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class CodeVocabulary:
    """Tokenizer codes <-> denoiser ids.

    Attributes:
      codes: (V,) int32, the kept codes in increasing order; id i stands for codes[i].
      lookup: (K,) int32, code -> id: a kept code's own id, else its nearest kept code's.
      coverage: fraction of the counted tokens whose code was kept.
      tokenizer_fingerprint: the parameters hash of the tokenizer the codes belong to.
    """

    codes: np.ndarray
    lookup: np.ndarray
    coverage: float
    tokenizer_fingerprint: str

    @property
    def size(self) -> int:
        """V, the number of denoiser classes."""
        return int(self.codes.shape[0])

    @property
    def codebook_size(self) -> int:
        """K, the tokenizer's number of codes."""
        return int(self.lookup.shape[0])

    @property
    def digest(self) -> str:
        """SHA-1 of the mapping (tells two vocabularies of one tokenizer apart)."""
        h = hashlib.sha1(np.ascontiguousarray(self.codes, np.int32).tobytes())
        h.update(np.ascontiguousarray(self.lookup, np.int32).tobytes())
        return h.hexdigest()

    def to_ids(self, codes: jax.Array) -> jax.Array:
        """(...) int tokenizer codes -> (...) int32 denoiser ids (pure, jittable)."""
        return jnp.asarray(self.lookup)[codes]

    def to_codes(self, ids: jax.Array) -> jax.Array:
        """(...) int denoiser ids in [0, V) -> (...) int32 tokenizer codes."""
        return jnp.asarray(self.codes)[ids]

    def save(self, path: str) -> None:
        """Writes `path` atomically: a crash leaves the old file or none, never half."""
        meta = {
            "version": _VERSION,
            "coverage": self.coverage,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
        }
        tmp = f"{path}.tmp{os.getpid()}.npz"  # np.savez appends .npz to names without it
        np.savez(tmp, codes=self.codes, lookup=self.lookup, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> CodeVocabulary:
        try:
            with np.load(path) as f:
                codes, lookup = f["codes"], f["lookup"]
                meta = json.loads(str(f["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(
                f"denoiser vocabulary {path!r} is unreadable ({e}); delete it to recount "
                "the codes from the token cache (only before the t2v stage has trained on it)"
            ) from e
        if meta.get("version") != _VERSION:
            raise ValueError(
                f"{path!r} has vocabulary format {meta.get('version')}, this code reads "
                f"{_VERSION}; delete it to recount the codes"
            )
        return cls(
            codes.astype(np.int32),
            lookup.astype(np.int32),
            float(meta["coverage"]),
            str(meta["tokenizer_fingerprint"]),
        )


def most_used(
    counts: np.ndarray, code_vectors: np.ndarray, size: int, tokenizer_fingerprint: str
) -> CodeVocabulary:
    """The `size` most frequent codes (ties: the lower code), the rest snapped to them.

    Codes that never occur are never kept: with fewer than `size` used codes the
    vocabulary is exactly the used ones.

    Args:
      counts: (K,) occurrences of each code on the training tokens.
      code_vectors: (K, d) what the decoder receives for each code; an unkept code maps
        to the kept code nearest in this space.
      size: the most codes to keep, 1 <= size <= K.
    """
    counts = np.asarray(counts, np.int64)
    k = counts.shape[0]
    if not 1 <= size <= k:
        raise ValueError(f"a vocabulary of {size} codes from a codebook of {k}; use 1..{k}")
    if code_vectors.shape[0] != k:
        raise ValueError(f"{code_vectors.shape[0]} code vectors for {k} counted codes")
    if counts.sum() == 0:
        raise ValueError("no tokens were counted; the token cache is empty")
    size = min(size, int((counts > 0).sum()))
    order = np.lexsort((np.arange(k), -counts))  # by count, then by code
    codes = np.sort(order[:size]).astype(np.int32)
    vectors = np.asarray(code_vectors, np.float64)
    kept = vectors[codes]
    # Squared distances by |a|^2 - 2ab + |b|^2, in chunks so K x V never has to fit at once.
    lookup = np.empty(k, np.int32)
    for start in range(0, k, 4096):
        block = vectors[start : start + 4096]
        d2 = (block**2).sum(1, keepdims=True) - 2 * block @ kept.T + (kept**2).sum(1)
        lookup[start : start + 4096] = np.argmin(d2, axis=1)
    lookup[codes] = np.arange(size, dtype=np.int32)  # exact for kept codes (ties in d2)
    coverage = float(counts[codes].sum() / counts.sum())
    return CodeVocabulary(codes, lookup, coverage, tokenizer_fingerprint)
