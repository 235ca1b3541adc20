"""Meshes, rules, the sharded step against the single-device step, and two real JAX
processes agreeing on a stop decision."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from motionaura_jax import config as config_lib
from motionaura_jax.parallel import mesh as mesh_lib
from motionaura_jax.parallel.multihost import detect_cluster
from motionaura_jax.train import loop

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_stage.py")


def test_mesh_shape_resolves_minus_one():
    assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert mesh_lib.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        mesh_lib.mesh_shape({"data": 3, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="cannot be split"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        mesh_lib.mesh_shape({"pipeline": 2}, 8)


def test_make_mesh_axes():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh_lib.data_parallel_size(mesh) == 4


def _run(config, mesh, steps):
    built = loop.setup(config, mesh)
    state, losses = built.state, []
    for _ in range(steps):
        batch = loop.device_fields(built.stage, next(built.data))
        with jax.set_mesh(mesh):
            from motionaura_jax.parallel import sharding

            state, metrics = built.train_step(
                state, built.frozen, sharding.device_batch(batch, mesh)
            )
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_sharded_step_equals_single_device(grad_accum):
    config = config_lib.load_config(TINY, [f"optimizer.grad_accum={grad_accum}"])
    mesh8 = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    mesh1 = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    state8, losses8 = _run(config, mesh8, 3)
    state1, losses1 = _run(config, mesh1, 3)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
        state8.params,
        state1.params,
    )
    # The rules put 'embed' on fsdp and 'mlp' on tensor (TRANSFORMER_RULES).
    kernel0 = state8.params["Dense_0"]["kernel"]
    assert kernel0.sharding.spec == P("fsdp", "tensor")
    assert state8.params["Dense_1"]["kernel"].sharding.spec == P("tensor", "fsdp")
    assert state8.params["Dense_0"]["bias"].sharding.spec == P("tensor")
    # Each device holds a quarter of the (16, 64) kernel.
    assert {s.data.shape for s in kernel0.addressable_shards} == {(8, 32)}
    # Optimizer moments follow their parameters.
    mu = state8.opt_state[1][0].mu["Dense_0"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")


def test_grad_accum_matches_full_batch_first_step():
    # Same batch and same parameters: one step with 2 micro-batches ~ one full-batch step.
    full = config_lib.load_config(TINY, ["optimizer.grad_accum=1"])
    accum = config_lib.load_config(TINY, ["optimizer.grad_accum=4"])
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    state_a, loss_a = _run(full, mesh, 1)
    state_b, loss_b = _run(accum, mesh, 1)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state_a.params,
        state_b.params,
    )


def test_detect_cluster():
    assert detect_cluster({}) is None
    assert detect_cluster({"SLURM_NTASKS": "1"}) is None
    assert detect_cluster({"SLURM_NTASKS": "16"}) == "slurm"
    assert detect_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
    assert (
        detect_cluster(
            {
                "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                "JOB_COMPLETION_INDEX": "0",
                "JOBSET_NAME": "t2v",
            }
        )
        == "gke"
    )
    assert (
        detect_cluster({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2"})
        == "explicit"
    )


# Two CPU processes joined by jax.distributed (gloo collectives), as on a 2-host launch.
_AGREE_WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
rank = int(sys.argv[1])
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=rank)
from motionaura_jax.parallel.multihost import any_process
print("agreed", any_process(rank == 0), any_process(False), flush=True)
"""


def test_any_process_agrees_across_two_processes():
    """A stop flag raised on one host is seen by every host (the train loop's stop rule)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": root}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AGREE_WORKER, str(rank), f"localhost:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()  # no-op once exited; a hung peer must not outlive the test
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:]
        assert "agreed True False" in out, out[-2000:]
