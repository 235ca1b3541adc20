"""Precomputes the text embeddings of a dataset's captions (D9, `mode='precomputed'`).

Each distinct caption is encoded once by the configured text encoder and written to an
ArrayRecord file with a `.meta.json` sidecar (format: `motionaura_jax.encoders.precomputed`).
Point the training config's `text.precomputed_path` at the output and set
`text.mode='precomputed'`.

Examples:
  # the built-in shapes dataset with the built-in byte-level encoder
  python tools/precompute_text_embeddings.py --out=/tmp/shapes_text.arrayrecord \
      --dataset=shapes --split=train --num=100000
  # any captions (one per line) with T5-XXL from a local folder, stored as bfloat16
  python tools/precompute_text_embeddings.py --out=/data/t5xxl.arrayrecord \
      --captions_file=captions.txt --kind=t5 --path=/ckpt/t5-v1_1-xxl \
      --dtype=bfloat16 --storage_dtype=bfloat16
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from motionaura_jax.encoders import precomputed, text


def shapes_captions(split: str, num: int | None) -> Iterator[str]:
    """Captions of the first `num` clips of the `shapes` split, without rendering pixels."""
    from motionaura_jax.data import config as data_config
    from motionaura_jax.data import shapes

    cfg = data_config.shapes_config()
    source = shapes.ShapesSource(cfg, split)
    count = len(source) if num is None else min(num, len(source))
    for i in tqdm(range(count), desc=f"shapes {split} captions", unit="clip"):
        yield source.caption(i)


def file_captions(path: str) -> list[str]:
    """One caption per line; blank lines are errors (line numbers are 1-based)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise ValueError(f"{path} has empty captions on lines {empty[:10]}; remove them")
    return lines


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output ArrayRecord file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions_file", help="text file, one caption per line")
    source.add_argument("--dataset", choices=["shapes"], help="built-in dataset")
    parser.add_argument("--split", default="train", help="split of --dataset")
    parser.add_argument("--num", type=int, default=None, help="first N clips of --dataset")
    parser.add_argument("--kind", default="builtin", choices=text.KINDS)
    parser.add_argument("--path", default="", help="T5 folder for --kind=t5")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--on_overlong", default="truncate", choices=text.ON_OVERLONG)
    parser.add_argument("--dtype", default="float32", help="encoder compute dtype")
    parser.add_argument(
        "--storage_dtype", default="float32", choices=sorted(precomputed.STORAGE_DTYPES)
    )
    parser.add_argument("--batch_size", type=int, default=64)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the tool; returns the metadata written next to the output."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = text.text_config(
        args.kind,
        path=args.path,
        max_length=args.max_length,
        on_overlong=args.on_overlong,
        dtype=args.dtype,
    )
    encoder = text.make_text_encoder(config)
    if args.captions_file:
        captions = file_captions(args.captions_file)
    else:
        captions = list(shapes_captions(args.split, args.num))
    meta = precomputed.write_precomputed(
        args.out, encoder, captions, batch_size=args.batch_size, dtype=args.storage_dtype
    )
    summary = {k: v for k, v in meta.items() if k != "probe"}
    summary["captions_read"] = len(captions)
    print(json.dumps(summary))
    return meta


if __name__ == "__main__":
    main()
