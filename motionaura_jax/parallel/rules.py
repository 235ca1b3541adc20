"""Logical-axis rules: one table per model family (DESIGN section 5).

Each rule maps a logical name (`motionaura_jax.parallel.axes`) to a mesh axis, a tuple of
mesh axes, or None (replicated). Flax takes the first rule whose mesh axis is still free,
so a parameter never uses one mesh axis twice.
"""

from __future__ import annotations

from motionaura_jax.parallel import axes

_ACTIVATIONS = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.LENGTH, None),
    (axes.FRAMES, None),
    (axes.HEIGHT, None),
    (axes.WIDTH, None),
    (axes.CHANNELS, None),
)

# Transformers (denoiser, T5, SigLIP): FSDP over the model width, Megatron-style tensor
# parallelism over heads and the feed-forward width.
TRANSFORMER_RULES = _ACTIVATIONS + (
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.LAYERS, None),
    (axes.NORM, None),
    (axes.CONV_IN, "fsdp"),
    (axes.CONV_OUT, "tensor"),
    (axes.CONV_SPACE, None),
)

# Convolutional tokenizer: kernels are sharded FSDP-style over input channels and
# tensor-parallel over output channels; activations stay batch-sharded only.
CONV_RULES = _ACTIVATIONS + (
    (axes.CONV_IN, "fsdp"),
    (axes.CONV_OUT, "tensor"),
    (axes.CONV_SPACE, None),
    (axes.EMBED, "fsdp"),
    (axes.MLP, "tensor"),
    (axes.HEADS, None),
    (axes.KV, None),
    (axes.VOCAB, None),
    (axes.LAYERS, None),
    (axes.NORM, None),
)

RULES = {"transformer": TRANSFORMER_RULES, "conv": CONV_RULES}


def get_rules(family: str) -> tuple:
    if family not in RULES:
        raise ValueError(f"unknown rules family {family!r}; use one of {sorted(RULES)}")
    return RULES[family]
