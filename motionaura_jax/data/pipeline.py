"""Grain input pipeline: host sharding, seeded epoch-aware shuffling, bucketed batches.

The pipeline is one random-access `grain.MapDataset` over *batch* indices, so that a
batch is a pure function of (config, seed, split, host, step): the iterator state is
just the next step, resuming reproduces the same batches exactly, and `mp_prefetch`
workers can build whole batches independently.

`BatchPlan` maps step `i` to a bucket and to example indices:
  * bucket: drawn by a seeded ratio sampler, identical on every host (all hosts must
    build arrays of the same shape for `jax.make_array_from_process_local_data`);
  * examples: each host owns a disjoint contiguous slice of `N // process_count`
    examples; each bucket reads its own endless stream over that slice, reshuffled
    every epoch by a keyed index permutation (seed, bucket, epoch, host).

Batches are dicts of NumPy arrays with a leading per-host batch axis
(`bucket batch_size // process_count`); `caption` is a NumPy array of Python `str`
(dtype object). Each batch also carries `bucket` (int32 scalar).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from grain.experimental import index_shuffle

from motionaura_jax.data import config as config_lib

_BLOCK = 1024  # bucket draws are made in seeded blocks so any step is cheap to reach
_INFINITE = 2**62


class BatchPlan:
    """Step -> (bucket, example indices) for one host. Pure and picklable.

    Args:
      buckets: `config.bucket_specs(...)` (global batch sizes, normalised ratios).
      num_examples: size of the split (all hosts).
      seed: shuffling and bucket-sampling seed.
      process_index, process_count: this host and the number of hosts.
      shuffle: reshuffle every epoch (train) or read in order (eval).
      num_epochs: None for an endless stream, else the number of passes over the data.
      drop_remainder: with finite epochs and one bucket, drop (True) or keep (False) the
        last partial batch.
    """

    def __init__(
        self,
        buckets: list[dict[str, Any]],
        num_examples: int,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index {process_index} is not in [0, {process_count}); "
                "pass jax.process_index() and jax.process_count()"
            )
        self.per_host = num_examples // process_count
        if self.per_host < 1:
            raise ValueError(
                f"{num_examples} examples cannot be shared by {process_count} hosts; "
                "use a larger split or fewer hosts"
            )
        self.host_batch = []
        for i, b in enumerate(buckets):
            if b["batch_size"] % process_count:
                raise ValueError(
                    f"bucket {i} batch size {b['batch_size']} is not divisible by "
                    f"{process_count} hosts; use a multiple of {process_count}"
                )
            self.host_batch.append(b["batch_size"] // process_count)
        self.buckets = buckets
        self.ratios = np.array([b["ratio"] for b in buckets], np.float64)
        self.seed = int(seed)
        self.process_index = process_index
        self.shuffle = shuffle
        self.start = process_index * self.per_host
        # With finite epochs of one bucket the last eval batch stops at the data's end.
        self.total_positions = None
        if num_epochs is None:
            self.num_steps = _INFINITE
        elif num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        elif len(buckets) == 1:
            total = num_epochs * self.per_host
            self.total_positions = None if drop_remainder else total
            rounding = math.floor if drop_remainder else math.ceil
            self.num_steps = int(rounding(total / self.host_batch[0]))
        else:
            # Mixed buckets: an epoch is the expected number of steps to read the slice.
            mean = float(self.ratios @ np.array(self.host_batch, np.float64))
            self.num_steps = int(num_epochs * self.per_host // mean)
        if self.num_steps < 1:
            raise ValueError(
                f"{self.per_host} examples per host do not fill one batch of "
                f"{self.host_batch}; lower the batch size or add examples"
            )
        self._counts: list[np.ndarray] = [np.zeros(len(buckets), np.int64)]
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_steps

    @functools.lru_cache(maxsize=8)  # noqa: B019 (plans live as long as their pipeline)
    def _block(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0xB0C, block])
        return rng.choice(len(self.ratios), size=_BLOCK, p=self.ratios)

    def bucket_of(self, step: int) -> int:
        """The bucket of a step (the same on every host)."""
        if len(self.ratios) == 1:
            return 0
        return int(self._block(step // _BLOCK)[step % _BLOCK])

    def _bucket_position(self, step: int, bucket: int) -> int:
        """How many batches of `bucket` come before `step`."""
        if len(self.ratios) == 1:
            return step
        block, offset = divmod(step, _BLOCK)
        with self._lock:  # grain read threads may call the plan concurrently
            while len(self._counts) <= block:  # prefix counts per block, built once
                b = len(self._counts) - 1
                draws = np.bincount(self._block(b), minlength=len(self.ratios))
                self._counts.append(self._counts[-1] + draws)
        return int(self._counts[block][bucket] + (self._block(block)[:offset] == bucket).sum())

    def _shuffle(self, bucket: int, epoch: int, offset: int) -> int:
        """Position `offset` of the host slice under the (bucket, epoch) permutation."""
        if not self.shuffle:
            return offset
        # index_shuffle is a keyed bijection computed per index: O(1) memory even for
        # slices of millions of examples, and no permutation to cache.
        key = np.random.SeedSequence([self.seed, 0x5EF, bucket, epoch, self.process_index])
        seed = int(key.generate_state(1)[0] >> 1)
        return index_shuffle(offset, max_index=self.per_host - 1, seed=seed, rounds=4)

    def __call__(self, step: int) -> tuple[int, np.ndarray]:
        """(bucket, int64 example indices of this host's batch) for `step`."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range [0, {self.num_steps})")
        bucket = self.bucket_of(step)
        size = self.host_batch[bucket]
        first = self._bucket_position(step, bucket) * size
        positions = np.arange(first, first + size)
        if self.total_positions is not None:
            positions = positions[positions < self.total_positions]
        epochs, offsets = np.divmod(positions, self.per_host)
        examples = np.array(
            [self._shuffle(bucket, int(e), int(o)) for e, o in zip(epochs, offsets, strict=True)],
            np.int64,
        )
        return bucket, self.start + examples


def collate(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks records into a batch; strings become an object array of `str`."""
    batch = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if isinstance(values[0], str):
            batch[key] = np.array(values, dtype=object)
        else:
            batch[key] = np.stack([np.asarray(v) for v in values])
    return batch


def make_source(data_config: ml_collections.ConfigDict, split: str, bucket: dict[str, Any]):
    """The random-access record source of `data_config.name` for one bucket."""
    name = data_config.name
    if name == "shapes":
        from motionaura_jax.data.shapes import ShapesSource

        return ShapesSource(
            data_config,
            split,
            frames=bucket["frames"],
            height=bucket["height"],
            width=bucket["width"],
        )
    if name == "arrayrecord":
        from motionaura_jax.data.arrayrecord import ArrayRecordVideoSource

        paths = data_config.paths if split == "train" else data_config.eval_paths
        return ArrayRecordVideoSource(
            paths, frames=bucket["frames"], height=bucket["height"], width=bucket["width"]
        )
    if name == "tfds":
        from motionaura_jax.data.tfds_source import TfdsVideoSource

        return TfdsVideoSource(data_config, split, bucket)
    raise ValueError(f"unknown data.name {name!r}; use one of {config_lib.SOURCES}")


class _LoadBatch:
    """Grain map: step -> batch dict. Sources are built lazily in each worker."""

    def __init__(self, data_config: ml_collections.ConfigDict, split: str, plan: BatchPlan):
        self.data_config = data_config
        self.split = split
        self.plan = plan
        self._sources: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sources": {}}

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        bucket, indices = self.plan(int(step))
        if bucket not in self._sources:
            spec = self.plan.buckets[bucket]
            self._sources[bucket] = make_source(self.data_config, self.split, spec)
        source = self._sources[bucket]
        batch = collate([source[int(i)] for i in indices])
        batch["bucket"] = np.int32(bucket)
        return batch


def split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples of a split (builds the first bucket's source for file sources)."""
    if data_config.name == "shapes":
        sizes = {"train": "num_train", "eval": "num_eval", "holdout": "num_holdout"}
        if split not in sizes:
            raise ValueError(f"unknown split {split!r}; use one of {tuple(sizes)}")
        return int(data_config[sizes[split]])
    bucket = config_lib.bucket_specs(data_config, 1)[0]
    return len(make_source(data_config, split, bucket))


def make_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The pipeline as a `grain.IterDataset` (see `make_iterator`)."""
    config_lib.validate(data_config)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    train = split == "train"
    if num_epochs is None and not train:
        num_epochs = 1  # eval splits are read once unless asked otherwise
    plan = BatchPlan(
        config_lib.bucket_specs(data_config, global_batch_size),
        split_size(data_config, split),
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        shuffle=train and bool(data_config.shuffle),
        num_epochs=num_epochs,
        drop_remainder=train,
    )
    steps = grain.MapDataset.range(len(plan)).map(_LoadBatch(data_config, split, plan))
    dataset = steps.to_iter_dataset(
        grain.ReadOptions(
            num_threads=int(data_config.read_threads),
            prefetch_buffer_size=int(data_config.prefetch),
        )
    )
    if data_config.num_workers > 0:
        # Grain's worker processes read absl flags; outside an absl app (Colab, pytest)
        # nothing parsed them, so accept their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(data_config.num_workers),
                per_worker_buffer_size=int(data_config.worker_buffer_size),
            )
        )
    return dataset


def make_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Iterator of per-host batches; `get_state()` / `set_state()` resume exactly.

    Args:
      data_config: a data config (`shapes_config()`, `arrayrecord_config()`, ...).
      split: 'train' (shuffled, endless by default, full batches only) or an eval split
        ('eval', 'holdout' for shapes: in order, one pass by default, last batch partial).
      global_batch_size: batch size summed over hosts (buckets may set their own).
      seed: shuffling and bucket-sampling seed (e.g. the config seed).
      process_index, process_count: default to `jax.process_index()/process_count()`.
      num_epochs: passes over the data; None is endless for train, one pass otherwise.
    Returns:
      grain DatasetIterator of dicts: video (b, T, H, W, 3) float32 and the other record
      fields with a leading b = bucket batch size // process_count, plus `bucket`.
    """
    return iter(
        make_dataset(
            data_config,
            split=split,
            global_batch_size=global_batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            num_epochs=num_epochs,
        )
    )


def eval_batches(
    data_config: ml_collections.ConfigDict, num_clips: int, batch_size: int, split: str = "eval"
) -> list[dict[str, np.ndarray]]:
    """The first `num_clips` clips of an eval split, in order, as a fixed list of batches.

    Uses the first bucket's (frames, height, width); the last batch may be smaller.
    Identical on every host (no sharding), so every host scores the same clips.
    """
    config_lib.validate(data_config)
    available = split_size(data_config, split)
    if not 1 <= num_clips <= available:
        raise ValueError(
            f"num_clips={num_clips} but split {split!r} has {available} clips; "
            f"ask for 1..{available} or enlarge the split"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bucket = config_lib.bucket_specs(data_config, batch_size)[0]
    source = make_source(data_config, split, bucket)
    return [
        collate([source[i] for i in range(start, min(start + batch_size, num_clips))])
        for start in range(0, num_clips, batch_size)
    ]
