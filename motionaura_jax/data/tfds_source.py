"""TFDS builders as random-access Grain sources in the `shapes` record schema.

`tfds.data_source(name, split=...)` gives random access to a prepared builder without
a tf.data pipeline. TensorFlow Datasets is imported only when such a source is built,
so `import motionaura_jax.data` never imports TensorFlow.

Records: `video` float32 (T, H, W, 3) in [-1, 1] (first T frames, each resized and
centre-cropped to (H, W)), `caption` str when the builder has `data.caption_key`,
`fps` float32 (the builder's `fps` feature if any, else `data.fps`), `index` int32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from motionaura_jax.data import video_io


class TfdsVideoSource:
    """Wraps a TFDS random-access source (`len`, `[i]`).

    Args:
      data_config: a `tfds_config()` ConfigDict.
      split: 'train' reads `data.train_split`, anything else `data.eval_split`.
      bucket: {frames, height, width} to produce.
      source: an already opened random-access source of feature dicts (tests, or a
        caller that opened the builder itself); by default `tfds.data_source(...)`.
    """

    def __init__(
        self,
        data_config: ml_collections.ConfigDict,
        split: str,
        bucket: Mapping[str, Any],
        *,
        source: Sequence[Mapping[str, Any]] | None = None,
    ):
        if source is None:
            if not data_config.tfds_name:
                raise ValueError("data.tfds_name is empty; name a TFDS builder, e.g. 'ucf101'")
            import tensorflow_datasets as tfds  # lazy: pulls in TensorFlow

            tfds_split = data_config.train_split if split == "train" else data_config.eval_split
            source = tfds.data_source(
                data_config.tfds_name, split=tfds_split, data_dir=data_config.data_dir or None
            )
        self._source = source
        self.video_key = data_config.video_key
        self.caption_key = data_config.caption_key
        self.default_fps = float(data_config.fps)
        self.frames = int(bucket["frames"])
        self.height, self.width = int(bucket["height"]), int(bucket["width"])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features = self._source[int(index)]
        if self.video_key not in features:
            raise ValueError(
                f"TFDS example has no {self.video_key!r} feature (has {sorted(features)}); "
                "set data.video_key"
            )
        frames = np.asarray(features[self.video_key])
        if frames.ndim == 3:  # an image builder: one frame
            frames = frames[None]
        if frames.shape[0] < self.frames:
            raise ValueError(
                f"example {index} has {frames.shape[0]} frames, fewer than data.frames="
                f"{self.frames}; lower data.frames or filter the builder"
            )
        frames = frames[: self.frames]
        if frames.dtype != np.uint8:  # float builders in [0, 1]
            frames = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        if frames.shape[1:3] != (self.height, self.width):
            frames = np.stack(
                [video_io.resize_center_crop(f, self.height, self.width) for f in frames]
            )
        record: dict[str, Any] = {"video": video_io.to_model_range(frames)}
        if self.caption_key and self.caption_key in features:
            caption = features[self.caption_key]
            record["caption"] = (
                caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
            )
        record["fps"] = np.float32(features.get("fps", self.default_fps))
        record["index"] = np.int32(index)
        return record
