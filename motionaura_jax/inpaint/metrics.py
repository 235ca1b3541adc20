"""Scores of inpainted `shapes` clips: what the oracle reads in the hole, PSNR around it.

* `inpaint_shape` / `inpaint_color`: fraction of clips where `oracle.object_in_region`
  finds an object in the mask whose shape is the sketched one / whose colour is the
  captioned one (a clip with nothing found counts as wrong for both);
* `psnr_outside_mask`: PSNR (dB, [-1, 1] range) over the pixels outside the mask between
  the model's decoded clip *before* compositing and the input. (After compositing those
  pixels are the input's exactly, so the PSNR would be infinite and say nothing.)
  `reference_psnr_outside_mask` is the same for the tokenizer's own reconstruction
  D(E(V)) of the clip, every code kept: the best any denoiser can do through this
  tokenizer (the given cells of an inpainted clip decode from E(V)'s own codes too, not
  through the denoiser's vocabulary; DESIGN D10 note). Both are means over
  clips of each clip's PSNR; `psnr_outside_gap_db` is their difference and
  `psnr_outside_gap_db_median` the median over clips of each clip's gap: clips that the
  tokenizer reconstructs almost perfectly lose the most dB to a small error, so a few of
  them carry the mean (DESIGN D10 note; configs/inpaint.py has the numbers).
* `reference_inpaint_shape` / `_color`: the oracle's reading of that reconstruction
  composited into the hole, the ceiling of `inpaint_shape` / `_color` (a tokenizer that
  rounds crosses into diamonds caps the shape score however good the denoiser is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from motionaura_jax.data import oracle
from motionaura_jax.data.shapes import COLORS, SHAPES
from motionaura_jax.inpaint.data import composite


def psnr_outside(video: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels where `mask` (T, H, W) is 0; clips (T, H, W, 3) in [-1, 1]."""
    keep = ~np.asarray(mask, bool)
    if not keep.any():
        raise ValueError("the mask covers every pixel: there is nothing outside it to score")
    diff = np.asarray(video, np.float64)[keep] - np.asarray(reference, np.float64)[keep]
    mse = max(float(np.mean(diff**2)), 1e-10 * 4.0)
    return float(10.0 * np.log10(4.0 / mse))


def score_inpainting(
    outputs: Sequence[np.ndarray],
    raw: Sequence[np.ndarray],
    recon: Sequence[np.ndarray],
    examples: Sequence[dict[str, Any]],
    vocab: dict[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Oracle and PSNR scores of inpainted clips.

    Args:
      outputs: composited clips (T, H, W, 3) in [-1, 1] (what the user gets).
      raw: the model's decoded clips before compositing.
      recon: the tokenizer's reconstructions D(E(V)) of the inputs.
      examples: `inpaint.data.make_example` dicts (video, mask, shape, color).
      vocab: optional `colors` / `shapes` lists that restrict the oracle's choices.

    `inpaint_temporal_color` / `_shape`: the mean over clips of the fraction of frames in
    which the object tracked in the hole keeps its majority colour / shape (0 for a clip
    where no object is tracked there).
    """
    vocab = dict(vocab or {})
    shape_hits, color_hits, found, psnr, ref = [], [], [], [], []
    ref_shape, ref_color = [], []
    held = {"color": [], "shape": []}
    for out, hat, rec, ex in zip(outputs, raw, recon, examples, strict=True):
        out = np.asarray(out, np.float32)
        want_shape, want_color = SHAPES[int(ex["shape"])], COLORS[int(ex["color"])]
        read = oracle.object_in_region(out, ex["mask"], **vocab)
        consistency = oracle.temporal_consistency(out, region=ex["mask"], **vocab)
        for key in held:
            held[key].append(consistency[key])
        found.append(read["found"])
        shape_hits.append(read["shape"] == want_shape)
        color_hits.append(read["color"] == want_color)
        ceiling = oracle.object_in_region(
            composite(ex["video"], rec, ex["mask"]), ex["mask"], **vocab
        )
        ref_shape.append(ceiling["shape"] == want_shape)
        ref_color.append(ceiling["color"] == want_color)
        psnr.append(psnr_outside(hat, ex["video"], ex["mask"]))
        ref.append(psnr_outside(rec, ex["video"], ex["mask"]))
    scores = {
        "inpaint_shape": float(np.mean(shape_hits)),
        "inpaint_color": float(np.mean(color_hits)),
        "reference_inpaint_shape": float(np.mean(ref_shape)),
        "reference_inpaint_color": float(np.mean(ref_color)),
        "inpaint_found": float(np.mean(found)),
        "inpaint_temporal_color": float(np.mean(held["color"])),
        "inpaint_temporal_shape": float(np.mean(held["shape"])),
        "psnr_outside_mask": float(np.mean(psnr)),
        "reference_psnr_outside_mask": float(np.mean(ref)),
    }
    scores["psnr_outside_gap_db"] = (
        scores["reference_psnr_outside_mask"] - scores["psnr_outside_mask"]
    )
    scores["psnr_outside_gap_db_median"] = float(np.median(np.subtract(ref, psnr)))
    return scores
