"""Samplers. Each takes ``denoise(x_t, t) -> x0_prediction`` (same shape as ``x_t [batch, ...]``) and initial
noise ``[batch, ...]``, and returns the final sample ``[batch, ...]``. All steps run in one ``jax.lax.scan``;
wrap the whole sampler call in one ``jax.jit``. Given the noise (and key), every sampler is deterministic.

* Discrete DDPM formulation (the paper): ``ddim_sample`` (DDIM, Song et al. 2021, eta interpolates between the
  deterministic DDIM and DDPM-like ancestral sampling) and ``ddpm_sample`` (ancestral sampling from the posterior
  over all ``T`` steps). ``t`` passed to ``denoise`` is int32 ``[batch]``.
* VP-SDE formulation (the released code): ``euler_vpsde_sample``, Grad-TTS ``reverse_diffusion``.
  ``t`` passed to ``denoise`` is float32 ``[batch]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from avatarjax.diffusion.schedules import VPSDE, DiscreteSchedule, abar_and_complement, posterior_mean_variance

Denoise = Callable[[jax.Array, jax.Array], jax.Array]


def _predict_x0(denoise: Denoise, x: jax.Array, t: jax.Array, clip: float | None) -> jax.Array:
    """``denoise`` at scalar time ``t`` broadcast to ``[batch]``, optionally clipped to ``[-clip, clip]``."""
    x0 = denoise(x, jnp.full((x.shape[0],), t))
    return x0 if clip is None else jnp.clip(x0, -clip, clip)


def _step_keys(key: jax.Array | None, num_steps: int, needed: bool) -> jax.Array | None:
    """One key per step (``[num_steps]`` keys) when the sampler draws noise, else None."""
    if not needed:
        return None
    if key is None:
        raise ValueError("this sampler draws noise at every step: pass a PRNG key")
    return jax.random.split(key, num_steps)


def _normal(key: jax.Array, like: jax.Array) -> jax.Array:
    return jax.random.normal(key, like.shape, like.dtype)


def ddim_timesteps(num_train_steps: int, num_steps: int) -> jax.Array:
    """int32 ``[num_steps]``: ``round(linspace(T - 1, 0, num_steps))`` (diffusers' "linspace" spacing).

    Starts at ``T - 1`` and ends at 0; with ``num_steps = T`` it is every step ``T - 1, ..., 0``.
    """
    return jnp.round(jnp.linspace(num_train_steps - 1, 0, num_steps)).astype(jnp.int32)


def ddim_variance(log_abar: jax.Array, log_abar_prev: jax.Array, eta: float) -> jax.Array:
    """DDIM noise variance ``sigma^2 = eta^2 (1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)`` (elementwise).

    Takes ``log abar`` so that the factors are computed with ``expm1`` (accurate in float32). With ``eta = 1`` and
    consecutive steps it equals the DDPM posterior variance.
    """
    return -(eta ** 2) * jnp.expm1(log_abar_prev) * jnp.expm1(log_abar - log_abar_prev) / jnp.expm1(log_abar)


def ddim_sample(denoise: Denoise, schedule: DiscreteSchedule, noise: jax.Array, key: jax.Array | None = None, *,
                num_steps: int = 50, eta: float = 0.0, clip: float | None = None) -> jax.Array:
    """DDIM from ``x_T = noise`` over ``ddim_timesteps(T, num_steps)``; returns the last x0 prediction.

    Per step (``t`` -> previous step ``p``; after the last step ``abar_p = 1``):
    ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``,
    ``x_p = sqrt(abar_p) x0 + sqrt(1 - abar_p - sigma^2) eps + sigma z`` with ``sigma^2 = ddim_variance``.
    The last step has ``abar_p = 1, sigma = 0``, so it returns ``x0`` exactly. ``key`` (split into one key per step)
    is needed only when ``eta != 0``. ``clip`` clips each x0 prediction to ``[-clip, clip]``.
    """
    timesteps = ddim_timesteps(schedule.num_steps, num_steps)
    log_abar = schedule.log_alphas_cumprod[timesteps]
    log_abar_prev = jnp.concatenate([log_abar[1:], jnp.zeros((1,), log_abar.dtype)])
    keys = _step_keys(key, num_steps, needed=eta != 0.0)

    def step(x, inputs):
        t, log_a, log_a_prev, k = inputs
        (a, one_minus), (a_prev, one_minus_prev) = abar_and_complement(log_a), abar_and_complement(log_a_prev)
        x0 = _predict_x0(denoise, x, t, clip)
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(one_minus)
        var = ddim_variance(log_a, log_a_prev, eta)
        x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(one_minus_prev - var, 0.0)) * eps
        if k is not None:
            x = x + jnp.sqrt(var) * _normal(k, x)
        return x, None

    x, _ = jax.lax.scan(step, noise, (timesteps, log_abar, log_abar_prev, keys))
    return x


def ddpm_sample(denoise: Denoise, schedule: DiscreteSchedule, noise: jax.Array, key: jax.Array, *,
                clip: float | None = None) -> jax.Array:
    """Ancestral DDPM from ``x_T = noise`` over every step ``T - 1, ..., 0``.

    Per step ``x_{t-1} = mean + sqrt(variance) z`` with the posterior ``q(x_{t-1} | x_t, x0 = denoise(x_t, t))``;
    step ``i`` draws ``z`` from ``jax.random.split(key, T)[i]``, the same stream as ``ddim_sample(num_steps=T)``.
    The posterior variance is 0 at ``t = 0``, so the result is the last x0 prediction.
    """
    timesteps = ddim_timesteps(schedule.num_steps, schedule.num_steps)
    keys = jax.random.split(key, schedule.num_steps)

    def step(x, inputs):
        t, k = inputs
        x0 = _predict_x0(denoise, x, t, clip)
        mean, var = posterior_mean_variance(schedule, x0, x, jnp.full((x.shape[0],), t))
        return mean + jnp.sqrt(var) * _normal(k, x), None

    x, _ = jax.lax.scan(step, noise, (timesteps, keys))
    return x


def euler_vpsde_sample(denoise: Denoise, sde: VPSDE, noise: jax.Array, *, num_steps: int = 150,
                       temperature: float = 1.8, stochastic: bool = False, key: jax.Array | None = None) -> jax.Array:
    """Grad-TTS ``reverse_diffusion`` with prior mean ``mu = 0``; returns ``x`` at ``t = 0``.

    ``x = noise / temperature``; ``h = 1 / num_steps``; step ``i`` is at ``t_i = 1 - (i + 0.5) h`` with
    ``score = -(x - x0 e^{-cum/2}) / (1 - e^{-cum})`` from ``x0 = denoise(x, t_i)``:

    * ODE (default, probability flow): ``x <- x - 0.5 (mu - x - score) beta(t_i) h``;
    * ``stochastic=True`` (Grad-TTS ``stoc``): ``x <- x - (0.5 (mu - x) - score) beta(t_i) h + sqrt(beta(t_i) h) z``
      with ``z`` from ``jax.random.split(key, num_steps)[i]``.
    """
    h = 1.0 / num_steps
    times = 1.0 - (jnp.arange(num_steps, dtype=jnp.float32) + 0.5) * h
    keys = _step_keys(key, num_steps, needed=stochastic)

    def step(x, inputs):
        t, k = inputs
        t_batch = jnp.full((x.shape[0],), t)
        score = sde.score_from_x0(x, t_batch, denoise(x, t_batch))
        beta_h = sde.beta(t) * h
        if k is None:
            return x + 0.5 * (x + score) * beta_h, None
        return x + (0.5 * x + score) * beta_h + jnp.sqrt(beta_h) * _normal(k, x), None

    x, _ = jax.lax.scan(step, noise / temperature, (times, keys))
    return x
