"""Reading Hugging Face checkpoint folders without torch: config.json and safetensors.

A folder is what `save_pretrained` writes: `config.json` plus either `model.safetensors`
or `model.safetensors.index.json` with its shards. Tensors are read with the
`safetensors` NumPy API; bfloat16, which NumPy lacks, is read from the documented file
layout into `ml_dtypes.bfloat16`. Every failure names the path or key and the fix.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open

# Hugging Face `hidden_act` / `feed_forward_proj` activation names, shared by T5 and SigLIP.
HF_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_OTHER_FORMATS = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "model.ckpt.index",
)


def read_config(path: str, model_types: Iterable[str], what: str) -> dict[str, Any]:
    """Returns `path/config.json` as a dict after checking its `model_type`.

    Args:
      path: checkpoint folder.
      model_types: accepted `model_type` values, e.g. `('t5', 'mt5')`.
      what: human name of the expected model, used in the error message.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint folder {path!r} does not exist; pass the folder "
            f"that `save_pretrained` wrote for a {what}"
        )
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path!r} is missing; a Hugging Face {what} folder needs "
            f"the config.json written by `save_pretrained`"
        )
    with open(config_path) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    model_types = tuple(model_types)
    if model_type not in model_types:
        raise ValueError(
            f"{config_path} has model_type={model_type!r}, but a {what} needs "
            f"model_type in {model_types}; point the loader at a {what} checkpoint"
        )
    return config


def weight_files(path: str) -> dict[str, str]:
    """Maps each tensor name to the safetensors file that holds it (single or sharded)."""
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(
                f"{index_path} has no 'weight_map'; re-save the model with "
                f"`save_pretrained(..., max_shard_size=...)`"
            )
        missing = sorted(
            {s for s in weight_map.values() if not os.path.isfile(os.path.join(path, s))}
        )
        if missing:
            raise FileNotFoundError(
                f"{index_path} names shards that are not in {path!r}: "
                f"{missing}; copy the complete checkpoint"
            )
        return {k: os.path.join(path, s) for k, s in weight_map.items()}
    if os.path.isfile(single_path):
        with safe_open(single_path, framework="np") as f:
            return {k: single_path for k in f.keys()}
    others = [name for name in _OTHER_FORMATS if os.path.exists(os.path.join(path, name))]
    hint = (
        f" It holds {others}: only safetensors are read (no torch at runtime); convert "
        f"once with transformers: `AutoModel.from_pretrained(path).save_pretrained(path)`."
        if others
        else " Download or copy the weights into it."
    )
    raise FileNotFoundError(
        f"no weights in {path!r}: neither {SINGLE_FILE} nor {INDEX_FILE}." + hint
    )


def _read_raw(filename: str, names: list[str]) -> dict[str, np.ndarray]:
    # safetensors layout: u64 header size, JSON header {name: {dtype, shape, data_offsets}},
    # then the data block. Used for bfloat16, which the NumPy API cannot return.
    with open(filename, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    start = 8 + header_size
    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
    out = {}
    for name in names:
        entry = header[name]
        if entry["dtype"] not in dtypes:
            raise ValueError(
                f"{filename}: tensor {name!r} has dtype {entry['dtype']}, which "
                f"this reader does not handle; re-save it as float32 or bfloat16"
            )
        begin, end = entry["data_offsets"]
        data = np.fromfile(filename, dtype=np.uint8, count=end - begin, offset=start + begin)
        out[name] = data.view(dtypes[entry["dtype"]]).reshape(entry["shape"])
    return out


def read_tensors(files: Mapping[str, str], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Reads the tensors `names` (a subset of `files`' keys) as NumPy arrays."""
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for filename, file_names in by_file.items():
        raw = []
        with safe_open(filename, framework="np") as f:
            for name in file_names:
                try:
                    out[name] = f.get_tensor(name)
                except TypeError:  # bfloat16: "data type 'bfloat16' not understood"
                    raw.append(name)
        out.update(_read_raw(filename, raw))
    return out


def tensor_shapes(files: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """Shapes of all tensors, from the headers only (no data is read)."""
    shapes = {}
    by_file: dict[str, list[str]] = {}
    for name, filename in files.items():
        by_file.setdefault(filename, []).append(name)
    for filename, names in by_file.items():
        with safe_open(filename, framework="np") as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def check_keys(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    ignored_prefixes: tuple[str, ...],
    path: str,
) -> None:
    """Raises one ValueError listing missing, unexpected and mis-shaped tensors.

    Args:
      found: tensor name -> shape in the checkpoint.
      expected: tensor name -> shape that our config requires.
      ignored_prefixes: names that may be present and are skipped (e.g. a T5 decoder).
      path: the folder, for the message.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if not k.startswith(ignored_prefixes))
    misshaped = sorted(
        f"{k}: expected {expected[k]}, found {found[k]}"
        for k in set(expected) & set(found)
        if tuple(found[k]) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys {misshaped}")
    if problems:
        raise ValueError(
            f"checkpoint {path!r} does not match its config.json: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
