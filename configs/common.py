"""Sections shared by every stage config (big_vision's `configs/common.py` idea).

A stage config starts from `base_config(stage)` and fills `data` and `model`.
"""

import ml_collections


def base_config(stage: str) -> ml_collections.ConfigDict:
    """The sections the generic train loop reads; every field overridable from the CLI."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0

    # DESIGN section 5: mesh axes ('data', 'fsdp', 'tensor'); -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",  # adamw | adam | sgd | muon (Muon on matrix kernels, train/optim.py)
            lr=1e-4,
            schedule="cosine",  # cosine | constant | linear
            warmup_steps=0,
            end_lr_ratio=0.0,  # final lr / peak lr for decaying schedules
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=0.0,  # global-norm clipping; 0 disables
            grad_accum=1,  # micro-batches per optimizer step
        )
    )

    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=1000,
            batch_size=8,  # global, over all hosts and micro-batches
            log_every=10,
            eval_every=0,  # 0: only the final evaluation
            checkpoint_every=200,
            keep_checkpoints=3,
            async_checkpoint=True,
            check_batches=True,  # reject NaN/inf inputs on the host before they reach the model
            # > 0: keep an exponential moving average of the params (decay per step), which
            # evaluation, later stages and exports use instead of the raw params.
            ema_decay=0.0,
            max_seconds=0.0,  # wall-clock budget; 0: none. Stops with a checkpoint when spent
            stop_at_step=0,  # stop (with a checkpoint) at this step; 0: run to num_steps.
            # Unlike a smaller num_steps it leaves the lr schedule unchanged (time-sliced jobs).
        )
    )
    c.data = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    return c
