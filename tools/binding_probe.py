"""Does a t2v denoiser bind each colour to its own object? A teacher-forced probe.

For the two-object clips of a `shapes` token cache, the cells of one object (those the
other object does not touch) are masked and nothing else; the denoiser predicts them in
one pass, at the diffusion time whose mask ratio is the hole's. Nothing is sampled, so
the probe is fast and has no sampler settings. It reports, per hidden object:

- `nll`: the mean negative log-likelihood of the hidden tokens under three captions:
  `true`; `swapped`, the two colour words exchanged (a denoiser that ties each colour to
  its object's shape and motion, which the hole's place and path show, pays more here);
  `recoloured`, the hidden object's colour word replaced by one the caption does not use
  (a denoiser that reads its caption's colours pays more here).
- `colour_mass`: under the true caption, how much of the predicted distribution over a
  hidden token goes to codes of the hidden object's colour, of the visible object's
  colour, and of the background. A code's colour is counted on the cache itself
  (`colour_table`: how often each code id covers an object of each caption colour, or
  no object). With the other object in plain view, the hidden one's colour is the
  caption's other colour, so a denoiser that reads the clip and the caption together puts
  more mass on `hidden` than on `visible`.

  python tools/binding_probe.py --workdir=DIR [--cache=DIR/t2v_tokens.npz] [--num_clips=192]

Session 26 (the session-24 main-job denoiser, 192 two-object clips of its cache):
`swapped` costs nothing (5.19 against 5.19 nats), `recoloured` 1.3-1.4 nats more, and the
colour mass is 0.11 hidden / 0.11 visible / 0.54 background: the denoiser uses the set
of caption colours but neither binds them nor excludes the one already drawn. With the
phrase-windowed text encoder (`text.builtin.window=2`, the toy default since) swapping
cost 0.13-0.29 nats and the hidden colour drew more mass than the visible one (0.134
against 0.104 for one training seed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from motionaura_jax import pipelines  # noqa: E402
from motionaura_jax.data.shapes import caption_for, parse_caption  # noqa: E402
from motionaura_jax.denoiser.diffusion import time_of_mask_ratio  # noqa: E402
from motionaura_jax.train import t2v  # noqa: E402
from motionaura_jax.train.t2v_data import TokenCache  # noqa: E402
from tools.text_usage_probe import print_json  # noqa: E402


def caption_colours(caption: str) -> list[str]:
    """The caption's colour words in order, one per object phrase."""
    return [o["color"] for o in parse_caption(caption)]


def caption_variants(caption: str, colours: Sequence[str], hidden: int) -> dict[str, str]:
    """'true', 'swapped' (the first two objects' colours exchanged) and 'recoloured'
    (object `hidden`'s colour replaced by the first of `colours` the caption does not use),
    written back through the data's own caption template."""
    objects = parse_caption(caption)
    named = [o["color"] for o in objects]
    if len(named) < 2:
        raise ValueError(f"caption {caption!r} names fewer than two colours of {colours}")
    with_speed = any(o["speed"] for o in objects)

    def recolour(new: dict[int, str]) -> str:
        changed = [{**o, "color": new.get(k, o["color"])} for k, o in enumerate(objects)]
        return caption_for(changed, with_speed=with_speed)

    unused = next(c for c in colours if c not in named)
    return {
        "true": caption,
        "swapped": recolour({0: named[1], 1: named[0]}),
        "recoloured": recolour({hidden: unused}),
    }


def colour_table(
    ids: np.ndarray,
    object_cells: np.ndarray,
    captions: Sequence[str],
    colours: Sequence[str],
    vocab_size: int,
) -> np.ndarray:
    """(vocab_size, len(colours) + 1): P(colour | code id), the last column no object.

    Counted over the cells of `ids` (N, n, h, w): a cell that only object k touches
    counts for object k's caption colour, a cell no object touches for the background,
    a cell two objects touch for neither. Ids never seen get a row of zeros."""
    counts = np.zeros((vocab_size, len(colours) + 1))
    for clip_ids, cells, caption in zip(ids, object_cells, captions, strict=True):
        np.add.at(counts[:, -1], clip_ids[~cells.any(0)], 1)
        for k, colour in enumerate(caption_colours(caption)[: len(cells)]):
            alone = cells[k] & ~np.delete(cells, k, axis=0).any(0)
            np.add.at(counts[:, colours.index(colour)], clip_ids[alone], 1)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def probe(workdir: str, cache_path: str | None = None, num_clips: int = 192) -> dict:
    """The scores above for the first `num_clips` two-object clips (two colours) of the
    cache (default: the run's own, `tokens.cache_path` or `<workdir>/t2v_tokens.npz`)."""
    pipe = pipelines.TextToVideo.from_workdir(workdir)
    colours = tuple(pipe.config.data.colors)
    cache = TokenCache(cache_path or t2v.cache_path(pipe.config, workdir))
    if not cache.has_objects:
        raise ValueError(
            f"the cache {cache.path!r} has no object cells: write it from `shapes` clips "
            "with this version (delete it and rerun the t2v stage, or tools/tokenize_dataset.py)"
        )
    batch = cache.batch(np.arange(len(cache)))
    captions = [str(c) for c in cache.arrays["caption"]]
    ids = np.asarray(pipe.tokenizer.codes_to_ids(jnp.asarray(batch["tokens"])))
    cells = batch["object_cells"]
    table = colour_table(ids, cells, captions, colours, pipe.tokenizer.vocab_size)
    two = [
        i
        for i, caption in enumerate(captions)
        if cells[i, :2].reshape(2, -1).any(-1).all() and len(set(caption_colours(caption)[:2])) == 2
    ][:num_clips]
    if not two:
        raise ValueError(f"the cache {cache.path!r} holds no two-object clips of two colours")
    mask_id = pipe.tokenizer.vocab_size

    @jax.jit
    def log_probs(z, t, text, text_mask, fps):
        logits = pipe.denoiser.apply(
            {"params": pipe.params},
            z,
            t,
            text,
            text_mask=text_mask,
            fps=fps,
            drop_text=jnp.zeros(z.shape[0], bool),
        )
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    result: dict = {"num_clips": len(two)}
    for hidden in (0, 1):
        hole = cells[two, hidden] & ~cells[two, 1 - hidden]  # (N, n, h, w)
        z = np.where(hole, mask_id, ids[two])
        t = time_of_mask_ratio(jnp.asarray(hole.reshape(len(two), -1).mean(-1)))
        variants = [caption_variants(captions[i], colours, hidden) for i in two]
        flat_hole = hole.reshape(len(two), -1)
        target = ids[two].reshape(len(two), -1)
        nll, mass = {}, []
        for name in ("true", "swapped", "recoloured"):
            emb, text_mask = pipe.text.embed([v[name] for v in variants])
            logp = np.asarray(
                log_probs(
                    jnp.asarray(z),
                    t,
                    jnp.asarray(emb, jnp.float32),
                    jnp.asarray(text_mask),
                    jnp.asarray(batch["fps"][two]),
                )
            ).reshape(len(two), -1, mask_id)
            token_nll = -np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
            nll[name] = float(token_nll[flat_hole].mean())
            if name == "true":
                by_colour = np.exp(logp) @ table  # (N, L, colours + 1)
                for j, i in enumerate(two):
                    named = caption_colours(captions[i])
                    own, other = named[hidden], named[1 - hidden]
                    held = by_colour[j][flat_hole[j]].mean(0)
                    mass.append([held[colours.index(own)], held[colours.index(other)], held[-1]])
        hidden_mass, visible_mass, background = np.mean(mass, axis=0)
        result[f"object{hidden}"] = {
            "nll": nll,
            "colour_mass": {
                "hidden": float(hidden_mass),
                "visible": float(visible_mass),
                "background": float(background),
            },
        }
    return result


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder with t2v/")
    parser.add_argument("--cache", default="", help="token cache; unset: the run's own")
    parser.add_argument("--num_clips", type=int, default=192)
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    print_json(probe(args.workdir, args.cache or None, args.num_clips), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
