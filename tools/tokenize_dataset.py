"""Pre-tokenises a dataset split with a frozen stage-1 tokenizer for the `t2v` stage.

Writes the codes and the text embeddings of the first N clips of a split into one `.npz`
file (format: `motionaura_jax.train.t2v_data.write_token_cache`), stamped with the
tokenizer's folder, step and weight hash so that `t2v` refuses it after the tokenizer
changes. Point the t2v config at it:

  python tools/tokenize_dataset.py --config=configs/t2v.py:toy --workdir=DIR --num_clips=20000
  python launch/train.py --config=configs/t2v.py:toy --workdir=DIR

(the default output, DIR/t2v_tokens.npz, is where the t2v stage looks; `--out` and
`--config.tokens.cache_path` name another file.)

The data and text sections come from the t2v config (`--config`, with the same dotted
`--config.a.b=value` overrides as launch/train.py); the tokenizer from `--tokenizer_dir`
or, by default, the config's `tokenizer_dir` / `DIR/tokenizer`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from motionaura_jax import config as config_lib  # noqa: E402
from motionaura_jax.train import t2v, t2v_data  # noqa: E402


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/t2v.py:toy", help="t2v config and variant")
    parser.add_argument("--workdir", default="", help="run folder holding tokenizer/")
    parser.add_argument("--tokenizer_dir", default="", help="stage-1 folder or export")
    parser.add_argument("--out", default="", help="output .npz (default: the config's cache)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_clips", type=int, default=20_000)
    parser.add_argument("--batch_size", type=int, default=64)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--config."):
            parser.error(f"unknown argument {arg!r}; config overrides look like --config.a.b=v")
        overrides.append(arg[len("--config.") :])
    return args, overrides


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the tool; returns the cache metadata."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = config_lib.load_config(args.config, overrides)
    folder = args.tokenizer_dir or t2v.tokenizer_dir(config, args.workdir or None)
    out = args.out or t2v.cache_path(config, args.workdir or None)
    tokenizer = t2v_data.load_tokenizer(folder, config.tokenizer_step)
    text = t2v_data.make_text(config)
    start = time.perf_counter()
    meta = t2v_data.write_token_cache(
        out,
        tokenizer,
        text,
        config.data,
        split=args.split,
        num_clips=args.num_clips,
        batch_size=args.batch_size,
    )
    print(
        json.dumps(
            {"out": os.path.abspath(out), "seconds": round(time.perf_counter() - start, 1), **meta}
        )
    )
    return meta


if __name__ == "__main__":
    main()
