"""The one trainer: build the sharded state, restore or init, run jitted steps, log, checkpoint, evaluate.

Contract of a workdir: ``checkpoints/`` (state + data-iterator state + config per step), ``metrics.jsonl``,
``config.json``, ``tb/``, and ``profile/`` when a trace window is set. Re-running the same command resumes from
the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from avatarjax.checkpoint.manager import CheckpointManager, abstract_with_shardings
from avatarjax.config import Config
from avatarjax.data import pipeline
from avatarjax.errors import AvatarError, TrainingAborted
from avatarjax.nn.attention_kernels import use_implementation as use_attention
from avatarjax.parallel import mesh as mesh_lib
from avatarjax.parallel import rules as rules_lib
from avatarjax.profiling import flops as flops_lib, peak
from avatarjax.registry import TASKS
from avatarjax.train import optim, state as state_lib, step as step_lib
from avatarjax.train.metrics import MetricsWriter
from avatarjax.train.task import Task

PREEMPTED_EXIT_CODE = 143


@dataclasses.dataclass
class TrainResult:
    step: int
    preempted: bool
    last_metrics: dict[str, float]
    losses: dict[int, float]  # loss of every step this run executed (for tests and benchmarks)
    step_end_times: list[float]  # perf_counter after each step's host work (the loop's own timing)
    data_wait_s: float = 0.0  # time blocked on the data iterator
    check_wait_s: float = 0.0  # time blocked fetching the previous step's metrics (device compute shows here)


class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so the loop can save before exiting.

    Single-process only: in a multi-process run JAX's preemption sync manager owns SIGTERM and every process
    learns of it at the same step through ``reached_preemption`` (a local flag could stop processes at different
    steps and deadlock the collective save).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Owns mesh, rules, compiled steps, state, data iterator and checkpoint manager for one training run."""

    def __init__(self, cfg: Config, workdir: str | Path, *, task: Task | None = None, mesh=None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.task = task or TASKS.get(cfg.task)
        self.mesh = mesh if mesh is not None else mesh_lib.make_mesh(cfg.mesh)
        self.rules = rules_lib.resolve(cfg.mesh.rules, cfg.mesh.rules_override)
        self.primary = jax.process_index() == 0
        mesh_lib.check_batch(cfg.train.batch_size, self.mesh, self.rules)
        micro = cfg.train.batch_size // cfg.train.grad_accum
        mesh_lib.check_batch(micro, self.mesh, self.rules, "train.batch_size / train.grad_accum")

        self.tx, self.schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
        build = lambda rngs: self.task.build_model(cfg, rngs)
        ema = cfg.train.ema_decay > 0
        self.graphdef, self.abstract = state_lib.abstract_state(build, self.tx, ema, self.mesh, self.rules)
        with nnx.logical_axis_rules(self.rules):
            specs = state_lib.state_specs(self.abstract, self.tx, dict(self.mesh.shape))
        state_lib.check_state_divisible(self.abstract, specs, self.mesh)
        self.state_shardings = state_lib.to_shardings(specs, self.mesh)
        self.num_params = state_lib.param_count(self.abstract.params)
        self._init_fn = state_lib.make_init_fn(build, self.tx, ema)

        example = self.task.example_batch(cfg, cfg.train.batch_size)
        self.batch_shardings = jax.tree.map(
            lambda x: mesh_lib.batch_sharding(self.mesh, self.rules, np.ndim(x)), example)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        train_step = step_lib.make_train_step(cfg, self.task, self.graphdef, self.tx, self.schedule)
        self.train_step = jax.jit(train_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                  out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        eval_step = step_lib.make_eval_step(cfg, self.task, self.graphdef)
        self.eval_step = jax.jit(eval_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                 out_shardings=replicated)
        self.flops_per_step = flops_lib.train_step_flops(cfg, self.task)
        self.checkpoints = CheckpointManager(self.workdir / "checkpoints", keep=cfg.checkpoint.keep,
                                             async_save=cfg.checkpoint.async_save)

    # -- set-up --------------------------------------------------------------------------------------------------
    def _context(self) -> contextlib.ExitStack:
        """The mesh, the logical rules and the attention kernel (``mesh.attention``, read when a step traces)."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nnx.logical_axis_rules(self.rules))
        stack.enter_context(use_attention(self.cfg.mesh.attention))
        return stack

    def init_state(self) -> state_lib.TrainState:
        with self._context():
            seed = self.cfg.seed  # the key is made inside the jit: no host-to-device copy
            init = state_lib.jit_init(lambda: self._init_fn(jax.random.key(seed)), out_shardings=self.state_shardings)
            return init()

    def make_iterator(self, split: str = "train"):
        ds = self.task.dataset(self.cfg, split, jax.process_index(), jax.process_count())
        return iter(pipeline.to_iter(ds))  # a task's IterDataset (e.g. with worker prefetch) is used as is

    def restore_or_init(self, iterator) -> state_lib.TrainState:
        restore_step = self.cfg.checkpoint.restore_step
        if self.checkpoints.latest_step() is None:
            if restore_step >= 0:
                raise AvatarError(f"checkpoint.restore_step={restore_step} was asked for but "
                                  f"'{self.checkpoints.directory}' has no checkpoints")
            return self.init_state()
        target = abstract_with_shardings(self.abstract, self.state_shardings)
        _, state = self.checkpoints.restore(None if restore_step < 0 else restore_step, target,
                                            data_iterator=iterator)
        return state

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train to ``train.steps`` (or stop, saving a checkpoint, once ``stop_at`` steps are done)."""
        cfg = self.cfg
        self.workdir.mkdir(parents=True, exist_ok=True)
        iterator = self.make_iterator("train")
        try:
            state = self.restore_or_init(iterator)
        except BaseException:
            self.checkpoints.close()
            raise
        start = int(jax.device_get(state.step))
        if self.primary:
            (self.workdir / "config.json").write_text(cfg.to_json())
        writer = MetricsWriter(self.workdir, tensorboard=cfg.log.tensorboard, enabled=self.primary)
        peak_tflops = peak.device_peak_tflops(self.mesh.devices.flat[0])
        num_devices = self.mesh.devices.size
        bar = tqdm(total=cfg.train.steps, initial=start, disable=not (cfg.log.progress and self.primary),
                   desc=f"train {cfg.task}", dynamic_ncols=True)
        losses: dict[int, float] = {}
        step_end_times: list[float] = []
        last: dict[str, float] = {}
        pending: tuple[int, Any] | None = None  # (step, device metrics) not yet checked on the host
        tracing = False
        interval_start, interval_steps = time.perf_counter(), 0
        data_wait = check_wait = interval_data_wait = 0.0
        step = start
        preempted = False

        def check(step_done: int, metrics, everything: bool = True) -> dict[str, float]:
            """Fetch the step's loss and gradient norm (all metrics when ``everything``); abort if non-finite."""
            wanted = metrics if everything else {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}
            host = {k: float(v) for k, v in jax.device_get(wanted).items()}
            losses[step_done] = host["loss"]
            if not math.isfinite(host["loss"]) or not math.isfinite(host["grad_norm"]):
                raise TrainingAborted(
                    f"non-finite loss ({host['loss']}) or gradient norm ({host['grad_norm']}) at step {step_done}: "
                    "training stopped without saving; the last checkpoint is intact. Lower optim.lr, enable "
                    "optim.grad_clip or check the data, then rerun to resume from the last checkpoint")
            return host

        try:
            with _Preemption() as preemption, self._context():
                while step < cfg.train.steps:
                    if cfg.profile.start_step == step:
                        jax.profiler.start_trace(str(self.workdir / "profile"))
                        tracing = True
                    t0 = time.perf_counter()
                    host_batch = next(iterator)
                    t1 = time.perf_counter()
                    data_wait += t1 - t0
                    interval_data_wait += t1 - t0
                    state, metrics = self.train_step(state, mesh_lib.shard_batch(host_batch, self.mesh, self.rules))
                    step += 1
                    interval_steps += 1
                    # Check the previous step's loss now that the next one is queued: no stall per step.
                    if pending is not None:
                        t0 = time.perf_counter()
                        check(*pending, everything=False)
                        check_wait += time.perf_counter() - t0
                    pending = (step, metrics)
                    if tracing and step >= cfg.profile.start_step + cfg.profile.num_steps:
                        jax.block_until_ready(state)
                        jax.profiler.stop_trace()
                        tracing = False

                    log_now = step % cfg.log.every == 0 or step == cfg.train.steps
                    save_now = step % cfg.checkpoint.every == 0 or step == cfg.train.steps
                    stop_now = (preemption.requested or self._agreed_preemption(step)
                                or (stop_at is not None and step >= stop_at and step < cfg.train.steps))
                    if log_now or save_now or stop_now:
                        last = check(*pending)  # never save or log an unchecked state
                        pending = None
                    if log_now:
                        elapsed = time.perf_counter() - interval_start
                        steps_per_sec = interval_steps / max(elapsed, 1e-9)
                        tflops, util = peak.mfu(self.flops_per_step, 1.0 / steps_per_sec, num_devices, peak_tflops)
                        last.update(steps_per_sec=steps_per_sec, tflops_per_device=tflops, mfu=util,
                                    data_wait_frac=interval_data_wait / max(elapsed, 1e-9))
                        interval_data_wait = 0.0
                        writer.write(step, last)
                        bar.set_postfix(loss=f"{last['loss']:.4f}", steps_s=f"{steps_per_sec:.2f}",
                                        tflops_dev=f"{tflops:.3g}", mfu=f"{util:.1%}", refresh=False)
                        interval_start, interval_steps = time.perf_counter(), 0
                    if cfg.eval.every and step % cfg.eval.every == 0:
                        eval_metrics = self.evaluate(state)
                        writer.write(step, eval_metrics, prefix="eval_")
                    if save_now or stop_now:
                        self.checkpoints.save(step, state, data_iterator=iterator, config=cfg.to_dict())
                    bar.update(1)
                    step_end_times.append(time.perf_counter())
                    if stop_now:
                        preempted = True
                        break
                if pending is not None:
                    last = check(*pending)
                self.checkpoints.wait()
                if step_end_times:
                    step_end_times[-1] = time.perf_counter()  # the tail includes finishing async saves
        finally:
            if tracing:
                jax.profiler.stop_trace()
            bar.close()
            writer.close()
            self.checkpoints.close()
        if self.primary and cfg.log.plots:
            from avatarjax.train.plots import plot_metrics

            plot_metrics(self.workdir)  # loss curves and metric groups as PNG beside metrics.jsonl
        self.state = state
        return TrainResult(step=step, preempted=preempted, last_metrics=last, losses=losses,
                           step_end_times=step_end_times, data_wait_s=data_wait, check_wait_s=check_wait)

    def _agreed_preemption(self, step: int) -> bool:
        """Orbax's multi-host preemption sync point (true on every process at the same step)."""
        if jax.process_count() == 1:
            return False
        return self.checkpoints.reached_preemption(step)

    def evaluate(self, state, batches: int | None = None) -> dict[str, float]:
        """Mean metrics over ``batches`` batches of the eval split (all of it when the split is shorter)."""
        batches = batches or self.cfg.eval.batches
        sums: dict[str, float] = {}
        n = 0
        with self._context():
            for host_batch in self.make_iterator("eval"):
                metrics = jax.device_get(self.eval_step(state, mesh_lib.shard_batch(host_batch, self.mesh, self.rules)))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
                if n >= batches:
                    break
        return {k: v / max(n, 1) for k, v in sums.items()}


def train(cfg: Config, workdir: str | Path) -> TrainResult:
    return Trainer(cfg, workdir).run()
