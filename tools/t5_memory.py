"""Parameter memory of the T5-XXL text encoder per device on a ('data','fsdp','tensor') mesh.

No weights are needed: the model is initialised abstractly (`jax.eval_shape`), its
parameters' logical axis names are mapped to the mesh by the transformer rules of
`motionaura_jax.parallel.rules`, and the bytes of each device's shard are summed.
The mesh is simulated with `--xla_force_host_platform_device_count`, so this runs on a
laptop. With `--compile`, the sharded initialiser is also compiled and XLA's own
per-device output size is reported as a cross-check.

Example (T5-XXL, bfloat16 weights, 8 devices as fsdp=4 x tensor=2):
  python tools/t5_memory.py --devices=8 --fsdp=4 --tensor=2 --dtype=bfloat16
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--data", type=int, default=-1)
    parser.add_argument("--fsdp", type=int, default=4)
    parser.add_argument("--tensor", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also compile the sharded init and report XLA's output size",
    )
    return parser.parse_args(argv)


def parameter_memory(config: Any, mesh: Any, dtype: Any, compile_init: bool = False) -> dict:
    """Counts parameters and per-device bytes of `T5Encoder(config)` sharded on `mesh`.

    Args:
      config: a `T5Config`.
      mesh: a `jax.sharding.Mesh` with axes ('data', 'fsdp', 'tensor').
      dtype: parameter dtype.
      compile_init: also compile the sharded initialiser (no execution) and report XLA's
        per-device output bytes.
    Returns:
      a JSON-able dict: params, bytes_total, bytes_per_device (max over devices),
      replicated_params (leaves with no sharded axis), and the mesh.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from motionaura_jax.encoders.t5 import T5Encoder
    from motionaura_jax.parallel.rules import get_rules
    from motionaura_jax.parallel.sharding import logical_shardings

    module = T5Encoder(config, dtype=dtype, param_dtype=dtype)
    ids = jnp.zeros((1, 8), jnp.int32)

    def init():
        return module.init(jax.random.key(0), ids, ids >= 0)["params"]

    abstract = jax.eval_shape(init)
    rules = get_rules("transformer")
    shardings = logical_shardings(abstract, mesh, rules)
    leaves = jax.tree.leaves(
        jax.tree.map(
            lambda x: getattr(x, "value", x), abstract, is_leaf=lambda x: hasattr(x, "names")
        )
    )
    shard_list = jax.tree.leaves(shardings)
    per_device = {d: 0 for d in mesh.devices.flat}
    total_params, replicated = 0, 0
    for leaf, sharding in zip(leaves, shard_list, strict=True):
        size = int(np.prod(leaf.shape))
        total_params += size
        if sharding.is_fully_replicated:
            replicated += size
        for device, index in sharding.devices_indices_map(leaf.shape).items():
            shard = [len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)]
            per_device[device] += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    result = {
        "params": total_params,
        "bytes_total": total_params * jnp.dtype(dtype).itemsize,
        "bytes_per_device": max(per_device.values()),
        "replicated_params": replicated,
        "mesh": dict(mesh.shape),
        "dtype": jnp.dtype(dtype).name,
    }
    if compile_init:
        import flax.linen as nn

        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            compiled = (
                jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings).lower().compile()
            )
        result["xla_output_bytes_per_device"] = int(compiled.memory_analysis().output_size_in_bytes)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    from motionaura_jax.encoders.t5 import t5_v1_1_xxl_config
    from motionaura_jax.parallel.mesh import make_mesh

    if len(jax.devices()) < args.devices:
        raise SystemExit(
            f"JAX sees {len(jax.devices())} devices, --devices={args.devices}; "
            f"JAX was imported before XLA_FLAGS could be set"
        )
    mesh = make_mesh(
        {"data": args.data, "fsdp": args.fsdp, "tensor": args.tensor}, jax.devices()[: args.devices]
    )
    config = t5_v1_1_xxl_config()
    result = {
        "model": "t5-v1_1-xxl encoder",
        **parameter_memory(config, mesh, jnp.dtype(args.dtype), compile_init=args.compile),
    }
    result["gib_per_device"] = round(result["bytes_per_device"] / 2**30, 3)
    result["gib_total"] = round(result["bytes_total"] / 2**30, 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
