"""``avatarjax profile memory``: will a training step fit on the target mesh? Answered on a laptop.

The train step is lowered and compiled ahead of time for the target mesh with fake CPU devices standing in for
the accelerators (nothing is allocated: the state and the batch are ``ShapeDtypeStruct``s carrying their
shardings). The report gives per-device bytes of parameters, optimizer state, EMA, batch (summed from each
array's shard shape) and XLA's own ``memory_analysis`` of the compiled executable: arguments, outputs, aliased
(donated) buffers and temporaries (activations saved for the backward pass, gradients, fusion scratch). The peak
estimate ``arguments + outputs - aliased + temporaries`` is compared with a device's memory for an OOM verdict.

The CPU compiler's fusion and scheduling differ from the GPU and TPU compilers', so temporaries are an estimate
(same order, not the same bytes); parameter, optimizer and batch bytes are exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from typing import Any

import jax
import numpy as np

from avatarjax.config import Config
from avatarjax.errors import AvatarError, ShardingError
from avatarjax.parallel import mesh as mesh_lib
from avatarjax.parallel.rules import MESH_AXES
from avatarjax.profiling import peak

GIB = 1024**3
CHILD_ENV = "AVATARJAX_PROFILE_MEMORY_CHILD"


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=4"`` -> ``{"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}`` (unnamed axes are 1)."""
    sizes = {name: 1 for name in MESH_AXES}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise AvatarError(f"--mesh part '{part}' is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)} "
                              "(e.g. --mesh data=2,fsdp=4)")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise AvatarError(f"--mesh {name}={value}: the size must be a positive integer") from None
        if sizes[name] < 1:
            raise AvatarError(f"--mesh {name}={value}: the size must be a positive integer")
    return sizes


def with_mesh(cfg: Config, sizes: dict[str, int], rules: str | None = None) -> Config:
    """``cfg`` with a single-slice mesh of exactly ``sizes`` (and optionally another rule preset)."""
    mesh = dataclasses.replace(cfg.mesh, dcn_data=1, dcn_fsdp=1, **{n: int(sizes.get(n, 1)) for n in MESH_AXES})
    if rules is not None:
        mesh = dataclasses.replace(mesh, rules=rules)
    return dataclasses.replace(cfg, mesh=mesh)


def _shard_bytes(tree: Any) -> int:
    """Bytes one device holds of ``tree`` (ShapeDtypeStructs with shardings): the largest shard of each leaf."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def xla_memory(compiled) -> dict[str, int]:
    """The executable's own memory analysis, in bytes per device."""
    m = compiled.memory_analysis()
    if m is None:
        raise AvatarError("this backend's compiler gives no memory analysis")
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f.removesuffix("_size_in_bytes"): int(getattr(m, f)) for f in fields}


def budget_gib(device_memory_gib: float | None, device_kind: str | None) -> tuple[float | None, str | None]:
    """(GiB per device, where it came from) from ``--device-memory`` or ``--device-kind``."""
    if device_memory_gib is not None:
        if device_memory_gib <= 0:
            raise AvatarError(f"--device-memory {device_memory_gib}: give the device's memory in GiB (> 0)")
        return float(device_memory_gib), "--device-memory"
    if device_kind:
        gib = peak.device_memory_gib(device_kind)
        if gib is None:
            raise AvatarError(f"unknown --device-kind '{device_kind}': use one of "
                              f"{', '.join(peak.DEVICE_MEMORY_GIB)} or give --device-memory GIB")
        return gib, f"device kind {device_kind}"
    return None, None


def memory_report(cfg: Config, sizes: dict[str, int], *, rules: str | None = None,
                  device_memory_gib: float | None = None, device_kind: str | None = None,
                  memory_fraction: float = 1.0, devices: list | None = None, return_compiled: bool = False):
    """Compile ``cfg``'s train step for the mesh ``sizes`` and report per-device memory (see the module doc).

    ``devices`` default to this process's CPU devices; there must be at least ``prod(sizes)`` of them."""
    from avatarjax.checkpoint.manager import abstract_with_shardings
    from avatarjax.train.loop import Trainer

    budget, budget_from = budget_gib(device_memory_gib, device_kind)
    cfg = with_mesh(cfg, sizes, rules)
    needed = math.prod(sizes.get(n, 1) for n in MESH_AXES)
    devices = list(devices if devices is not None else jax.devices("cpu"))
    if len(devices) < needed:
        raise ShardingError(
            f"the mesh {sizes} needs {needed} devices but this process has {len(devices)} CPU devices: run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={needed} JAX_PLATFORMS=cpu (`avatarjax profile "
            "memory` does this itself in a subprocess)")
    mesh = mesh_lib.make_mesh(cfg.mesh, devices[:needed])
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, mesh=mesh)
        try:
            state = abstract_with_shardings(trainer.abstract, trainer.state_shardings)
            example = trainer.task.example_batch(cfg, cfg.train.batch_size)
            batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
                                 example, trainer.batch_shardings)
            with trainer._context():
                compiled = trainer.train_step.lower(state, batch).compile()
        finally:
            trainer.checkpoints.close()
    xla = xla_memory(compiled)
    groups = {"params": _shard_bytes(state.params), "optimizer": _shard_bytes(state.opt_state),
              "ema": _shard_bytes(state.ema) if state.ema is not None else 0,
              "model_state": _shard_bytes(state.rest), "step": _shard_bytes(state.step), "batch": _shard_bytes(batch)}
    peak_bytes = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
    report = {
        "task": cfg.task, "mesh": {n: int(sizes.get(n, 1)) for n in MESH_AXES}, "rules": cfg.mesh.rules,
        "devices": needed, "compiled_on": f"{needed} fake {devices[0].platform.upper()} devices",
        "params": trainer.num_params, "batch_size": cfg.train.batch_size,
        "param_dtype": cfg.train.param_dtype, "compute_dtype": cfg.train.compute_dtype, "remat": cfg.train.remat,
        "per_device_bytes": {**groups, "activations_and_temporaries": xla["temp"], "peak_estimate": peak_bytes},
        "per_device_gib": {k: round(v / GIB, 4) for k, v in {**groups, "activations_and_temporaries": xla["temp"],
                                                            "peak_estimate": peak_bytes}.items()},
        "xla_memory_analysis_bytes": xla,
        "note": "params, optimizer, ema and batch bytes are exact; activations_and_temporaries come from the CPU "
                "compiler (an estimate: GPU/TPU compilers fuse differently and may pick flash attention kernels)",
    }
    if budget is not None:
        add_budget(report, budget, budget_from, memory_fraction)
    return (report, compiled) if return_compiled else report


def add_budget(report: dict, device_memory_gib: float, source: str, memory_fraction: float = 1.0) -> dict:
    """Add the OOM verdict: the peak estimate against ``memory_fraction`` of ``device_memory_gib``."""
    if not 0 < memory_fraction <= 1:
        raise AvatarError(f"--memory-fraction {memory_fraction}: use a value in (0, 1]")
    peak_bytes = report["per_device_bytes"]["peak_estimate"]
    usable = device_memory_gib * memory_fraction
    report["budget"] = {"device_memory_gib": device_memory_gib, "from": source, "memory_fraction": memory_fraction,
                        "usable_gib": round(usable, 4), "peak_estimate_gib": round(peak_bytes / GIB, 4),
                        "headroom_gib": round(usable - peak_bytes / GIB, 4),
                        "verdict": "fits" if peak_bytes <= usable * GIB else "OOM"}
    return report


def run_in_subprocess(argv: list[str], needed: int) -> int:
    """Re-run ``avatarjax profile memory ARGV`` in a child process with ``needed`` fake CPU devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={needed}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[CHILD_ENV] = "1"
    return subprocess.call([sys.executable, "-m", "avatarjax.cli", "profile", "memory", *argv], env=env)


def needs_subprocess(needed: int) -> bool:
    """True when this process cannot host ``needed`` fake CPU devices (and is not already the child)."""
    if os.environ.get(CHILD_ENV) == "1":
        return False
    try:
        return len(jax.devices("cpu")) < needed
    except RuntimeError:  # no CPU backend in this process (JAX_PLATFORMS excludes it)
        return True
