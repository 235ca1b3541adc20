"""Sharded state creation and batch placement (DESIGN section 5).

State is never materialised on one device: its shapes come from `jax.eval_shape`, its
shardings from the logical names the model attached, and `jax.jit(..., out_shardings=)`
then creates every shard where it lives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from motionaura_jax.parallel.mesh import BATCH_AXES

PyTree = Any


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, where: str) -> PartitionSpec:
    """Drops the mesh axes of dimensions they do not divide (tiny models on big meshes)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = int(np.prod([mesh.shape[name] for name in names])) if names else 1
        if names and dim % size:
            logging.log_first_n(
                logging.WARNING,
                "replicating dim %d of %s: not divisible by %s",
                20,
                dim,
                where,
                names,
            )
            fitted.append(None)
        else:
            fitted.append(entry)
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: PyTree, mesh: Mesh, rules) -> PyTree:
    """`NamedSharding`s for a tree of (possibly `nn.LogicallyPartitioned`) shape structs.

    Unannotated leaves (optimizer counters, scalars) are replicated.
    """

    # One pass over the boxed tree (not a zip of specs with values): a partitioned
    # optimizer's state (optax.contrib.muon) boxes empty nodes (MaskedNode) where the other
    # partition's params are, and those must stay empty nodes.
    def one(path, leaf):
        spec = PartitionSpec()
        if isinstance(leaf, nn.Partitioned):
            if not jax.tree.leaves(leaf.value):
                return leaf.value
            spec = nn.logical_to_mesh(nn.get_partition_spec(leaf), rules)
            leaf = leaf.value
        return NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))

    return jax.tree_util.tree_map_with_path(
        one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def create_sharded(init_fn: Callable[[], PyTree], mesh: Mesh, rules) -> tuple[PyTree, PyTree]:
    """Runs `init_fn` (returning a boxed tree) sharded by its logical names.

    Returns `(tree, shardings)`; `tree` holds plain arrays (boxes removed).
    """
    abstract = jax.eval_shape(init_fn)
    shardings = logical_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        tree = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
    return tree, shardings


def abstract_with_shardings(abstract_tree: PyTree, shardings: PyTree) -> PyTree:
    """Shape structs carrying target shardings: what Orbax restores onto."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.meta.unbox(abstract_tree),
        shardings,
    )


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split over the mesh's batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def device_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles host-local numpy batches into global arrays sharded over the batch axes.

    Each host passes its own slice (leading axis = global batch / process count).
    """
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out
