"""The jitted train and eval steps (pure functions of state and batch)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from avatarjax.config import Config
from avatarjax.parallel.mesh import constrain
from avatarjax.train.state import TrainState
from avatarjax.train.task import Task


def _microbatches(batch: dict, n: int) -> dict:
    """``[B, ...]`` -> ``[n, B/n, ...]`` where micro-batch i takes rows i, i+n, ... so every micro-batch stays
    spread over all batch shards."""
    def split(x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def ema_warmup_decay(decay: float, step: jax.Array) -> jax.Array:
    """The EMA decay at update ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    A constant decay keeps ``decay ** n`` of the random initialisation after n updates (32% after 1126 steps at
    0.999), so a short run's EMA weights were far worse than its raw ones; the warm-up (as in TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``) lets the average follow the early parameters closely."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def make_train_step(cfg: Config, task: Task, graphdef: Any, tx: optax.GradientTransformation,
                    schedule: optax.Schedule):
    """``step(state, batch) -> (state, metrics)``; metrics are float32 scalars (loss, grad_norm, lr, task's)."""
    accum = cfg.train.grad_accum
    base_key = jax.random.key(cfg.seed)
    ema_decay = cfg.train.ema_decay

    def loss_and_grads(params, rest, batch, key, step):
        def loss_of(p):
            # copy: variables the loss updates (batch statistics) must belong to this trace, not the jit's
            model = nnx.merge(graphdef, p, rest, copy=True)
            loss, metrics = task.loss(model, batch, key, step)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, new_rest)

        (loss, (metrics, new_rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return loss, metrics, new_rest, grads

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        if accum == 1:
            loss, metrics, new_rest, grads = loss_and_grads(state.params, state.rest, batch, key, state.step)
        else:
            def micro(carry, xs):
                rest, grad_sum, loss_sum, metric_sum = carry
                mb, i = xs
                loss, metrics, rest, grads = loss_and_grads(state.params, rest, mb, jax.random.fold_in(key, i),
                                                            state.step)
                add = lambda a, b: jax.tree.map(jnp.add, a, b)
                return (rest, add(grad_sum, grads), loss_sum + loss, add(metric_sum, metrics)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            _, probe_metrics = jax.eval_shape(
                lambda: task.loss(nnx.merge(graphdef, state.params, state.rest),
                                  jax.tree.map(lambda x: x[0], _microbatches(batch, accum)), key, state.step))
            metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe_metrics)
            (new_rest, grads, loss, metrics), _ = jax.lax.scan(
                micro, (state.rest, zeros, jnp.zeros((), jnp.float32), metric_zeros),
                (_microbatches(batch, accum), jnp.arange(accum)))
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss = loss / accum
            metrics = jax.tree.map(lambda m: m / accum, metrics)

        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            decay = ema_warmup_decay(ema_decay, state.step)
            ema = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)
        new = TrainState(step=state.step + 1, params=params, rest=new_rest, opt_state=opt_state, ema=ema)
        if cfg.train.nan_check:
            # A non-finite loss or gradient leaves the state as it was; the host aborts on seeing the loss.
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = lambda n, o: jnp.where(ok, n, o)
            new = TrainState(step=new.step, params=jax.tree.map(keep, new.params, state.params),
                             rest=jax.tree.map(keep, new.rest, state.rest),
                             opt_state=jax.tree.map(keep, new.opt_state, state.opt_state),
                             ema=None if ema is None else jax.tree.map(keep, new.ema, state.ema))
        out = {"loss": loss, "grad_norm": grad_norm, "lr": jnp.asarray(schedule(state.step), jnp.float32)}
        out.update({k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()})
        return new, out

    return train_step


def make_eval_step(cfg: Config, task: Task, graphdef: Any, use_ema: bool = False):
    """``eval_step(state, batch) -> metrics`` with the loss evaluated at a fixed key."""
    key = jax.random.key(cfg.seed + 1)

    def eval_step(state: TrainState, batch: dict) -> dict:
        params = state.ema if (use_ema and state.ema is not None) else state.params
        model = nnx.merge(graphdef, params, state.rest)
        loss, metrics = task.loss(model, batch, key, state.step)
        return {"loss": loss, **{k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}}

    return eval_step
