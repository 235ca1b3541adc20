"""Sketch-guided video inpainting with a trained inpaint run (section 4; D10).

  python launch/inpaint.py --workdir=DIR --video=in.mp4 --mask=mask.png --sketch=sketch.png \
      --prompt="a red object moves left" --output=out.mp4 [--steps=10 --cfg=3 --seed=0]

Reads DIR/inpaint and the t2v base (and tokenizer) its config names. `--mask` is one image
for every frame or a mask video with one frame per video frame (white = inpaint); it must
have the video's size. The video's first `--num-frames` frames (default: the training
clips' length, 1 + 4k) are inpainted; pixels outside the mask are kept as they are.
The output's suffix picks the format (.mp4, .gif, .npy).
"""

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from motionaura_jax import pipelines  # noqa: E402

OUTPUT_SUFFIXES = pipelines.VIDEO_SUFFIXES


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder holding inpaint/")
    parser.add_argument("--video", required=True, help="input video (.mp4, ...) or .npy frames")
    parser.add_argument("--mask", required=True, help="mask image (.png) or mask video (.mp4)")
    parser.add_argument("--sketch", required=True, help="sketch image (.png/.jpg) of the object")
    parser.add_argument("--prompt", required=True, help="caption, e.g. 'a red object moves left'")
    pipelines.add_sampling_args(parser)
    parser.add_argument("--step", type=int, default=None, help="inpaint checkpoint step")
    parser.add_argument("--base-dir", default=None, help="override the t2v base folder")
    args = parser.parse_args(argv)
    if os.path.splitext(args.output)[1].lower() not in OUTPUT_SUFFIXES:
        parser.error(f"--output={args.output!r} must end in one of {OUTPUT_SUFFIXES}")
    if not args.prompt.strip():
        parser.error("--prompt is empty; describe the object, e.g. 'a red object moves left'")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Runs the CLI; returns the path written."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    pipe = pipelines.Inpainter.from_workdir(args.workdir, step=args.step, base_dir=args.base_dir)
    frames_wanted = args.num_frames or int(pipe.config.data.frames)
    if args.video.lower().endswith(".npy"):
        video, fps = np.load(args.video)[:frames_wanted], pipe.fps
    else:
        video, fps = pipelines.read_video_file(args.video, frames_wanted)
    if len(video) < frames_wanted:
        raise SystemExit(
            f"--video={args.video!r} has {len(video)} frames, fewer than the "
            f"{frames_wanted} asked for; pass --num-frames=1+4k <= {len(video)}"
        )
    mask = pipelines.read_mask_file(args.mask, frames_wanted)
    sketch = pipelines.read_image_file(args.sketch, "sketch")
    out = pipe.inpaint(
        video,
        mask,
        sketch,
        args.prompt,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        sampler=args.sampler,
        temperature=args.temperature,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    path = pipelines.save_video(args.output, out, fps=fps or pipe.fps)
    print(path)
    return path


if __name__ == "__main__":
    main()
