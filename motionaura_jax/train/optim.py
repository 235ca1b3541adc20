"""Optimizers and learning-rate schedules from the config's `optimizer` section."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from motionaura_jax.parallel import axes

# Muon's momentum (Jordan et al. 2024; Moonlight, Liu et al. 2025, use the same).
MUON_BETA = 0.95
# Moonlight's update RMS: Muon's orthogonalised updates scaled to AdamW's typical RMS, so
# that `optimizer.lr` and `weight_decay` tuned for AdamW carry over.
MUON_RMS = 0.2


def make_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up to `opt.lr`, then `opt.schedule` decay to `lr * end_lr_ratio`."""
    warmup = int(opt.warmup_steps)
    decay_steps = max(num_steps - warmup, 1)
    end = opt.lr * opt.end_lr_ratio
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_ratio)
    elif opt.schedule == "linear":
        decay = optax.linear_schedule(opt.lr, end, decay_steps)
    elif opt.schedule == "constant":
        decay = optax.constant_schedule(opt.lr)
    else:
        raise ValueError(
            f"unknown optimizer.schedule {opt.schedule!r}; use cosine, linear or constant"
        )
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def _muon_axes(
    names: tuple[str | None, ...], shape: tuple[int, ...]
) -> optax.contrib.MuonDimensionNumbers | None:
    """Which axes of a kernel Muon treats as a matrix's input (reduction) and output; None:
    not a hidden matrix, Adam updates it.

    Dense kernels, by their logical axis `names`: axes named `layers` (stacked blocks under
    `nn.scan`) and unnamed axes (the 3 of a fused Q/K/V kernel, the modulations of an AdaLN
    projection) are batch axes, each slice its own matrix. Tables and kernels with a
    `vocab` axis (embeddings, the logit head) stay with Adam, as in Muon's reference recipe.
    Convolutions (taps..., in, out) by their shape, since their channel axes are named only
    where they may be sharded: taps and input channels reduce, output channels come out.
    Depthwise kernels (no input channels) and the convolutions from or to fewer than 16
    channels (RGB, the latent: the tokenizer's input and output layers) stay with Adam.
    """
    if axes.VOCAB in names:
        return None
    if axes.CONV_SPACE in names or axes.CONV_OUT in names:
        if len(shape) != 5 or min(shape[-2:]) < 16:
            return None
        return optax.contrib.MuonDimensionNumbers((0, 1, 2, 3), (4,))
    named = [i for i, n in enumerate(names) if n is not None and n != axes.LAYERS]
    if len(named) < 2:
        return None
    if names[named[-1]] == axes.EMBED and names[named[0]] != axes.EMBED:
        out = [named[-1]]  # e.g. an attention output (heads, kv, embed)
    else:
        out = named[1:]  # e.g. (embed, heads, kv), (embed, mlp), (mlp, embed)
    reduce = [i for i in named if i not in out]
    return optax.contrib.MuonDimensionNumbers(tuple(reduce), tuple(out))


_LORA_FACTORS = ("down", "up")


def muon_dimension_numbers(abstract_params: Any) -> Any:
    """The params' tree (unboxed) with Muon's dimension numbers on matrix kernels and LoRA
    adapter factors and None elsewhere, read from the `nn.LogicallyPartitioned` boxes of
    `abstract_params`."""

    def one(path, leaf):
        key = getattr(path[-1], "key", None) if path else None
        if not isinstance(leaf, nn.LogicallyPartitioned):
            return None
        if key in _LORA_FACTORS:
            # LoRA factors (nn/lora.py) name only their outer axes: `down` is (D, rank),
            # `up` (rank, *features), after any `layers` axis.
            dims = [i for i, n in enumerate(leaf.names) if n != axes.LAYERS]
            split = len(dims) - 1 if key == "down" else 1
            return optax.contrib.MuonDimensionNumbers(tuple(dims[:split]), tuple(dims[split:]))
        if key != "kernel":
            return None
        return _muon_axes(tuple(leaf.names), tuple(leaf.value.shape))

    return jax.tree_util.tree_map_with_path(
        one, abstract_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def make_optimizer(
    opt: ml_collections.ConfigDict, num_steps: int, abstract_params: Any = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(transformation, schedule)`; clipping (if any) comes before the update rule.

    `abstract_params` (the boxed params' shapes, as `jax.eval_shape` of the init gives them)
    is needed by `muon`, which picks its matrices by their logical axis names.
    """
    schedule = make_schedule(opt, num_steps)
    if opt.name == "adamw":
        rule = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        rule = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        rule = optax.sgd(schedule, momentum=opt.b1 or None)
    elif opt.name == "muon":
        if abstract_params is None:
            raise ValueError("optimizer.name='muon' needs the params' logical axis names")
        # Muon on the matrix kernels (`_muon_axes`), AdamW (b1, b2, eps; optax's, with
        # Nesterov momentum) on the rest, both at `lr` with Moonlight's RMS matching;
        # weight decay on both.
        rule = optax.contrib.muon(
            schedule,
            beta=MUON_BETA,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            adam_b1=opt.b1,
            adam_b2=opt.b2,
            adam_weight_decay=opt.weight_decay,
            muon_weight_dimension_numbers=muon_dimension_numbers(abstract_params),
            consistent_rms=MUON_RMS,
        )
    else:
        raise ValueError(f"unknown optimizer.name {opt.name!r}; use adamw, adam, sgd or muon")
    if opt.clip_norm and opt.clip_norm > 0:
        rule = optax.chain(optax.clip_by_global_norm(opt.clip_norm), rule)
    return rule, schedule
