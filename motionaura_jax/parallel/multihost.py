"""Multi-host start-up: `jax.distributed.initialize()` when launched on several hosts.

JAX's own cluster detection reads the coordinator address and process ids from SLURM,
Open MPI and Kubernetes (GKE JobSet) environments; we only decide whether this launch is
multi-host at all, so that a single-host run never waits for a coordinator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """Names the multi-host launcher this process runs under, or None for one host."""
    env = os.environ if env is None else env

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS") and count("JAX_NUM_PROCESSES") > 1:
        return "explicit"
    if count("SLURM_NTASKS") > 1 or count("SLURM_NPROCS") > 1:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("JOB_COMPLETION_INDEX") is not None:
        if count("JAX_NUM_PROCESSES") > 1 or env.get("JOBSET_NAME"):
            return "gke"
    return None


def maybe_initialize_distributed() -> str | None:
    """Initialises JAX's distributed runtime when a multi-host launcher is detected."""
    cluster = detect_cluster()
    if cluster is None:
        return None
    logging.info("multi-host launch detected (%s): jax.distributed.initialize()", cluster)
    if cluster == "explicit":
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return cluster


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any of them.

    The train loop's stop decisions (a signal, a spent time budget) are taken per host
    from its own clock and signals; a host that left the loop alone would leave the
    others waiting in the next step's collectives. One process: `flag` as is.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))
