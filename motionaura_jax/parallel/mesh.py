"""Device meshes from config (DESIGN section 5)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
# Batches are split over every axis that is not model-parallel.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves `{'data': -1, 'fsdp': 2, 'tensor': 1}` against `num_devices`.

    At most one axis may be -1; it takes the devices the others leave.
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    free = [i for i, size in enumerate(shape) if size == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(size == 0 or size < -1 for size in shape):
        raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(size for size in shape if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"{num_devices} devices cannot be split into a mesh with fixed axes "
                f"{dict(zip(MESH_AXES, shape))}; make the fixed sizes divide {num_devices}"
            )
        shape[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {fixed} devices but {num_devices} are "
            "available; set one axis to -1 or change the sizes"
        )
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with Auto axis types.

    Auto (not Explicit) axes let logical-axis constraints inside models steer XLA's
    sharding propagation, which is how MaxText/MaxDiffusion shard their models.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    if len(devices) == len(jax.devices()):
        try:
            return jax.make_mesh(
                shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
            )
        except (NotImplementedError, ValueError, AssertionError):
            pass  # topology-aware placement is best effort; fall back to the given order
    grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: the product of the mesh's batch axes."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)
