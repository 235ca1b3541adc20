"""The one generic train loop every stage runs through.

`train(config, workdir)` builds the stage, the mesh and the sharded state, resumes from the
stage's latest checkpoint, and runs jitted steps with logging, periodic evaluation and
checkpoints. It knows nothing of models: see `motionaura_jax.train.stage.Stage`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import config as config_lib
from motionaura_jax.parallel import mesh as mesh_lib
from motionaura_jax.parallel import multihost, sharding
from motionaura_jax.train import optim
from motionaura_jax.train.registry import build_stage
from motionaura_jax.train.stage import Stage
from motionaura_jax.train.step import TrainState, eval_params, make_train_step

PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; nothing after the last good step is saved."""


def stage_dir(workdir: str, stage_name: str) -> str:
    """`workdir/<stage>`, created and checked writable (a clear error, not a traceback)."""
    path = os.path.join(os.path.abspath(workdir), stage_name)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"workdir {workdir!r} is not writable ({e.strerror}: {e.filename}); "
            "pass a --workdir you can write to"
        ) from e
    return path


def check_batch(batch: Mapping[str, Any], step: int) -> None:
    """Rejects NaN/inf in a batch before it reaches the model."""
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(
                    f"batch for step {step}: field {key!r} {value.shape} has {bad} non-finite "
                    "values (NaN/inf); fix the data source, or set "
                    "train.check_batches=False to skip this check"
                )


def device_fields(stage: Stage, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The numeric fields the devices need (strings and metadata stay on the host)."""
    names = stage.device_fields or [
        k for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"
    ]
    missing = [k for k in names if k not in batch]
    if missing:
        raise ValueError(f"batch lacks fields {missing} that stage {stage.name!r} needs")
    return {k: np.asarray(batch[k]) for k in names}


@dataclasses.dataclass
class Setup:
    """What `setup` builds: reused by the loop, tests and tools."""

    stage: Stage
    mesh: jax.sharding.Mesh
    state: TrainState
    state_shardings: PyTree
    abstract_state: PyTree
    frozen: PyTree
    train_step: Any  # jitted
    data: Iterator
    schedule: Any


def setup(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    workdir: str | None = None,
) -> Setup:
    """Builds stage, mesh, data iterator, sharded state and the jitted step (fresh state).

    `workdir` is the run's top folder, where later stages look for earlier checkpoints.
    """
    stage = build_stage(config, workdir)
    mesh = mesh or mesh_lib.make_mesh(config.mesh)
    batch_size = config.train.batch_size
    shards = mesh_lib.data_parallel_size(mesh)
    if batch_size % (shards * config.optimizer.grad_accum):
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the batch shards ({shards}: "
            f"mesh data x fsdp) times optimizer.grad_accum={config.optimizer.grad_accum}"
        )
    data = stage.data("train", config.seed)
    start = data.get_state()
    example = device_fields(stage, next(data))
    data.set_state(start)  # peeking must not shift the batches that training sees

    example_row = {k: v[:1] for k, v in example.items()}
    with nn.logical_axis_rules(stage.rules):
        abstract_params = jax.eval_shape(stage.init, jax.random.PRNGKey(config.seed), example_row)
    tx, schedule = optim.make_optimizer(config.optimizer, config.train.num_steps, abstract_params)

    def state_of(params):
        ema = params if config.train.ema_decay > 0 else None
        return TrainState(
            step=np.int32(0), params=params, opt_state=tx.init(params), ema_params=ema
        )

    def init_state(row):
        return state_of(stage.init(jax.random.PRNGKey(config.seed), row))

    # The params' shapes are traced once, above; the state's follow from them.
    abstract_boxed = jax.eval_shape(state_of, abstract_params)
    state_shardings = sharding.logical_shardings(abstract_boxed, mesh, stage.rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(stage.rules):
        state = jax.jit(lambda row: nn.meta.unbox(init_state(row)), out_shardings=state_shardings)(
            example_row
        )
        frozen = None
        if stage.frozen is not None:
            frozen_shardings = sharding.logical_shardings(stage.frozen, mesh, stage.rules)
            frozen = jax.device_put(nn.meta.unbox(stage.frozen), frozen_shardings)
    abstract_state = sharding.abstract_with_shardings(abstract_boxed, state_shardings)

    step_fn = make_train_step(
        stage,
        tx,
        schedule,
        seed=config.seed,
        grad_accum=config.optimizer.grad_accum,
        ema_decay=config.train.ema_decay,
    )
    batch_shardings = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in example.items()}
    train_step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, None, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
    return Setup(
        stage, mesh, state, state_shardings, abstract_state, frozen, train_step, data, schedule
    )


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag so the loop can save before it exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning("received signal %d: saving a checkpoint, then exiting", signum)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def format_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class _Progress:
    """`[stage] |#####.....| 50% step 120/240 | loss 0.1234 | 3.2 steps/s | ETA 0m37s`.

    With a wall-clock budget (`max_seconds`) the ETA is the sooner of the two ends.
    `suffix(eta_seconds)` lets a caller append its own text (the main job's overall ETA).
    """

    def __init__(
        self,
        name: str,
        start: int,
        total: int,
        max_seconds: float = 0.0,
        suffix: Callable[[float], str] | None = None,
    ) -> None:
        self.name, self.start, self.total = name, start, total
        self.max_seconds, self.suffix = max_seconds, suffix
        self.t0 = time.perf_counter()

    def eta(self, step: int) -> float:
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        if self.max_seconds > 0:
            eta = min(eta, max(self.max_seconds - elapsed, 0.0))
        return eta

    def line(self, step: int, loss: float) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = self.eta(step)
        done = step / self.total
        if self.max_seconds > 0:
            done = max(done, min(elapsed / self.max_seconds, 1.0))
        bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
        text = (
            f"[{self.name}] |{bar}| {100 * done:3.0f}% step {step}/{self.total} | "
            f"loss {loss:.4f} | {rate:.2f} steps/s | ETA {format_seconds(eta)}"
        )
        return text + (self.suffix(eta) if self.suffix else "")


def _metric_writer(logdir: str):
    from clu import metric_writers  # imports TensorFlow: keep it out of `import motionaura_jax`

    return metric_writers.create_default_writer(
        logdir, just_logging=jax.process_index() > 0, asynchronous=True
    )


def _write_json(path: str, payload: dict) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _check_finite(history: list[tuple[int, dict]]) -> None:
    for step, metrics in history:
        for key in ("loss", "l2_grads"):
            value = float(metrics[key])
            if not np.isfinite(value):
                raise NonFiniteLossError(
                    f"{key} is {value} at step {step}; training stopped and nothing after the "
                    "last good checkpoint was saved. Lower optimizer.lr, set "
                    "optimizer.clip_norm, or check the data for extreme values"
                )


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    progress_suffix: Callable[[float], str] | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Trains `config.stage` under `workdir/<stage>/`; returns the final eval metrics.

    Resumes from the stage's latest checkpoint when there is one. The final evaluation is
    also written to `workdir/<stage>/eval.json`. `progress_suffix(stage_eta_seconds)` adds
    text to each progress line (the main job's overall ETA). `max_seconds` replaces
    `config.train.max_seconds` for this call (the main job's share of its time budget;
    0 = no limit); checkpoints keep the config as given.
    """
    if max_seconds is None:
        max_seconds = config.train.max_seconds
    built = setup(config, workdir=workdir)
    stage, state, data = built.stage, built.state, built.data
    out_dir = stage_dir(workdir, stage.name)
    checkpointer = checkpoint_lib.StageCheckpointer(
        os.path.join(out_dir, "checkpoints"),
        stage=config.stage,
        keep=config.train.keep_checkpoints,
        async_save=config.train.async_checkpoint,
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        state = checkpointer.restore(latest, built.abstract_state, data)
    start = int(jax.device_get(state.step))
    total = config.train.num_steps
    writer = _metric_writer(out_dir)
    jsonl = _JsonlLog(os.path.join(out_dir, "metrics.jsonl"))
    if start == 0:
        writer.write_hparams(dict(_flatten_config(config)))
    progress = _Progress(stage.name, start, total, max_seconds, progress_suffix)
    history: list[tuple[int, dict]] = []
    t_start = time.perf_counter()
    step, interrupted = start, False
    with _StopRequest() as stop:
        while step < total:
            batch = next(data)
            if config.train.check_batches:
                check_batch(batch, step)
            with jax.set_mesh(built.mesh):
                device_batch = sharding.device_batch(device_fields(stage, batch), built.mesh)
                state, metrics = built.train_step(state, built.frozen, device_batch)
            step += 1
            history.append((step, metrics))
            # One snapshot of the stop flag per step: a signal arriving between the save
            # decision and the exit decision must not skip the save. Every host takes the
            # same decisions, or one would leave the loop while the others wait in the
            # next step's collectives; on several hosts they are agreed on every
            # log_every steps, where the loop waits for the devices anyway.
            decide = jax.process_count() == 1 or step % config.train.log_every == 0
            interrupted = decide and multihost.any_process(stop.signum is not None)
            out_of_time = (
                decide and multihost.any_process(0 < max_seconds < time.perf_counter() - t_start)
            ) or step == config.train.stop_at_step
            save_now = (
                step % config.train.checkpoint_every == 0
                or step == total
                or interrupted
                or out_of_time
            )
            if step % config.train.log_every == 0 or save_now:
                history = jax.device_get(history)
                _check_finite(history)  # before any save: a NaN state is never checkpointed
                _log(writer, jsonl, history, progress, step)
                history = []
            if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
                periodic = {
                    k: float(v) for k, v in stage.evaluate(eval_params(state), built.frozen).items()
                }
                writer.write_scalars(step, {f"eval/{k}": v for k, v in periodic.items()})
                jsonl.write(step, "eval", periodic)
            if save_now:
                checkpointer.save(step, state, config, data, force=True)
            if interrupted or out_of_time:
                break
    checkpointer.wait()
    if interrupted:
        checkpointer.close()
        writer.close()
        raise SystemExit(
            f"[{stage.name}] interrupted by signal {stop.signum or 'on another host'} at step "
            f"{step}; checkpoint saved. Run the same command again to resume."
        )
    results = dict(stage.evaluate(eval_params(state), built.frozen))
    results = {k: float(v) for k, v in results.items()}
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    jsonl.write(step, "eval", results)
    payload = dict(stage=stage.name, step=step, finished=step >= total, **results)
    _write_json(os.path.join(out_dir, "eval.json"), payload)
    checkpointer.close()
    writer.close()
    return payload


def reevaluate(
    workdir: str, stage_name: str, eval_overrides: Sequence[str] = (), step: int | None = None
) -> dict[str, float]:
    """A finished stage's evaluation again, with changed `eval.*` settings (sampler, steps,
    guidance, temperature, seed, reference scores): no training, no checkpoint or eval.json
    written.

    Sampler settings are free to sweep after training; this reruns `Stage.evaluate` on the
    checkpoint's params (its moving average if the run kept one) and saved config, so
    with no overrides it reproduces the run's `eval.json`. The stage is built as training
    built it, so a train token cache the run wrote and that was since deleted is written
    again (keep it to sweep quickly).
    """
    keys = [config_lib.override_key(o) for o in eval_overrides]
    if not_eval := [o for o, k in zip(eval_overrides, keys) if not k.startswith("eval.")]:
        raise ValueError(
            f"only eval.* settings can change without retraining, got {not_eval}; "
            "train again (launch/train.py) to change anything else"
        )
    folder = os.path.join(workdir, stage_name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"no stage folder {folder!r}; pass the training --workdir and one of its stages "
            f"({sorted(os.listdir(workdir)) if os.path.isdir(workdir) else 'none'})"
        )
    params, config = checkpoint_lib.load_params(folder, step)
    config = config_lib.with_new_fields(config, "eval")  # runs saved before a new setting
    config = config_lib.apply_overrides(config, eval_overrides)
    stage = build_stage(config, workdir)
    frozen = nn.meta.unbox(stage.frozen) if stage.frozen is not None else None
    return {k: float(v) for k, v in stage.evaluate(params, frozen).items()}


class _JsonlLog:
    """`metrics.jsonl` beside the TensorBoard events: plots and reports read it without TF."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=step, kind=kind, time=time.time(), **values)) + "\n")


def _log(
    writer, jsonl: _JsonlLog, history: list[tuple[int, dict]], progress: _Progress, step: int
) -> None:
    if not history:
        return
    keys = history[-1][1].keys()
    mean = {k: float(np.mean([np.asarray(m[k]) for _, m in history])) for k in keys}
    writer.write_scalars(step, {f"train/{k}": v for k, v in mean.items()})
    # How many steps the row averages: a row written early by a checkpoint or a stop holds
    # fewer, so it is noisier than the others (report.curve_rows leaves it out).
    jsonl.write(step, "train", {**mean, "averaged_steps": len(history)})
    if jax.process_index() == 0:
        print(progress.line(step, mean["loss"]), flush=True)


def _flatten_config(config: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _flatten_config(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str, bool)):
            yield f"{prefix}{key}", value
