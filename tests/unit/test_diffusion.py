"""Diffusion layer: schedules, samplers (DDIM / DDPM / Grad-TTS Euler) and classifier-free guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avatarjax.diffusion.guidance import batched_cfg_denoise, cfg_denoise, drop_condition_mask
from avatarjax.diffusion.samplers import (ddim_sample, ddim_timesteps, ddim_variance, ddpm_sample,
                                          euler_vpsde_sample)
from avatarjax.diffusion.schedules import (VPSDE, eps_from_x0, make_discrete_schedule, posterior_mean_variance,
                                           q_sample, x0_from_eps)
from avatarjax.errors import ConfigError

MEAN, STD = 2.0, 0.5  # the 1-D Gaussian data distribution of the sampler checks


def gaussian_denoiser(marginal):
    """Exact E[x0 | x_t] for x0 ~ N(MEAN, STD^2) when x_t = a x0 + sqrt(var) eps; ``marginal(t, x) -> (a, var)``."""
    def denoise(x_t, t):
        a, var = marginal(t, x_t)
        return MEAN + STD ** 2 * a / (a ** 2 * STD ** 2 + var) * (x_t - a * MEAN)
    return denoise


def discrete_marginal(schedule):
    def marginal(t, x):
        abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))  # fine for an O(1e-3) check
        return jnp.sqrt(abar), 1 - abar
    return marginal


def point_mass(value):
    return lambda x_t, t: jnp.full_like(x_t, value)


def assert_matches_data(samples, tol=0.05):
    mean, std = float(samples.mean()), float(samples.std())
    assert abs(mean - MEAN) < tol * MEAN and abs(std - STD) < tol * STD, (mean, std)


# ---- schedules ----

def test_linear_betas_endpoints_and_monotone_abar():
    s = make_discrete_schedule("linear", 1000)
    np.testing.assert_allclose([s.betas[0], s.betas[-1]], [1e-4, 0.02], rtol=1e-6)
    for kind in ("linear", "scaled_linear", "cosine"):
        abar = np.asarray(make_discrete_schedule(kind).alphas_cumprod)
        assert abar.dtype == np.float32 and abar.shape == (1000,)
        assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < 1e-2, kind


def test_scaled_linear_and_cosine_values():
    s = make_discrete_schedule("scaled_linear", 1000)
    np.testing.assert_allclose([s.betas[0], s.betas[-1]], [0.00085, 0.012], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(s.betas[1:]) - np.sqrt(s.betas[:-1]), (0.012 ** 0.5 - 0.00085 ** 0.5) / 999,
                               rtol=1e-3)
    c = make_discrete_schedule("cosine", 1000)
    assert abs(float(c.alphas_cumprod[0]) - 1) < 1e-4 and float(c.betas.max()) == pytest.approx(0.999)
    with pytest.raises(ConfigError, match="unknown beta schedule"):
        make_discrete_schedule("quadratic")


def test_discrete_round_trip():
    s = make_discrete_schedule("linear", 1000)
    kx, kn, kt = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(kx, (6, 3, 4))
    noise = jax.random.normal(kn, x0.shape)
    t = jax.random.randint(kt, (6,), 0, 1000)
    x_t = q_sample(s, x0, t, noise)
    np.testing.assert_allclose(eps_from_x0(s, x_t, t, x0), noise, atol=2e-4)
    np.testing.assert_allclose(x0_from_eps(s, x_t, t, noise), x0, atol=2e-3)  # 1/sqrt(abar) amplifies at t ~ T


def test_vpsde_q_sample_statistics():
    sde = VPSDE()
    t = jnp.array([0.05, 0.3, 0.9])
    n = 20000
    x0 = jnp.broadcast_to(jnp.array([1.0, -2.0, 3.0])[:, None], (3, n))
    x_t = sde.q_sample(x0, t, jax.random.normal(jax.random.key(1), (3, n)))
    cum = 0.05 * t + 0.5 * 19.95 * t ** 2
    np.testing.assert_allclose(x_t.mean(1), x0[:, 0] * jnp.exp(-cum / 2), atol=0.02)
    np.testing.assert_allclose(x_t.var(1), 1 - jnp.exp(-cum), rtol=0.03)
    np.testing.assert_allclose(sde.eps_from_x0(x_t, t, x0), (x_t - x0 * jnp.exp(-cum / 2)[:, None])
                               / jnp.sqrt(1 - jnp.exp(-cum))[:, None], rtol=1e-4, atol=1e-4)
    ts = sde.sample_t(jax.random.key(2), 1000)
    assert ts.dtype == jnp.float32 and ts.shape == (1000,) and 0 < float(ts.min()) and float(ts.max()) < 1


# ---- DDIM(eta=1, all steps) == DDPM ----

def test_ddim_eta1_variance_equals_ddpm_posterior_variance():
    s = make_discrete_schedule("linear", 1000)
    t = jnp.arange(1, 1000)
    _, post_var = posterior_mean_variance(s, jnp.zeros((999, 1)), jnp.zeros((999, 1)), t)
    var = ddim_variance(s.log_alphas_cumprod[t], s.log_alphas_cumprod[t - 1], 1.0)
    np.testing.assert_allclose(var, post_var[:, 0], rtol=1e-4)


def test_ddim_eta1_all_steps_reproduces_ddpm():
    s = make_discrete_schedule("linear", 20, beta_end=0.3)
    denoise = gaussian_denoiser(discrete_marginal(s))
    noise = jax.random.normal(jax.random.key(3), (8, 2))
    key = jax.random.key(4)
    assert (ddim_timesteps(20, 20) == jnp.arange(19, -1, -1)).all()
    ddim = ddim_sample(denoise, s, noise, key, num_steps=20, eta=1.0)
    ddpm = ddpm_sample(denoise, s, noise, key)
    np.testing.assert_allclose(ddim, ddpm, atol=1e-5)
    assert not np.allclose(ddpm, ddpm_sample(denoise, s, noise, jax.random.key(5)))


# ---- exact denoisers ----

def test_point_mass_is_recovered():
    target = 0.7
    noise = jax.random.normal(jax.random.key(6), (4, 3))
    s = make_discrete_schedule("linear", 1000)
    np.testing.assert_array_equal(ddim_sample(point_mass(target), s, noise, num_steps=10), jnp.full((4, 3), target))
    np.testing.assert_allclose(ddpm_sample(point_mass(target), make_discrete_schedule("linear", 50), noise,
                                           jax.random.key(7)), target, atol=1e-6)
    # Euler is first order: the default 150 steps land within ~0.01 (exact as num_steps -> inf)
    np.testing.assert_allclose(euler_vpsde_sample(point_mass(target), VPSDE(), noise), target, atol=0.02)


@pytest.mark.parametrize("num_steps, tol", [(50, 0.07), (250, 0.02)])
def test_ddim_matches_gaussian_data(num_steps, tol):
    # first-order DDIM shrinks the Gaussian's std: -5.7% at 50 steps, -1.2% at 250, -0.4% at 1000 (linear schedule)
    s = make_discrete_schedule("linear", 1000)
    noise = jax.random.normal(jax.random.key(8), (4000, 1))
    sample = jax.jit(lambda n: ddim_sample(gaussian_denoiser(discrete_marginal(s)), s, n, num_steps=num_steps))
    assert_matches_data(sample(noise), tol)


@pytest.mark.parametrize("stochastic", [False, True])
def test_euler_vpsde_matches_gaussian_data(stochastic):
    sde = VPSDE()
    noise = jax.random.normal(jax.random.key(9), (4000, 1))
    sample = jax.jit(lambda n, k: euler_vpsde_sample(gaussian_denoiser(sde.marginal), sde, n, num_steps=150,
                                                     temperature=1.0, stochastic=stochastic, key=k))
    assert_matches_data(sample(noise, jax.random.key(10)))


# ---- determinism, jit, scan ----

def _samplers(denoise_d, denoise_c, s, sde):
    return {
        "ddim_eta0": lambda n, k: ddim_sample(denoise_d, s, n, k, num_steps=5),
        "ddim_eta1": lambda n, k: ddim_sample(denoise_d, s, n, k, num_steps=5, eta=1.0, clip=3.0),
        "ddpm": lambda n, k: ddpm_sample(denoise_d, s, n, k),
        "euler_ode": lambda n, k: euler_vpsde_sample(denoise_c, sde, n, num_steps=5),
        "euler_sde": lambda n, k: euler_vpsde_sample(denoise_c, sde, n, num_steps=5, stochastic=True, key=k),
    }


@pytest.mark.parametrize("name", ["ddim_eta0", "ddim_eta1", "ddpm", "euler_ode", "euler_sde"])
def test_sampler_is_one_jitted_scan_and_deterministic(name):
    s, sde = make_discrete_schedule("linear", 10), VPSDE()
    fn = _samplers(gaussian_denoiser(discrete_marginal(s)), gaussian_denoiser(sde.marginal), s, sde)[name]
    noise = jax.random.normal(jax.random.key(11), (3, 2, 2))
    jitted = jax.jit(fn)
    assert str(jax.make_jaxpr(jitted)(noise, jax.random.key(0))).count("scan[") == 1
    out = jitted(noise, jax.random.key(0))
    assert out.shape == noise.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, jitted(noise, jax.random.key(0)))
    np.testing.assert_allclose(out, fn(noise, jax.random.key(0)), atol=1e-5)
    changed = not np.allclose(out, jitted(noise, jax.random.key(1)))
    assert changed == (name in ("ddim_eta1", "ddpm", "euler_sde"))


def test_schedule_is_a_pytree_jit_argument():
    s = make_discrete_schedule("cosine", 10)
    noise = jnp.ones((2, 3))
    run = jax.jit(lambda sched, n: ddim_sample(gaussian_denoiser(discrete_marginal(sched)), sched, n, num_steps=4))
    np.testing.assert_allclose(run(s, noise), ddim_sample(gaussian_denoiser(discrete_marginal(s)), s, noise,
                                                          num_steps=4), atol=1e-6)


def test_stochastic_samplers_require_a_key():
    s, noise = make_discrete_schedule("linear", 10), jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="PRNG key"):
        ddim_sample(point_mass(0.0), s, noise, eta=1.0)
    with pytest.raises(ValueError, match="PRNG key"):
        euler_vpsde_sample(point_mass(0.0), VPSDE(), noise, stochastic=True)


# ---- classifier-free guidance ----

def _cond(x, t):
    return 2.0 * x + t[:, None]


def _uncond(x, t):
    return 0.5 * x


def _pair(x, t):
    half = x.shape[0] // 2
    return jnp.concatenate([_cond(x[:half], t[:half]), _uncond(x[half:], t[half:])])


def test_cfg():
    x, t = jax.random.normal(jax.random.key(12), (4, 3)), jnp.arange(4, dtype=jnp.float32)
    assert cfg_denoise(_cond, _uncond, 1.0) is _cond
    np.testing.assert_allclose(cfg_denoise(_cond, _uncond, jnp.float32(1.0))(x, t), _cond(x, t), rtol=1e-6)
    expected = _uncond(x, t) + 3.0 * (_cond(x, t) - _uncond(x, t))
    np.testing.assert_allclose(cfg_denoise(_cond, _uncond, 3.0)(x, t), expected, rtol=1e-6)
    np.testing.assert_allclose(batched_cfg_denoise(_pair, 3.0)(x, t), expected, rtol=1e-6)
    np.testing.assert_allclose(batched_cfg_denoise(_pair, 1.0)(x, t), _cond(x, t), rtol=1e-6)


def test_drop_condition_mask_rate():
    mask = drop_condition_mask(jax.random.key(13), 20000, 0.1)
    assert mask.dtype == jnp.bool_ and mask.shape == (20000,)
    assert abs(float(mask.mean()) - 0.1) < 0.01
