"""Does a trained t2v denoiser use its caption? A teacher-forced probe on `shapes`.

For held-out clips, the tokens that cover an object (in any frame of their latent frame,
dilated by one token so that no edge token gives the colour away) are masked; the rest
of the clip stays as the tokenizer coded it. The denoiser fills the hole with the run's
eval sampler, once with each clip's own caption and once with the caption of the next
clip; the `shapes` oracle then scores the filled clips against their own captions. A denoiser
that reads its caption scores well above the shuffled run; one that ignores it scores
the same on both (both then sit near chance, 1/8 for colour).

  python tools/text_usage_probe.py --workdir=DIR          # DIR/t2v and DIR/tokenizer

Prints (and with --out writes) JSON: the object-token fraction and the caption scores
with the true and with the shuffled captions. Free generation (the t2v eval) needs more
than this (layout and motion from nothing); this isolates the text pathway.
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
from motionaura_jax.data import oracle, pipeline  # noqa: E402
from motionaura_jax.denoiser import sampling  # noqa: E402


def object_tokens(masks_bmthw: np.ndarray, grid: tuple[int, int, int], temporal: int) -> np.ndarray:
    """(B, n, h, w) bool: tokens whose patch shows an object in any of their frames,
    dilated by one token in space. Latent frame 0 codes frame 0, latent frame i > 0
    frames 1 + temporal * (i - 1) ... temporal * i (the causal tokenizer's layout)."""
    any_object = masks_bmthw.max(axis=1) > 0  # (B, T, H, W)
    b, _, height, width = any_object.shape
    n, h, w = grid
    frames = [[0]] + [list(range(1 + temporal * (i - 1), 1 + temporal * i)) for i in range(1, n)]
    per_latent = [
        any_object[:, f].max(1).reshape(b, h, height // h, w, width // w).max((2, 4))
        for f in frames
    ]
    hit = np.stack(per_latent, axis=1)
    return ndimage.binary_dilation(hit, structure=np.ones((1, 1, 3, 3), bool))


def probe(
    workdir: str,
    num_clips: int = 64,
    steps: int | None = None,
    cfg_scale: float | None = None,
    temperature: float | None = None,
    seed: int = 0,
):
    """Scores of the filled clips with true and shuffled captions. The hole is drawn with
    the run's own eval sampler (steps, guidance, sampler, temperatures): an order or a
    temperature other than the scored one answers another question. Session 12, one toy
    model, guidance 1 and temperature 1 both times: the paper's confidence order (10
    steps) filled every hole with background (right object count 0.00), the toy's
    near-random order (24 steps) drew objects (0.31)."""
    pipe = pipelines.TextToVideo.from_workdir(workdir)
    config, tokenizer = pipe.config, pipe.tokenizer
    steps, cfg, sampler, temperature = sampling.run_settings(
        config.eval, steps=steps, cfg=cfg_scale, temperature=temperature
    )
    kwargs = sampling.sampler_kwargs(config.eval, sampler, temperature)
    batch = pipeline.eval_batches(config.data, num_clips, num_clips, split=config.eval.split)[0]
    captions = [str(c) for c in batch["caption"]]
    tokens = np.asarray(jax.jit(tokenizer.encode)(tokenizer.params, batch["video"]))
    hole = object_tokens(batch["masks"], tokens.shape[1:], tokenizer.model.temporal_factor)
    result = {
        "num_clips": num_clips,
        "object_token_fraction": float(hole.mean()),
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
            fixed_mask=jnp.asarray(~hole),
            **kwargs,
        )
        video = np.asarray(jax.jit(tokenizer.decode)(tokenizer.params, filled))
        result[name] = oracle.score_clips(list(video), captions, config.data)
    return result


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder with t2v/ and tokenizer/")
    parser.add_argument("--num_clips", type=int, default=64)
    # Unset: the run's eval setting (the sampler its eval.json was scored with).
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cfg", type=float, default=None, help="< 0: no guidance")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = probe(args.workdir, args.num_clips, args.steps, args.cfg, args.temperature, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
