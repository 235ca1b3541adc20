"""A small real stage for the foundation tests: a logically-sharded MLP on Grain data.

It goes through exactly the paths the product stages use (registry via
`config.stage = 'tests.tiny_stage:build'`, Grain iterator state, logical axis rules).
"""

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.common import base_config
from motionaura_jax.parallel import axes
from motionaura_jax.parallel.rules import TRANSFORMER_RULES
from motionaura_jax.train.stage import Stage

DIM_IN, DIM_OUT = 16, 8


def get_config(arg=None) -> ml_collections.ConfigDict:
    c = base_config("tests.tiny_stage:build")
    c.mesh.data = -1
    c.optimizer.update(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=2, clip_norm=1.0)
    c.train.update(
        num_steps=6,
        batch_size=16,
        log_every=1,
        checkpoint_every=2,
        keep_checkpoints=10,
        async_checkpoint=False,
    )
    c.data = ml_collections.ConfigDict(dict(size=512, nan_at_index=-1))
    c.model = ml_collections.ConfigDict(dict(hidden=64))
    return c


class TinyMLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        x = nn.Dense(
            self.hidden,
            kernel_init=nn.with_logical_partitioning(init, (axes.EMBED, axes.MLP)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)),
        )(x)
        x = nn.with_logical_constraint(jax.nn.gelu(x), (axes.BATCH, axes.MLP))
        return nn.Dense(
            DIM_OUT,
            kernel_init=nn.with_logical_partitioning(init, (axes.MLP, axes.EMBED)),
            use_bias=False,
        )(x)


class _Example:
    def __init__(self, seed, nan_at_index):
        self.target = np.random.default_rng(1234).normal(size=(DIM_IN, DIM_OUT)) / 4
        self.seed, self.nan_at_index = seed, nan_at_index

    def __call__(self, index):
        x = np.random.default_rng([self.seed, index]).normal(size=DIM_IN).astype(np.float32)
        if index == self.nan_at_index:
            x[0] = np.nan
        y = np.tanh(x @ self.target).astype(np.float32)
        return {"x": x, "y": y, "index": np.int32(index)}


def build(config, workdir=None) -> Stage:
    model = TinyMLP(config.model.hidden)

    def data(split, seed):
        make = _Example(seed + (0 if split == "train" else 10_000), config.data.nan_at_index)
        ds = grain.MapDataset.range(config.data.size)
        if split == "train":
            ds = ds.shuffle(seed=seed).repeat()
        per_host = config.train.batch_size // jax.process_count()
        ds = ds.map(make).batch(per_host, drop_remainder=True)
        return iter(ds.to_iter_dataset())

    def init(rng, batch):
        return model.init(rng, batch["x"])["params"]

    def loss(params, frozen, batch, rng, step):
        pred = model.apply({"params": params}, batch["x"])
        mse = jnp.mean((pred - batch["y"]) ** 2)
        return mse, {"mse": mse}

    eval_batch = next(data("eval", config.seed))

    def evaluate(params, frozen):
        pred = model.apply({"params": params}, eval_batch["x"])
        return {"mse": float(jnp.mean((pred - eval_batch["y"]) ** 2))}

    return Stage(
        name="tiny",
        rules=TRANSFORMER_RULES,
        init=init,
        loss=loss,
        data=data,
        evaluate=evaluate,
        device_fields=("x", "y"),
    )
