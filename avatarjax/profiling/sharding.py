"""Per-parameter sharding dumps: what each logical-rule preset does to every weight of a model, without building it.

A dump maps each parameter path to its shape, logical axis names, the PartitionSpec the preset's rules give it
(computed exactly as the trainer does: ``nnx.get_partition_spec`` under ``nnx.logical_axis_rules``, then
``train.state.fit_specs``) and the per-device shard shape on a given mesh. Everything comes from ``nnx.eval_shape``: no parameter is allocated, so
paper-size models dump in about a second. ``tests/golden/sharding/`` keeps one dump per model family and preset
(like MaxText's sharding dumps), so a change that silently replicates a large weight fails a test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from avatarjax.parallel import rules as rules_lib
from avatarjax.train import state as state_lib

# The fake 8-device meshes the golden dumps use.
GOLDEN_MESHES = {
    "dp": {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1},
    "fsdp": {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1},
    "fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1},
    "sp": {"data": 1, "fsdp": 2, "tensor": 2, "sequence": 2},
}


def abstract_model_state(cfg) -> tuple[nnx.State, nnx.State]:
    """(params, rest) of the task's model as abstract ``nnx.State`` (shapes, dtypes, logical metadata)."""
    from avatarjax.registry import TASKS

    task = TASKS.get(cfg.task)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(cfg, nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return params, rest


def _spec_entries(spec: PartitionSpec, ndim: int) -> list:
    out = []
    for entry in tuple(spec) + (None,) * (ndim - len(spec)):
        out.append(list(entry) if isinstance(entry, tuple) else entry)
    return out


def _problems(shape, entries, mesh: dict[str, int]) -> list[str]:
    problems, used = [], []
    for dim, (size, entry) in enumerate(zip(shape, entries)):
        names = [] if entry is None else ([entry] if isinstance(entry, str) else list(entry))
        n = math.prod(mesh.get(name, 1) for name in names)
        if size % n:
            problems.append(f"dim {dim} of size {size} does not divide {names} of size {n}")
        for name in names:
            if name in used:
                problems.append(f"mesh axis '{name}' used twice")
            used.append(name)
    return problems


def _tree_rows(tree: nnx.State, specs: nnx.State, mesh: dict[str, int], raw: nnx.State) -> dict[str, dict]:
    """``raw``: the specs straight from the rules, before ``fit_specs`` (what NNX uses when it shards a variable
    as it is created under a mesh)."""
    rows = {}
    spec_of, raw_of = dict(nnx.to_flat_state(specs)), dict(nnx.to_flat_state(raw))
    value = lambda spec: spec.get_value() if hasattr(spec, "get_value") else spec  # noqa: E731
    for path, var in nnx.to_flat_state(tree):
        spec = value(spec_of[path])
        shape = tuple(int(s) for s in var.shape)
        entries = _spec_entries(spec, len(shape))
        shard = []
        for size, entry in zip(shape, entries):
            names = [] if entry is None else ([entry] if isinstance(entry, str) else entry)
            shard.append(-(-size // max(1, math.prod(mesh.get(name, 1) for name in names))))  # padded shards
        logical = var.get_metadata().get("out_sharding")
        row = {"shape": list(shape), "dtype": str(np.dtype(var.dtype)),
               "logical": None if logical is None else list(logical), "spec": entries, "per_device": shard}
        problems = _problems(shape, entries, mesh)
        raw_entries = [e for e in _spec_entries(value(raw_of[path]), len(shape)) if e is not None]
        raw_names = [n for e in raw_entries for n in ([e] if isinstance(e, str) else e)]
        problems += [f"the rules use mesh axis '{n}' twice (creating it under a mesh fails)"
                     for n in sorted({n for n in raw_names if raw_names.count(n) > 1})]
        if problems:
            row["problems"] = problems
        rows["/".join(map(str, path))] = row
    return dict(sorted(rows.items()))


def sharding_dump(cfg, preset: str, mesh: dict[str, int], *, state: tuple[nnx.State, nnx.State] | None = None,
                  override=()) -> dict[str, Any]:
    """The dump of ``cfg``'s model under rule preset ``preset`` on a mesh of the given axis sizes.

    ``state`` reuses an ``abstract_model_state(cfg)`` (the model is the same for every preset)."""
    params, rest = state if state is not None else abstract_model_state(cfg)
    rules = rules_lib.resolve(preset, override)
    mesh = {name: int(mesh.get(name, 1)) for name in rules_lib.MESH_AXES}
    with nnx.logical_axis_rules(rules):
        raw_params, raw_rest = nnx.get_partition_spec(params), nnx.get_partition_spec(rest)
    param_specs = state_lib.fit_specs(params, raw_params, mesh)
    rest_specs = state_lib.fit_specs(rest, raw_rest, mesh)
    param_rows = _tree_rows(params, param_specs, mesh, raw_params)
    rest_rows = _tree_rows(rest, rest_specs, mesh, raw_rest)
    itemsize = lambda row: np.dtype(row["dtype"]).itemsize  # noqa: E731
    total = sum(math.prod(r["shape"]) * itemsize(r) for r in param_rows.values())
    per_device = sum(math.prod(r["per_device"]) * itemsize(r) for r in param_rows.values())
    replicated = sum(math.prod(r["shape"]) * itemsize(r) for r in param_rows.values()
                     if all(e is None for e in r["spec"]))
    return {"task": cfg.task, "preset": preset, "mesh": mesh,
            "summary": {"params": sum(math.prod(r["shape"]) for r in param_rows.values()),
                        "param_bytes": total, "param_bytes_per_device": per_device,
                        "replicated_param_bytes": replicated},
            "params": param_rows, "rest": rest_rows}


def to_json(dump: dict) -> str:
    """Stable, diff-friendly JSON: one line per parameter."""
    lines = ["{"]
    head = {k: v for k, v in dump.items() if k not in ("params", "rest")}
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    for section in ("params", "rest"):
        rows = dump[section]
        lines.append(f"  {json.dumps(section)}: {{" + ("" if rows else "},"))
        for i, (path, row) in enumerate(rows.items()):
            comma = "," if i < len(rows) - 1 else ""
            lines.append(f"    {json.dumps(path)}: {json.dumps(row, sort_keys=True)}{comma}")
        if rows:
            lines.append("  }" + ("," if section == "params" else ""))
    if lines[-1].endswith(","):
        lines[-1] = lines[-1][:-1]
    lines.append("}")
    return "\n".join(lines) + "\n"


def diff(golden: dict, current: dict) -> list[str]:
    """Human-readable differences between two dumps, one line per changed parameter or field."""
    out = []
    for key in ("task", "preset", "mesh"):
        if golden.get(key) != current.get(key):
            out.append(f"{key}: {golden.get(key)} -> {current.get(key)}")
    for section in ("params", "rest"):
        old, new = golden.get(section, {}), current.get(section, {})
        for path in sorted(set(old) | set(new)):
            if path not in new:
                out.append(f"{section} {path}: removed (was spec {old[path]['spec']})")
            elif path not in old:
                out.append(f"{section} {path}: new, spec {new[path]['spec']} shape {new[path]['shape']}")
            elif old[path] != new[path]:
                changed = [f"{f} {old[path].get(f)} -> {new[path].get(f)}"
                           for f in sorted(set(old[path]) | set(new[path])) if old[path].get(f) != new[path].get(f)]
                out.append(f"{section} {path}: " + "; ".join(changed))
    return out


def replicated_params(dump: dict, min_elements: int) -> dict[str, dict]:
    """Parameters with at least ``min_elements`` elements that the dump's rules leave fully replicated."""
    return {path: row for path, row in dump["params"].items()
            if math.prod(row["shape"]) >= min_elements and all(e is None for e in row["spec"])}


def write(dump: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_json(dump))


def table(dump: dict, limit: int = 20) -> list[dict]:
    """The largest parameters of a dump with spec and shard shape (for ``avatarjax profile sharding``)."""
    rows = [{"param": path, **row} for path, row in dump["params"].items()]
    rows.sort(key=lambda r: -math.prod(r["shape"]))
    return rows[:limit]
