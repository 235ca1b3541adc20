"""The stage-3 denoiser: a frozen t2v `SpectralTransformer` with LoRA, fed z_t, z_m and a sketch.

Sequence (Sec. 4, Fig. 5; D10): `embed(flatten(z_t)) ++ embed'(flatten(z_m)) ++ MLP(SigLIP(s))`
where `embed` is the base's (frozen) token table and `embed'` a new, trainable table for
the masked-video tokens (so the denoiser can tell the two token streams apart), and the
sketch tokens come from `sketch.SketchProjector`. Logits are returned for the z_t
positions only (the loss is on z_t, D10). Text cross-attention is the base's.

`context="sum"` (ours, D10 note) adds `embed'(z_m)` to `embed(z_t)` cell by cell instead
of appending it: z_m's token at a cell is the masked video at that very cell, so the
denoiser reads it without having to find it through attention, and the sequence is half
as long (L + S' instead of 2L + S'). That table starts at zero, so the adapted model
still starts exactly equal to the base.

Parameters of `InpaintDenoiser` are `{'base': <SpectralTransformer params incl. LoRA>,
'masked_embed': (rows, D), 'sketch_mlp': {...}}` (plus `masked_patch_embed` when a
patched base, `model.patch`, has z_m appended, and `cell_logits` with that option). Only
the LoRA adapters (every module whose name ends in `_lora`) and the stage's own layers
are trained: `split_trainable` / `merge_params` move between the full tree and
(trainable, frozen base), which is what lets the stage's `init` return the trainable
parameters alone (the optimizer then holds state for them only) while the base lives in
`Stage.frozen`.

`down_statistics` + `redraw_downs` implement D10's "W_down drawn from the base layer's
weight statistics": the (mean, std) of each adapted base kernel (per block), measured on
the loaded t2v checkpoint, replace the random init of every adapter's `down`.
`merge_linear_lora` folds plain linear LoRA into the base kernels for export.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.denoiser.model import PatchEmbed, SpectralTransformer, token_table
from motionaura_jax.inpaint.sketch import SketchProjector
from motionaura_jax.nn import lora as lora_lib
from motionaura_jax.nn.conv3d import DepthwiseConv3D
from motionaura_jax.nn.layers import partitioned
from motionaura_jax.parallel import axes

PyTree = Any
LORA_SUFFIX = "_lora"
CONTEXTS = ("concat", "sum")  # how z_m enters the sequence (see the module docstring)
# Adapter name -> (base kernel name in the same parent module, slot of a fused kernel's
# second axis or None). Self-attention has one fused qkv kernel (D, 3, H, Dh); cross-
# attention a q kernel and a fused kv kernel (D, 2, H, Dh); the FF adapter reads `wo`'s output.
_ADAPTED = {
    ("self_attn", "q_lora"): ("qkv", 0),
    ("self_attn", "k_lora"): ("qkv", 1),
    ("cross_attn", "q_lora"): ("q", None),
    ("cross_attn", "k_lora"): ("kv", 0),
    ("mlp", "out_lora"): ("wo", None),
}


class InpaintDenoiser(nn.Module):
    """z_t, z_m, sketch features, t, text -> logits over the z_t positions (D10).

    Attributes:
      base: the t2v `SpectralTransformer` with `lora_rank > 0` (its fields = the t2v config).
      sketch_hidden: hidden width of the sketch MLP (0 = the denoiser's width).
      context: "concat" (D10: z_m's tokens appended to the sequence) or "sum" (added to
        z_t's embedding at the same cell; see the module docstring).
      cell_logits: add `CellLogits`(z_m) to each cell's logits (ours; see that class).
      cell_neighbours: those logits also read z_m's tokens at the 8 cells around.

    Call args:
      z_t: (B, n, h, w) int32 in [0, K] (K = [MASK]); z_m: (B, n, h, w) int32 in [0, K).
      sketch_feats: (B, P, D_s) SigLIP patch features.
      t: (B,); text: (B, S, Dt); text_mask: (B, S) bool; fps: (B,); drop_text: (B,) bool.
      drop_sketch: (B,) bool; True zeroes that clip's sketch tokens (the "no sketch"
        condition of sketch guidance, `inpaint/sampling.py`).
      digit_logits: per-digit logits of a digit-head base (see `SpectralTransformer`).
    Returns:
      (B, n * h * w, K) logits.
    """

    base: SpectralTransformer
    sketch_hidden: int = 0
    context: str = "concat"
    cell_logits: bool = False
    cell_neighbours: bool = False

    @nn.compact
    def __call__(
        self,
        z_t,
        z_m,
        sketch_feats,
        t,
        text,
        text_mask=None,
        fps=None,
        drop_text=None,
        digit_logits=False,
        drop_sketch=None,
    ):
        base = self.base
        b = z_t.shape[0]
        if self.context not in CONTEXTS:
            raise ValueError(f"inpaint context={self.context!r}; use one of {CONTEXTS}")
        if self.cell_logits and base.code_levels:
            raise ValueError(
                "inpaint cell_logits needs the K-way head, but the t2v base has a digit head "
                "(model.digit_head=True); set --config.inpaint.cell_logits=False and "
                "--config.inpaint.cell_neighbours=False"
            )
        if self.cell_neighbours and not self.cell_logits:
            raise ValueError(
                "inpaint cell_neighbours widens the per-cell logits, which are off; "
                "set --config.inpaint.cell_logits=True or cell_neighbours=False"
            )
        summed = self.context == "sum"
        init = nn.initializers.zeros if summed else nn.initializers.normal(0.02)
        table = token_table(
            self, "masked_embed", base.vocab_size, base.width, base.param_dtype, init
        )
        zm = jnp.take(table, z_m.reshape(b, -1), axis=0).astype(base.dtype)
        if not summed and base.patched:
            # Appended z_m takes the base's positions: one per patch of cells, embedded by
            # a trainable layer of its own (the base's `patch_embed` reads z_t's table).
            zm = PatchEmbed(
                base.width, base.patch, base.dtype, base.param_dtype, name="masked_patch_embed"
            )(zm, z_m.shape[1:])
        sketch = SketchProjector(
            base.width, self.sketch_hidden, base.dtype, base.param_dtype, name="sketch_mlp"
        )(sketch_feats.astype(base.dtype))
        if drop_sketch is not None:
            sketch = jnp.where(drop_sketch[:, None, None], 0.0, sketch)
        sketch = sketch.astype(base.dtype)
        logits = base(
            z_t,
            t,
            text,
            text_mask=text_mask,
            fps=fps,
            drop_text=drop_text,
            extra_embeds=sketch if summed else jnp.concatenate([zm, sketch], axis=1),
            digit_logits=digit_logits,
            token_offsets=zm if summed else None,
        )
        if not self.cell_logits:
            return logits
        offsets = CellLogits(
            base.vocab_size,
            base.width,
            base.dtype,
            base.param_dtype,
            neighbours=self.cell_neighbours,
            name="cell_logits",
        )(z_m)
        return (logits + offsets).astype(logits.dtype)


class CellLogits(nn.Module):
    """z_m's token at each cell -> an additive offset to that cell's logits (ours).

    A patched base (`SpectralTransformer.patch`) sees z_m only through its frozen patch
    embedding, one vector for several cells, and predicts those cells from one output.
    The masked video's token at a cell holds the hole's outline inside that cell (the mask
    is the object's dilated silhouette), so this gives each cell its own path from z_m to
    its logits: a product of the base's experts (colour, motion) and the outline's. It
    helps an unpatched base too (configs/inpaint.py has the numbers). With `neighbours`
    the hidden layer adds a per-frame 3 x 3 depthwise filter of the table rows: the
    decoder mixes neighbouring cells, so what a cell may hold at the hole's edge depends
    on the outline next to it (the toy's gap outside the hole fell from 1.1-1.3 dB to
    0.8-0.9 dB). The last layer (and that filter) start at zero, so the adapted model
    still starts equal to the base.
    """

    vocab_size: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    neighbours: bool = False

    @nn.compact
    def __call__(self, z_m: jax.Array) -> jax.Array:
        # Hidden layer = table row: a linear layer after a lookup would be another table.
        table = token_table(self, "embed", self.vocab_size, self.width, self.param_dtype)
        h = jnp.take(table, z_m, axis=0).astype(self.dtype)  # (B, n, h, w, width)
        if self.neighbours:  # plus the rows of the 8 cells around, per frame (zero at first)
            h = h + DepthwiseConv3D(
                (1, 3, 3),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.zeros,
                name="neighbours",
            )(h)
        h = nn.gelu(h.reshape(h.shape[0], -1, h.shape[-1]), approximate=True)
        return nn.Dense(
            self.vocab_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.zeros, (axes.EMBED, axes.VOCAB)),
            bias_init=partitioned(nn.initializers.zeros, (axes.VOCAB,)),
            name="out",
        )(h)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _is_trainable(path: tuple[str, ...]) -> bool:
    return path[0] != "base" or any(name.endswith(LORA_SUFFIX) for name in path)


def _filter(tree: dict, keep, prefix: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            sub = _filter(value, keep, path)
            if sub:
                out[key] = sub
        elif keep(path):
            out[key] = value
    return out


def split_trainable(full: PyTree) -> tuple[PyTree, PyTree]:
    """Full `InpaintDenoiser` params -> (trainable, frozen base params without LoRA)."""
    full = jax.tree.map(lambda x: x, full, is_leaf=_is_box)  # plain dicts (FrozenDict-safe)
    full = _as_dict(full)
    trainable = _filter(full, _is_trainable)
    base = _filter(full["base"], lambda p: not _is_trainable(("base", *p)))
    return trainable, base


def _as_dict(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items") and not _is_box(tree):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def merge_params(trainable: PyTree, base: PyTree) -> PyTree:
    """(trainable, frozen base) -> the full `InpaintDenoiser` params tree."""
    trainable = _as_dict(trainable)
    return {**trainable, "base": _deep_merge(_as_dict(base), trainable.get("base", {}))}


def iter_adapters(tree: dict, prefix: tuple[str, ...] = ()):
    """Yields (path, adapter params) of every `*_lora` module in a params tree."""
    for key, value in tree.items():
        if not isinstance(value, dict):
            continue
        if key.endswith(LORA_SUFFIX):
            yield (*prefix, key), value
        else:
            yield from iter_adapters(value, (*prefix, key))


def _base_kernel(base: dict, path: tuple[str, ...]) -> np.ndarray:
    """The base kernel an adapter at `path` (relative to the denoiser) adapts."""
    parent, name = path[-2], path[-1]
    if (parent, name) not in _ADAPTED:
        raise KeyError(f"no base kernel known for the adapter {'/'.join(path)}")
    kernel_name, slot = _ADAPTED[(parent, name)]
    node = base
    for key in path[:-1]:
        node = node[key]
    kernel = np.asarray(node[kernel_name]["kernel"], np.float32)
    if slot is None:
        return kernel
    # A scanned stack has a leading layer axis; the fused axis comes right after D.
    stacked = kernel.ndim == 5
    return kernel[:, :, slot] if stacked else kernel[:, slot]


def down_statistics(base: PyTree, trainable: PyTree) -> dict[tuple[str, ...], np.ndarray]:
    """Per adapter (path below `base`), (layers, 2) or (2,) [mean, std] of its base kernel.

    Scanned stacks get one (mean, std) per block: blocks are trained separately, and
    their weight scales differ.
    """
    stats = {}
    lora_tree = _as_dict(nn.meta.unbox(trainable)).get("base", {})
    for path, params in iter_adapters(lora_tree):
        if "down" not in params:
            continue  # linear LoRA keeps its own init (its `a`), only adapters redraw
        kernel = _base_kernel(_as_dict(base), path)
        stacked = params["down"].ndim == 3
        if stacked:
            flat = kernel.reshape(kernel.shape[0], -1)
            stats[path] = np.stack([flat.mean(1), flat.std(1)], axis=1).astype(np.float32)
        else:
            stats[path] = np.array([kernel.mean(), kernel.std()], np.float32)
    return stats


def redraw_downs(trainable: PyTree, stats: dict, rng: jax.Array) -> PyTree:
    """Every adapter's `down` redrawn from N(mean, std) of its base kernel (D10); pure.

    Works on boxed (`nn.Partitioned`) or plain trees; `up` stays 0, so the adapted model
    still equals the base exactly.
    """
    trainable = _as_dict(trainable)
    for i, (path, mean_std) in enumerate(sorted(stats.items())):
        node = trainable["base"]
        for key in path:
            node = node[key]
        down = node["down"]
        value = nn.meta.unbox(down)
        key = jax.random.fold_in(rng, i)
        ms = jnp.asarray(mean_std)
        if value.ndim == 3:  # scanned: (layers, D, rank) with per-layer statistics
            keys = jax.random.split(key, value.shape[0])
            shape = value.shape[1:]
            noise = jax.vmap(lambda k, s=shape: jax.random.normal(k, s, jnp.float32))(keys)
            fresh = ms[:, 0, None, None] + ms[:, 1, None, None] * noise
        else:  # the same draw as lora.redraw_down_from_base, from stored statistics
            fresh = ms[0] + ms[1] * jax.random.normal(key, value.shape, jnp.float32)
        fresh = fresh.astype(value.dtype)
        node["down"] = down.replace_boxed(fresh) if _is_box(down) else fresh
    return trainable


def merge_linear_lora(full: PyTree, alpha: float) -> PyTree:
    """Folds every linear `*_lora` into its base kernel; returns plain base params.

    The result loads into the base `SpectralTransformer` (`lora_rank=0`) and gives the same
    outputs as the adapted model: parallel Q/K LoRA adds `A B alpha/r` to the Q / K slice
    of the projection; the sequential FF LoRA `y + y M` (M = A B alpha/r) turns `wo` into
    `W_o (I + M)` and its bias into `b (I + M)`.
    """
    full = _as_dict(nn.meta.unbox(full))
    base = _filter(full["base"], lambda p: not any(n.endswith(LORA_SUFFIX) for n in p))
    for path, params in iter_adapters(full["base"]):
        if "a" not in params:
            raise ValueError(
                f"adapter {'/'.join(path)} is a GELU adapter, which cannot be "
                "merged; only lora.kind='linear' merges into the base"
            )
        parent, name = path[-2], path[-1]
        kernel_name, slot = _ADAPTED[(parent, name)]
        node = base
        for key in path[:-1]:
            node = node[key]
        stacked = params["a"].ndim == 3
        delta_fn = lambda a, b: lora_lib.linear_delta({"a": a, "b": b}, alpha)  # noqa: E731
        delta = (
            jax.vmap(delta_fn)(params["a"], params["b"])
            if stacked
            else delta_fn(params["a"], params["b"])
        )
        kernel = jnp.asarray(node[kernel_name]["kernel"])
        if (parent, name) == ("mlp", "out_lora"):
            eye = jnp.eye(delta.shape[-1], dtype=delta.dtype)
            mix = eye + delta
            node[kernel_name] = {
                "kernel": jnp.einsum("...hd,...de->...he", kernel, mix),
                "bias": jnp.einsum("...d,...de->...e", jnp.asarray(node[kernel_name]["bias"]), mix),
            }
        elif slot is None:
            node[kernel_name] = {**node[kernel_name], "kernel": kernel + delta}
        else:
            index = (slice(None), slice(None), slot) if stacked else (slice(None), slot)
            node[kernel_name] = {**node[kernel_name], "kernel": kernel.at[index].add(delta)}
    return base
