"""The train state and its shardings.

The state is a pytree: parameters and other model state as ``nnx.State`` (logical axis metadata kept), the optax
state, an optional parameter EMA and the step. It is built by one jitted init whose output shardings come from the
logical rules, so it is born sharded and never materialised on one device.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avatarjax.errors import ShardingError
from avatarjax.parallel.mesh import check_divisible, fit_spec
from avatarjax.parallel.rules import LOGICAL_AXES, Rules


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: nnx.State
    rest: nnx.State  # non-parameter model state (e.g. batch statistics)
    opt_state: Any
    ema: nnx.State | None  # EMA of params, or None


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def fit_specs(tree: nnx.State, specs: nnx.State, mesh_shape) -> nnx.State:
    """``specs`` of the abstract ``tree`` with ``mesh.fit_spec`` applied to each leaf (the axes sharded only where
    they divide)."""
    def fit(var, spec):
        value = spec.get_value() if hasattr(spec, "get_value") else spec
        fitted = fit_spec(var.shape, value, mesh_shape, var.get_metadata().get("out_sharding"))
        return spec.replace(fitted) if hasattr(spec, "replace") else fitted

    return jax.tree.map(fit, tree, specs, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_specs(abstract: TrainState, tx: optax.GradientTransformation, mesh_shape=None) -> TrainState:
    """PartitionSpecs for every leaf of the state, from the params' logical axis metadata (rules must be active),
    fitted to ``mesh_shape`` (``{axis: size}``; ``fit_specs``) when given."""
    param_specs = nnx.get_partition_spec(abstract.params)
    rest_specs = nnx.get_partition_spec(abstract.rest)
    if mesh_shape is not None:
        param_specs = fit_specs(abstract.params, param_specs, mesh_shape)
        rest_specs = fit_specs(abstract.rest, rest_specs, mesh_shape)
    opt_specs = optax.tree_map_params(tx, lambda _, spec: spec, abstract.opt_state, param_specs,
                                      transform_non_params=lambda _: PartitionSpec(), is_leaf=_is_spec)
    return TrainState(step=PartitionSpec(), params=param_specs, rest=rest_specs, opt_state=opt_specs,
                      ema=param_specs if abstract.ema is not None else None)


def to_shardings(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def check_state_divisible(abstract: TrainState, specs: TrainState, mesh: Mesh) -> None:
    """Fail before compiling, naming the parameter, when a dimension does not divide its mesh axes."""
    for tree, tree_specs in ((abstract.params, specs.params), (abstract.rest, specs.rest)):
        flat = dict(nnx.to_flat_state(tree))
        flat_specs = dict(nnx.to_flat_state(tree_specs))
        for path, var in flat.items():
            logical = var.get_metadata().get("out_sharding")
            for name in logical or ():
                if name is not None and name not in LOGICAL_AXES:
                    raise ShardingError(
                        f"parameter {'/'.join(map(str, path))} uses logical axis '{name}' which no rule knows: "
                        "add it to avatarjax.parallel.rules.LOGICAL_AXES")
            spec = flat_specs[path]
            spec = spec.get_value() if hasattr(spec, "get_value") else spec
            check_divisible(var.shape, spec, mesh, f"parameter {'/'.join(map(str, path))}", logical)


def param_count(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def init_compiler_options() -> dict[str, Any] | None:
    """XLA options for programs that only initialise state. On CPU, optimisation level 0 compiles them 3-4x faster
    (wan_vae synthface_tiny: 14.0 s -> 3.2 s) and they run once, so the slower code costs nothing; the values
    agree with a default compile to 1 ulp. Other backends keep their defaults (not measured there)."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def jit_init(fn, **jit_kwargs):
    """``jax.jit`` for a state initialiser (see :func:`init_compiler_options`)."""
    return jax.jit(fn, compiler_options=init_compiler_options(), **jit_kwargs)


def make_init_fn(build_model, tx: optax.GradientTransformation, ema: bool):
    def init(key: jax.Array) -> TrainState:
        with nnx.use_eager_sharding(False):  # placed by the caller's out_shardings (abstract_state)
            model = build_model(nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1)))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params) if ema else None)

    return init


def abstract_state(build_model, tx, ema: bool, mesh: Mesh, rules: Rules) -> tuple[Any, TrainState]:
    """(model graphdef, abstract TrainState with logical metadata), traced without allocating anything.

    Variables are not sharded as they are created (no eager sharding): the state's shardings come from
    ``state_specs`` (the logical metadata through the rules, then ``fit_specs``) and are applied as the jitted
    initialiser's ``out_shardings``, so an axis that ``fit_specs`` replicates is never placed by the raw rules."""
    with nnx.logical_axis_rules(rules), nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: build_model(nnx.Rngs(0)))  # (nnx.eval_shape shards under a mesh)
        graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
        with jax.set_mesh(mesh):
            abstract = jax.eval_shape(make_init_fn(build_model, tx, ema), jax.random.key(0))
    return graphdef, abstract
