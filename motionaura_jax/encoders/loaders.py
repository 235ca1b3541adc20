"""Hugging Face checkpoint folders -> parameter trees of our Flax T5 and SigLIP modules.

`load_t5(path)` accepts a `T5EncoderModel` folder or a full T5 (`T5Model`,
`T5ForConditionalGeneration`, e.g. google/t5-v1_1-xxl converted to safetensors): the
decoder and LM head are skipped. `load_siglip_vision(path)` accepts a
`SiglipVisionModel` folder (keys with or without the `vision_model.` prefix) or a full
`SiglipModel` (the text tower and logit scale are skipped). Anything else that does not
match config.json raises one ValueError listing the offending keys.

The returned params are plain nested dicts of NumPy arrays, ready for
`module.apply({'params': params}, ...)` or for `jax.device_put` with shardings derived
from the module's logical axis names. PyTorch `Linear` weights are (out, in); ours are
(in, out), with the head axis split out for attention projections.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from motionaura_jax.encoders import hf_checkpoint
from motionaura_jax.encoders.siglip import SiglipVisionConfig, SiglipVisionTower
from motionaura_jax.encoders.t5 import T5Config, T5Encoder

Params = dict[str, Any]
# (hf name, expected hf shape, our path, transform of the hf array)
_Entry = tuple[str, tuple[int, ...], tuple[str, ...], Callable[[np.ndarray], np.ndarray]]


def _transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def _heads_in(heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    # (heads * head_dim, d_model) -> (d_model, heads, head_dim)
    return lambda w: w.T.reshape(w.shape[1], heads, head_dim)


def _heads_out(heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    # (d_model, heads * head_dim) -> (heads, head_dim, d_model)
    return lambda w: w.T.reshape(heads, head_dim, w.shape[0])


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _t5_entries(cfg: T5Config) -> tuple[list[_Entry], list[list[_Entry]]]:
    d, inner, h, dk = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.num_heads, cfg.d_kv
    top = [
        ("shared.weight", (cfg.vocab_size, d), ("token_embed", "embedding"), _identity),
        (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (cfg.relative_attention_num_buckets, h),
            ("relative_attention_bias",),
            _identity,
        ),
        ("encoder.final_layer_norm.weight", (d,), ("final_norm", "scale"), _identity),
    ]
    ff = ["wi_0", "wi_1"] if cfg.is_gated else ["wi"]
    layers = []
    for i in range(cfg.num_layers):
        p = f"encoder.block.{i}.layer."
        entries = [
            (p + "0.layer_norm.weight", (d,), ("attention_norm", "scale"), _identity),
            (
                p + "0.SelfAttention.q.weight",
                (inner, d),
                ("attention", "query", "kernel"),
                _heads_in(h, dk),
            ),
            (
                p + "0.SelfAttention.k.weight",
                (inner, d),
                ("attention", "key", "kernel"),
                _heads_in(h, dk),
            ),
            (
                p + "0.SelfAttention.v.weight",
                (inner, d),
                ("attention", "value", "kernel"),
                _heads_in(h, dk),
            ),
            (
                p + "0.SelfAttention.o.weight",
                (d, inner),
                ("attention", "out", "kernel"),
                _heads_out(h, dk),
            ),
            (p + "1.layer_norm.weight", (d,), ("mlp_norm", "scale"), _identity),
            (p + "1.DenseReluDense.wo.weight", (d, cfg.d_ff), ("mlp", "wo", "kernel"), _transpose),
        ]
        entries += [
            (
                p + f"1.DenseReluDense.{name}.weight",
                (cfg.d_ff, d),
                ("mlp", name, "kernel"),
                _transpose,
            )
            for name in ff
        ]
        layers.append(entries)
    return top, layers


def _siglip_entries(cfg: SiglipVisionConfig) -> tuple[list[_Entry], list[list[_Entry]]]:
    d, h, dh, f = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size

    def attention(prefix, ours, names=("q_proj", "k_proj", "v_proj", "out_proj")):
        out = []
        for name, key in zip(names[:3], ("query", "key", "value")):
            out += [
                (f"{prefix}{name}.weight", (d, d), ours + (key, "kernel"), _heads_in(h, dh)),
                (f"{prefix}{name}.bias", (d,), ours + (key, "bias"), lambda b: b.reshape(h, dh)),
            ]
        return out + [
            (f"{prefix}{names[3]}.weight", (d, d), ours + ("out", "kernel"), _heads_out(h, dh)),
            (f"{prefix}{names[3]}.bias", (d,), ours + ("out", "bias"), _identity),
        ]

    def mlp(prefix, ours):
        return [
            (prefix + "fc1.weight", (f, d), ours + ("fc1", "kernel"), _transpose),
            (prefix + "fc1.bias", (f,), ours + ("fc1", "bias"), _identity),
            (prefix + "fc2.weight", (d, f), ours + ("fc2", "kernel"), _transpose),
            (prefix + "fc2.bias", (d,), ours + ("fc2", "bias"), _identity),
        ]

    def norm(prefix, ours):
        return [
            (prefix + ".weight", (d,), (ours, "scale"), _identity),
            (prefix + ".bias", (d,), (ours, "bias"), _identity),
        ]

    p = cfg.patch_size
    top = [
        (
            "embeddings.patch_embedding.weight",
            (d, cfg.num_channels, p, p),
            ("patch_embed", "kernel"),
            lambda w: w.transpose(2, 3, 1, 0),
        ),  # OIHW -> HWIO
        ("embeddings.patch_embedding.bias", (d,), ("patch_embed", "bias"), _identity),
        (
            "embeddings.position_embedding.weight",
            (cfg.num_patches, d),
            ("position_embedding",),
            _identity,
        ),
        *norm("post_layernorm", "post_norm"),
    ]
    if cfg.vision_use_head:
        # torch.nn.MultiheadAttention packs q, k, v into one (3D, D) in_proj; split below.
        top += [
            ("head.probe", (1, 1, d), ("head", "probe"), _identity),
            (
                "head.attention.in_proj_weight",
                (3 * d, d),
                ("head", "attention", "_in_w"),
                _identity,
            ),
            ("head.attention.in_proj_bias", (3 * d,), ("head", "attention", "_in_b"), _identity),
            (
                "head.attention.out_proj.weight",
                (d, d),
                ("head", "attention", "out", "kernel"),
                _heads_out(h, dh),
            ),
            ("head.attention.out_proj.bias", (d,), ("head", "attention", "out", "bias"), _identity),
            ("head.layernorm.weight", (d,), ("head", "norm", "scale"), _identity),
            ("head.layernorm.bias", (d,), ("head", "norm", "bias"), _identity),
            *mlp("head.mlp.", ("head", "mlp")),
        ]
    layers = []
    for i in range(cfg.num_hidden_layers):
        q = f"encoder.layers.{i}."
        layers.append(
            [
                *norm(q + "layer_norm1", "norm1"),
                *norm(q + "layer_norm2", "norm2"),
                *attention(q + "self_attn.", ("attention",)),
                *mlp(q + "mlp.", ("mlp",)),
            ]
        )
    return top, layers


def _set(tree: Params, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _assemble(
    files: dict[str, str],
    rename: dict[str, str],
    top: list[_Entry],
    layers: list[list[_Entry]],
    dtype: Any,
) -> Params:
    """Reads the tensors and builds our tree; per-layer tensors are stacked for `nn.scan`.

    Reads one parameter kind (e.g. every layer's `wi_0`) at a time and casts it before
    stacking, so peak host memory stays near the size of the result (T5-XXL: 19 GB in
    float32, 9.5 GB in bfloat16) instead of twice that.
    """

    def read(entries: list[_Entry]) -> list[np.ndarray]:
        names = [rename.get(e[0], e[0]) for e in entries]
        tensors = hf_checkpoint.read_tensors(files, names)
        out = []
        for name, entry in zip(names, entries):
            w = entry[3](np.asarray(tensors.pop(name)))
            out.append(w if dtype is None else w.astype(dtype))
        return out

    params: Params = {}
    for entry, value in zip(top, read(top)):
        _set(params, entry[2], value)
    for j, (_, _, path, _) in enumerate(layers[0] if layers else []):
        _set(params, ("layers",) + path, np.stack(read([entries[j] for entries in layers])))
    return params


def _check_against_module(module: Any, example_args: tuple, params: Params, path: str) -> None:
    # Guards the name map itself: the tree must equal what `module.init` would create.
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_args))["params"]
    want = {
        jax.tree_util.keystr(k): v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(
            jax.tree.map(
                lambda x: getattr(x, "value", x), abstract, is_leaf=lambda x: hasattr(x, "names")
            )
        )
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise ValueError(f"internal name map for {path!r} does not match the module: {diff}")


def load_t5(path: str, dtype: Any = None) -> tuple[T5Config, Params]:
    """Loads a T5 (v1.0/v1.1/mT5) encoder from a Hugging Face safetensors folder.

    Args:
      path: folder with config.json and model.safetensors (or an index + shards).
      dtype: cast every tensor to this dtype (e.g. `jnp.bfloat16` for T5-XXL); None keeps
        the stored dtype.
    Returns:
      `(config, params)` for `T5Encoder(config).apply({'params': params}, ids, mask)`.
    """
    hf = hf_checkpoint.read_config(path, ("t5", "mt5"), "T5 encoder")
    cfg = T5Config.from_hf(hf)
    files = hf_checkpoint.weight_files(path)
    rename = {}
    if "shared.weight" not in files and "encoder.embed_tokens.weight" in files:
        rename["shared.weight"] = "encoder.embed_tokens.weight"  # tied copy saved instead
    top, layers = _t5_entries(cfg)
    expected = {rename.get(n, n): s for n, s, _, _ in top + [e for ls in layers for e in ls]}
    found = hf_checkpoint.tensor_shapes(files)
    hf_checkpoint.check_keys(
        found, expected, ("decoder.", "lm_head.", "encoder.embed_tokens."), path
    )
    params = _assemble(files, rename, top, layers, dtype)
    ids = jnp.zeros((1, 2), jnp.int32)
    _check_against_module(T5Encoder(cfg), (ids, ids > 0), params, path)
    return cfg, params


def load_siglip_vision(path: str, dtype: Any = None) -> tuple[SiglipVisionConfig, Params]:
    """Loads a SigLIP vision tower from a Hugging Face safetensors folder.

    Args:
      path: a `SiglipVisionModel` or `SiglipModel` folder (config.json + safetensors).
      dtype: optional cast of every tensor; None keeps the stored dtype.
    Returns:
      `(config, params)` for `SiglipVisionTower(config).apply({'params': params}, images)`.
    """
    hf = hf_checkpoint.read_config(path, ("siglip_vision_model", "siglip"), "SigLIP vision model")
    cfg = SiglipVisionConfig.from_hf(hf)
    files = hf_checkpoint.weight_files(path)
    # Older SiglipVisionModel files and full SiglipModel files prefix the tower's keys.
    prefix = "vision_model."
    original = {(k[len(prefix) :] if k.startswith(prefix) else k): k for k in files}
    top, layers = _siglip_entries(cfg)
    expected = {n: s for n, s, _, _ in top + [e for ls in layers for e in ls]}
    found = {
        (k[len(prefix) :] if k.startswith(prefix) else k): s
        for k, s in hf_checkpoint.tensor_shapes(files).items()
    }
    hf_checkpoint.check_keys(found, expected, ("text_model.", "logit_scale", "logit_bias"), path)
    params = _assemble(files, {n: original[n] for n in expected}, top, layers, dtype)
    if cfg.vision_use_head:
        attn = params["head"]["attention"]
        w, b = attn.pop("_in_w"), attn.pop("_in_b")
        for i, key in enumerate(("query", "key", "value")):
            rows = slice(i * cfg.hidden_size, (i + 1) * cfg.hidden_size)
            attn[key] = {
                "kernel": _heads_in(cfg.num_attention_heads, cfg.head_dim)(w[rows]),
                "bias": b[rows].reshape(cfg.num_attention_heads, cfg.head_dim),
            }
    images = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels))
    _check_against_module(SiglipVisionTower(cfg), (images,), params, path)
    return cfg, params


_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved next to the weights, via `AutoTokenizer`, never downloading."""
    from transformers import AutoTokenizer  # transformers is heavy; import on use

    # transformers v5 builds an *empty* T5 tokenizer (every word -> <unk>) from a folder
    # without vocabulary files instead of failing, so check for them first.
    if not any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no usable tokenizer in {path!r}: none of {_TOKENIZER_FILES}; "
            f"save one there with `AutoTokenizer.from_pretrained(name)"
            f".save_pretrained(path)`"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"no usable tokenizer in {path!r} ({e}); save one there with "
            f"`AutoTokenizer.from_pretrained(name).save_pretrained(path)`"
        ) from e
