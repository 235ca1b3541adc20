"""Configs: every config file and variant loads; overrides are checked."""

import glob
import importlib.util
import os

import pytest

from motionaura_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py")
)


def _variants(path):
    spec = importlib.util.spec_from_file_location("_c", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


def _all_specs():
    specs = [os.path.join(ROOT, "tests", "tiny_stage.py")]
    for path in CONFIG_FILES:
        specs += [f"{path}:{variant}" for variant in _variants(path)]
    return specs


@pytest.mark.parametrize("spec", _all_specs(), ids=lambda s: os.path.relpath(s, ROOT))
def test_every_config_and_variant_loads(spec):
    config = config_lib.load_config(spec)
    assert config.stage
    # Round trip through the JSON stored with checkpoints.
    assert config_lib.from_json(config_lib.to_json(config)).to_dict() == config.to_dict()


def test_every_config_file_declares_variants():
    for path in CONFIG_FILES:
        assert _variants(path), f"{path} lists no VARIANTS"


TINY = os.path.join(ROOT, "tests", "tiny_stage.py")


def test_overrides_apply_and_coerce():
    config = config_lib.load_config(
        TINY,
        [
            "optimizer.lr=0.5",
            "train.num_steps=3",
            "optimizer.clip_norm=2",
            "mesh.data=2",
            "optimizer.name=adam",
        ],
    )
    assert config.optimizer.lr == 0.5
    assert config.train.num_steps == 3
    assert config.optimizer.clip_norm == 2.0 and isinstance(config.optimizer.clip_norm, float)
    assert config.optimizer.name == "adam"


def test_unknown_key_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown config key 'optimizer.lrr'.*optimizer.lr"):
        config_lib.load_config(TINY, ["optimizer.lrr=0.1"])
    with pytest.raises(ValueError, match="unknown config key 'nonsense.x'"):
        config_lib.load_config(TINY, ["nonsense.x=1"])


def test_wrong_type_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'train.num_steps' expects int.*got str 'many'"):
        config_lib.load_config(TINY, ["train.num_steps=many"])


def test_locked_config_rejects_new_keys():
    config = config_lib.load_config(TINY)
    with pytest.raises(AttributeError):
        config.new_field = 1


def test_bad_spec_and_bad_batch():
    with pytest.raises(ValueError, match="does not exist"):
        config_lib.load_config("configs/nope.py:toy")
    with pytest.raises(ValueError, match="multiple of optimizer.grad_accum"):
        config_lib.load_config(TINY, ["optimizer.grad_accum=3"])


def test_saved_config_gains_new_eval_fields_at_their_defaults():
    # A t2v run saved before the corrector settings existed: they can still be swept.
    saved = config_lib.load_config(os.path.join(ROOT, "configs", "t2v.py:toy")).to_dict()
    del saved["eval"]["resample_steps"], saved["eval"]["resample_ratio"]
    saved["eval"]["cfg_scale"] = 7.0
    old = config_lib.from_dict(saved)
    with pytest.raises(ValueError, match="unknown config key 'eval.resample_steps'"):
        config_lib.apply_overrides(old, ["eval.resample_steps=4"])
    new = config_lib.apply_overrides(
        config_lib.with_new_fields(old, "eval"), ["eval.resample_steps=4"]
    )
    assert new.eval.resample_steps == 4 and new.eval.resample_ratio == 0.25
    assert new.eval.cfg_scale == 7.0  # what the run saved is kept
    assert "resample_steps" not in old.eval  # the saved config itself is untouched
