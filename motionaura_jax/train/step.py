"""The jitted train step: gradient accumulation, clipping, update, norms.

One call is one optimizer update. With `grad_accum = k` the global batch is split into k
micro-batches whose gradients are averaged in a `lax.scan`, so memory holds one
micro-batch of activations at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from motionaura_jax.parallel.mesh import BATCH_AXES
from motionaura_jax.train.stage import Stage

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; randomness is derived from (seed, step)."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    # Exponential moving average of `params` (`train.ema_decay` > 0), else None. Evaluation,
    # later stages and exports read it in place of `params` (`eval_params`).
    ema_params: PyTree = None


def eval_params(state: TrainState) -> PyTree:
    """The weights to evaluate and hand on: the moving average when training keeps one."""
    return state.params if state.ema_params is None else state.ema_params


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """`decay`, ramped in as (1 + step) / (10 + step) so that the average of a short run is
    not dominated by its random initialisation (the TF `ExponentialMovingAverage`
    num_updates rule)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The key of one step: a pure function of the config seed and the step."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def _micro_batches(batch: dict, accum: int) -> dict:
    # Micro-batch i takes rows i, i + k, i + 2k, ...: every device keeps a contiguous block
    # of each micro-batch, so the split needs no communication (see module docstring).
    def split(x):
        rows = x.shape[0] // accum
        x = x.reshape(rows, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        )

    return jax.tree.map(split, batch)


def make_train_step(
    stage: Stage,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int,
    grad_accum: int,
    ema_decay: float = 0.0,
) -> Callable[[TrainState, PyTree, dict], tuple[TrainState, dict]]:
    """`(state, frozen, batch) -> (state, metrics)`, to be jitted by the caller."""
    grad_fn = jax.value_and_grad(stage.loss, has_aux=True)

    def train_step(state: TrainState, frozen: PyTree, batch: dict):
        rng = step_rng(seed, state.step)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, frozen, batch, rng, state.step)
        else:

            def micro(carry, inputs):
                index, micro_batch = inputs
                (loss, metrics), grads = grad_fn(
                    state.params, frozen, micro_batch, jax.random.fold_in(rng, index), state.step
                )
                summed = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return summed, None

            first = jax.tree.map(lambda x: x[0], _micro_batches(batch, grad_accum))
            shapes = jax.eval_shape(grad_fn, state.params, frozen, first, rng, state.step)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, metrics, grads), _ = jax.lax.scan(
                micro, zeros, (jnp.arange(grad_accum), _micro_batches(batch, grad_accum))
            )
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            lr=schedule(state.step),
            l2_grads=optax.tree.norm(grads),
            l2_params=optax.tree.norm(params),
            l2_updates=optax.tree.norm(updates),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if ema_decay > 0:
            decay = ema_decay_at(ema_decay, state.step)
            ema = jax.tree.map(
                lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                state.ema_params,
                params,
            )
            new_state = new_state.replace(ema_params=ema)
        return new_state, metrics

    return train_step
