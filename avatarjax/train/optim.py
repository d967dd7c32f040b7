"""Optax optimisers and learning-rate schedules from config."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from avatarjax.config import OptimConfig


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """constant / cosine / linear (with linear warm-up) or inverse-sqrt (warm-up, then lr * sqrt(warmup / step))."""
    warmup = cfg.warmup_steps
    horizon = max(1, (cfg.decay_steps or total_steps) - warmup)
    if cfg.schedule == "inverse_sqrt":
        w = max(warmup, 1)

        def inverse_sqrt(step):
            step = jnp.maximum(step.astype(jnp.float32) + 1.0, 1.0)
            return cfg.lr * jnp.minimum(step / w, jnp.sqrt(w / step))

        return inverse_sqrt
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, horizon, alpha=cfg.min_lr_ratio)
    else:
        main = optax.linear_schedule(cfg.lr, cfg.lr * cfg.min_lr_ratio, horizon)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        core = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        core = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    if cfg.grad_clip > 0:
        core = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), core)
    return core, schedule
