"""Precomputed text embeddings: written once per dataset, joined into batches (D9).

T5-XXL is 4.7B parameters; encoding every caption in every step costs more than the
denoiser on small runs, and captions repeat (the `shapes` template has a few hundred).
`tools/precompute_text_embeddings.py` encodes each distinct caption once and stores it
here; the input pipeline then looks embeddings up by caption (or by record index).

Format: an ArrayRecord file, one record per distinct caption (msgpack map: `caption`,
`length` n, `dtype`, `emb` = the n unpadded rows (n, D) as raw bytes), plus a sidecar
`<path>.meta.json` naming the encoder (name, dim, max_length, the embedding of a fixed
probe caption) so that embeddings from another encoder are refused instead of silently
used. Padded positions are not stored: T5 outputs at real tokens do not depend on how
much padding follows (keys are masked and the position bias is relative).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence

import ml_collections
import ml_dtypes
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm import tqdm

from motionaura_jax.encoders.text import TextEncoder

META_SUFFIX = ".meta.json"
PROBE_CAPTION = "a red circle moves left"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _probe(encoder: TextEncoder) -> list[float]:
    emb, mask = encoder.embed([PROBE_CAPTION])
    return (emb[0, mask[0]].mean(0)).astype(float).tolist()


def write_precomputed(
    path: str,
    encoder: TextEncoder,
    captions: Iterable[str],
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Encodes the distinct `captions` (first-seen order) into an ArrayRecord file.

    Args:
      path: output file; `<path>.meta.json` is written next to it.
      encoder: the frozen `TextEncoder` (its tokenizer raises on empty/overlong captions).
      captions: captions, duplicates allowed.
      batch_size: captions per encoder call.
      dtype: storage dtype, 'float32' | 'float16' | 'bfloat16'.
      progress: show a tqdm bar.
    Returns:
      the metadata dict (also written as JSON).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r}; use one of {sorted(STORAGE_DTYPES)}")
    unique = list(dict.fromkeys(captions))
    if not unique:
        raise ValueError("no captions to precompute; check the caption source")
    encoder.tokenize(unique)  # fail on bad captions before any work is done
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = ArrayRecordWriter(path, "group_size:1")  # random access by record index
    try:
        for start in tqdm(
            range(0, len(unique), batch_size),
            disable=not progress,
            desc="text embeddings",
            unit="batch",
        ):
            chunk = unique[start : start + batch_size]
            with warnings.catch_warnings():  # overlong captions were reported above, once
                warnings.simplefilter("ignore")
                emb, mask = encoder.embed(chunk)
            for caption, e, m in zip(chunk, emb, mask):
                rows = e[m].astype(STORAGE_DTYPES[dtype])
                writer.write(
                    msgpack.packb(
                        {
                            "caption": caption,
                            "length": int(m.sum()),
                            "dtype": dtype,
                            "emb": rows.tobytes(),
                        }
                    )
                )
    finally:
        writer.close()
    meta = {
        "encoder": encoder.name,
        "dim": encoder.dim,
        "max_length": encoder.max_length,
        "dtype": dtype,
        "count": len(unique),
        "probe_caption": PROBE_CAPTION,
        "probe": _probe(encoder),
    }
    with open(path + META_SUFFIX, "w") as f:
        json.dump(meta, f)
    return meta


class PrecomputedTextEmbeddings:
    """Reader of a precomputed file: lookup by caption or index, joined into batches.

    Args:
      path: the ArrayRecord file written by `write_precomputed`.
      encoder: if given, the file must come from an encoder with the same name, width
        and max_length whose probe embedding agrees (guards against stale files).
    """

    def __init__(self, path: str, encoder: TextEncoder | None = None):
        meta_path = path + META_SUFFIX
        if not os.path.isfile(path) or not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"precomputed text embeddings {path!r} (and {meta_path!r}) "
                f"not found; write them with tools/precompute_text_embeddings.py"
            )
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.path = path
        self.dim = int(self.meta["dim"])
        self.max_length = int(self.meta["max_length"])
        self._reader = ArrayRecordReader(path)
        self._index: dict[str, int] | None = None
        if encoder is not None:
            self.check_encoder(encoder)

    def check_encoder(self, encoder: TextEncoder) -> None:
        """Raises ValueError if the file was written by a different encoder."""
        ours = {"encoder": encoder.name, "dim": encoder.dim, "max_length": encoder.max_length}
        theirs = {k: self.meta[k] for k in ours}
        if ours != theirs:
            raise ValueError(
                f"{self.path} was written by {theirs}, but the configured text "
                f"encoder is {ours}; re-run tools/precompute_text_embeddings.py"
            )
        probe = np.asarray(_probe(encoder))
        if not np.allclose(probe, self.meta["probe"], rtol=1e-2, atol=1e-2):
            raise ValueError(
                f"{self.path}: the encoder {encoder.name!r} now embeds the probe "
                f"caption differently than when the file was written (changed "
                f"weights?); re-run tools/precompute_text_embeddings.py"
            )

    def __len__(self) -> int:
        return int(self.meta["count"])

    @staticmethod
    def _decode(record: bytes) -> tuple[str, np.ndarray]:
        item = msgpack.unpackb(record)
        emb = np.frombuffer(item["emb"], STORAGE_DTYPES[item["dtype"]])
        return item["caption"], emb.reshape(item["length"], -1)

    def record(self, index: int) -> tuple[str, np.ndarray]:
        """`(caption, emb (n, D))` of record `index` (n = tokens incl. EOS)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {self.path} ({len(self)} records)")
        return self._decode(self._reader.read([index])[0])

    @property
    def index(self) -> dict[str, int]:
        """caption -> record index (built on first use by one pass over the file)."""
        if self._index is None:
            records = self._reader.read(range(len(self)))
            self._index = {self._decode(r)[0]: i for i, r in enumerate(records)}
        return self._index

    def batch(self, keys: Sequence[int | str]) -> dict[str, np.ndarray]:
        """Joins records into `text_emb` float32 (B, L, D), zero-padded, and `text_mask` (B, L).

        `keys` are captions or record indices (L = the file's max_length).
        """
        indices = []
        for key in keys:
            if isinstance(key, str):
                if key not in self.index:
                    raise KeyError(
                        f"caption {key!r} is not in {self.path}; re-run "
                        f"tools/precompute_text_embeddings.py over this dataset"
                    )
                indices.append(self.index[key])
            else:
                indices.append(int(key))
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad:
            raise IndexError(f"records {bad} out of range for {self.path} ({len(self)} records)")
        emb = np.zeros((len(indices), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(indices), self.max_length), bool)
        records = self._reader.read(indices) if indices else []
        for row, record in enumerate(records):
            _, e = self._decode(record)
            emb[row, : len(e)] = e
            mask[row, : len(e)] = True
        return {"text_emb": emb, "text_mask": mask}


def load_precomputed(
    config: ml_collections.ConfigDict, encoder: TextEncoder | None = None
) -> PrecomputedTextEmbeddings:
    """The store named by a `text_config` in `mode='precomputed'` (checked against `encoder`)."""
    if config.mode != "precomputed":
        raise ValueError(
            f"text config mode is {config.mode!r}; precomputed embeddings need mode='precomputed'"
        )
    if not config.precomputed_path:
        raise ValueError(
            "text config mode='precomputed' needs precomputed_path; write the file "
            "with tools/precompute_text_embeddings.py"
        )
    return PrecomputedTextEmbeddings(config.precomputed_path, encoder=encoder)
