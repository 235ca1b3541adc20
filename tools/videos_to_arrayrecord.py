"""Converts a folder of videos + a caption table into ArrayRecord shards.

  python tools/videos_to_arrayrecord.py --video_dir=clips/ --captions=clips/captions.csv \
      --output=data/clips/train --frames=17 --height=256 --width=256 --num_shards=8

The caption table is a CSV with a `file,caption` header or JSONL lines
`{"file": ..., "caption": ...}`; file names are relative to --video_dir. Unreadable,
missing and too-short videos are skipped; the counts are logged and printed as JSON.
Read the shards with `arrayrecord_config(paths=["data/clips/train-*"])`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json

from absl import app, flags

from motionaura_jax.data import arrayrecord

_VIDEO_DIR = flags.DEFINE_string(
    "video_dir", None, "Folder holding the video files.", required=True
)
_CAPTIONS = flags.DEFINE_string("captions", None, "CSV or JSONL: file,caption.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Shard path prefix.", required=True)
_FRAMES = flags.DEFINE_integer("frames", 17, "Frames per clip (1 + 4k).")
_HEIGHT = flags.DEFINE_integer("height", 256, "Output height (multiple of 16).")
_WIDTH = flags.DEFINE_integer("width", 256, "Output width (multiple of 16).")
_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of ArrayRecord files.")
_CLIPS = flags.DEFINE_integer("clips_per_video", 1, "Consecutive clips cut per video.")
_ENCODING = flags.DEFINE_enum("encoding", "raw", ["raw", "jpeg"], "Frame storage.")


def main(argv: list[str]) -> None:
    del argv
    if (_FRAMES.value - 1) % 4 or _HEIGHT.value % 16 or _WIDTH.value % 16:
        raise ValueError(
            f"--frames must be 1 + 4k and --height/--width multiples of 16, got "
            f"{_FRAMES.value}, {_HEIGHT.value}, {_WIDTH.value}; e.g. use 17, 256, 256"
        )
    stats = arrayrecord.convert_videos(
        _VIDEO_DIR.value,
        _CAPTIONS.value,
        _OUTPUT.value,
        frames=_FRAMES.value,
        height=_HEIGHT.value,
        width=_WIDTH.value,
        num_shards=_SHARDS.value,
        clips_per_video=_CLIPS.value,
        encoding=_ENCODING.value,
    )
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    app.run(main)
