"""``avatarjax bench instructavatar``: training-step throughput and sampling latency, measured in one run.

- Training: the trainer's jitted step on synthetic batches of the small and the paper-size config: step time,
  TFLOP/s per device (analytic FLOPs, 3x forward) and MFU against this device's peak.
- Sampling: ``--steps`` DDIM steps for ``--seconds`` of video with the small config, (a) all steps in one jitted
  ``lax.scan`` (what the pipeline runs) and (b) a Python loop calling a jitted single denoising step, as a ratio.
  Latency is reported per second of generated video (real-time factor).
- Side by side with PyTorch: one AdamW training step of the Conformer stack (the small config's denoiser size:
  FFN/2, MHSA, depthwise-conv module with BatchNorm, FFN/2) ours jitted against the released code's torch layers
  (:class:`avatarjax.bench.torch_refs.Conformer`) at the same shapes, in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.bench import harness
from avatarjax.config import load_config
from avatarjax.diffusion import samplers, schedules

CONFIGS = {"small": "configs/instructavatar/synthface_small.py", "paper": "configs/instructavatar/paper.py"}


def _train_step(path: str, batch: int, window: int, steps: int, overrides: list[str] = ()) -> dict:
    out = harness.trainer_step(path, [f"--config.data.synthface.window={window}",
                                      "--config.train.compute_dtype=float32", *overrides], batch=batch, steps=steps)
    return dict(out, window_frames=window)


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


def _conformer_side_by_side(dim: int, layers: int, heads: int, ffn: int, kernel: int, batch: int, frames: int,
                            repeats: int, threads: int) -> dict:
    import torch

    from avatarjax.bench import torch_refs
    from avatarjax.nn.conformer import Conformer, ConformerConfig

    harness.set_torch_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, frames, dim)).astype(np.float32)
    y = rng.standard_normal((batch, frames, dim)).astype(np.float32)
    mask = np.ones((batch, frames), bool)
    mask[: batch // 2, frames - frames // 4:] = False  # half the batch padded, as in training
    cfg = ConformerConfig(dim=dim, num_layers=layers, num_heads=heads, ffn_dim=ffn, kernel_size=kernel, dropout=0.0,
                          conv_norm="batch")
    with nnx.use_eager_sharding(False):
        model = Conformer(cfg, dim, rngs=nnx.Rngs(0))

    def loss(m, x, y, mask):
        return jnp.mean(jnp.square(m(x, mask, None, True) - y) * mask[..., None])

    ours = harness.jax_train_step(model, loss, (x, y, mask), repeats)
    torch.manual_seed(0)
    ref_model = torch_refs.Conformer(dim, dim, layers, heads, ffn, kernel, dropout=0.0)

    def ref_loss(m, x, y, mask):
        return torch.mean(torch.square(m(x, mask) - y) * mask[..., None])

    ref = harness.torch_train_step(ref_model, ref_loss, (x, y, mask), repeats)
    out = harness.compare_train("instructavatar conformer", ours, ref, "torch Conformer (torchaudio layout)")
    out["detail"]["shape"] = [batch, frames, dim]
    out["detail"].update(layers=layers, kernel=kernel)
    return out


def bench_instructavatar(args: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax bench instructavatar",
                                epilog="--config.x=v overrides go to the training-step configs")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per config")
    p.add_argument("--small-batch", type=int, default=16)
    p.add_argument("--paper-batch", type=int, default=2, help="the paper's 32 is beyond a CPU; set it on a GPU")
    p.add_argument("--paper-window", type=int, default=100)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--skip-reference", action="store_true", help="no PyTorch Conformer side by side")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny batch, few steps, no paper config")
    ns, overrides = p.parse_known_args(args)
    bad = [a for a in overrides if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if ns.quick:
        ns.steps, ns.small_batch, ns.ddim_steps, ns.seconds, ns.repeats, ns.skip_paper = 2, 2, 5, 1.0, 2, True
    small = load_config(CONFIGS["small"])
    report = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
              "train": [_train_step(CONFIGS["small"], ns.small_batch, small.data.synthface.window, ns.steps,
                                  overrides)]}
    if not ns.skip_paper:
        report["train"].append(_train_step(CONFIGS["paper"], ns.paper_batch, ns.paper_window, max(2, ns.steps // 3),
                                           overrides))
    report["sampling"] = _sampling(CONFIGS["small"], ns.seconds, ns.ddim_steps, ns.repeats)
    net = small.model.net
    side = None
    if not ns.skip_reference:
        side = _conformer_side_by_side(net.dim, net.num_layers, net.num_heads, net.ffn_dim, net.kernel_size,
                                       ns.small_batch, small.data.synthface.window, max(ns.repeats, ns.steps),
                                       ns.threads)
        report["conformer_vs_pytorch"] = side["detail"]
    main = report["train"][0]
    report["summary"] = [
        harness.row("instructavatar", train_ms_ours=main["step_ms"], tflops=main["tflops_per_device"],
                    mfu=main["mfu"], memory_gib=main.get("memory_gib"),
                    sampling_speedup=report["sampling"]["loop_over_scan"],
                    note="full task step (small config); no PyTorch reference of the whole model")]
    if side is not None:
        report["summary"].append(dict(side["summary"], sampling_speedup=None,
                                      note=f"AdamW step of the {net.num_layers}-layer Conformer stack, "
                                           f"[{ns.small_batch}, {small.data.synthface.window}, {net.dim}]"))
    return report
