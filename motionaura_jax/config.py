"""Loading configs by `path:variant`, dotted overrides, and validation.

Configs are big_vision-style Python files, `configs/<family>.py` with `get_config(arg)`.
We parse overrides ourselves instead of through `ml_collections.config_flags` so that an
unknown key or a value of the wrong type is a clear `ValueError` (config_flags raises a
bare AttributeError deep in a traceback) and so that `None` defaults can be overridden.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

STAGES = ("tokenizer", "t2v", "inpaint")
# The stage configs of this checkout: configs/<stage>.py.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Builds a config from `path/to/file.py[:arg]` and applies `key.sub=value` overrides.

    The returned config is locked: adding a key later raises an error.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist; pass e.g. configs/tokenizer.py:toy")
    module = _import_file(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config(arg) function")
    config = module.get_config(arg or None)
    config = apply_overrides(config, overrides)
    check_config(config)
    config.lock()
    return config


def _import_file(path: str):
    # Config files import `configs.common`; make the folder holding `configs/` importable.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "_motionaura_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted leaf key of `config`."""
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(all_keys(value, full + "."))
        else:
            keys.append(full)
    return keys


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies `['optimizer.lr=3e-4', 'train.num_steps=10', ...]` to a copy of `config`."""
    config = ml_collections.ConfigDict(config.to_dict())
    for item in overrides:
        key, raw = override_key(item), item.partition("=")[2]
        parent, leaf = _resolve(config, key)
        old = parent[leaf]
        parent[leaf] = _coerce(key, _parse_value(raw), old)
    return config


def with_new_fields(config: ml_collections.ConfigDict, section: str) -> ml_collections.ConfigDict:
    """A copy of a saved stage config with the `section` fields that the stage's current
    config (configs/<stage>.py, default variant) has and the saved one lacks, at their
    defaults: settings added after a run was trained (e.g. a new sampler option) can then
    be overridden on it. Fields the saved config has keep their values."""
    path = os.path.join(CONFIG_DIR, f"{config.stage}.py")
    config = ml_collections.ConfigDict(config.to_dict())
    if not os.path.isfile(path) or section not in config:
        return config
    current = load_config(path)
    for key, value in current.get(section, {}).items():
        if key not in config[section]:
            config[section][key] = value
    return config


def override_key(item: str) -> str:
    """The dotted key of an override `[--][config.]key.sub=value`."""
    key, sep, _ = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not of the form key.sub=value")
    return key.strip().removeprefix("--").removeprefix("config.")


def _resolve(config: ml_collections.ConfigDict, key: str):
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            here = ".".join(parts[:depth])
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = f" Did you mean {(here + '.' if here else '') + close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown config key {key!r}: {part!r} is not in "
                f"{here or 'the config'} (keys: {', '.join(known)}).{hint}"
            )
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # plain strings need no quotes on the command line


def _coerce(key: str, value: Any, old: Any) -> Any:
    if old is None or value is None or isinstance(old, ml_collections.ConfigDict):
        if isinstance(old, ml_collections.ConfigDict):
            raise ValueError(f"config key {key!r} is a section; override its fields instead")
        return value
    if isinstance(old, bool) or isinstance(value, bool):
        if isinstance(old, bool) and isinstance(value, bool):
            return value
    elif isinstance(old, float) and isinstance(value, int):
        return float(value)
    elif isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(old)(value)
    elif isinstance(value, type(old)):
        return value
    raise ValueError(
        f"config key {key!r} expects {type(old).__name__} (default {old!r}), "
        f"got {type(value).__name__} {value!r}"
    )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks the sections every stage config must have; stages check their own fields."""
    for section in ("stage", "seed", "mesh", "optimizer", "train", "data", "model"):
        if section not in config:
            raise ValueError(f"config has no {section!r} section; start from configs/common.py")
    if config.stage not in STAGES and ":" not in config.stage:
        raise ValueError(
            f"unknown stage {config.stage!r}; use one of {STAGES} or 'package.module:build'"
        )
    accum = config.optimizer.grad_accum
    if accum < 1 or config.train.batch_size % accum:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a positive multiple of "
            f"optimizer.grad_accum={accum}"
        )


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=repr)


def _tuples(value: Any) -> Any:
    # JSON has no tuples; configs (and the Flax module fields they feed, which must be
    # hashable) use tuples for every sequence.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def from_dict(values: dict) -> ml_collections.ConfigDict:
    """A config from plain JSON-like data (lists become tuples)."""
    return ml_collections.ConfigDict(_tuples(values))


def from_json(text: str) -> ml_collections.ConfigDict:
    return from_dict(json.loads(text))
