"""Optimizers and learning-rate schedules from the config's `optimizer` section."""

from __future__ import annotations

import ml_collections
import optax


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


def make_optimizer(
    opt: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(transformation, schedule)`; clipping (if any) comes before the update rule."""
    schedule = make_schedule(opt, num_steps)
    if opt.name == "adamw":
        rule = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        rule = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        rule = optax.sgd(schedule, momentum=opt.b1 or None)
    else:
        raise ValueError(f"unknown optimizer.name {opt.name!r}; use adamw, adam or sgd")
    if opt.clip_norm and opt.clip_norm > 0:
        rule = optax.chain(optax.clip_by_global_norm(opt.clip_norm), rule)
    return rule, schedule
