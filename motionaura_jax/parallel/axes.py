"""Logical axis names: the only sharding vocabulary models may use.

Models annotate parameters with `nn.with_logical_partitioning(init, names)` and
activations with `nn.with_logical_constraint(x, names)` using these names. The rules
that map them onto the mesh axes `('data', 'fsdp', 'tensor')` live in
`motionaura_jax.parallel.rules`, one table per model family.
"""

# Parameter axes.
EMBED = "embed"  # model width (d_model)
HEADS = "heads"  # attention heads
KV = "kv"  # per-head width
MLP = "mlp"  # feed-forward hidden width
VOCAB = "vocab"  # code / token vocabulary
CONV_IN = "conv_in"  # input channels of a convolution kernel
CONV_OUT = "conv_out"  # output channels of a convolution kernel
CONV_SPACE = "conv_space"  # spatial/temporal kernel taps (never sharded)
LAYERS = "layers"  # stacked blocks under nn.scan (never sharded)
NORM = "norm"  # scales and biases of norms (never sharded)

# Activation axes.
BATCH = "batch"
LENGTH = "length"  # flattened token sequence
FRAMES = "frames"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"

ALL = (
    EMBED,
    HEADS,
    KV,
    MLP,
    VOCAB,
    CONV_IN,
    CONV_OUT,
    CONV_SPACE,
    LAYERS,
    NORM,
    BATCH,
    LENGTH,
    FRAMES,
    HEIGHT,
    WIDTH,
    CHANNELS,
)
