"""Oracle accuracy on ground-truth `shapes` clips, per attribute (DESIGN §4: >= 99%).

  python tools/oracle_accuracy.py --num=1000 --seed=0 --noise=0.1 --blur=0.7

Renders `--num` eval clips, optionally blurs them and adds noise
(`oracle.degrade`), scores each against its true caption (with speed) and prints the
fraction of objects whose colour, shape, motion and speed the oracle recovers, the
fraction of clips with the right object count, and the clips per second, as JSON.
Use --motions/--speeds/--frames to evaluate other configs.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import time

import numpy as np
from absl import app, flags

from motionaura_jax.data import config as config_lib
from motionaura_jax.data import oracle
from motionaura_jax.data.shapes import COLORS, MOTIONS, SHAPES, SPEEDS, ShapesSource, caption_for

_NUM = flags.DEFINE_integer("num", 1000, "Number of clips.")
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed.")
_NOISE = flags.DEFINE_float("noise", 0.0, "Gaussian noise std, in [-1, 1] units.")
_BLUR = flags.DEFINE_float("blur", 0.0, "Gaussian blur sigma, in pixels.")
_FRAMES = flags.DEFINE_integer("frames", None, "Override data.frames.")
_MOTIONS = flags.DEFINE_list("motions", None, "Override data.motions.")
_SPEEDS = flags.DEFINE_list("speeds", None, "Override data.speeds.")
_SHOW_ERRORS = flags.DEFINE_integer("show_errors", 5, "Print up to this many failures.")


def main(argv: list[str]) -> None:
    del argv
    cfg = config_lib.shapes_config()
    cfg.seed, cfg.num_eval = _SEED.value, _NUM.value
    if _FRAMES.value:
        cfg.frames = _FRAMES.value
    if _MOTIONS.value:
        cfg.motions = tuple(_MOTIONS.value)
    if _SPEEDS.value:
        cfg.speeds = tuple(_SPEEDS.value)
    source = ShapesSource(cfg, "eval")
    keys = ("color", "shape", "motion", "speed")
    hits = {k: [] for k in keys}
    counts, errors = [], []
    start = time.perf_counter()
    for i in range(_NUM.value):
        rec = source[i]
        objs = [
            {
                "color": COLORS[rec["color"][k]],
                "shape": SHAPES[rec["shape"][k]],
                "motion": MOTIONS[rec["motion"][k]] if rec["motion"][k] >= 0 else None,
                "speed": SPEEDS[rec["speed"][k]] if rec["speed"][k] >= 0 else None,
            }
            for k in range(int(rec["num_objects"]))
        ]
        caption = caption_for(objs, with_speed=cfg.frames > 1)
        video = oracle.degrade(rec["video"], noise=_NOISE.value, blur=_BLUR.value, seed=i)
        result = oracle.score_caption(video, caption)
        for obj in result["objects"]:
            for k in keys:
                if obj[k] is not None:
                    hits[k].append(obj[k])
        counts.append(result["count"])
        if not result["all"] and len(errors) < _SHOW_ERRORS.value:
            found = [(t.color, t.shape, t.motion, t.speed) for t in oracle.analyze_clip(video)]
            errors.append({"index": i, "caption": caption, "oracle": found})
    seconds = time.perf_counter() - start
    report = {k: round(float(np.mean(v)), 4) if v else None for k, v in hits.items()}
    report.update(
        count=round(float(np.mean(counts)), 4),
        num_clips=_NUM.value,
        num_objects=len(hits["color"]),
        seed=_SEED.value,
        noise=_NOISE.value,
        blur=_BLUR.value,
        clips_per_s=round(_NUM.value / seconds, 1),
        errors=errors,
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
