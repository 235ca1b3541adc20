"""Data: the synthetic `shapes` source and its oracle, video shards, Grain pipelines.

Importing this package imports NumPy, Grain and JAX only: PyAV, ArrayRecord writers and
TensorFlow Datasets load lazily where they are used.
"""

from motionaura_jax.data.config import (
    arrayrecord_config,
    bucket_specs,
    shapes_config,
    tfds_config,
    validate,
)
from motionaura_jax.data.pipeline import eval_batches, make_dataset, make_iterator
from motionaura_jax.data.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    SPEEDS,
    ShapesSource,
    caption_for,
    parse_caption,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MOTIONS",
    "SHAPES",
    "SPEEDS",
    "ShapesSource",
    "arrayrecord_config",
    "bucket_specs",
    "caption_for",
    "eval_batches",
    "make_dataset",
    "make_iterator",
    "parse_caption",
    "shapes_config",
    "tfds_config",
    "validate",
]
