"""``avatarjax bench trainer``: the trainer's overhead over a bare jitted step, measured in one run.

Both sides run the same compiled step on the same model: the bare side calls it in a tight Python loop on one
pre-sharded batch; the full side is :class:`Trainer` with data loading, the per-step NaN check, metrics
(``log.every``), and async checkpoints (``checkpoint.every``). Warm-up steps (compilation) are excluded from both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax

from avatarjax.config import load_config
from avatarjax.parallel import mesh as mesh_lib


def _bare_seconds_per_step(trainer, steps: int, warmup: int) -> float:
    cfg = trainer.cfg
    with trainer._context():
        state = trainer.init_state()
        batch = mesh_lib.shard_batch(trainer.task.example_batch(cfg, cfg.train.batch_size), trainer.mesh,
                                     trainer.rules)
        for _ in range(warmup):
            state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - t0) / steps


def bench_trainer(args: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax bench trainer")
    p.add_argument("--config", default="configs/lm/synthface_small.py")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="alternate bare/full this many times; report medians")
    ns, overrides = p.parse_known_args(args)
    from avatarjax.train.loop import Trainer

    total = ns.steps + ns.warmup
    overrides = list(overrides) + [f"--config.train.steps={total}", "--config.log.progress=false",
                                   "--config.eval.every=0"]
    cfg = load_config(ns.config, overrides)
    bare, full, data_wait = [], [], []
    for _ in range(ns.repeats):
        with tempfile.TemporaryDirectory() as workdir:
            trainer = Trainer(cfg, workdir)
            bare.append(_bare_seconds_per_step(trainer, ns.steps, ns.warmup))
            result = trainer.run()
            times = result.step_end_times
            full.append((times[-1] - times[ns.warmup - 1]) / (len(times) - ns.warmup))
            data_wait.append(result.data_wait_s / len(times))
    bare_s, full_s = statistics.median(bare), statistics.median(full)
    return {
        "config": ns.config,
        "steps_timed": ns.steps,
        "log_every": cfg.log.every,
        "checkpoint_every": cfg.checkpoint.every,
        "async_checkpoint": cfg.checkpoint.async_save,
        "bare_step_ms": bare_s * 1e3,
        "full_loop_step_ms": full_s * 1e3,
        "overhead_ratio": full_s / bare_s - 1.0,
        "goal": "overhead_ratio < 0.03",
        "bare_runs_ms": [b * 1e3 for b in bare],
        "full_runs_ms": [f * 1e3 for f in full],
        "data_wait_ms_per_step": [d * 1e3 for d in data_wait],
    }
