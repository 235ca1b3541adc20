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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_DEVICES = 32
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
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


def analyse(frames: int, size: int, per_device_batch: int, depthwise: str, remat: bool) -> dict:
    config = tok_config.get_config("paper")
    # conv_impl: the GPU path (one Conv3D per layer), which is what this tool sizes.
    config.model.update(depthwise_impl=depthwise, remat=remat, conv_impl="xla3d")
    config.data.update(frames=frames, height=size, width=size)
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
        "compile_s": round(compile_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--depthwise", default="grouped", help="grouped (GPU) | shifted (CPU)")
    parser.add_argument("--no_remat", action="store_true")
    args = parser.parse_args()
    report = analyse(
        args.frames, args.size, args.per_device_batch, args.depthwise, not args.no_remat
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
