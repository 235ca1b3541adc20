"""Tokenizer benchmarks: train-step throughput and the conv implementations per backend.

  python tools/bench_tokenizer.py                       # toy_old + toy + paper (reduced)
  python tools/bench_tokenizer.py --sizes=toy_old,toy --steps=3 --skip_depthwise

Prints one JSON object:
  depthwise: fwd+bwd seconds of one depthwise 3x3x3 conv (B=8, 16x32x32x64, DESIGN
    section 7) with each implementation, the backend's default and its speed-up over the
    naive grouped convolution;
  transpose: the same for the toy decoder's last layer, a (1, 8, 8) stride-4 transposed
    conv: XLA's `conv_transpose` against the sub-pixel form (`conv3d.py`);
  upsample: the same for the toy decoder's spatial upsampler, nearest 2x then a 3x3x3
    conv, against its phase form (`CausalConv3D(upsample_2x=True)`);
  train_<size>: clips/s of one AdamW step of the tokenizer stage loss (masking, MFI,
    quantizer) at that config's model, with the clip shape and batch used (paper widths on
    CPU at a reduced clip and batch; compile time reported separately). `toy_old` is the
    first committed toy (129a689: stride-2 stem, four stages 16..64 wide, MB expansion 4,
    9-frame training clips, XLA's Conv3D); `toy_speedup` is its step time over the toy's
    and `toy_clip_speedup` the same per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import tokenizer as tok_config  # noqa: E402
from motionaura_jax.nn import conv3d  # noqa: E402
from motionaura_jax.tokenizer.model import build_tokenizer, param_counts  # noqa: E402
from motionaura_jax.train import tokenizer as tok_stage  # noqa: E402


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile seconds, mean seconds per call after one warm-up call)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(compiled(*args))
    return compile_s, (time.perf_counter() - t0) / repeats


def _compare_impls(fns: dict, args: tuple, chosen: str, baseline: str, shape: str, repeats: int):
    """fwd+bwd seconds of each `fns[impl](*args)` (summed squares as the loss), the backend's
    choice and its speed-up over `baseline`."""
    out = {"shape": shape}
    for impl, fn in fns.items():
        loss = lambda *a, fn=fn: jnp.sum(jnp.square(fn(*a)))
        _, sec = _time(jax.grad(loss, argnums=tuple(range(len(args)))), *args, repeats=repeats)
        out[f"{impl}_s"] = round(sec, 4)
    out["chosen"] = chosen
    out[f"speedup_chosen_vs_{baseline}"] = round(out[f"{baseline}_s"] / out[f"{chosen}_s"], 2)
    return out


def bench_depthwise(repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (8, 18, 34, 34, 64))  # padded 16x32x32
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 64))
    fns = {"grouped": conv3d.depthwise_grouped, "shifted": conv3d.depthwise_shifted}
    chosen = conv3d.default_depthwise_impl()
    return _compare_impls(fns, (x, k), chosen, "grouped", "B=8, 16x32x32x64, fwd+bwd", repeats)


def bench_transpose(repeats: int) -> dict:
    """The toy decoder's last layer: (1, 8, 8) stride-4 transposed conv, 32 -> 3 channels."""
    x = jax.random.normal(jax.random.key(0), (8, 5, 16, 16, 32))
    fns = {}
    for impl in conv3d.TRANSPOSE_IMPLS:
        layer = conv3d.ConvTranspose3D(3, (1, 8, 8), (1, 4, 4), impl=impl)
        fns[impl] = lambda p, x, layer=layer: layer.apply({"params": p}, x)
    params = nn.unbox(conv3d.ConvTranspose3D(3, (1, 8, 8), (1, 4, 4)).init(jax.random.key(1), x))
    chosen = conv3d.default_transpose_impl()
    shape = "B=8, 5x16x16x32 -> 5x64x64x3, fwd+bwd"
    return _compare_impls(fns, (params["params"], x), chosen, "xla", shape, repeats)


def bench_upsample(repeats: int) -> dict:
    """The toy decoder's spatial upsampler conv: nearest 2x then a causal 3x3x3 conv,
    48 -> 64 channels, as written (`nearest`) against its phase form on the low-resolution
    grid (`CausalConv3D(upsample_2x=True)`, `phase`), same parameters."""
    x = jax.random.normal(jax.random.key(0), (8, 5, 8, 8, 48))
    phase = conv3d.CausalConv3D(64, upsample_2x=True)
    plain = conv3d.CausalConv3D(64)
    fns = {
        "nearest": lambda p, x: plain.apply({"params": p}, jnp.repeat(jnp.repeat(x, 2, 2), 2, 3)),
        "phase": lambda p, x: phase.apply({"params": p}, x),
    }
    params = nn.unbox(phase.init(jax.random.key(1), x))
    shape = "B=8, 5x8x8x48 -> 5x16x16x64, fwd+bwd"
    return _compare_impls(fns, (params["params"], x), "phase", "nearest", shape, repeats)


# The toy as first committed (129a689), for the before/after ratio.
OLD_TOY_MODEL = dict(
    stem_width=16,
    widths=(16, 32, 48, 64),
    depths=(1, 2, 1, 1),
    decoder_widths=(16, 32, 48, 64),
    decoder_depths=(1, 2, 1, 1),
    temporal_down=(False, True, True),
    stem_stride=2,
    expansion=4,
    conv_impl="xla3d",
)
OLD_TOY_PATCHES = (8, 16)


def bench_train(
    variant: str,
    batch: int,
    frames: int,
    size: int,
    steps: int,
    depthwise: str = "",
    model_overrides: dict | None = None,
) -> dict:
    config = tok_config.get_config(variant)
    config.data.update(frames=frames, height=size, width=size)
    config.model.depthwise_impl = depthwise
    if model_overrides:
        config.model.update(model_overrides)
        config.masking.patch_sizes = OLD_TOY_PATCHES
    stage = tok_stage.build(config)
    model = build_tokenizer(config.model)
    video = jax.random.uniform(
        jax.random.key(0), (batch, frames, size, size, 3), minval=-1, maxval=1
    )
    params = nn.unbox(
        jax.jit(lambda r: stage.init(r, {"video": video}))(jax.random.key(0, impl="rbg"))
    )
    tx = optax.adamw(config.optimizer.lr)
    opt_state = tx.init(params)

    def train_step(params, opt_state, video, step):
        rng = jax.random.fold_in(jax.random.key(1), step)
        (loss, _), grads = jax.value_and_grad(stage.loss, has_aux=True)(
            params, None, {"video": video}, rng, step
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compile_s, sec = _time(train_step, params, opt_state, video, jnp.int32(0), repeats=steps)
    return {
        "variant": variant,
        "params_M": round(param_counts(model)["total"] / 1e6, 2),
        "clip": f"{frames}x{size}x{size}",
        "batch": batch,
        "depthwise": config.model.depthwise_impl or conv3d.default_depthwise_impl(),
        "conv": config.model.conv_impl or conv3d.default_conv_impl(),
        "compile_s": round(compile_s, 1),
        "step_s": round(sec, 3),
        "clips_per_s": round(batch / sec, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="toy_old,toy,paper", help="comma list of toy_old, toy, paper"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    parser.add_argument("--paper_clip", default="5x32x1", help="frames x size x batch for paper")
    parser.add_argument(
        "--skip_depthwise", action="store_true", help="and the transpose and upsample benches"
    )
    parser.add_argument(
        "--paper_depthwise", default="", help="'' (per backend), grouped or shifted"
    )
    args = parser.parse_args()
    report = {"backend": jax.default_backend(), "devices": jax.device_count()}
    if not args.skip_depthwise:
        report["depthwise"] = bench_depthwise(repeats=2)
        report["transpose"] = bench_transpose(repeats=5)
        report["upsample"] = bench_upsample(repeats=10)
    for size in args.sizes.split(","):
        if size in ("toy", "toy_old"):
            toy = tok_config.get_config("toy")
            frames = 9 if size == "toy_old" else toy.data.frames
            report[f"train_{size}"] = bench_train(
                "toy",
                8 if size == "toy_old" else toy.train.batch_size,
                frames,
                toy.data.height,
                args.steps,
                model_overrides=OLD_TOY_MODEL if size == "toy_old" else None,
            )
        elif size == "paper":
            frames, res, batch = (int(v) for v in args.paper_clip.split("x"))
            report["train_paper"] = bench_train(
                "paper", batch, frames, res, args.steps, args.paper_depthwise
            )
        else:
            raise ValueError(f"unknown size {size!r}; use toy_old, toy or paper")
    if "train_toy" in report and "train_toy_old" in report:
        old, new = report["train_toy_old"], report["train_toy"]
        report["toy_speedup"] = round(old["step_s"] / new["step_s"], 2)
        report["toy_clip_speedup"] = round(new["clips_per_s"] / old["clips_per_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
