"""``avatarjax profile``: compile one train step ahead of time and report memory, FLOPs, step time and MFU."""

from __future__ import annotations

import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from avatarjax.config import Config
from avatarjax.parallel import mesh as mesh_lib
from avatarjax.profiling import flops as flops_lib
from avatarjax.profiling import peak


def memory_report(compiled) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports memory
        return {}
    if m is None:
        return {}
    gib = 1024**3
    out = {
        "argument_gib": m.argument_size_in_bytes / gib,
        "output_gib": m.output_size_in_bytes / gib,
        "temp_gib": m.temp_size_in_bytes / gib,
        "alias_gib": m.alias_size_in_bytes / gib,
        "generated_code_gib": m.generated_code_size_in_bytes / gib,
    }
    out["peak_estimate_gib"] = out["argument_gib"] + out["output_gib"] + out["temp_gib"] - out["alias_gib"]
    return out


def param_sharding_table(trainer, limit: int = 12) -> list[dict]:
    """The largest parameters with their logical axes and mesh PartitionSpecs."""
    rows = []
    flat = dict(nnx.to_flat_state(trainer.abstract.params))
    shardings = dict(nnx.to_flat_state(trainer.state_shardings.params))
    for path, var in flat.items():
        sharding = shardings[path]
        sharding = sharding.get_value() if hasattr(sharding, "get_value") else sharding
        rows.append({"param": "/".join(map(str, path)), "shape": list(var.shape),
                     "logical": list(var.get_metadata().get("out_sharding") or ()),
                     "spec": str(sharding.spec), "size": int(np.prod(var.shape))})
    rows.sort(key=lambda r: -r["size"])
    return rows[:limit]


def profile_train_step(cfg: Config, *, steps: int = 5, trace_dir: str | None = None) -> dict:
    from avatarjax.train.loop import Trainer

    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir)
        with trainer._context():
            state = trainer.init_state()
            batch = mesh_lib.shard_batch(trainer.task.example_batch(cfg, cfg.train.batch_size), trainer.mesh,
                                         trainer.rules)
            t0 = time.perf_counter()
            compiled = trainer.train_step.lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            if trace_dir:
                jax.profiler.start_trace(trace_dir)
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t0)
            if trace_dir:
                jax.profiler.stop_trace()
        trainer.checkpoints.close()
    step_s = statistics.median(times)
    num_devices = trainer.mesh.devices.size
    peak_tflops = peak.device_peak_tflops(trainer.mesh.devices.flat[0])
    count = flops_lib.analytic(cfg, trainer.task)
    tflops, util = peak.mfu(count.train_step, step_s, num_devices, peak_tflops)
    xla_flops = flops_lib.xla_flops(compiled)
    return {
        "task": cfg.task,
        "device": str(trainer.mesh.devices.flat[0].device_kind),
        "mesh": dict(trainer.mesh.shape),
        "rules": cfg.mesh.rules,
        "params": trainer.num_params,
        "batch_size": cfg.train.batch_size,
        "compile_s": compile_s,
        "step_s_median": step_s,
        "analytic_tflop_per_step": count.train_step / 1e12,
        "analytic_convention": "2 FLOPs per multiply-add of matmuls, convolutions and attention; causal attention "
                               "halved; train step = 3 x forward x global batch",
        # XLA counts a while loop's body once: scanned layer stacks appear as one layer here (see
        # avatarjax.profiling.flops.xla_forward_flops for a count with the scans unrolled)
        "xla_tflop_per_step_per_device": None if xla_flops is None else xla_flops / 1e12,
        "tflops_per_device": tflops,
        "peak_tflops_per_device": peak_tflops,
        "mfu": util,
        "memory_per_device": memory_report(compiled),
        "largest_params": param_sharding_table(trainer),
        "trace_dir": trace_dir,
    }
