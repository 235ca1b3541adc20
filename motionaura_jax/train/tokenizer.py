"""Stage 1, `tokenizer`: 3D-MBQ-VAE pre-training (section 3.1, Eq. 1 / D4, D5).

`build(config, workdir) -> Stage` wires `VideoTokenizer` (`config.model`), the input
masking of D5 (`config.masking`: cosine-scheduled patch masking and full-frame masking),
the loss of D4 (`config.loss`) and the clip pipeline (`config.data`). `evaluate` encodes
and decodes `config.eval.num_clips` held-out clips (`config.eval.frames` long; 0 = the
training length) and reports PSNR and SSIM (per frame, averaged), the share of the
codebook in use on those clips and its perplexity.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from motionaura_jax.data import pipeline
from motionaura_jax.data.oracle import ATTRIBUTES, CaptionTally
from motionaura_jax.metrics.image import psnr, ssim
from motionaura_jax.parallel.rules import CONV_RULES
from motionaura_jax.tokenizer.losses import tokenizer_loss
from motionaura_jax.tokenizer.masking import MaskingConfig, mask_video
from motionaura_jax.tokenizer.model import VideoTokenizer, build_tokenizer
from motionaura_jax.tokenizer.quantizers import codebook_stats
from motionaura_jax.train.stage import Stage

PyTree = Any


def masking_config(config: ml_collections.ConfigDict) -> MaskingConfig:
    """`config.masking` as a `MaskingConfig`; total_steps 0 means `train.num_steps`."""
    m = config.masking
    return MaskingConfig(
        patch=bool(m.patch),
        patch_sizes=tuple(int(p) for p in m.patch_sizes),
        patch_ratio=tuple(float(r) for r in m.patch_ratio),
        frame=bool(m.frame),
        frame_prob=tuple(float(p) for p in m.frame_prob),
        total_steps=int(m.total_steps or config.train.num_steps),
        fill=float(m.fill),
    )


def eval_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.data` with `eval.frames` frames (0 = unchanged) and no batch buckets: the
    causal tokenizer may train on short clips and be scored on longer ones."""
    data = config.data.copy_and_resolve_references()
    frames = int(config.eval.get("frames", 0) or 0)
    if frames:
        with data.unlocked():
            data.frames = frames
            data.buckets = ()
    return data


def make_reconstruct_fn(model: VideoTokenizer):
    """Jitted `(params, video) -> (indices, video_hat clipped to [-1, 1])`."""

    @jax.jit
    def reconstruct(params, video_bthwc):
        variables = {"params": params}
        indices, _ = model.apply(variables, video_bthwc, method=VideoTokenizer.encode)
        video_hat = model.apply(variables, indices, method=VideoTokenizer.decode)
        return indices, jnp.clip(video_hat, -1.0, 1.0)

    return reconstruct


class _Evaluator:
    """PSNR / SSIM / codebook usage of the reconstructions of a fixed held-out set.

    On `shapes` also `oracle_color` / `_shape` / `_motion`: what the oracle reads in the
    reconstructions against the true captions (`oracle.CaptionTally`), the ceiling of
    the later stages' caption and sketch scores through this tokenizer.
    """

    def __init__(self, config: ml_collections.ConfigDict, model: VideoTokenizer):
        self.config, self.model = config, model
        self.reconstruct = make_reconstruct_fn(model)
        self._batches: list[dict[str, np.ndarray]] | None = None

    def __call__(self, params: PyTree, frozen: PyTree) -> dict[str, float]:
        del frozen
        ev = self.config.eval
        if self._batches is None:
            self._batches = pipeline.eval_batches(
                eval_data_config(self.config), int(ev.num_clips), int(ev.batch_size), split=ev.split
            )
        psnrs, ssims, codes = [], [], []
        data = self.config.data
        tally = CaptionTally(data) if data.name == "shapes" else None
        for batch in self._batches:
            video = jnp.asarray(batch["video"], jnp.float32)
            indices, video_hat = self.reconstruct(params, video)
            psnrs.append(np.asarray(psnr(video_hat, video, data_range=2.0)).reshape(-1))
            ssims.append(np.asarray(ssim(video_hat, video, data_range=2.0)).reshape(-1))
            codes.append(np.asarray(indices).reshape(-1))
            if tally is not None:
                for clip, caption in zip(np.asarray(video_hat), batch["caption"], strict=True):
                    tally.add(clip, str(caption))
        stats = codebook_stats(jnp.asarray(np.concatenate(codes)), self.model.codebook_size)
        scores = {
            "psnr": float(np.mean(np.concatenate(psnrs))),
            "ssim": float(np.mean(np.concatenate(ssims))),
            "codebook_usage": float(stats["codebook_usage"]),
            "perplexity": float(stats["perplexity"]),
            "num_clips": float(sum(len(b["video"]) for b in self._batches)),
        }
        if tally is not None:
            read = tally.scores(prefix="oracle_")
            scores.update({f"oracle_{k}": read[f"oracle_{k}"] for k in ATTRIBUTES})
        return scores


def build(config: ml_collections.ConfigDict, workdir: str | None = None) -> Stage:
    """The `tokenizer` stage (see the module docstring)."""
    del workdir
    model = build_tokenizer(config.model)
    masks = masking_config(config)
    mfi_weight = float(config.loss.mfi_weight) if model.mfi_head is not None else 0.0

    def data(split: str, seed: int):
        return pipeline.make_iterator(
            config.data, split=split, global_batch_size=config.train.batch_size, seed=seed
        )

    def init(rng: jax.Array, batch: dict) -> PyTree:
        k_params, k_gumbel = jax.random.split(rng)
        video = jnp.zeros((1, *batch["video"].shape[1:]), jnp.float32)
        return model.init({"params": k_params, "gumbel": k_gumbel}, video, train=False)["params"]

    def loss(params, frozen, batch, rng, step):
        del frozen
        video = batch["video"].astype(jnp.float32)
        k_mask, k_gumbel = jax.random.split(rng)
        info = None
        inputs = video
        if masks.patch or masks.frame:
            inputs, info = mask_video(k_mask, video, step, masks)
        with nn.logical_axis_rules(CONV_RULES):
            out = model.apply({"params": params}, inputs, train=True, rngs={"gumbel": k_gumbel})
        # D5: the target is the clean clip whatever was masked.
        total, metrics = tokenizer_loss(
            out, video, info if masks.frame else None, mfi_weight=mfi_weight
        )
        metrics |= codebook_stats(out["indices"], model.codebook_size)
        if info is not None:
            metrics |= {"patch_ratio": info["patch_ratio"], "frame_prob": info["frame_prob"]}
        return total, metrics

    return Stage(
        name="tokenizer",
        rules=CONV_RULES,
        init=init,
        loss=loss,
        data=data,
        evaluate=_Evaluator(config, model),
        device_fields=("video",),
    )
