"""Classifier-free guidance, model-agnostic: builds a ``denoise(x_t, t) -> x0`` for the samplers.

Guidance is applied to the x0 prediction: ``uncond + scale (cond - uncond)`` (scale 1 = conditional only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avatarjax.diffusion.samplers import Denoise


def _guide(cond: jax.Array, uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
    return uncond + scale * (cond - uncond)


def cfg_denoise(denoise_cond: Denoise, denoise_uncond: Denoise, scale: float | jax.Array) -> Denoise:
    """Guided denoise from two passes; a Python ``scale == 1`` returns ``denoise_cond`` (no unconditional pass)."""
    if isinstance(scale, (int, float)) and scale == 1:
        return denoise_cond

    def denoise(x_t: jax.Array, t: jax.Array) -> jax.Array:
        return _guide(denoise_cond(x_t, t), denoise_uncond(x_t, t), scale)

    return denoise


def batched_cfg_denoise(denoise_pair: Denoise, scale: float | jax.Array) -> Denoise:
    """Guided denoise from ONE batched pass (one forward per sampler step).

    ``denoise_pair(x [2B, ...], t [2B]) -> [2B, ...]`` treats the first half as conditional and the second half as
    unconditional; the returned fn maps ``x_t [B, ...], t [B]`` to the guided x0 ``[B, ...]``.
    """

    def denoise(x_t: jax.Array, t: jax.Array) -> jax.Array:
        cond, uncond = jnp.split(denoise_pair(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t])), 2)
        return _guide(cond, uncond, scale)

    return denoise


def drop_condition_mask(key: jax.Array, batch: int, prob: float) -> jax.Array:
    """bool ``[batch]``, True (drop the condition) with probability ``prob`` each: training-time CFG dropout."""
    return jax.random.bernoulli(key, prob, (batch,))
