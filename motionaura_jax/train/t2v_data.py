"""Inputs of the `t2v` stage: the frozen stage-1 tokenizer, the token cache, the pipelines.

Stage 2 trains on tokens of a FROZEN tokenizer (section 3.2). They come either

* on the fly: the pipeline yields clips and the loss encodes them under `stop_gradient`
  (`online_iterator`; the tokenizer params live in `Stage.frozen`), or
* from a pre-tokenised cache written once by `tools/tokenize_dataset.py`
  (`write_token_cache` / `TokenCache` / `cache_iterator`): tokens and text embeddings of
  the first N clips of a split, in one `.npz` file. Encoding a clip costs far more than a
  denoiser step on CPU, and a cache is what makes the toy target reachable in minutes.

A cache records which tokenizer made it (folder, step and a hash of its parameters), the
text encoder and the clip size; `TokenCache.check` refuses a cache that does not match
the configured tokenizer, instead of silently training on another model's codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax.data import pipeline
from motionaura_jax.data.config import objects_left_to_right
from motionaura_jax.encoders.text import TextEncoder, make_text_encoder
from motionaura_jax.tokenizer.model import VideoTokenizer, build_tokenizer
from motionaura_jax.tokenizer.vocabulary import CodeVocabulary

PyTree = Any
CACHE_VERSION = 1
TRAIN_TOKENIZER = "python launch/train.py --config=configs/tokenizer.py:toy --workdir=<workdir>"


@dataclasses.dataclass
class FrozenTokenizer:
    """A finished stage-1 tokenizer: module, params (host numpy), config and provenance.

    Attributes:
      model: the `VideoTokenizer`.
      params: its `params` collection as NumPy arrays.
      config: the tokenizer stage's full config (its `model` section built `model`).
      folder: absolute path of the stage folder or export it was loaded from.
      step: the checkpoint step (-1 for an export, which records no step).
      fingerprint: SHA-1 of the parameters (identifies the weights whatever the path),
        and of the vocabulary when there is one.
      vocabulary: None, or the subset of codes a denoiser predicts (`with_vocabulary`):
        then `encode` returns and `decode` takes its ids, not codes.
    """

    model: VideoTokenizer
    params: PyTree
    config: ml_collections.ConfigDict
    folder: str
    step: int
    fingerprint: str
    vocabulary: CodeVocabulary | None = None

    @property
    def vocab_size(self) -> int:
        """The number of token ids (the denoiser's [MASK] id): K codes, or V of the vocabulary."""
        if self.vocabulary is not None:
            return self.vocabulary.size
        return int(self.model.codebook_size)

    @property
    def code_levels(self) -> tuple[int, ...]:
        """The FSQ levels whose product is K, or () for a codebook without digits (or when
        a vocabulary renumbers the codes, so ids have no digits)."""
        quantizer = self.config.model.quantizer
        if quantizer.name != "fsq" or self.vocabulary is not None:
            return ()
        return tuple(int(v) for v in quantizer.levels)

    def with_vocabulary(self, vocabulary: CodeVocabulary) -> FrozenTokenizer:
        """This tokenizer speaking `vocabulary`'s ids (made for these weights)."""
        if self.vocabulary is not None:
            raise ValueError("this tokenizer already has a vocabulary")
        if vocabulary.tokenizer_fingerprint != self.fingerprint:
            raise ValueError(
                f"the denoiser vocabulary was counted on the tokenizer with fingerprint "
                f"{vocabulary.tokenizer_fingerprint[:12]}, but {self.folder!r} has "
                f"{self.fingerprint[:12]}: point tokenizer_dir at the original tokenizer"
            )
        if vocabulary.codebook_size != self.model.codebook_size:
            raise ValueError(
                f"vocabulary over {vocabulary.codebook_size} codes for a tokenizer with "
                f"{self.model.codebook_size}"
            )
        fingerprint = hashlib.sha1((self.fingerprint + vocabulary.digest).encode()).hexdigest()
        return dataclasses.replace(self, fingerprint=fingerprint, vocabulary=vocabulary)

    @property
    def raw(self) -> FrozenTokenizer:
        """The same tokenizer speaking codes (what token caches of codes were made by)."""
        if self.vocabulary is None:
            return self
        fingerprint = self.vocabulary.tokenizer_fingerprint
        return dataclasses.replace(self, fingerprint=fingerprint, vocabulary=None)

    def codes_to_ids(self, codes: jax.Array) -> jax.Array:
        """Tokenizer codes (e.g. from a cache of codes) -> this tokenizer's token ids."""
        if self.vocabulary is not None:
            return self.vocabulary.to_ids(codes)
        return codes.astype(jnp.int32)

    def ids_to_codes(self, ids: jax.Array) -> jax.Array:
        """This tokenizer's token ids -> tokenizer codes (the kept code of each id)."""
        if self.vocabulary is not None:
            return self.vocabulary.to_codes(ids)
        return ids.astype(jnp.int32)

    def decoder_inputs(self) -> np.ndarray:
        """(K, d) the decoder's input for every code."""
        return self._per_code(lambda q, i: q.embed(i), np.arange(self.model.codebook_size))

    def id_vectors(self) -> np.ndarray:
        """(ids, F) each token id's code as its quantizer writes it (`indices_to_codes`:
        FSQ's scaled digits, LFQ's bits, VQ's codebook rows): the denoiser's
        `code_vectors` (`model.code_features`)."""
        vocabulary = self.vocabulary
        codes = np.arange(self.model.codebook_size) if vocabulary is None else vocabulary.codes
        return self._per_code(lambda q, i: q.indices_to_codes(i), codes)

    def _per_code(self, fn, codes: np.ndarray) -> np.ndarray:
        """`fn(quantizer, codes)` under this tokenizer's params, as float32 NumPy."""
        method = lambda m, i: fn(m.quantizer, i)  # noqa: E731
        run = jax.jit(lambda p, i: self.model.apply({"params": p}, i, method=method))
        return np.asarray(run(self.params, jnp.asarray(codes, jnp.int32)), np.float32)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(n, h, w) of the tokens of a (frames, height, width) clip."""
        tf, sf = self.model.temporal_factor, self.model.spatial_factor
        if (frames - 1) % tf or height % sf or width % sf:
            raise ValueError(
                f"a {frames}x{height}x{width} clip does not tokenize: frames must be "
                f"1 + {tf}k and height/width multiples of {sf}"
            )
        return 1 + (frames - 1) // tf, height // sf, width // sf

    def encode(self, params: PyTree, video_bthwc: jax.Array) -> jax.Array:
        """(B, T, H, W, 3) in [-1, 1] -> (B, n, h, w) int32 token ids (pure, jittable)."""
        indices, _ = self.model.apply({"params": params}, video_bthwc, method=VideoTokenizer.encode)
        return jax.lax.stop_gradient(self.codes_to_ids(indices))

    def decode(self, params: PyTree, tokens_bnhw: jax.Array) -> jax.Array:
        """(B, n, h, w) token ids -> (B, T, H, W, 3) float32 in [-1, 1] (pure, jittable)."""
        codes = self.ids_to_codes(tokens_bnhw)
        video = self.model.apply({"params": params}, codes, method=VideoTokenizer.decode)
        return jnp.clip(video.astype(jnp.float32), -1.0, 1.0)

    def boxed_params(self) -> PyTree:
        """`params` wrapped in the logical axis names the module declares (for sharding)."""
        tf, sf = self.model.temporal_factor, self.model.spatial_factor
        video = jax.ShapeDtypeStruct((1, 1 + tf, sf, sf, 3), jnp.float32)
        abstract = jax.eval_shape(
            lambda v: self.model.init(
                {"params": jax.random.key(0), "gumbel": jax.random.key(1)}, v
            )["params"],
            video,
        )
        return rebox(abstract, self.params, f"tokenizer {self.folder}")


def rebox(abstract_boxed: PyTree, values: PyTree, what: str) -> PyTree:
    """Puts `values` into the `nn.Partitioned` boxes of `abstract_boxed` (same tree)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    want = jax.tree.structure(nn.meta.unbox(abstract_boxed))
    have = jax.tree.structure(values)
    if want != have:
        raise checkpoint_lib.CheckpointMismatchError(
            f"the parameters of {what} do not fit the module its config builds "
            f"({have.num_leaves} arrays vs {want.num_leaves}); retrain or re-export it"
        )

    def put(box, value):
        if not is_box(box):
            return value
        # Conv kernels name their three tap axes alike ('conv_space', never sharded), which
        # `nn.logical_to_mesh` rejects; a repeated name is replicated anyway.
        names = getattr(box, "names", None)
        if names is not None:
            seen: set = set()
            unique = []
            for name in names:
                unique.append(None if name in seen else name)
                seen.add(name)
            box = box.replace(names=tuple(unique))
        return box.replace_boxed(value)

    return jax.tree.map(put, abstract_boxed, values, is_leaf=is_box)


def params_fingerprint(params: PyTree) -> str:
    """SHA-1 over every parameter's path, dtype, shape and bytes."""
    digest = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def load_stage_params(
    folder: str, step: int | None = None
) -> tuple[PyTree, ml_collections.ConfigDict, int]:
    """`(params as NumPy, config, step)` of a finished stage folder (or export, step -1).

    Unlike a target-less Orbax restore, this reads checkpoints written on any number of
    devices (a pod, the 8 fake test devices) into this process: the target is built from
    the checkpoint's own shapes and dtypes, placed on one local device.
    """
    if os.path.isfile(os.path.join(folder, "config.json")):
        params, config = checkpoint_lib.load_exported(folder)
        return jax.tree.map(np.asarray, params), config, -1
    directory = os.path.join(folder, "checkpoints")
    config, step = checkpoint_lib.read_config(directory, None if step is None or step < 0 else step)
    reader = checkpoint_lib.StageCheckpointer(directory, stage=config.stage, async_save=False)
    try:
        metadata = reader.manager.item_metadata(step)["state"]
        metadata = getattr(metadata, "tree", metadata)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
            metadata,
            is_leaf=is_array,
        )
        restored = reader.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
    finally:
        reader.close()
    params = jax.tree.map(np.asarray, jax.device_get(restored["state"]["params"]))
    return params, config, int(step)


def load_tokenizer(folder: str, step: int | None = None) -> FrozenTokenizer:
    """Loads a finished stage-1 tokenizer from `workdir/tokenizer` or an export folder.

    Raises FileNotFoundError when there is no finished checkpoint and ValueError when the
    folder holds another stage's checkpoint; both name the path and the fix.
    """
    folder = os.path.abspath(folder)
    exported = os.path.isfile(os.path.join(folder, "config.json"))
    checkpoints = os.path.join(folder, "checkpoints")
    missing = (
        f"no finished stage-1 tokenizer checkpoint in {folder!r}; train the tokenizer first "
        f"({TRAIN_TOKENIZER}) or set --config.tokenizer_dir to a finished tokenizer stage "
        "folder (<workdir>/tokenizer) or an export of one"
    )
    if not exported:
        if not os.path.isdir(checkpoints):
            raise FileNotFoundError(missing)
        checkpointer = checkpoint_lib.StageCheckpointer(checkpoints, stage="", async_save=False)
        latest = checkpointer.latest_step()
        checkpointer.close()
        if latest is None:
            raise FileNotFoundError(missing)
        step = latest if step is None or step < 0 else step
    params, config, step = load_stage_params(folder, step)
    stage = config.get("stage")
    if stage != "tokenizer":
        raise ValueError(
            f"{folder!r} holds a checkpoint of stage {stage!r}, not a stage-1 tokenizer; "
            "set --config.tokenizer_dir to the tokenizer's folder (<workdir>/tokenizer)"
        )
    params = params.get("params", params) if isinstance(params, dict) else params
    params = jax.tree.map(np.asarray, params)
    model = build_tokenizer(config.model)
    return FrozenTokenizer(model, params, config, folder, step, params_fingerprint(params))


def make_text(config: ml_collections.ConfigDict) -> TextEncoder:
    """The frozen text encoder of `config.text`."""
    return make_text_encoder(config.text)


def _provenance(tokenizer: FrozenTokenizer, text: TextEncoder) -> dict:
    return {
        "tokenizer": {
            "folder": tokenizer.folder,
            "step": tokenizer.step,
            "fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
        },
        "text": {"encoder": text.name, "dim": text.dim, "max_length": text.max_length},
    }


def mask_cells(
    mask_bthw: np.ndarray, grid: tuple[int, int, int], temporal_factor: int, spatial_factor: int
) -> np.ndarray:
    """Latent cells that touch a pixel mask: (B, T, H, W) -> bool (B, n, h, w)."""
    mask = np.asarray(mask_bthw, bool)
    b, t, h, w = mask.shape
    n, gh, gw = grid
    if ((t - 1) // temporal_factor + 1, h // spatial_factor, w // spatial_factor) != (n, gh, gw):
        raise ValueError(f"mask {mask.shape[1:]} does not map onto the token grid {grid}")
    spatial = mask.reshape(b, t, gh, spatial_factor, gw, spatial_factor).any(axis=(3, 5))
    first = spatial[:, :1]  # latent frame 0 <- frame 0 (causal, D2)
    rest = spatial[:, 1:].reshape(b, n - 1, temporal_factor, gh, gw).any(axis=2)
    return np.concatenate([first, rest], axis=1)


# The `shapes` template joins one phrase per object with " and ", in the objects' order
# (data/shapes.py `caption_for`).
PHRASE_SEPARATOR = " and "


def phrase_ids(
    text: TextEncoder, captions: Sequence[str], num_objects: Sequence[int]
) -> np.ndarray:
    """(B, L) int8: k + 1 on the text tokens of caption phrase k (object k), 0 elsewhere
    (the separators, EOS and padding); L is the encoder's max_length.

    A phrase's tokens are found by tokenising caption prefixes, so any tokenizer that
    splits at spaces the same way in a prefix as in the whole caption (the built-in
    ones) is exact. Raises ValueError when a caption's phrase count is not its clip's
    object count."""
    tokenizer = text.tokenizer
    limit = text.max_length - 1  # the last token is EOS (`TextEncoder.tokenize`)
    out = np.zeros((len(captions), text.max_length), np.int8)
    for row, (caption, count) in enumerate(zip(captions, num_objects, strict=True)):
        parts = str(caption).split(PHRASE_SEPARATOR)
        if len(parts) != int(count):
            raise ValueError(
                f"caption {caption!r} has {len(parts)} phrases joined by "
                f"{PHRASE_SEPARATOR.strip()!r} for {int(count)} objects; the binding loss "
                "needs the shapes caption template (one phrase per object, in order)"
            )
        start = 0
        for k in range(len(parts)):
            prefix = PHRASE_SEPARATOR.join(parts[: k + 1])
            stop = len(tokenizer.token_ids([prefix])[0])
            out[row, min(start, limit) : min(stop, limit)] = k + 1
            # The next phrase starts after the separator ("... moves left and").
            start = len(tokenizer.token_ids([prefix + PHRASE_SEPARATOR.rstrip()])[0])
    return out


def write_token_cache(
    path: str,
    tokenizer: FrozenTokenizer,
    text: TextEncoder,
    data_config: ml_collections.ConfigDict,
    *,
    split: str = "train",
    num_clips: int = 10_000,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Tokenizes the first `num_clips` clips of `split` into one `.npz` file.

    Arrays: tokens (N, n, h, w) int32, text_emb (N, Lc, D) float16 (Lc = longest caption
    in tokens; padding is restored on read), text_mask (N, Lc) bool, fps (N,) float32,
    caption (N,) str, index (N,) int32; `meta` is the JSON provenance. Returns `meta`.
    Sources with object masks (`shapes`) also give object_cells (N, M, n, h, w) bool, the
    latent cells each object touches, and phrase_ids (N, Lc) int8 (`phrase_ids`): what
    the binding loss (`diffusion.binding_weight`) reads.
    """
    bucket = {
        "frames": data_config.frames,
        "height": data_config.height,
        "width": data_config.width,
        "batch_size": batch_size,
        "ratio": 1.0,
    }
    source = pipeline.make_source(data_config, split, bucket)
    if not 1 <= num_clips <= len(source):
        raise ValueError(f"num_clips={num_clips}, but split {split!r} has {len(source)} clips")
    grid = tokenizer.token_grid(data_config.frames, data_config.height, data_config.width)
    encode = jax.jit(tokenizer.encode)
    tokens = np.zeros((num_clips, *grid), np.int32)
    emb = np.zeros((num_clips, text.max_length, text.dim), np.float16)
    mask = np.zeros((num_clips, text.max_length), bool)
    fps = np.zeros((num_clips,), np.float32)
    captions: list[str] = []
    objects: dict[str, np.ndarray] = {}
    model = tokenizer.model
    start_time = time.perf_counter()
    for start in range(0, num_clips, batch_size):
        stop = min(start + batch_size, num_clips)
        batch = pipeline.collate([source[i] for i in range(start, stop)])
        if "masks" in batch:
            if not objects:
                m = batch["masks"].shape[1]
                objects["object_cells"] = np.zeros((num_clips, m, *grid), bool)
                objects["phrase_ids"] = np.zeros((num_clips, text.max_length), np.int8)
            b, m, t, h, w = batch["masks"].shape
            cells = mask_cells(
                batch["masks"].reshape(b * m, t, h, w),
                grid,
                model.temporal_factor,
                model.spatial_factor,
            )
            objects["object_cells"][start:stop] = cells.reshape(b, m, *grid)
            objects["phrase_ids"][start:stop] = phrase_ids(
                text, list(batch["caption"]), batch["num_objects"]
            )
        video = batch["video"]
        if len(video) < batch_size:  # one compiled shape: pad the last batch
            video = np.concatenate([video, np.repeat(video[-1:], batch_size - len(video), 0)])
        tokens[start:stop] = np.asarray(encode(tokenizer.params, video))[: stop - start]
        e, m = text.embed(list(batch["caption"]))
        emb[start:stop], mask[start:stop] = e, m
        fps[start:stop] = batch["fps"]
        captions += list(batch["caption"])
        if progress and (stop == num_clips or (start // batch_size) % 20 == 0):
            rate = stop / (time.perf_counter() - start_time)
            print(f"[tokenize] {stop}/{num_clips} clips ({rate:.1f} clips/s)", flush=True)
    length = max(int(mask.sum(1).max()), 1)
    if objects:
        objects["phrase_ids"] = objects["phrase_ids"][:, :length]
    meta = {
        "version": CACHE_VERSION,
        **_provenance(tokenizer, text),
        "data": {
            "name": data_config.name,
            "split": split,
            "seed": int(data_config.seed),
            "frames": data_config.frames,
            "height": data_config.height,
            "width": data_config.width,
            "objects_left_to_right": objects_left_to_right(data_config),
        },
        "num_clips": num_clips,
        "token_grid": list(grid),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"  # np.savez appends .npz to names without it
    np.savez(
        tmp,
        tokens=tokens,
        text_emb=emb[:, :length],
        text_mask=mask[:, :length],
        fps=fps,
        caption=np.array(captions),
        index=np.arange(num_clips, dtype=np.int32),
        meta=np.array(json.dumps(meta)),
        **objects,
    )
    os.replace(tmp, path)
    return meta


def load_versioned_npz(
    path: str, version: int, what: str, fix: str, skip: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays (all but 'meta' and `skip`) and the JSON 'meta' of a cache `.npz` written
    by this code; a cache of another format version is refused with `fix`."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "meta" and k not in skip}
        meta = json.loads(str(f["meta"]))
    if meta.get("version") != version:
        raise ValueError(
            f"{what} {path!r} has format version {meta.get('version')}, this code reads "
            f"{version}; {fix}"
        )
    return arrays, meta


class TokenCache:
    """A token cache in memory; random access by clip (a Grain `RandomAccessDataSource`).

    Items are dicts: tokens (n, h, w) int32, text_emb (L, D) float32 zero-padded to the
    encoder's max_length L, text_mask (L,) bool, fps () float32.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"token cache {path!r} not found; write it with python tools/"
                "tokenize_dataset.py --workdir=<workdir> --out=<file.npz>, or set "
                "tokens.source='online'"
            )
        self.arrays, self.meta = load_versioned_npz(
            path, CACHE_VERSION, "token cache", "re-run tools/tokenize_dataset.py"
        )
        self.path = path
        self.max_length = int(self.meta["text"]["max_length"])

    def __len__(self) -> int:
        return int(self.arrays["tokens"].shape[0])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.batch([int(index)]).items()}

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` as one batch (text padded back to max_length, float32)."""
        idx = np.asarray(indices, np.int64)
        stored = self.arrays["text_emb"][idx]
        emb = np.zeros((len(idx), self.max_length, stored.shape[-1]), np.float32)
        emb[:, : stored.shape[1]] = stored
        mask = np.zeros((len(idx), self.max_length), bool)
        mask[:, : stored.shape[1]] = self.arrays["text_mask"][idx]
        out = {
            "tokens": self.arrays["tokens"][idx],
            "text_emb": emb,
            "text_mask": mask,
            "fps": self.arrays["fps"][idx],
        }
        if self.has_objects:
            out["object_cells"] = self.arrays["object_cells"][idx]
            phrases = np.zeros((len(idx), self.max_length), np.int32)
            phrases[:, : stored.shape[1]] = self.arrays["phrase_ids"][idx]
            out["phrase_ids"] = phrases
        return out

    @property
    def has_objects(self) -> bool:
        """Whether the cache holds object cells and phrase ids (sources with masks)."""
        return "object_cells" in self.arrays

    def check(
        self, tokenizer: FrozenTokenizer, text: TextEncoder, data_config: ml_collections.ConfigDict
    ) -> None:
        """Raises ValueError unless this cache was made by `tokenizer` and `text` for clips
        of `data_config`'s size."""
        fix = (
            f"re-run python tools/tokenize_dataset.py --tokenizer_dir={tokenizer.folder} "
            f"--out={self.path} (or point tokens.cache_path at a matching cache)"
        )
        ours = _provenance(tokenizer, text)
        theirs = {k: self.meta[k] for k in ours}
        if ours["tokenizer"]["fingerprint"] != theirs["tokenizer"]["fingerprint"]:
            t = theirs["tokenizer"]
            raise ValueError(
                f"token cache {self.path!r} was made by the tokenizer in {t['folder']!r} at "
                f"step {t['step']}, but this run uses {tokenizer.folder!r} at step "
                f"{tokenizer.step} (different weights); {fix}"
            )
        if ours["text"] != theirs["text"]:
            raise ValueError(
                f"token cache {self.path!r} holds text embeddings of {theirs['text']}, but the "
                f"configured text encoder is {ours['text']}; {fix}"
            )
        data = self.meta["data"]
        size = (data_config.frames, data_config.height, data_config.width)
        if (data["frames"], data["height"], data["width"]) != size:
            raise ValueError(
                f"token cache {self.path!r} holds {data['frames']}x{data['height']}x"
                f"{data['width']} clips, the data config asks for {size[0]}x{size[1]}x"
                f"{size[2]}; {fix}"
            )
        # Caches from before the option hold captions in the draw's order.
        theirs, ours = data.get("objects_left_to_right", False), objects_left_to_right(data_config)
        if theirs != ours:
            raise ValueError(
                f"token cache {self.path!r} holds captions with objects_left_to_right="
                f"{theirs}, the data config asks for {ours}; {fix}"
            )


class _CacheBatches:
    """Grain map: step -> batch of cache rows (the cache loads lazily in each worker)."""

    def __init__(self, path: str, plan: pipeline.BatchPlan):
        self.path, self.plan, self._cache = path, plan, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = TokenCache(self.path)
        return self._cache.batch(self.plan(int(step))[1])


def cache_plan(
    num_rows: int, *, global_batch_size: int, seed: int, shuffle: bool = True
) -> pipeline.BatchPlan:
    """This host's share of endless batches over `num_rows` cache rows, reshuffled every
    epoch (shared by the t2v and inpaint caches)."""
    return pipeline.BatchPlan(
        [{"batch_size": global_batch_size, "ratio": 1.0}],
        num_rows,
        seed=seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle=shuffle,
    )


def cache_iterator(
    cache: TokenCache, *, global_batch_size: int, seed: int, shuffle: bool = True
) -> grain.DatasetIterator:
    """Endless per-host batches of cache rows, reshuffled every epoch; checkpointable."""
    plan = cache_plan(len(cache), global_batch_size=global_batch_size, seed=seed, shuffle=shuffle)
    loader = _CacheBatches(cache.path, plan)
    loader._cache = cache
    return iter(grain.MapDataset.range(len(plan)).map(loader).to_iter_dataset())


class _TextFields:
    """Grain map on pipeline batches: keeps video and fps, adds the text fields.

    `text.mode='online'` adds token ids (`text_ids`, `text_mask`) for the step to encode;
    `'precomputed'` looks the embeddings up (`text_emb`, `text_mask`).
    """

    def __init__(self, text_config: ml_collections.ConfigDict):
        self.text_config = text_config
        self._encoder = self._store = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None, "_store": None}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions = [str(c) for c in batch["caption"]]
        out = {
            "video": batch["video"],
            "fps": batch["fps"].astype(np.float32),
            "caption": batch["caption"],
        }
        if self.text_config.mode == "precomputed":
            if self._store is None:
                from motionaura_jax.encoders.precomputed import load_precomputed

                self._store = load_precomputed(self.text_config)
            out.update(self._store.batch(captions))
        else:
            if self._encoder is None:
                self._encoder = make_text_encoder(self.text_config)
            out.update(self._encoder.batch_fields(captions))
        return out


def online_iterator(
    config: ml_collections.ConfigDict, split: str, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Clips of `config.data` with text fields, for tokenising inside the step."""
    dataset = pipeline.make_dataset(
        config.data,
        split=split,
        global_batch_size=config.train.batch_size,
        seed=seed,
        num_epochs=None,
    )
    return iter(dataset.map(_TextFields(config.text)))
