"""The contract between the generic train loop and a training stage.

A stage (`tokenizer`, `t2v`, `inpaint`) is a module under `motionaura_jax/train/` with a
function `build(config, workdir) -> Stage`. `workdir` is the run's top folder (the stage
writes under `workdir/<stage>/`); later stages find earlier stages' checkpoints there
unless their config names another path. The loop knows nothing about models: it creates the
state with `Stage.init` under `jax.eval_shape`, shards it with `Stage.rules`, feeds the
batches of `Stage.data`, differentiates `Stage.loss`, and calls `Stage.evaluate`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

PyTree = Any
Batch = Mapping[str, Any]  # numpy arrays with a leading batch axis (strings allowed host-side)
Metrics = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one training stage supplies to `motionaura_jax.train.loop.train`.

    Attributes:
        name: stage name; the workdir sub-folder and the tag stored in checkpoints.
        rules: logical-axis rules `((logical_name, mesh_axis_or_None), ...)` for this family.
        init: `(rng, batch) -> params`, pure (run under `jax.eval_shape` and `jax.jit`).
            `batch` is an example device batch (the numeric fields of `data`'s output).
            Parameters carry logical names via `nn.with_logical_partitioning`.
        loss: `(params, frozen, batch, rng, step) -> (scalar loss, metrics)`, pure.
            `frozen` is `Stage.frozen` (already on the mesh), `step` the int32 global step
            (for schedules), `rng` a key derived from the config seed and the step.
        data: `(split, seed) -> iterator` over host-local numpy batches (a Grain
            `DatasetIterator`, so that `get_state`/`set_state` make the data checkpointable).
            `split` is `'train'` or `'eval'`.
        evaluate: `(params, frozen) -> {name: float}`; the loop writes it to `eval.json`.
        frozen: parameters the stage uses but never trains (a frozen tokenizer, a frozen
            denoiser under LoRA, a text encoder); logical names as for `init`'s output.
        device_fields: which batch fields go to the devices; `None` means every numeric one.
    """

    name: str
    rules: tuple[tuple[str, Any], ...]
    init: Callable[[jax.Array, Batch], PyTree]
    loss: Callable[[PyTree, PyTree, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]
    data: Callable[[str, int], Iterator[Batch]]
    evaluate: Callable[[PyTree, PyTree], dict[str, float]]
    frozen: PyTree = None
    device_fields: tuple[str, ...] | None = None


def earlier_stage_dir(explicit: str, workdir: str | None, stage: str, key: str) -> str:
    """The folder of an earlier stage a later one reads: `explicit` (the config's `key`)
    when set, else `<workdir>/<stage>`; a clear error when neither is given."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    if not workdir:
        raise ValueError(
            f"config.{key} is empty and no workdir was given; pass --workdir (the {stage} "
            f"stage is read from <workdir>/{stage}) or set --config.{key}"
        )
    return os.path.join(os.path.abspath(workdir), stage)
