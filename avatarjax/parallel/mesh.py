"""Device meshes from config and sharding helpers that speak logical axis names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from avatarjax.config import MeshConfig
from avatarjax.errors import ShardingError
from avatarjax.parallel import rules as rules_lib
from avatarjax.parallel.rules import MESH_AXES, Rules


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[dict[str, int], dict[str, int]]:
    """(ICI sizes per slice, DCN sizes across slices) for ``num_devices``; one ICI axis may be -1 and takes what
    is left. The mesh axis size is the product of the two."""
    sizes = {name: getattr(cfg, name) for name in MESH_AXES}
    dcn = {"data": cfg.dcn_data, "fsdp": cfg.dcn_fsdp}
    total_dcn = cfg.dcn_data * cfg.dcn_fsdp
    if num_devices % total_dcn:
        raise ShardingError(
            f"mesh.dcn_data * mesh.dcn_fsdp = {total_dcn} does not divide the {num_devices} devices: "
            "set them to the number of slices")
    per_slice = num_devices // total_dcn
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ShardingError(f"only one mesh axis may be -1, got {fill}: give explicit sizes to the others")
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise ShardingError(f"mesh.{name}={size} is invalid: use a positive size or -1 to fill")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if per_slice % known:
            raise ShardingError(
                f"mesh sizes {sizes} leave no whole number for mesh.{fill[0]}=-1 with {per_slice} devices "
                "per slice: change the fixed axis sizes")
        sizes[fill[0]] = per_slice // known
    if math.prod(sizes.values()) != per_slice:
        raise ShardingError(
            f"mesh {sizes} has {math.prod(sizes.values())} devices per slice but {per_slice} are available: "
            "set one axis to -1 or match the device count")
    return sizes, {name: dcn.get(name, 1) for name in MESH_AXES}


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 4-axis (data, fsdp, tensor, sequence) mesh with Auto axis types."""
    devices = list(devices if devices is not None else jax.devices())
    ici_sizes, dcn_sizes = mesh_shape(cfg, len(devices))
    ici = [ici_sizes[name] for name in MESH_AXES]
    dcn = [dcn_sizes[name] for name in MESH_AXES]
    if math.prod(dcn) > 1:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        try:
            from jax.experimental import mesh_utils

            device_array = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError):
            device_array = np.asarray(devices).reshape(ici)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
    """Logical names -> a PartitionSpec over mesh axes."""
    if not logical_axes:
        return PartitionSpec()
    out = []
    for name in logical_axes:
        axes = rules_lib.mesh_axes_of(name, rules)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None] | None, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def axes_size(mesh: Mesh, spec_entry: Any) -> int:
    if spec_entry is None:
        return 1
    names = (spec_entry,) if isinstance(spec_entry, str) else spec_entry
    return math.prod(mesh.shape[name] for name in names)


def fit_spec(shape: Sequence[int], spec: PartitionSpec, mesh_shape: Mapping[str, int],
             logical_axes: Sequence[str | None] | None) -> PartitionSpec:
    """``spec`` with the entries of ``rules.WHERE_DIVISIBLE`` dimensions dropped (replicated) where they do not
    divide their mesh axes or reuse a mesh axis another dimension shards over (a Dense layer ``(embed,
    conv_out)`` under fsdp); every other entry unchanged."""
    if not logical_axes:
        return spec
    entries = list(tuple(spec) + (None,) * (len(shape) - len(spec)))
    names_of = lambda entry: () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))  # noqa: E731
    fit = [dim < len(logical_axes) and logical_axes[dim] in rules_lib.WHERE_DIVISIBLE for dim in range(len(shape))]
    used = {n for dim, entry in enumerate(entries) if not fit[dim] for n in names_of(entry)}
    for dim, (size, entry) in enumerate(zip(shape, entries)):
        if not fit[dim] or entry is None:
            continue
        names = names_of(entry)
        if size % math.prod(mesh_shape[n] for n in names) or used & set(names):
            entries[dim] = None
        else:
            used |= set(names)
    return PartitionSpec(*entries[:len(spec)])


def check_divisible(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh, what: str,
                    logical_axes: Sequence[str | None] | None = None) -> None:
    """Raise a ShardingError naming ``what``, the dimension and the mesh axis when a dimension does not divide."""
    for dim, (size, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        n = axes_size(mesh, entry)
        if size % n:
            logical = f" (logical axis '{logical_axes[dim]}')" if logical_axes and dim < len(logical_axes) else ""
            raise ShardingError(
                f"{what}: dimension {dim} of size {size}{logical} does not divide mesh axis {entry!r} of size {n}: "
                f"change the size, the mesh (mesh.{entry if isinstance(entry, str) else entry[0]}) "
                "or the rules (mesh.rules / mesh.rules_override)")


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of a host batch: leading dim on the ``batch`` logical axis, the rest replicated."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    return math.prod(mesh.shape[a] for a in rules_lib.mesh_axes_of("batch", rules))


def check_batch(batch_size: int, mesh: Mesh, rules: Rules, what: str = "train.batch_size") -> None:
    n = data_parallel_size(mesh, rules)
    axes = rules_lib.mesh_axes_of("batch", rules)
    if batch_size % n:
        raise ShardingError(
            f"{what}={batch_size} does not divide the batch mesh axes {axes} of total size {n}: "
            f"use a multiple of {n} or shrink mesh.{axes[0] if axes else 'data'}")
    if batch_size % jax.process_count():
        raise ShardingError(
            f"{what}={batch_size} does not divide the {jax.process_count()} processes: use a multiple")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
    """Turn this process's rows of the global batch into global arrays sharded along ``batch``."""
    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, rules, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names under the active rules; a no-op outside a mesh."""
    from flax.core import spmd as core_spmd

    rules = core_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))
