"""``avatarjax bench instructavatar``: training-step throughput and sampling latency, measured in one run.

- Training: the trainer's jitted step on synthetic batches of the small and the paper-size config: step time,
  TFLOP/s per device (analytic FLOPs, 3x forward) and MFU against this device's peak.
- Sampling: ``--steps`` DDIM steps for ``--seconds`` of video with the small config, (a) all steps in one jitted
  ``lax.scan`` (what the pipeline runs) and (b) a Python loop calling a jitted single denoising step, as a ratio.
  Latency is reported per second of generated video (real-time factor).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import load_config
from avatarjax.diffusion import samplers, schedules
from avatarjax.parallel import mesh as mesh_lib
from avatarjax.profiling.peak import device_peak_tflops, mfu

CONFIGS = {"small": "configs/instructavatar/synthface_small.py", "paper": "configs/instructavatar/paper.py"}


def _train_step(path: str, batch: int, window: int, steps: int) -> dict:
    from avatarjax.train.loop import Trainer

    cfg = load_config(path, [f"--config.train.batch_size={batch}", f"--config.data.synthface.window={window}",
                             "--config.log.progress=false", "--config.log.tensorboard=false",
                             "--config.train.compute_dtype=float32"])
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir)
        try:
            with trainer._context():
                state = trainer.init_state()
                data = mesh_lib.shard_batch(trainer.task.example_batch(cfg, batch), trainer.mesh, trainer.rules)
                t0 = time.perf_counter()
                state, metrics = trainer.train_step(state, data)
                jax.block_until_ready(metrics)
                compile_s = time.perf_counter() - t0
                times = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    state, metrics = trainer.train_step(state, data)
                    jax.block_until_ready(metrics)
                    times.append(time.perf_counter() - t0)
        finally:
            trainer.checkpoints.close()
    step_s = statistics.median(times)
    peak = device_peak_tflops()
    tflops, util = mfu(trainer.flops_per_step, step_s, jax.device_count(), peak)
    return {"config": path, "params": trainer.num_params, "batch": batch, "window_frames": window,
            "first_step_s": round(compile_s, 2), "step_ms": round(step_s * 1e3, 1),
            "tflops_per_device": round(tflops, 4), "mfu": round(util, 4), "peak_tflops": round(peak, 3)}


def _sampling(path: str, seconds: float, steps: int, repeats: int) -> dict:
    from avatarjax.train.objectives import instruct_avatar as task

    cfg = load_config(path)
    frames = int(round(seconds * 25))
    with nnx.use_eager_sharding(False):
        system = task.build_model(cfg, nnx.Rngs(0))
    batch = task.example_batch(load_config(path, [f"--config.data.synthface.window={frames}"]), 1)
    batch = jax.tree.map(jnp.asarray, {k: v for k, v in batch.items() if k not in ("pose",)})
    schedule = schedules.make_discrete_schedule("linear", cfg.model.diffusion.num_train_steps)
    graphdef, state = nnx.split(system)
    noise = jax.random.normal(jax.random.key(0), (1, frames, cfg.model.net.latent_dim))

    @jax.jit
    def scanned(state, batch, noise):
        net = nnx.merge(graphdef, state).net
        c = net.encode_conditions(task.conditions(batch), None, False)
        return samplers.ddim_sample(lambda x, t: net.denoise(x, t, c), schedule, noise, num_steps=steps)

    @jax.jit
    def encode(state, batch):
        return nnx.merge(graphdef, state).net.encode_conditions(task.conditions(batch), None, False)

    timesteps = samplers.ddim_timesteps(schedule.num_steps, steps)
    log_abar = jnp.asarray(schedule.log_alphas_cumprod)

    @jax.jit
    def one_step(state, c, x, t, t_prev):
        net = nnx.merge(graphdef, state).net
        x0 = net.denoise(x, jnp.full((1,), t), c)
        abar, abar_prev = jnp.exp(log_abar[t]), jnp.where(t_prev >= 0, jnp.exp(log_abar[t_prev]), 1.0)
        eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
        return jnp.where(t_prev >= 0, jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps, x0)

    def looped(state, batch, noise):
        c = encode(state, batch)
        x = noise
        ts = [int(t) for t in np.asarray(timesteps)]
        for i, t in enumerate(ts):
            x = one_step(state, c, x, t, ts[i + 1] if i + 1 < len(ts) else -1)
        return x

    def timed(fn) -> tuple[float, float, jax.Array]:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(state, batch, noise))
        first = time.perf_counter() - t0
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(state, batch, noise))
            runs.append(time.perf_counter() - t0)
        return first, statistics.median(runs), out

    scan_first, scan_s, a = timed(scanned)
    loop_first, loop_s, b = timed(looped)
    return {"config": path, "video_seconds": seconds, "ddim_steps": steps,
            "scan_s": round(scan_s, 4), "loop_s": round(loop_s, 4), "loop_over_scan": round(loop_s / scan_s, 3),
            "scan_compile_s": round(scan_first - scan_s, 2), "loop_compile_s": round(loop_first - loop_s, 2),
            "latency_per_video_second_s": round(scan_s / seconds, 4), "real_time_factor": round(scan_s / seconds, 4),
            "max_abs_diff_scan_vs_loop": float(jnp.abs(a - b).max())}


def bench_instructavatar(args: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax bench instructavatar")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per config")
    p.add_argument("--small-batch", type=int, default=16)
    p.add_argument("--paper-batch", type=int, default=2, help="the paper's 32 is beyond a CPU; set it on a GPU")
    p.add_argument("--paper-window", type=int, default=100)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-paper", action="store_true")
    ns = p.parse_args(args)
    small = load_config(CONFIGS["small"])
    report = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
              "train": [_train_step(CONFIGS["small"], ns.small_batch, small.data.synthface.window, ns.steps)]}
    if not ns.skip_paper:
        report["train"].append(_train_step(CONFIGS["paper"], ns.paper_batch, ns.paper_window, max(2, ns.steps // 3)))
    report["sampling"] = _sampling(CONFIGS["small"], ns.seconds, ns.ddim_steps, ns.repeats)
    return report
