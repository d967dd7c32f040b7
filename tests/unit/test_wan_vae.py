"""The Wan causal 3D VAE: shapes for 1, 5 and 9 frames (both layouts), logical axes, causality of encoder and
decoder, analytic FLOPs against XLA, the synthface clip data, the GAN switch, and 2 training steps through the
real Trainer (then the task's sampler)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.codecs import wan_vae as wv
from avatarjax.config import load_config
from avatarjax.data.synthface import identity as identity_lib, render
from avatarjax.data.synthface.loader import source as synthface_source
from avatarjax.errors import ConfigError
from avatarjax.parallel import rules as rules_lib
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import wan_vae as objective
from tests.conftest import REPO, make_mesh

CONFIGS = REPO / "configs" / "wan_vae"
QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]
TINY21 = wv.WanVAEConfig(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=(),
                         latents_std=())
TINY22 = wv.WanVAEConfig(base_dim=4, decoder_base_dim=6, z_dim=6, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                         is_residual=True, in_channels=12, out_channels=12, patch_size=2, latents_mean=(),
                         latents_std=())


def _config(name="synthface_tiny", *overrides):
    return load_config(CONFIGS / f"{name}.py", [*QUIET, *overrides])


def _model(cfg: wv.WanVAEConfig, abstract: bool = False) -> wv.WanVAE:
    with nnx.use_eager_sharding(False):
        build = lambda: wv.WanVAE(cfg, rngs=nnx.Rngs(0))
        return nnx.eval_shape(build) if abstract else build()


@pytest.mark.parametrize("cfg", [TINY21, TINY22], ids=["wan21", "wan22"])
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_shapes_and_logical_axes(cfg, frames):
    graphdef, params = nnx.split(_model(cfg, abstract=True))
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == var.ndim and set(names) <= set(rules_lib.LOGICAL_AXES), path
    size = 2 * cfg.spatial_factor
    video = jax.ShapeDtypeStruct((2, frames, size, size, 3), jnp.float32)

    def run(p, v, chunking):
        model = nnx.merge(graphdef, p)
        mean, logvar = model.encode(v, chunking=chunking)
        return mean, logvar, model.decode(mean, chunking=chunking)

    latent = (2,) + cfg.latent_shape(frames, size, size)
    assert latent == (2, 1 + (frames - 1) // 4, 2, 2, cfg.z_dim)
    for chunking in wv.CHUNKINGS:
        mean, logvar, out = jax.eval_shape(lambda p, v: run(p, v, chunking), params, video)
        assert mean.shape == logvar.shape == latent and out.shape == video.shape


@pytest.fixture(scope="module")
def tiny():
    """A tiny Wan2.2-layout model (random numpy values: a jitted init would compile one RNG kernel per shape)
    with random RMS scales and biases, and a 9-frame video."""
    model = _model(TINY22, abstract=True)
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = var.shape
        if var.get_metadata().get("out_sharding") == ("norm",):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        var.set_value(jnp.asarray(value, jnp.float32))
    return model, rng.uniform(-1, 1, (1, 9, 32, 32, 3)).astype(np.float32)


def test_encoder_is_causal(tiny):
    """Latent frame j (video frames up to 4j) never changes when later video frames change."""
    model, video = tiny
    encode = jax.jit(lambda v: model.encode(v, chunking="none")[0])
    base = np.asarray(encode(jnp.asarray(video)))
    for j in (0, 1):
        changed = video.copy()
        changed[:, 4 * j + 1:] = np.random.default_rng(j).uniform(-1, 1, changed[:, 4 * j + 1:].shape)
        out = np.asarray(encode(jnp.asarray(changed)))
        np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])
        assert np.abs(out[:, j + 1:] - base[:, j + 1:]).min(axis=(0, 2, 3, 4)).max() > 0


def test_decoder_is_causal(tiny):
    """Video frames 0 .. 4j (what latent frames 0 .. j decode to) never change when later latents change."""
    model, _ = tiny
    z = np.random.default_rng(1).standard_normal((1, 3, 2, 2, 6)).astype(np.float32)
    decode = jax.jit(lambda z: model.decode(z, chunking="none", clip=False))
    base = np.asarray(decode(jnp.asarray(z)))
    changed = z.copy()
    changed[:, 2] += 1.0
    out = np.asarray(decode(jnp.asarray(changed)))
    np.testing.assert_array_equal(out[:, :5], base[:, :5])
    assert np.abs(out[:, 5:] - base[:, 5:]).max() > 1e-3


def test_streaming_decode_in_segments_equals_one_decode():
    """decode_start + decode_continue over segments (the cache carried) give the frames of one whole decode
    (Wan2.2 layout: patchify and the residual design on the same path)."""
    cfg = TINY22
    model = _model(cfg)
    z = np.random.default_rng(2).standard_normal((1, 7, 2, 2, cfg.z_dim)).astype(np.float32)
    whole = np.asarray(jax.jit(lambda z: model.decode(z))(jnp.asarray(z)))
    start = jax.jit(lambda z0: model.decode_start(z0))
    more = jax.jit(lambda z, cache: model.decode_continue(z, cache))
    first, cache = start(jnp.asarray(z[:, :1]))
    parts = [np.asarray(first)]
    for i in range(1, 7, 3):  # two segments of 3 latents (one compiled shape)
        frames, cache = more(jnp.asarray(z[:, i:i + 3]), cache)
        parts.append(np.asarray(frames))
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY21, TINY22], ids=["wan21", "wan22"])
def test_analytic_flops_match_xla(cfg):
    """At 8 latent pixels a side (XLA leaves the spatial zero padding out of its count: 11% at 2 pixels)."""
    graphdef, params = nnx.split(_model(cfg, abstract=True))
    size = 8 * cfg.spatial_factor
    video = jax.ShapeDtypeStruct((1, 9, size, size, 3), jnp.float32)

    def forward(p, v):
        model = nnx.merge(graphdef, p)
        return model.decode(model.encode(v, chunking="none")[0], chunking="none")

    xla = jax.jit(forward).lower(params, video).cost_analysis()["flops"]
    assert wv.flops_per_video(cfg, 9, size, size) == pytest.approx(xla, rel=0.03)


def test_real_size_flops():
    """Wan2.1 on 81 x 480 x 832: the encode + decode cost is dominated by the full-resolution levels."""
    flops = wv.flops_per_video(wv.WAN21, 81, 480, 832)
    assert 1e14 < flops < 1e16
    assert wv.decoder_flops(wv.WAN22, 81, 480, 832) > wv.encoder_flops(wv.WAN22, 81, 480, 832)


def test_clip_data_are_consecutive_rendered_frames():
    cfg = _config("synthface_tiny", "--config.data.frame_stride=3")
    batch = next(iter(objective.dataset(cfg, "train")))
    assert batch["video"].shape == (4, 5, 32, 32, 3) and batch["video"].dtype == np.uint8
    record = synthface_source(cfg.data.synthface, "train")[0]
    example = objective.make_example(record, np.random.default_rng(0), frame_size=32, num_frames=5, stride=3)
    start = int(example["start"])
    assert 0 <= start <= len(record["state"]) - 13
    states = record["state"][start + 3 * np.arange(5)]
    expected = render.render_frames(identity_lib.Identity.from_vector(record["identity_vector"]), states, 32)
    np.testing.assert_array_equal(example["video"], expected)
    assert np.any(expected[0] != expected[-1])  # the window moves


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"num_frames=6 must be 1 \+ 4k"):
        objective._check(_config("synthface_tiny", "--config.data.num_frames=6"))
    with pytest.raises(ConfigError, match="frame_size=36 must divide by"):
        objective._check(_config("synthface_tiny", "--config.data.frame_size=36"))
    with pytest.raises(ConfigError, match="temporal_downsample needs"):
        wv.WanVAEConfig(temporal_downsample=(True,))
    with pytest.raises(ConfigError, match="no latents_mean"):
        wv.normalize(jnp.zeros((1, 1, 1, 1, 4)), TINY21)


def test_gan_switch_adds_the_discriminator_terms():
    cfg = _config("synthface_tiny", "--config.model.adversarial_weight=0.5", "--config.model.perceptual_weight=1.0",
                  "--config.model.disc_channels=8", "--config.model.disc_layers=2", "--config.model.disc_groups=4")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: objective.build_model(cfg, nnx.Rngs(0)))
    assert model.discriminator is not None
    graphdef, params = nnx.split(model)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), objective.example_batch(cfg, 2))
    total, metrics = jax.eval_shape(
        lambda p, b: objective.loss(nnx.merge(graphdef, p), b, jax.random.key(0), jnp.int32(0)), params, batch)
    assert total.shape == () and {"l1", "kl", "psnr", "generator", "feature_match", "discriminator"} <= set(metrics)
    disc_flops = objective.flops_per_example(cfg) - objective.flops_per_example(_config())
    assert disc_flops > 0


def test_two_training_steps_then_sample(tmp_path):
    cfg = _config("synthface_tiny", "--config.train.steps=2", "--config.checkpoint.every=2")
    result = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1)).run()
    losses = [result.losses[s] for s in (1, 2)]
    assert all(np.isfinite(losses)) and {"l1", "kl", "psnr"} <= set(result.last_metrics)
    model, saved = load_model(tmp_path / "run")
    out = objective.sample(model, saved, tmp_path / "samples", ["--batches", "1", "--examples", "2"])
    assert out["output"].endswith(".png") and np.isfinite(out["eval_psnr"])
    assert len(out["latents_mean"]) == len(out["latents_std"]) == saved.model.vae.z_dim
