"""Video file IO: decode with PyAV, resize + centre-crop, (de)serialise clips.

A stored clip is one msgpack map (a record of an ArrayRecord shard):
  {"frames": bytes, "encoding": "raw" | "jpeg", "shape": [T, H, W, 3],
   "caption": str, "fps": float, "source": str}
`raw` frames are the uint8 (T, H, W, 3) array's bytes; `jpeg` frames are a list of
per-frame JPEG bytes (about 10x smaller, lossy). Frames stay uint8 on disk and become
float32 in [-1, 1] (D1) only when read.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
from PIL import Image

ENCODINGS = ("raw", "jpeg")


class VideoDecodeError(ValueError):
    """A video file could not be read (corrupt, truncated, not a video)."""


def resize_center_crop(frame_hw3: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scales the short side to cover (height, width), then crops the centre. uint8 in/out."""
    h, w = frame_hw3.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    image = Image.fromarray(frame_hw3)
    if (new_h, new_w) != (h, w):
        # Box (area) filtering when shrinking avoids aliasing; bicubic when growing.
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
        image = image.resize((new_w, new_h), resample=resample)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.asarray(image)[top : top + height, left : left + width]


def decode_clips(
    path: str, *, frames: int, height: int, width: int, max_clips: int = 1
) -> Iterator[tuple[np.ndarray, float]]:
    """Yields up to `max_clips` consecutive clips (uint8 (frames, H, W, 3), fps) of a file.

    Frames keep the file's frame rate (no resampling); a file shorter than one clip
    yields nothing. Raises VideoDecodeError for unreadable files.
    """
    import av  # PyAV pulls in FFmpeg: import only where videos are decoded

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            clip: list[np.ndarray] = []
            emitted = 0
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                clip.append(resize_center_crop(rgb, height, width))
                if len(clip) == frames:
                    yield np.stack(clip), fps
                    emitted += 1
                    clip = []
                    if emitted == max_clips:
                        return
    except (av.FFmpegError, OSError, EOFError) as e:  # corrupt or truncated stream
        raise VideoDecodeError(f"{path}: {e}") from e


def write_video(path: str, frames_thw3: np.ndarray, fps: float = 8.0, codec: str = "mpeg4") -> None:
    """Encodes uint8 (T, H, W, 3) frames to a video file (e.g. .mp4) with PyAV."""
    from fractions import Fraction

    import av

    frames_thw3 = np.asarray(frames_thw3)
    if frames_thw3.dtype != np.uint8 or frames_thw3.ndim != 4 or frames_thw3.shape[-1] != 3:
        raise ValueError(
            f"write_video expects uint8 (T, H, W, 3), got {frames_thw3.dtype} "
            f"{frames_thw3.shape}; convert with ((video + 1) * 127.5).round().astype(np.uint8)"
        )
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames_thw3.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for rgb in frames_thw3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_clip(
    frames_thw3: np.ndarray, caption: str, fps: float, *, encoding: str = "raw", source: str = ""
) -> bytes:
    """Serialises a uint8 clip and its caption into one msgpack record."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
    frames_thw3 = np.ascontiguousarray(frames_thw3, np.uint8)
    if encoding == "raw":
        payload: Any = frames_thw3.tobytes()
    else:
        payload = []
        for rgb in frames_thw3:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
            payload.append(buf.getvalue())
    return msgpack.packb(
        {
            "frames": payload,
            "encoding": encoding,
            "shape": list(frames_thw3.shape),
            "caption": caption,
            "fps": float(fps),
            "source": source,
        }
    )


def decode_clip(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_clip`: {'frames': uint8 (T, H, W, 3), 'caption', 'fps', 'source'}."""
    data = msgpack.unpackb(record)
    shape = tuple(data["shape"])
    if data["encoding"] == "raw":
        frames = np.frombuffer(data["frames"], np.uint8).reshape(shape)
    elif data["encoding"] == "jpeg":
        frames = np.stack(
            [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in data["frames"]]
        )
    else:
        raise ValueError(f"record has unknown encoding {data['encoding']!r}; rewrite the shard")
    return {
        "frames": frames,
        "caption": data["caption"],
        "fps": data["fps"],
        "source": data.get("source", ""),
    }


def to_model_range(frames_thw3: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (D1)."""
    return frames_thw3.astype(np.float32) / 127.5 - 1.0
