"""Per-device memory of `configs/tokenizer.py:paper` training on a simulated 4x8 mesh.

  python tools/tokenizer_memory.py                   # 33 x 256 x 256, 8 clips per device
  python tools/tokenizer_memory.py --frames=17 --size=128 --per_device_batch=2

Nothing is allocated: the state comes from `jax.eval_shape` with the shardings its
logical names give under `CONV_RULES` (FSDP over input channels), the batch is a sharded
shape struct, and XLA's compiled memory analysis of one micro-batch step (forward,
backward, AdamW update) reports the bytes per device. The 32 devices are fake CPU devices
(`--xla_force_host_platform_device_count`), so the numbers are XLA CPU's buffer
assignment of the SPMD-partitioned program: a close guide to, not a measurement of, GPU
memory. D.2 trains 32 frames (33 as 1 + 4k) at 256^2 with 8 clips per GPU.

XLA CPU's default, concurrency-optimised scheduler orders the program for parallelism and
keeps the forward pass's activations alive regardless of remat (its analysis gave the same
1.5 TB per device with and without remat), so this tool turns it off
(`--xla_cpu_enable_concurrency_optimized_scheduler=false`): with the memory-aware scheduler
remat shows (17 x 128^2, one clip a device: 12.2 against 18.1 GiB of temporaries, session
24). `saved_for_backward_GiB` is a second, backend-independent figure: the bytes of the
residuals that `jax.vjp` keeps from the forward pass for the backward pass at this batch
(per clip, from the difference between one and two clips, so the parameters it also keeps
cancel), with the config's remat and without. A GPU needs at least that plus the state,
plus one block's recomputed activations during its backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_DEVICES = 32
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={_DEVICES}"
    + " --xla_cpu_enable_concurrency_optimized_scheduler=false"  # see the docstring
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from configs import tokenizer as tok_config  # noqa: E402
from motionaura_jax.parallel import mesh as mesh_lib  # noqa: E402
from motionaura_jax.parallel import sharding  # noqa: E402
from motionaura_jax.train import tokenizer as tok_stage  # noqa: E402


def _paper_config(frames: int, size: int, depthwise: str, remat: bool, dtype: str):
    config = tok_config.get_config("paper")
    # conv_impl: the GPU path (one Conv3D per layer), which is what this tool sizes.
    config.model.update(depthwise_impl=depthwise, remat=remat, conv_impl="xla3d", dtype=dtype)
    config.data.update(frames=frames, height=size, width=size)
    return config


def saved_for_backward_per_clip(
    frames: int, size: int, depthwise: str, remat: bool, dtype: str
) -> int:
    """Bytes per clip of what `jax.vjp` of the stage loss keeps for the backward pass."""
    stage = tok_stage.build(_paper_config(frames, size, depthwise, remat, dtype))

    def residual_bytes(batch: int) -> int:
        video = jax.ShapeDtypeStruct((batch, frames, size, size, 3), jnp.float32)
        params = jax.eval_shape(
            lambda rng: nn.meta.unbox(stage.init(rng, {"video": video})), jax.random.key(0)
        )

        def loss(params, video):
            return stage.loss(params, None, {"video": video}, jax.random.key(1), jnp.int32(0))[0]

        backward = jax.eval_shape(lambda p, v: jax.vjp(lambda q: loss(q, v), p)[1], params, video)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(backward))

    return residual_bytes(2) - residual_bytes(1)


def analyse(
    frames: int, size: int, per_device_batch: int, depthwise: str, remat: bool, dtype: str
) -> dict:
    config = _paper_config(frames, size, depthwise, remat, dtype)
    stage = tok_stage.build(config)
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    global_batch = per_device_batch * mesh_lib.data_parallel_size(mesh)
    video = jax.ShapeDtypeStruct(
        (global_batch, frames, size, size, 3),
        jnp.float32,
        sharding=NamedSharding(mesh, PartitionSpec(mesh_lib.BATCH_AXES)),
    )
    tx = optax.adamw(config.optimizer.lr, weight_decay=config.optimizer.weight_decay)

    def init_state(rng):
        params = stage.init(rng, {"video": video})
        return {"params": params, "opt": tx.init(nn.meta.unbox(params))}

    with nn.logical_axis_rules(stage.rules):
        abstract = jax.eval_shape(init_state, jax.random.key(0))
    shardings = sharding.logical_shardings(abstract, mesh, stage.rules)
    state = sharding.abstract_with_shardings(abstract, shardings)

    def train_step(state, video, rng, step):
        (loss, _), grads = jax.value_and_grad(stage.loss, has_aux=True)(
            state["params"], None, {"video": video}, rng, step
        )
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(stage.rules):
        compiled = (
            jax.jit(train_step, out_shardings=(shardings, None), donate_argnums=0)
            .lower(state, video, jax.random.key(1), jnp.int32(0))
            .compile()
        )
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    gib = lambda b: round(b / 2**30, 3)
    n_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(abstract["params"])))
    return {
        "config": "tokenizer.py:paper",
        "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
        "clip": f"{frames}x{size}x{size}",
        "per_device_batch": per_device_batch,
        "global_batch": global_batch,
        "params_M": round(n_params / 1e6, 2),
        "depthwise": depthwise,
        "remat": remat,
        "dtype": dtype,
        "per_device_GiB": {
            "arguments": gib(mem.argument_size_in_bytes),
            "outputs": gib(mem.output_size_in_bytes),
            "aliased": gib(mem.alias_size_in_bytes),
            "temporaries": gib(mem.temp_size_in_bytes),
            "generated_code": gib(mem.generated_code_size_in_bytes),
            "peak_estimate": gib(
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes
            ),
        },
        "saved_for_backward_GiB": {
            f"remat_{r}": gib(
                per_device_batch * saved_for_backward_per_clip(frames, size, depthwise, r, dtype)
            )
            for r in sorted({remat, False})
        },
        "compile_s": round(compile_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--depthwise", default="grouped", help="grouped (GPU) | shifted (CPU)")
    parser.add_argument("--no_remat", action="store_true")
    parser.add_argument("--dtype", default="float32", help="compute dtype (D.2: float32)")
    args = parser.parse_args()
    report = analyse(
        args.frames,
        args.size,
        args.per_device_batch,
        args.depthwise,
        not args.no_remat,
        args.dtype,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
