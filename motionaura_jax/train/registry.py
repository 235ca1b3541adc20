"""Finds a stage's `build(config, workdir) -> Stage` from `config.stage`."""

from __future__ import annotations

import importlib

import ml_collections

from motionaura_jax.train.stage import Stage

STAGE_MODULES = {
    "tokenizer": "motionaura_jax.train.tokenizer",
    "t2v": "motionaura_jax.train.t2v",
    "inpaint": "motionaura_jax.train.inpaint",
}


def build_stage(config: ml_collections.ConfigDict, workdir: str | None = None) -> Stage:
    """Built-in stages by name; anything else as `'package.module:function'` (own stages)."""
    name = config.stage
    if ":" in name:
        module_name, _, function = name.partition(":")
    elif name in STAGE_MODULES:
        module_name, function = STAGE_MODULES[name], "build"
    else:
        raise ValueError(
            f"unknown stage {name!r}; use one of {sorted(STAGE_MODULES)} or 'package.module:build'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"stage {name!r}: cannot import {module_name!r} ({e})") from e
    stage = getattr(module, function)(config, workdir)
    if not isinstance(stage, Stage):
        raise TypeError(f"{module_name}.{function} returned {type(stage).__name__}, not a Stage")
    return stage
