#!/usr/bin/env python3
"""Per-device memory of denoiser training on a simulated mesh (compiled memory analysis).

Nothing is allocated: parameters and the AdamW state come from `jax.eval_shape`, their
shardings from the model's logical axis names and `motionaura_jax.parallel.rules`
('transformer' table), and the train step (masked-diffusion loss, fwd + bwd + AdamW) is
lowered and compiled for a fake CPU mesh. XLA's `memory_analysis()` of the partitioned
program then gives the per-device bytes: arguments (params, optimizer state, batch),
outputs, temporaries; peak ~ arguments + outputs - aliased + temporaries.

Token count (assumption, D1/D2): the tokenizer is causal with 4x temporal and 16x spatial
downsampling, so 16 frames are fed as 17 = 1 + 4*4 frames -> 5 latent frames, and
256 x 256 pixels -> 16 x 16 latents: 5 * 16 * 16 = 1280 tokens per clip. Text: 256 T5-XXL
tokens of width 4096 (Table 10), precomputed. Mesh: 6 x 8 A100s (Table 10), laid out as
data=6 (nodes) x fsdp=8 (GPUs per node) x tensor=1. bfloat16 compute, float32 params.

Usage:
  python tools/denoiser_memory.py --variant L --batches 1,2,4 --remat full --out mem.json
XLA:CPU's buffer assignment differs from XLA:GPU's in detail (fusion, scheduling), so
treat the numbers as estimates within ~10-20%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MESH = {"data": 6, "fsdp": 8, "tensor": 1}
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
    f"device_count={MESH['data'] * MESH['fsdp'] * MESH['tensor']}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from motionaura_jax.denoiser.diffusion import DiffusionConfig, diffusion_loss  # noqa: E402
from motionaura_jax.denoiser.model import SpectralTransformer, variant  # noqa: E402
from motionaura_jax.parallel.mesh import make_mesh  # noqa: E402
from motionaura_jax.parallel.rules import get_rules  # noqa: E402
from motionaura_jax.parallel.sharding import batch_sharding, logical_shardings  # noqa: E402

GIB = 1024**3


def analyse(
    name: str,
    per_device_batch: int,
    remat: str,
    tokens: tuple[int, ...],
    text_len: int,
    spectral: str,
) -> dict:
    """Compile one sharded train step and return its per-device memory in GiB."""
    mesh = make_mesh(MESH)
    rules = get_rules("transformer")
    model = SpectralTransformer(
        **variant(
            name,
            remat=remat,
            spectral=spectral,
            scan_layers=True,
            dtype=jnp.bfloat16,
            param_dtype=jnp.float32,
        )
    )
    n_dev = mesh.devices.size
    b = per_device_batch * (MESH["data"] * MESH["fsdp"])
    batch = {
        "tokens": jax.ShapeDtypeStruct(
            (b,) + tokens, jnp.int32, sharding=batch_sharding(mesh, 1 + len(tokens))
        ),
        "text": jax.ShapeDtypeStruct(
            (b, text_len, model.text_dim), jnp.bfloat16, sharding=batch_sharding(mesh, 3)
        ),
        "text_mask": jax.ShapeDtypeStruct(
            (b, text_len), jnp.bool_, sharding=batch_sharding(mesh, 2)
        ),
    }
    opt = optax.adamw(1e-5)

    def init():
        tok = jnp.zeros((1,) + tokens, jnp.int32)
        params = model.init(
            jax.random.key(0),
            tok,
            jnp.ones(1),
            jnp.zeros((1, 8, model.text_dim)),
            drop_text=jnp.zeros(1, bool),
        )
        params = params["params"]
        return {"params": params, "opt": opt.init(params)}

    abstract = jax.eval_shape(init)
    shardings = logical_shardings(abstract, mesh, rules)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(abstract),
        shardings,
    )
    cfg = DiffusionConfig(vocab_size=model.vocab_size)

    def step(state, batch, key):
        (loss, _), grads = jax.value_and_grad(
            lambda p: diffusion_loss(model.apply, p, batch, key, cfg), has_aux=True
        )(state["params"])
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, loss

    t0 = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = (
            jax.jit(step, out_shardings=(shardings, None), donate_argnums=0)
            .lower(state, batch, jax.random.key(0))
            .compile()
        )
    mem = compiled.memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(abstract["params"])))
    args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    return {
        "variant": name,
        "params": int(n_params),
        "devices": int(n_dev),
        "mesh": MESH,
        "per_device_batch": per_device_batch,
        "global_batch": b,
        "remat": remat,
        "spectral": spectral,
        "tokens_per_clip": int(jnp.prod(jnp.asarray(tokens))),
        "text_len": text_len,
        "arguments_gib": args / GIB,
        "outputs_gib": out / GIB,
        "aliased_gib": alias / GIB,
        "temporaries_gib": temp / GIB,
        "peak_gib": (args + out - alias + temp) / GIB,
        "compile_s": time.time() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="L")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--remat", default="full")
    ap.add_argument("--spectral", default="real")
    ap.add_argument("--tokens", default="5,16,16", help="latent frames,h,w (17 frames 256^2)")
    ap.add_argument("--text-len", type=int, default=256)
    ap.add_argument(
        "--budget-gib",
        type=float,
        default=80 * 1e9 / GIB * 0.9,
        help="usable bytes per A100-80GB (90%% of 80 GB for the runtime)",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    tokens = tuple(int(x) for x in args.tokens.split(","))
    rows = []
    for remat in args.remat.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            row = analyse(args.variant, b, remat, tokens, args.text_len, args.spectral)
            row["fits_a100_80gb"] = row["peak_gib"] <= args.budget_gib
            rows.append(row)
            print(json.dumps(row), flush=True)
    fitting = [r["per_device_batch"] for r in rows if r["fits_a100_80gb"]]
    summary = {
        "rows": rows,
        "budget_gib": args.budget_gib,
        "max_per_device_batch_that_fits": max(fitting) if fitting else 0,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
