"""Does a trained t2v denoiser use its caption? A teacher-forced probe on `shapes`.

For held-out clips, the tokens that cover an object (in any frame of their latent frame,
dilated by one token so that no edge token gives the colour away) are masked; the rest
of the clip stays as the tokenizer coded it. The denoiser fills the hole with the run's
eval sampler, once with each clip's own caption and once with the caption of the next
clip; the `shapes` oracle then scores the filled clips against their own captions. A denoiser
that reads its caption scores well above the shuffled run; one that ignores it scores
the same on both (both then sit near chance, 1/8 for colour).

  python tools/text_usage_probe.py --workdir=DIR          # DIR/t2v and DIR/tokenizer
  python tools/text_usage_probe.py --workdir=DIR --hole=second --num_clips=128 --step=6000

Prints (and with --out writes) JSON: the object-token fraction and the caption scores
with the true and with the shuffled captions. Free generation (the t2v eval) needs more
than this (layout and motion from nothing); this isolates the text pathway.

`--hole=second` asks the binding question on the two-object clips among `num_clips`:
only the second captioned object is masked, the first is given, and `second_*` scores
the filled object alone. Session 18, the default patched toy (main-job model, 60 clips):
second-object colour 0.367 (shuffled captions 0.100), motion 0.517 (0.350), while its
free one-object captions score colour 1.0. Told where the other object is and what it
looks like, the denoiser still does not pick the other captioned colour.
`second_drawn` says what it drew instead: the fractions of clips whose hole holds an
object of the second phrase's colour, of the first (the given object's, copied), of
another colour, or none. Session 19, the same toy: 'first' 0.48-0.50 at steps 3,000,
6,000 and 9,000 ('second' 0.25-0.30); with the caption's tokens in the sequence
(`model.text_tokens`) 'second' 0.517, 'first' 0.317.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy import ndimage  # noqa: E402

from motionaura_jax import pipelines  # noqa: E402
from motionaura_jax.data import oracle, pipeline, shapes  # noqa: E402
from motionaura_jax.denoiser import sampling  # noqa: E402


def object_tokens(
    masks_bmthw: np.ndarray, grid: tuple[int, int, int], temporal: int, dilate: bool = True
) -> np.ndarray:
    """(B, n, h, w) bool: tokens whose patch shows an object in any of their frames,
    dilated by one token in space (unless `dilate=False`). Latent frame 0 codes frame 0,
    latent frame i > 0 frames 1 + temporal * (i - 1) ... temporal * i (the causal
    tokenizer's layout)."""
    any_object = masks_bmthw.max(axis=1) > 0  # (B, T, H, W)
    b, _, height, width = any_object.shape
    n, h, w = grid
    frames = [[0]] + [list(range(1 + temporal * (i - 1), 1 + temporal * i)) for i in range(1, n)]
    per_latent = [
        any_object[:, f].max(1).reshape(b, h, height // h, w, width // w).max((2, 4))
        for f in frames
    ]
    hit = np.stack(per_latent, axis=1)
    if not dilate:
        return hit
    return ndimage.binary_dilation(hit, structure=np.ones((1, 1, 3, 3), bool))


def hole_tokens(
    masks_bmthw: np.ndarray, grid: tuple[int, int, int], temporal: int, hole: str
) -> np.ndarray:
    """(B, n, h, w) bool tokens to fill. 'objects': every object's (dilated) tokens.
    'second': the second object's dilated tokens less those showing the first, so the
    first object and the background are given (a binding question: does the denoiser
    draw the remaining captioned object once the other is there?)."""
    if hole == "objects":
        return object_tokens(masks_bmthw, grid, temporal)
    if hole == "second":
        second = object_tokens(masks_bmthw[:, 1:2], grid, temporal)
        return second & ~object_tokens(masks_bmthw[:, :1], grid, temporal, dilate=False)
    raise ValueError(f"hole={hole!r}; use 'objects' or 'second'")


def probe(
    workdir: str,
    num_clips: int = 64,
    steps: int | None = None,
    cfg_scale: float | None = None,
    temperature: float | None = None,
    seed: int = 0,
    hole: str = "objects",
    step: int | None = None,
):
    """Scores of the filled clips with true and shuffled captions. The hole is drawn with
    the run's own eval sampler (steps, guidance, sampler, temperatures): an order or a
    temperature other than the scored one answers another question. Session 12, one toy
    model, guidance 1 and temperature 1 both times: the paper's confidence order (10
    steps) filled every hole with background (right object count 0.00), the toy's
    near-random order (24 steps) drew objects (0.31). `step`: the t2v checkpoint (None:
    the latest)."""
    pipe = pipelines.TextToVideo.from_workdir(workdir, step=step)
    config, tokenizer = pipe.config, pipe.tokenizer
    steps, cfg, sampler, temperature = sampling.run_settings(
        config.eval, steps=steps, cfg=cfg_scale, temperature=temperature
    )
    kwargs = sampling.sampler_kwargs(config.eval, sampler, temperature)
    batch = pipeline.eval_batches(config.data, num_clips, num_clips, split=config.eval.split)[0]
    if hole == "second":  # two-object clips only, as many as `num_clips` eval clips hold
        two = batch["masks"].reshape(num_clips, batch["masks"].shape[1], -1).max(-1).sum(-1) == 2
        batch = {k: v[two] for k, v in batch.items()}
    captions = [str(c) for c in batch["caption"]]
    num_clips = len(captions)
    tokens = np.asarray(jax.jit(tokenizer.encode)(tokenizer.params, batch["video"]))
    fill = hole_tokens(batch["masks"], tokens.shape[1:], tokenizer.model.temporal_factor, hole)
    result = {
        "num_clips": num_clips,
        "hole": hole,
        "object_token_fraction": float(fill.mean()),
        "sampler": {"steps": steps, "cfg": cfg, "name": sampler, **kwargs},
    }
    for name, order in (
        ("true", np.arange(num_clips)),
        ("shuffled", np.roll(np.arange(num_clips), 1)),
    ):
        emb, mask = pipe.text.embed([captions[i] for i in order])
        filled = sampling.sample(
            pipe.denoiser,
            pipe.params,
            jax.random.PRNGKey(seed),
            jnp.asarray(emb),
            tokens.shape,
            jnp.asarray(mask),
            jnp.asarray(batch["fps"]),
            steps,
            cfg,
            sampler,
            fixed_tokens=jnp.asarray(tokens),
            fixed_mask=jnp.asarray(~fill),
            **kwargs,
        )
        video = np.asarray(jax.jit(tokenizer.decode)(tokenizer.params, filled))
        tally = oracle.CaptionTally(config.data)
        scored = [tally.add(v, c) for v, c in zip(video, captions, strict=True)]
        result[name] = tally.scores()
        if hole == "second":  # the filled object alone (caption order = mask order)
            second = [s["objects"][1] for s in scored]
            for key in ("color", "shape", "motion"):
                result[name][f"second_{key}"] = float(np.mean([o[key] for o in second]))
            drawn = [
                hole_color(v, m[1], c, tally.vocab)
                for v, m, c in zip(video, batch["masks"], captions, strict=True)
            ]
            result[name]["second_drawn"] = {
                k: drawn.count(k) / num_clips for k in ("second", "first", "other", "none")
            }
    return result


def hole_color(video: np.ndarray, mask_thw: np.ndarray, caption: str, vocab: dict) -> str:
    """Whose colour the object drawn where the second object was has: the 'second'
    phrase's (right), the 'first' phrase's (the given object's colour copied: no
    exclusion), an 'other' colour, or 'none' (no object there)."""
    tracks = oracle.analyze_clip(video, region=mask_thw > 0, **vocab)
    if not tracks:
        return "none"
    first, second = (obj["color"] for obj in shapes.parse_caption(caption)[:2])
    return {second: "second", first: "first"}.get(tracks[0].color, "other")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder with t2v/ and tokenizer/")
    parser.add_argument("--num_clips", type=int, default=64)
    # Unset: the run's eval setting (the sampler its eval.json was scored with).
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cfg", type=float, default=None, help="< 0: no guidance")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hole",
        default="objects",
        choices=("objects", "second"),
        help="objects: fill every object; second: fill the second of two, the first given",
    )
    parser.add_argument("--step", type=int, default=None, help="t2v checkpoint; unset: latest")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = probe(
        args.workdir,
        args.num_clips,
        args.steps,
        args.cfg,
        args.temperature,
        args.seed,
        args.hole,
        args.step,
    )
    print_json(result, args.out)


def print_json(result: dict, out: str = "") -> None:
    """Prints a probe's result as indented JSON and, with `out`, writes it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
