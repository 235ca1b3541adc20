"""Throughput of the `shapes` input pipeline at the toy size (9 x 64 x 64), as JSON.

  python tools/bench_data.py --workers=0,2 --batch_size=16 --seconds=10

For each worker count, builds the train iterator, discards the first batches (worker
start-up, caches) and counts clips for about `--seconds`. Also times the bare source
(`ShapesSource[i]`, no Grain). Compare `ms_per_clip` with a train step's time per
clip: the pipeline must stay far below it.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import os
import time

from absl import app, flags

from motionaura_jax.data import config as config_lib
from motionaura_jax.data import pipeline
from motionaura_jax.data.shapes import ShapesSource

_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker counts to measure.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch size.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Measuring time per setting.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 3, "Batches discarded before timing.")


def _measure(num_workers: int) -> dict[str, float]:
    cfg = config_lib.shapes_config()
    cfg.num_workers = num_workers
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=_BATCH.value, seed=0, process_index=0, process_count=1
    )
    try:
        for _ in range(_WARMUP.value):
            next(it)
        clips, start = 0, time.perf_counter()
        while time.perf_counter() - start < _SECONDS.value:
            clips += len(next(it)["index"])
        elapsed = time.perf_counter() - start
    finally:
        if hasattr(it, "close"):
            it.close()
    return {
        "workers": num_workers,
        "clips_per_s": round(clips / elapsed, 1),
        "ms_per_clip": round(1000 * elapsed / clips, 2),
        "clips": clips,
    }


def main(argv: list[str]) -> None:
    del argv
    cfg = config_lib.shapes_config()
    source = ShapesSource(cfg, "train")
    start, n = time.perf_counter(), 100
    for i in range(n):
        source[i]
    bare_ms = 1000 * (time.perf_counter() - start) / n
    report = {
        "clip": f"{cfg.frames}x{cfg.height}x{cfg.width}",
        "batch_size": _BATCH.value,
        "cpu_count": os.cpu_count(),
        "bare_source_ms_per_clip": round(bare_ms, 2),
        "pipeline": [_measure(int(w)) for w in _WORKERS.value],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
