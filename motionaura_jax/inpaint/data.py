"""Inpainting examples from `shapes` clips, the token-level hole, and the token cache.

One example (DESIGN section 4, item 4 of the stage-3 issue): one object of the clip is
chosen (seeded by the clip index); its per-frame masks, dilated by `dilation` pixels, are
the inpainting mask m; the sketch is that object's outline; the caption gives its colour
and motion but not its shape ("a red object moves left"), so the shape has to come from
the sketch. `V_m = V * (1 - m)` (Sec. 4; D10): 0 is mid-grey in [-1, 1].

The token-level hole marks latent cells (n, h, w) whose frames x pixels touch the mask: a
causal tokenizer's latent frame 0 covers frame 0 and latent frame k >= 1 covers frames
4k-3 .. 4k (D2); each cell covers a `spatial_factor`^2 pixel square.

Encoding a clip costs far more than a denoiser step on CPU, so training reads a cache
(`write_inpaint_cache` / `InpaintCache` / `cache_iterator`) of z_0 = E(V) and
z_m = E(V_m) for the first N clips of a split, with the hole, the sketch and the text
embeddings; like the t2v cache it records which tokenizer made it and refuses another.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from scipy import ndimage

from motionaura_jax.data import pipeline
from motionaura_jax.data.shapes import COLORS, MOTIONS, SHAPES, ShapesSource, caption_for
from motionaura_jax.inpaint.sketch import jitter_sketch
from motionaura_jax.train import t2v_data

CACHE_VERSION = 1
CAPTION_MODES = ("no_shape", "full")


def choose_object(record: dict[str, Any], seed: int) -> int:
    """Which object of a clip to inpaint: uniform over its objects, seeded by (seed, index)."""
    rng = np.random.default_rng([int(seed), 0x1A9, int(record["index"])])
    return int(rng.integers(int(record["num_objects"])))


def dilate_masks(mask_thw: np.ndarray, pixels: int) -> np.ndarray:
    """Per-frame binary dilation by `pixels` (8-connected); uint8 (T, H, W) in, out."""
    mask = np.asarray(mask_thw, bool)
    if pixels > 0:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = True  # grow within each frame, never across frames
        mask = ndimage.binary_dilation(mask, structure=structure, iterations=int(pixels))
    return mask.astype(np.uint8)


def object_caption(record: dict[str, Any], k: int, mode: str = "no_shape") -> str:
    """Caption of object k: colour and motion ('no_shape'), or the dataset's template."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"inpaint.caption={mode!r}; use one of {CAPTION_MODES}")
    color = COLORS[int(record["color"][k])]
    motion = MOTIONS[int(record["motion"][k])] if int(record["motion"][k]) >= 0 else None
    shape = SHAPES[int(record["shape"][k])] if mode == "full" else "object"
    return caption_for([{"color": color, "shape": shape, "motion": motion}])


def make_example(
    record: dict[str, Any], *, seed: int, dilation: int, caption: str = "no_shape"
) -> dict[str, Any]:
    """One inpainting example of a `shapes` record.

    Returns:
      video (T, H, W, 3), masked_video (T, H, W, 3) float32 in [-1, 1]; mask uint8
      (T, H, W); sketch float32 (H, W, 3); caption str; fps; color, shape, motion int32
      of the inpainted object; index.
    """
    k = choose_object(record, seed)
    mask = dilate_masks(record["masks"][k], dilation)
    video = np.asarray(record["video"], np.float32)
    return {
        "video": video,
        "masked_video": video * (1.0 - mask[..., None].astype(np.float32)),  # V_m, D10
        "mask": mask,
        "sketch": np.asarray(record["sketch"][k], np.float32),
        "caption": object_caption(record, k, caption),
        "fps": np.float32(record["fps"]),
        "color": np.int32(record["color"][k]),
        "shape": np.int32(record["shape"][k]),
        "motion": np.int32(record["motion"][k]),
        "index": np.int32(record["index"]),
    }


# Latent cells that touch the hole: (B, T, H, W) -> bool (B, n, h, w).
hole_tokens = t2v_data.mask_cells


def composite(video: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`V (1 - m) + V_hat m`: pixels outside the mask are the input's, exactly."""
    m = np.asarray(mask, np.float32)[..., None]
    return np.asarray(video, np.float32) * (1.0 - m) + np.asarray(generated, np.float32) * m


def eval_examples(
    data_config: ml_collections.ConfigDict,
    inpaint_cfg: ml_collections.ConfigDict,
    num_clips: int,
    split: str = "eval",
) -> list[dict[str, Any]]:
    """The first `num_clips` inpainting examples of a `shapes` split, in order."""
    if data_config.name != "shapes":
        raise ValueError(
            f"inpainting examples are built from `shapes` clips (masks, sketches); "
            f"data.name is {data_config.name!r}"
        )
    source = ShapesSource(data_config, split)
    if not 1 <= num_clips <= len(source):
        raise ValueError(f"num_clips={num_clips}, but split {split!r} has {len(source)} clips")
    return [
        make_example(
            source[i],
            seed=int(data_config.seed),
            dilation=int(inpaint_cfg.dilation),
            caption=inpaint_cfg.caption,
        )
        for i in range(num_clips)
    ]


def write_inpaint_cache(
    path: str,
    tokenizer,
    text,
    data_config: ml_collections.ConfigDict,
    inpaint_cfg: ml_collections.ConfigDict,
    *,
    split: str = "train",
    num_clips: int = 2048,
    batch_size: int = 32,
    progress: bool = True,
    z0_tokens: np.ndarray | None = None,
) -> dict:
    """Tokenizes V and V_m of the first `num_clips` examples of `split` into one `.npz`.

    `z0_tokens` (>= num_clips, n, h, w), e.g. the t2v token cache of the same tokenizer
    and split, supplies z_0 = E(V) so that only V_m is encoded (half the cost).

    Arrays: z0, zm (N, n, h, w) int32; hole (N, n, h, w) bool; sketch (N, H, W, 3) float16;
    text_emb (N, Lc, D) float16, text_mask (N, Lc) bool; fps (N,); caption (N,) str.
    """
    source = ShapesSource(data_config, split)
    if not 1 <= num_clips <= len(source):
        raise ValueError(f"num_clips={num_clips}, but split {split!r} has {len(source)} clips")
    model = tokenizer.model
    grid = tokenizer.token_grid(data_config.frames, data_config.height, data_config.width)
    encode = jax.jit(tokenizer.encode)
    arrays = {
        "z0": np.zeros((num_clips, *grid), np.int32),
        "zm": np.zeros((num_clips, *grid), np.int32),
        "hole": np.zeros((num_clips, *grid), bool),
        "sketch": np.zeros((num_clips, data_config.height, data_config.width, 3), np.float16),
        "text_emb": np.zeros((num_clips, text.max_length, text.dim), np.float16),
        "text_mask": np.zeros((num_clips, text.max_length), bool),
        "fps": np.zeros((num_clips,), np.float32),
    }
    captions: list[str] = []
    start_time = time.perf_counter()
    for start in range(0, num_clips, batch_size):
        stop = min(start + batch_size, num_clips)
        ex = pipeline.collate(
            [
                make_example(
                    source[i],
                    seed=int(data_config.seed),
                    dilation=int(inpaint_cfg.dilation),
                    caption=inpaint_cfg.caption,
                )
                for i in range(start, stop)
            ]
        )
        rows = stop - start
        clips = [ex["masked_video"]] if z0_tokens is not None else [ex["video"], ex["masked_video"]]
        both = np.concatenate(clips)
        pad = len(clips) * batch_size - len(both)  # one compiled shape: pad the last batch
        if pad:
            both = np.concatenate([both, np.repeat(both[-1:], pad, 0)])
        codes = np.asarray(encode(tokenizer.params, both))
        if z0_tokens is None:
            arrays["z0"][start:stop] = codes[:rows]
            arrays["zm"][start:stop] = codes[rows : 2 * rows]
        else:
            arrays["z0"][start:stop] = z0_tokens[start:stop]
            arrays["zm"][start:stop] = codes[:rows]
        arrays["hole"][start:stop] = hole_tokens(
            ex["mask"], grid, model.temporal_factor, model.spatial_factor
        )
        arrays["sketch"][start:stop] = ex["sketch"]
        emb, mask = text.embed(list(ex["caption"]))
        arrays["text_emb"][start:stop], arrays["text_mask"][start:stop] = emb, mask
        arrays["fps"][start:stop] = ex["fps"]
        captions += list(ex["caption"])
        if progress and (stop == num_clips or (start // batch_size) % 10 == 0):
            rate = stop / (time.perf_counter() - start_time)
            print(f"[inpaint cache] {stop}/{num_clips} clips ({rate:.1f} clips/s)", flush=True)
    length = max(int(arrays["text_mask"].sum(1).max()), 1)
    arrays["text_emb"] = arrays["text_emb"][:, :length]
    arrays["text_mask"] = arrays["text_mask"][:, :length]
    meta = {
        "version": CACHE_VERSION,
        "tokenizer": {
            "folder": tokenizer.folder,
            "step": tokenizer.step,
            "fingerprint": tokenizer.fingerprint,
        },
        "text": {"encoder": text.name, "dim": text.dim, "max_length": text.max_length},
        "data": {
            "split": split,
            "seed": int(data_config.seed),
            "frames": data_config.frames,
            "height": data_config.height,
            "width": data_config.width,
        },
        "inpaint": {"dilation": int(inpaint_cfg.dilation), "caption": inpaint_cfg.caption},
        "num_clips": num_clips,
        "seconds": time.perf_counter() - start_time,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, caption=np.array(captions), meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return meta


class InpaintCache:
    """An inpainting token cache in memory (random access by example)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"inpaint cache {path!r} not found; set "
                "--config.cache.build=True to write it at start-up"
            )
        self.arrays, self.meta = t2v_data.load_versioned_npz(
            path, CACHE_VERSION, "inpaint cache", "delete it to rebuild", skip=("caption",)
        )
        self.path = path
        self.max_length = int(self.meta["text"]["max_length"])

    def __len__(self) -> int:
        return int(self.arrays["z0"].shape[0])

    def batch(
        self, indices: np.ndarray, rng: np.random.Generator | None = None, jitter_px: int = 0
    ) -> dict[str, np.ndarray]:
        """Rows `indices`; sketches shifted by up to `jitter_px` when `rng` is given."""
        idx = np.asarray(indices, np.int64)
        stored = self.arrays["text_emb"][idx]
        emb = np.zeros((len(idx), self.max_length, stored.shape[-1]), np.float32)
        emb[:, : stored.shape[1]] = stored
        mask = np.zeros((len(idx), self.max_length), bool)
        mask[:, : stored.shape[1]] = self.arrays["text_mask"][idx]
        sketch = self.arrays["sketch"][idx].astype(np.float32)
        if rng is not None and jitter_px > 0:
            sketch = np.stack([jitter_sketch(s, rng, jitter_px) for s in sketch])
        return {
            "z0": self.arrays["z0"][idx],
            "zm": self.arrays["zm"][idx],
            "hole": self.arrays["hole"][idx],
            "sketch": sketch,
            "text_emb": emb,
            "text_mask": mask,
            "fps": self.arrays["fps"][idx],
        }

    def check(
        self,
        tokenizer,
        text,
        data_config: ml_collections.ConfigDict,
        inpaint_cfg: ml_collections.ConfigDict,
    ) -> None:
        """Raises ValueError unless this cache fits the tokenizer, text encoder and data."""
        fix = f"delete {self.path!r} (it is rebuilt with cache.build=True) or set cache.path"
        meta = self.meta
        if meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
            raise ValueError(
                f"inpaint cache {self.path!r} was made by the tokenizer in "
                f"{meta['tokenizer']['folder']!r}, not by {tokenizer.folder!r} "
                f"(different weights); {fix}"
            )
        ours = {"encoder": text.name, "dim": text.dim, "max_length": text.max_length}
        if meta["text"] != ours:
            raise ValueError(
                f"inpaint cache {self.path!r} holds text of {meta['text']}, the "
                f"configured encoder is {ours}; {fix}"
            )
        size = [data_config.frames, data_config.height, data_config.width]
        if [meta["data"][k] for k in ("frames", "height", "width")] != size:
            raise ValueError(
                f"inpaint cache {self.path!r} holds clips of another size than {size}; {fix}"
            )
        want = {"dilation": int(inpaint_cfg.dilation), "caption": inpaint_cfg.caption}
        if meta["inpaint"] != want:
            raise ValueError(
                f"inpaint cache {self.path!r} was made with {meta['inpaint']}, the "
                f"config asks for {want}; {fix}"
            )


class _CacheBatches:
    """Grain map: step -> batch of cache rows with step-seeded sketch jitter."""

    def __init__(self, path: str, plan: pipeline.BatchPlan, seed: int, jitter_px: int):
        self.path, self.plan, self.seed, self.jitter_px = path, plan, seed, jitter_px
        self._cache = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = InpaintCache(self.path)
        rng = np.random.default_rng([self.seed, 0x5CE, int(step)])
        return self._cache.batch(self.plan(int(step))[1], rng, self.jitter_px)


def cache_iterator(
    cache: InpaintCache,
    *,
    global_batch_size: int,
    seed: int,
    jitter_px: int = 0,
    shuffle: bool = True,
) -> grain.DatasetIterator:
    """Endless per-host batches of cache rows, reshuffled every epoch; checkpointable."""
    plan = t2v_data.cache_plan(
        len(cache), global_batch_size=global_batch_size, seed=seed, shuffle=shuffle
    )
    loader = _CacheBatches(cache.path, plan, seed, jitter_px)
    loader._cache = cache
    return iter(grain.MapDataset.range(len(plan)).map(loader).to_iter_dataset())
