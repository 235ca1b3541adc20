"""Orbax checkpoints per stage, and params-only export (DESIGN section 6).

Layout: `workdir/<stage>/checkpoints/<step>/{state,data,config}`.
  state   train state (step, params, optimizer state, optional EMA params), restorable
          onto any mesh
  data    the Grain iterator state of every host (so a resumed run sees the same batches)
  config  the config as JSON; its `stage` tags the checkpoint

Orbax writes each step into a temporary folder and renames it only once every item is
complete, so an interrupted or crashed save never replaces the last good checkpoint:
`latest_step()` only sees finished steps.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from motionaura_jax import config as config_lib

PyTree = Any


class CheckpointMismatchError(ValueError):
    """A checkpoint from another stage, or with other parameter names or shapes."""


class StageCheckpointer:
    """Saves and restores one stage's train state, data iterator and config."""

    def __init__(
        self, directory: str, *, stage: str, keep: int = 3, async_save: bool = True
    ) -> None:
        """`stage` is the config's `stage` field, which tags (and checks) every checkpoint."""
        self.directory = os.path.abspath(directory)
        self.stage = stage
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "config"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def _is_complete(self, step: int) -> bool:
        # Orbax renames a finished save into place atomically on local disks; on stores
        # without atomic renames a crashed save can leave a step folder behind, so we also
        # require the commit marker Orbax writes last and the state item.
        folder = os.path.join(self.directory, str(step))
        return os.path.isfile(os.path.join(folder, "commit_success.txt")) and os.path.isdir(
            os.path.join(folder, "state")
        )

    def all_steps(self) -> list[int]:
        """Steps whose save completed, oldest first."""
        steps = sorted(self.manager.all_steps())
        complete = [s for s in steps if self._is_complete(s)]
        if len(complete) != len(steps):
            logging.warning(
                "ignoring incomplete checkpoints %s in %s",
                sorted(set(steps) - set(complete)),
                self.directory,
            )
        return complete

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        state: PyTree,
        config: ml_collections.ConfigDict,
        data_iterator: Any | None = None,
        *,
        force: bool = False,
    ) -> bool:
        items = dict(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config_lib.to_json(config))),
        )
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def saved_config(self, step: int) -> dict:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]

    def check_compatible(self, step: int, abstract_state: PyTree) -> None:
        """Raises `CheckpointMismatchError` naming what differs from `abstract_state`."""
        saved = self.saved_config(step)
        if saved.get("stage") != self.stage:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} is from stage {saved.get('stage')!r}, "
                f"not {self.stage!r}; point this stage at its own workdir sub-folder"
            )
        metadata = self.manager.item_metadata(step)["state"]
        metadata = getattr(metadata, "tree", metadata)
        problems = _tree_differences(metadata, abstract_state)
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} does not fit this model: "
                + "; ".join(problems[:20])
                + ("" if len(problems) <= 20 else f"; and {len(problems) - 20} more")
                + ". Use a workdir of its own for a changed model shape."
            )

    def restore(
        self, step: int, abstract_state: PyTree, data_iterator: Any | None = None
    ) -> PyTree:
        """Restores onto the shardings in `abstract_state` (any mesh) and the iterator."""
        self.check_compatible(step, abstract_state)
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("restored %s checkpoint at step %d from %s", self.stage, step, self.directory)
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(tree: PyTree) -> dict[str, Any]:
    # Orbax metadata comes back as dicts/lists while the state has dataclasses and
    # namedtuples: compare on plain `a/b/0` paths.
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(e) for e in path): leaf for path, leaf in leaves}


def _tree_differences(saved: PyTree, expected: PyTree) -> list[str]:
    saved_flat, expected_flat = _flat(saved), _flat(expected)
    problems = [f"missing {k}" for k in sorted(expected_flat.keys() - saved_flat.keys())]
    problems += [f"unexpected {k}" for k in sorted(saved_flat.keys() - expected_flat.keys())]
    for key in sorted(expected_flat.keys() & saved_flat.keys()):
        want = tuple(getattr(expected_flat[key], "shape", ()))
        have = tuple(getattr(saved_flat[key], "shape", ()) or ())
        if want != have:
            problems.append(f"{key} has shape {have} in the checkpoint, the model wants {want}")
    return problems


def read_config(directory: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """The config stored with a checkpoint (default: the latest finished step)."""
    reader = StageCheckpointer(directory, stage="", async_save=False)
    step = reader.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"no finished checkpoint in {directory!r}; train the stage first")
    config = config_lib.from_dict(reader.saved_config(step))
    reader.close()
    return config, step


def load_params(
    stage_folder: str, step: int | None = None
) -> tuple[PyTree, ml_collections.ConfigDict]:
    """Params (host numpy arrays) and config of a finished stage: `workdir/<stage>` or an
    export folder. This is how a later stage loads the frozen model an earlier one trained.
    """
    if os.path.isfile(os.path.join(stage_folder, "config.json")):
        return load_exported(stage_folder)
    directory = os.path.join(stage_folder, "checkpoints")
    config, step = read_config(directory, step)
    reader = StageCheckpointer(directory, stage=config.stage, async_save=False)
    # Restore onto one local device, with shapes from the checkpoint's own metadata: a
    # target-less restore would reuse the saved shardings, which fail when this process
    # sees another number of devices than the training run did.
    metadata = reader.manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
        getattr(metadata, "tree", metadata),
    )
    restored = reader.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    reader.close()
    state = restored["state"]
    # A run with `train.ema_decay` > 0 hands on its moving average (train/step.py).
    params = state.get("ema_params") or state["params"]
    return jax.device_get(params), config


def export_params(
    params: PyTree, config: ml_collections.ConfigDict, directory: str, dtype: str = "float32"
) -> str:
    """Writes params only (cast to `dtype`) plus `config.json`; no optimizer state."""
    cast = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(dtype), params)
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), cast, force=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    return directory


def load_exported(directory: str) -> tuple[PyTree, ml_collections.ConfigDict]:
    """Loads what `export_params` wrote: `(params as numpy arrays, config)`."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{directory!r} is not an export folder (no config.json)")
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(directory), "params"))
    with open(config_path) as f:
        return params, config_lib.from_json(f.read())
