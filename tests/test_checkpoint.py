"""Checkpoints: restore onto another mesh, stage/shape checks, crashed saves, export."""

import os
import shutil

import jax
import numpy as np
import pytest

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import config as config_lib
from motionaura_jax.parallel import mesh as mesh_lib
from motionaura_jax.train import loop

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_stage.py")


def _trained(tmp_path, overrides=()):
    config = config_lib.load_config(TINY, ["train.num_steps=2", *overrides])
    loop.train(config, str(tmp_path))
    return config, os.path.join(tmp_path, "tiny", "checkpoints")


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_on_one_mesh_restore_on_another(tmp_path):
    config = config_lib.load_config(TINY, ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"])
    mesh_a = mesh_lib.make_mesh(config.mesh)
    built_a = loop.setup(config, mesh_a)
    saver = checkpoint_lib.StageCheckpointer(str(tmp_path), stage=config.stage, async_save=False)
    saver.save(5, built_a.state, config, built_a.data)
    saver.close()

    mesh_b = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    built_b = loop.setup(config, mesh_b)
    restorer = checkpoint_lib.StageCheckpointer(str(tmp_path), stage=config.stage)
    restored = restorer.restore(5, built_b.abstract_state, built_b.data)
    _assert_trees_equal(restored.params, built_a.state.params)
    _assert_trees_equal(restored.opt_state, built_a.state.opt_state)
    kernel = restored.params["Dense_0"]["kernel"]
    assert kernel.sharding.mesh.shape == mesh_b.shape
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_checkpoint_from_another_stage_is_rejected(tmp_path):
    config, ckpt_dir = _trained(tmp_path)
    built = loop.setup(config)
    other = checkpoint_lib.StageCheckpointer(ckpt_dir, stage="tokenizer")
    with pytest.raises(
        checkpoint_lib.CheckpointMismatchError,
        match="from stage 'tests.tiny_stage:build', not 'tokenizer'",
    ):
        other.restore(2, built.abstract_state)


def test_checkpoint_of_another_shape_is_rejected(tmp_path):
    _, _ = _trained(tmp_path)
    wider = config_lib.load_config(TINY, ["model.hidden=32", "train.num_steps=2"])
    with pytest.raises(
        checkpoint_lib.CheckpointMismatchError,
        match=r"Dense_0/kernel has shape \(16, 64\) in the checkpoint, "
        r"the model wants \(16, 32\)",
    ):
        loop.train(wider, str(tmp_path))


def test_incomplete_save_never_replaces_last_good(tmp_path):
    _, ckpt_dir = _trained(tmp_path)
    # What a save killed mid-way leaves: Orbax's temporary folder, and on stores without
    # atomic renames a step folder without its commit marker.
    shutil.copytree(f"{ckpt_dir}/2", f"{ckpt_dir}/3.orbax-checkpoint-tmp-1700000000")
    shutil.rmtree(f"{ckpt_dir}/3.orbax-checkpoint-tmp-1700000000/state")
    shutil.copytree(f"{ckpt_dir}/2", f"{ckpt_dir}/4")
    os.remove(f"{ckpt_dir}/4/commit_success.txt")
    manager = checkpoint_lib.StageCheckpointer(ckpt_dir, stage="tests.tiny_stage:build")
    assert manager.latest_step() == 2


def test_export_params_only(tmp_path):
    config, ckpt_dir = _trained(tmp_path / "run")
    built = loop.setup(config)
    state = checkpoint_lib.StageCheckpointer(ckpt_dir, stage=config.stage).restore(
        2, built.abstract_state
    )
    checkpoint_lib.export_params(state.params, config, str(tmp_path / "export"), "bfloat16")
    params, exported_config = checkpoint_lib.load_exported(str(tmp_path / "export"))
    assert exported_config.stage == config.stage
    assert set(params) == {"Dense_0", "Dense_1"}  # no optimizer state
    assert params["Dense_0"]["kernel"].dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(
        np.asarray(params["Dense_0"]["kernel"], np.float32),
        np.asarray(state.params["Dense_0"]["kernel"]),
        rtol=1e-2,
        atol=1e-2,
    )
    with pytest.raises(ValueError, match="not an export folder"):
        checkpoint_lib.load_exported(str(tmp_path))


def test_export_tool_end_to_end(tmp_path):
    from tests.stage_fixtures import run_tool

    _trained(tmp_path / "run")
    run = run_tool(
        "export.py",
        f"--workdir={tmp_path}/run",
        "--stage=tiny",
        f"--out={tmp_path}/exp",
        "--dtype=float16",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    params, config = checkpoint_lib.load_exported(str(tmp_path / "exp"))
    assert config.stage == "tests.tiny_stage:build"
    assert params["Dense_1"]["kernel"].dtype == np.float16
    with pytest.raises(ValueError, match="no finished checkpoint"):
        checkpoint_lib.read_config(str(tmp_path / "nothing"))


def test_load_params_from_stage_folder_and_export(tmp_path):
    config, _ = _trained(tmp_path / "run")
    params, saved = checkpoint_lib.load_params(str(tmp_path / "run" / "tiny"))
    assert saved.stage == config.stage
    assert params["Dense_0"]["kernel"].shape == (16, 64)
    checkpoint_lib.export_params(params, saved, str(tmp_path / "exp"))
    exported, _ = checkpoint_lib.load_params(str(tmp_path / "exp"))
    np.testing.assert_array_equal(exported["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_load_params_in_a_process_with_other_devices(tmp_path):
    import subprocess
    import sys

    _trained(tmp_path / "run")  # saved from 8 fake devices
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import jax; from motionaura_jax import checkpoint as c\n"
        f"p, cfg = c.load_params({str(tmp_path / 'run' / 'tiny')!r})\n"
        "assert jax.device_count() == 1, jax.device_count()\n"
        "print(p['Dense_0']['kernel'].shape, cfg.stage)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env=dict(env, PYTHONPATH=root),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(16, 64) tests.tiny_stage:build" in run.stdout
