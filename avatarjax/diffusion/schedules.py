"""Noise schedules for the two diffusion formulations used by the avatar systems.

* **Discrete DDPM** (the InstructAvatar paper): ``T`` steps (1000 by default) with betas ``beta_t``,
  ``abar_t = prod_{s<=t} (1 - beta_s)`` and ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for integer
  ``t in [0, T)``. The model predicts ``x0``; sampling is DDIM / DDPM (``samplers.py``).
* **VP-SDE** (Grad-TTS, as in the released InstructAvatar code): continuous ``t in (0, 1)`` with
  ``beta(t) = beta_min + (beta_max - beta_min) t``,
  ``cum(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2`` and
  ``x_t = x0 e^{-cum/2} + eps sqrt(1 - e^{-cum})`` (the prior mean ``mu`` of Grad-TTS is 0 here).
  The model predicts ``x0``; sampling is Euler on the reverse ODE/SDE.

Everything here is pure array math (jit-able); shapes are in each docstring. ``t`` is always ``[batch]``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from avatarjax.errors import ConfigError

_BETA_DEFAULTS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
_COSINE_OFFSET = 0.008
_COSINE_MAX_BETA = 0.999


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
    """DDPM schedule: ``betas`` and ``log_alphas_cumprod`` (``log abar``), each float32 ``[T]``.

    ``abar`` is kept in log space (computed in float64) so that ``1 - abar`` and ``1 - abar_t / abar_s`` (which
    cancel catastrophically in float32 when ``abar ~ 1``) are computed accurately with ``expm1``.
    """

    betas: jax.Array
    log_alphas_cumprod: jax.Array

    @property
    def num_steps(self) -> int:
        """``T``, the number of training timesteps (static)."""
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> jax.Array:
        """``abar_t``, float32 ``[T]``."""
        return jnp.exp(self.log_alphas_cumprod)

    @property
    def log_alphas_cumprod_prev(self) -> jax.Array:
        """``log abar_{t-1}`` with ``abar_{-1} = 1``, float32 ``[T]``."""
        return jnp.concatenate([jnp.zeros((1,), self.log_alphas_cumprod.dtype), self.log_alphas_cumprod[:-1]])


def _cosine_betas(num_steps: int) -> np.ndarray:
    """Nichol & Dhariwal (2021): betas from ``abar(u) = cos^2((u + s) / (1 + s) * pi / 2)``, capped at 0.999."""
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    abar = np.cos((u + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * np.pi / 2) ** 2
    return np.minimum(1 - abar[1:] / abar[:-1], _COSINE_MAX_BETA)


def make_discrete_schedule(kind: str = "linear", num_steps: int = 1000, beta_start: float | None = None,
                           beta_end: float | None = None) -> DiscreteSchedule:
    """A DDPM schedule of ``num_steps`` steps.

    ``kind``: ``linear`` (betas evenly spaced, default 1e-4..0.02), ``scaled_linear`` (Stable Diffusion: sqrt of the
    betas evenly spaced, default 0.00085..0.012) or ``cosine`` (takes no beta range). Built in float64 on the host,
    stored as float32.
    """
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ConfigError("the cosine beta schedule takes no beta_start/beta_end; remove them or use 'linear'")
        betas = _cosine_betas(num_steps)
    elif kind in _BETA_DEFAULTS:
        default_start, default_end = _BETA_DEFAULTS[kind]
        start = default_start if beta_start is None else beta_start
        end = default_end if beta_end is None else beta_end
        if kind == "linear":
            betas = np.linspace(start, end, num_steps, dtype=np.float64)
        else:
            betas = np.linspace(start ** 0.5, end ** 0.5, num_steps, dtype=np.float64) ** 2
    else:
        raise ConfigError(f"unknown beta schedule {kind!r}; use one of 'linear', 'scaled_linear', 'cosine'")
    log_abar = np.cumsum(np.log1p(-betas))
    return DiscreteSchedule(betas=jnp.asarray(betas, jnp.float32),
                            log_alphas_cumprod=jnp.asarray(log_abar, jnp.float32))


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """``values [batch]`` reshaped to ``[batch, 1, ...]`` to broadcast against ``like [batch, ...]``."""
    return values.reshape(values.shape + (1,) * (like.ndim - 1)).astype(like.dtype)


def abar_and_complement(log_abar: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(abar, 1 - abar)`` from ``log abar`` (any shape), both accurate in float32."""
    return jnp.exp(log_abar), -jnp.expm1(log_abar)


def _abar(schedule: DiscreteSchedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(abar_t, 1 - abar_t)`` for int ``t [batch]``, each ``[batch, 1, ...]`` to broadcast against ``like``."""
    return abar_and_complement(_per_example(schedule.log_alphas_cumprod[t], like))


def signal_noise_scales(schedule: DiscreteSchedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` for int ``t [batch]``, each ``[batch, 1, ...]`` against ``like``."""
    abar, one_minus = _abar(schedule, t, like)
    return jnp.sqrt(abar), jnp.sqrt(one_minus)


def q_sample(schedule: DiscreteSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; x0/noise ``[batch, ...]``, t int32 ``[batch]``."""
    abar, one_minus = _abar(schedule, t, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(one_minus) * noise


def eps_from_x0(schedule: DiscreteSchedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """The noise that takes ``x0`` to ``x_t`` at step ``t``: ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
    abar, one_minus = _abar(schedule, t, x_t)
    return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(one_minus)


def x0_from_eps(schedule: DiscreteSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The clean sample implied by noise ``eps``: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    abar, one_minus = _abar(schedule, t, x_t)
    return (x_t - jnp.sqrt(one_minus) * eps) / jnp.sqrt(abar)


def posterior_mean_variance(schedule: DiscreteSchedule, x0: jax.Array, x_t: jax.Array,
                            t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """DDPM posterior ``q(x_{t-1} | x_t, x0)``: mean ``[batch, ...]`` and variance ``[batch, 1, ...]``.

    mean = beta_t sqrt(abar_prev) / (1 - abar_t) x0 + (1 - abar_prev) sqrt(1 - beta_t) / (1 - abar_t) x_t,
    variance = beta_t (1 - abar_prev) / (1 - abar_t) (0 at t = 0, where abar_prev = 1).
    """
    beta = _per_example(schedule.betas[t], x_t)
    _, one_minus = _abar(schedule, t, x_t)
    abar_prev, one_minus_prev = abar_and_complement(_per_example(schedule.log_alphas_cumprod_prev[t], x_t))
    mean = (beta * jnp.sqrt(abar_prev) * x0 + one_minus_prev * jnp.sqrt(1 - beta) * x_t) / one_minus
    return mean, beta * one_minus_prev / one_minus


@dataclasses.dataclass(frozen=True)
class VPSDE:
    """Grad-TTS variance-preserving SDE with linear ``beta(t)``, ``t`` float32 ``[batch]`` in (0, 1)."""

    beta_min: float = 0.05
    beta_max: float = 20.0

    def beta(self, t: jax.Array) -> jax.Array:
        """``beta(t) = beta_min + (beta_max - beta_min) t``, same shape as t."""
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def cum_beta(self, t: jax.Array) -> jax.Array:
        """``int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``, same shape as t."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def marginal(self, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean scale ``e^{-cum/2}`` and variance ``1 - e^{-cum}`` of ``x_t | x0``, each ``[batch, 1, ...]``."""
        cum = _per_example(self.cum_beta(t), like)
        return jnp.exp(-0.5 * cum), -jnp.expm1(-cum)

    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """``x_t = x0 e^{-cum/2} + noise sqrt(1 - e^{-cum})``; x0/noise ``[batch, ...]``."""
        scale, var = self.marginal(t, x0)
        return scale * x0 + jnp.sqrt(var) * noise

    def sample_t(self, key: jax.Array, batch: int, eps: float = 1e-5) -> jax.Array:
        """Training times, float32 ``[batch]`` uniform in ``(eps, 1 - eps)``."""
        return jax.random.uniform(key, (batch,), jnp.float32, eps, 1 - eps)

    def eps_from_x0(self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
        """The noise that takes ``x0`` to ``x_t``: ``(x_t - x0 e^{-cum/2}) / sqrt(1 - e^{-cum})``."""
        scale, var = self.marginal(t, x_t)
        return (x_t - scale * x0) / jnp.sqrt(var)

    def score_from_x0(self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
        """``grad log p(x_t | x0) = -(x_t - x0 e^{-cum/2}) / (1 - e^{-cum})``, ``[batch, ...]``."""
        scale, var = self.marginal(t, x_t)
        return -(x_t - scale * x0) / var
