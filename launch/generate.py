"""Generates videos from text with a trained t2v run.

  python launch/generate.py --workdir=DIR --prompt="a red circle moves left" --output=out.mp4
  python launch/generate.py --workdir=DIR --prompt="a red circle moves left" \
      --prompt="a blue square moves up" --output=out.gif --steps=10 --cfg=3 --save-npy

Reads DIR/t2v and its tokenizer (DIR/tokenizer unless the t2v config names another).
The output's suffix picks the format (.mp4, .gif, .npy); with several prompts the files
get an index suffix (out_0.mp4, out_1.mp4, ...). `--save-npy` also writes each clip's
uint8 (T, H, W, 3) frames next to the video as .npy.
"""

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from motionaura_jax import pipelines  # noqa: E402


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder holding t2v/")
    parser.add_argument(
        "--prompt", action="append", required=True, help="caption; repeat for several clips"
    )
    pipelines.add_sampling_args(parser)
    parser.add_argument("--tokenizer-dir", default=None, help="override the tokenizer folder")
    parser.add_argument("--step", type=int, default=None, help="t2v checkpoint step")
    parser.add_argument("--save-npy", action="store_true", help="also write frames as .npy")
    args = parser.parse_args(argv)
    if os.path.splitext(args.output)[1].lower() not in pipelines.VIDEO_SUFFIXES:
        parser.error(f"--output={args.output!r} must end in one of {pipelines.VIDEO_SUFFIXES}")
    empty = [i for i, p in enumerate(args.prompt) if not p.strip()]
    if empty:
        parser.error(f"--prompt number {empty[0] + 1} is empty; give every clip a caption")
    return args


def output_paths(output: str, count: int) -> list[str]:
    """`out.mp4` for one clip, `out_0.mp4, out_1.mp4, ...` for several."""
    if count == 1:
        return [output]
    stem, suffix = os.path.splitext(output)
    return [f"{stem}_{i}{suffix}" for i in range(count)]


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Runs the CLI; returns the paths written."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    pipe = pipelines.TextToVideo.from_workdir(
        args.workdir, step=args.step, tokenizer_dir=args.tokenizer_dir
    )
    frames = pipe.generate(
        args.prompt,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        num_frames=args.num_frames,
        sampler=args.sampler,
        temperature=args.temperature,
    )
    written = []
    for path, clip in zip(output_paths(args.output, len(frames)), frames):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        written.append(pipelines.save_video(path, clip, fps=pipe.fps))
        if args.save_npy and not path.lower().endswith(".npy"):
            written.append(pipelines.save_npy(os.path.splitext(path)[0] + ".npy", clip))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
