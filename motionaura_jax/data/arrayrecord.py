"""Real videos as ArrayRecord shards: conversion (files -> shards) and a Grain source.

`convert_videos` reads a caption table (CSV with a header `file,caption` or JSONL
lines `{"file": ..., "caption": ...}`), decodes each file with PyAV
(`video_io.decode_clips`), resizes and centre-crops to (H, W), cuts fixed-length clips
at the file's own frame rate and writes `video_io.encode_clip` records round-robin
into `num_shards` ArrayRecord files. Corrupt, truncated or missing files and files
shorter than one clip are skipped and counted; nothing about one bad file stops the
run.

`ArrayRecordVideoSource` reads those shards with random access and yields the
`shapes` record schema for the fields it has: `video` float32 (T, H, W, 3) in [-1, 1],
`caption` str, `fps` float32, `index` int32 (no masks, sketches or attributes).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from motionaura_jax.data import video_io


def read_captions(path: str) -> list[tuple[str, str]]:
    """(file, caption) pairs from a CSV (header `file,caption`) or JSONL table."""
    if not path.endswith((".csv", ".jsonl", ".json")):
        raise ValueError(f"caption table {path!r} must end in .csv or .jsonl")
    rows: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith((".jsonl", ".json")):
            for n, line in enumerate(f, start=1):
                if line.strip():
                    item = json.loads(line)
                    if "file" not in item or "caption" not in item:
                        raise ValueError(
                            f"{path}:{n} lacks 'file' or 'caption'; write one "
                            '{"file": ..., "caption": ...} object per line'
                        )
                    rows.append((item["file"], item["caption"]))
        elif path.endswith(".csv"):
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path} has columns {reader.fieldnames}; the header must name 'file' "
                    "and 'caption'"
                )
            rows = [(r["file"], r["caption"]) for r in reader]
    return rows


def convert_videos(
    video_dir: str,
    captions_path: str,
    output_prefix: str,
    *,
    frames: int,
    height: int,
    width: int,
    num_shards: int = 1,
    clips_per_video: int = 1,
    encoding: str = "raw",
) -> dict[str, Any]:
    """Writes `<output_prefix>-0000N-of-0000M.array_record` shards.

    Returns:
      {'videos', 'clips', 'corrupt', 'too_short', 'missing', 'shards': [paths]}.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    rows = read_captions(captions_path)
    out_dir = os.path.dirname(output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    shards = [
        f"{output_prefix}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)
    ]
    # group_size:1 keeps each record individually addressable (random access).
    writers = [ArrayRecordWriter(p, "group_size:1") for p in shards]
    stats = {"videos": len(rows), "clips": 0, "corrupt": 0, "too_short": 0, "missing": 0}
    try:
        for name, caption in rows:
            path = name if os.path.isabs(name) else os.path.join(video_dir, name)
            if not os.path.exists(path):
                stats["missing"] += 1
                logging.warning("missing video %s", path)
                continue
            try:
                clips = list(
                    video_io.decode_clips(
                        path, frames=frames, height=height, width=width, max_clips=clips_per_video
                    )
                )
            except video_io.VideoDecodeError as e:
                stats["corrupt"] += 1
                logging.warning("skipping unreadable video: %s", e)
                continue
            if not clips:
                stats["too_short"] += 1
                logging.warning("skipping %s: fewer than %d frames", path, frames)
                continue
            for clip, fps in clips:
                record = video_io.encode_clip(clip, caption, fps, encoding=encoding, source=name)
                writers[stats["clips"] % num_shards].write(record)
                stats["clips"] += 1
    finally:
        for w in writers:
            w.close()
    stats["shards"] = shards
    logging.info(
        "wrote %d clips from %d videos into %d shards; skipped %d corrupt, %d too short, "
        "%d missing",
        stats["clips"],
        stats["videos"],
        num_shards,
        stats["corrupt"],
        stats["too_short"],
        stats["missing"],
    )
    return stats


def expand_paths(paths: Sequence[str] | str) -> list[str]:
    """Shard files from paths and glob patterns, sorted per pattern."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p]
    files: list[str] = []
    for p in paths:
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        files += matches
    missing = [f for f in files if not os.path.exists(f)]
    if not files or missing:
        raise ValueError(
            f"no ArrayRecord shards at {list(paths)} (missing: {missing}); set data.paths "
            "to files written by tools/videos_to_arrayrecord.py"
        )
    return files


class ArrayRecordVideoSource:
    """Grain RandomAccessDataSource over clip shards (`len`, `[i]`, picklable).

    Args:
      paths: shard files or glob patterns.
      frames: clip length to return; clips are cut to their first `frames` frames
        (None keeps the stored length).
      height, width: expected resolution (None accepts any); a mismatch is an error,
        since stored clips are not resized at read time.
    """

    def __init__(
        self,
        paths: Sequence[str] | str,
        *,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        import grain

        self._paths = expand_paths(paths)
        self._source = grain.sources.ArrayRecordDataSource(self._paths)
        self.frames, self.height, self.width = frames, height, width

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f"ArrayRecordVideoSource({len(self._paths)} shards, {len(self)} clips)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = video_io.decode_clip(self._source[int(index)])
        frames = clip["frames"]
        t, h, w, _ = frames.shape
        if self.frames is not None:
            if self.frames > t:
                raise ValueError(
                    f"asked for {self.frames} frames but {self._paths[0]}... stores {t}; "
                    f"use frames <= {t} or rewrite the shards with more frames"
                )
            frames = frames[: self.frames]
        for name, want, have in (("height", self.height, h), ("width", self.width, w)):
            if want is not None and want != have:
                raise ValueError(
                    f"data.{name}={want} but the shards store {have}; set data.{name}={have} "
                    "or rewrite the shards at that resolution"
                )
        return {
            "video": video_io.to_model_range(frames),
            "caption": clip["caption"],
            "fps": np.float32(clip["fps"]),
            "index": np.int32(index),
        }
