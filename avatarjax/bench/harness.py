"""The one timing harness every ``avatarjax bench`` module uses.

- :func:`median_seconds`: warm-up calls (compilation), then the median of ``repeats`` timed calls, blocking on JAX
  outputs so asynchronous dispatch is not mistaken for speed.
- :func:`jax_train_step` / :func:`torch_train_step`: one optimizer step (forward, loss, backward, AdamW update) of
  an NNX model (jitted, params and optimizer state donated) and of a ``torch.nn.Module`` (eager, as the released
  code trains), built from the same inputs so the two can be timed side by side in one run.
- :func:`compare_train`: both steps timed, the ours/reference ratio, TFLOP/s and MFU (analytic FLOPs when given,
  else XLA's cost analysis of our step) and the compiled step's memory.
- :func:`trainer_step`: the real training step of a config (the task's loss, the trainer's jitted step) with its
  TFLOP/s, MFU against :mod:`avatarjax.profiling.peak` and its compiled memory.
- :func:`scan_vs_loop`: a sampling loop compiled as one program against a Python loop of per-step jitted calls.

Every bench returns a ``summary`` list of :func:`row` dicts; ``avatarjax bench all`` tabulates them.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avatarjax.profiling.flops import xla_flops
from avatarjax.profiling.report import memory_report

ROW_KEYS = ("model", "train_ms_ours", "train_ms_ref", "reference", "ratio", "tflops", "mfu", "memory_gib",
            "sampling_speedup", "status", "note")


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (compilation)."""
    for _ in range(max(warmup, 0)):
        jax.block_until_ready(fn())
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(model: str, **values) -> dict:
    """One line of the benchmark table (keys in :data:`ROW_KEYS`; missing ones are None)."""
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"unknown summary keys {sorted(unknown)}; allowed: {ROW_KEYS}")
    out = {k: None for k in ROW_KEYS}
    out.update(values, model=model)
    return out


def throughput(flops: float | None, seconds: float) -> tuple[float | None, float | None, float]:
    """(TFLOP/s per device, MFU, peak TFLOP/s) of ``flops`` done in ``seconds`` on this process's devices."""
    from avatarjax.profiling.peak import device_peak_tflops, mfu

    peak = device_peak_tflops()
    if not flops:
        return None, None, peak
    tflops, util = mfu(flops, seconds, jax.device_count(), peak)
    return tflops, util, peak


def memory_gib(compiled) -> float | None:
    """The compiled program's peak-memory estimate (arguments + outputs + temporaries - aliased) in GiB."""
    return memory_report(compiled).get("peak_estimate_gib")


@dataclasses.dataclass
class StepTiming:
    seconds: float
    compile_s: float = 0.0
    memory_gib: float | None = None
    xla_flops: float | None = None
    loss: float | None = None


def jax_train_step(model, loss_fn: Callable[..., jax.Array], inputs: Sequence[Any], repeats: int,
                   lr: float = 1e-4) -> StepTiming:
    """Time ``repeats`` AdamW steps of ``loss_fn(model, *inputs)`` (NNX model; non-Param state such as BatchNorm
    statistics is threaded through)."""
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.tree.map(jnp.copy, (params, rest))  # donated below: leave the caller's model intact
    opt = optax.adamw(lr)

    def step(params, rest, opt_state, *xs):
        def f(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            loss = loss_fn(m, *xs)
            return loss, nnx.split(m, nnx.Param, ...)[2]

        (loss, new_rest), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    xs = [jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in inputs]
    opt_state = opt.init(params)
    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    t0 = time.perf_counter()
    compiled = jitted.lower(params, rest, opt_state, *xs).compile()
    carry = compiled(params, rest, opt_state, *xs)
    jax.block_until_ready(carry)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        carry = compiled(*carry[:3], *xs)
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - t0)
    return StepTiming(statistics.median(times), compile_s, memory_gib(compiled), xla_flops(compiled),
                      float(carry[3]))


def torch_train_step(module, loss_fn: Callable[..., Any], inputs: Sequence[Any], repeats: int,
                     lr: float = 1e-4) -> StepTiming:
    """Time ``repeats`` AdamW steps of ``loss_fn(module, *inputs)`` in eager PyTorch (numpy inputs converted)."""
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x for x in inputs]
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    loss = None

    def step():
        nonlocal loss
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module, *xs)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    seconds = median_seconds(step, repeats, warmup=1)
    return StepTiming(seconds, compile_s, None, None, float(loss.detach()))


def set_torch_threads(threads: int) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def compare_train(model: str, ours: StepTiming, reference: StepTiming | None, reference_name: str,
                  flops: float | None = None, note: str = "") -> dict:
    """A summary row and the detail dict for one side-by-side training step (ratio = reference / ours time: above
    1 means ours is faster)."""
    tflops, util, peak = throughput(flops or ours.xla_flops, ours.seconds)
    detail = {"ours_ms": ours.seconds * 1e3, "ours_compile_s": ours.compile_s, "memory_gib": ours.memory_gib,
              "flops_per_step": flops or ours.xla_flops, "flops_source": "analytic" if flops else "xla",
              "tflops_per_device": tflops, "mfu": util, "peak_tflops": peak}
    ratio = None
    if reference is not None:
        ratio = reference.seconds / ours.seconds
        detail.update({"reference": reference_name, "reference_ms": reference.seconds * 1e3,
                       "speedup_vs_reference": ratio})
    summary = row(model, train_ms_ours=ours.seconds * 1e3,
                  train_ms_ref=None if reference is None else reference.seconds * 1e3,
                  reference=reference_name if reference is not None else None, ratio=ratio, tflops=tflops,
                  mfu=util, memory_gib=ours.memory_gib, note=note)
    return {"summary": summary, "detail": detail}


def scan_vs_loop(scanned: Callable[[], Any], looped: Callable[[], Any], repeats: int) -> dict:
    """Times of one compiled sampling loop and a Python loop of per-step jitted calls (same result), the speed-up
    and their largest difference."""
    a = jax.block_until_ready(scanned())
    b = jax.block_until_ready(looped())
    scan_s = median_seconds(scanned, repeats, warmup=0)
    loop_s = median_seconds(looped, repeats, warmup=0)
    diff = max((float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)
    return {"scan_ms": scan_s * 1e3, "loop_ms": loop_s * 1e3, "speedup": loop_s / scan_s,
            "max_abs_diff_scan_vs_loop": diff}


def trainer_step(config: str, overrides: Sequence[str] = (), *, batch: int | None = None, steps: int = 5) -> dict:
    """The trainer's jitted step of ``config`` on the task's example batch (``profiling.report.profile_train_step``):
    median step time, TFLOP/s and MFU from the task's analytic FLOPs, and the compiled step's memory."""
    from avatarjax.config import load_config
    from avatarjax.profiling.report import profile_train_step

    overrides = list(overrides) + ["--config.log.progress=false", "--config.log.tensorboard=false",
                                   "--config.eval.every=0"]
    if batch:
        overrides.append(f"--config.train.batch_size={batch}")
    cfg = load_config(config, overrides)
    report = profile_train_step(cfg, steps=max(steps, 1))
    flops = report["analytic_tflop_per_step"] * 1e12 or (report["xla_tflop_per_step_per_device"] or 0.0) * 1e12
    return {"config": config, "params": report["params"], "batch": report["batch_size"],
            "first_step_s": round(report["compile_s"], 2), "step_ms": report["step_s_median"] * 1e3,
            "flops_per_step": flops or None, "tflops_per_device": report["tflops_per_device"], "mfu": report["mfu"],
            "peak_tflops": report["peak_tflops_per_device"],
            "memory_gib": report["memory_per_device"].get("peak_estimate_gib")}
