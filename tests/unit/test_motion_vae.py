"""The InstructAvatar motion/appearance VAE: latent shapes, the paper size, identity-swap data, the discriminator's
gradient isolation, and training through the real Trainer on 1 device and on a 4x2 (data, fsdp) mesh."""

import shutil

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.codecs import motion_vae as mv
from avatarjax.config import load_config
from avatarjax.data.synthface import identity as identity_lib, render, schema
from avatarjax.errors import ConfigError
from avatarjax.parallel import rules as rules_lib
from avatarjax.registry import TASKS
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import motion_vae as objective
from tests.conftest import REPO, make_mesh

CONFIGS = REPO / "configs" / "motion_vae"
QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]


def _config(name="synthface_tiny", *overrides):
    return load_config(CONFIGS / f"{name}.py", [*QUIET, *overrides])


def _abstract(cfg):
    """(graphdef, abstract params) of the task's model under a 1-device mesh and the config's rules."""
    mesh = make_mesh(cfg, 1)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_lib.resolve(cfg.mesh.rules)):
        model = nnx.eval_shape(lambda: TASKS.get("motion_vae").build_model(cfg, nnx.Rngs(0)))
    return nnx.split(model, nnx.Param, ...)


@pytest.mark.parametrize("size", [32, 64])
def test_latent_shapes_and_logical_axes(size):
    cfg = _config("synthface_tiny", f"--config.model.frame_size={size}", f"--config.data.frame_size={size}",
                  "--config.model.mid_attention=true")
    graphdef, params, rest = _abstract(cfg)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == var.ndim and set(names) <= set(rules_lib.LOGICAL_AXES), path

    frames = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    def run(p, x):
        model = nnx.merge(graphdef, p, rest)
        (am, al), (mm, ml) = model.encode_appearance(x), model.encode_motion(x)
        flat = mv.flatten_motion(mm)
        return am, al, mm, ml, flat, model.decode(am, mv.unflatten_motion(flat, cfg.model))

    am, al, mm, ml, flat, out = jax.eval_shape(run, params, frames)
    assert am.shape == al.shape == (2, size // 4, size // 4, 3)
    assert mm.shape == ml.shape == (2, size // 16, size // 16, 3)
    assert flat.shape == (2, cfg.model.motion_dim) and cfg.model.motion_dim == (size // 16) ** 2 * 3
    assert out.shape == (2, size, size, 3)


def test_analytic_flops_match_xla():
    cfg = _config()
    graphdef, params, rest = _abstract(cfg)

    def forward(p, x):
        model = nnx.merge(graphdef, p, rest)
        return model.decode(model.encode_appearance(x)[0], model.encode_motion(x)[0])

    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    frames = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    xla = jax.jit(forward).lower(unsharded, frames).cost_analysis()["flops"]
    assert mv.flops_per_frame(cfg.model) == pytest.approx(xla, rel=0.1)


def test_paper_config_is_the_released_size():
    cfg = _config("paper")
    graphdef, params, rest = _abstract(cfg)
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    model = nnx.merge(graphdef, params, rest)  # abstract: no parameter is allocated
    assert 85e6 < count(model.appearance_encoder) < 95e6  # the SD kl-f4 encoder at width 256
    assert count(model.discriminator) < 3e6
    assert cfg.model.motion_dim == 768
    out = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p, rest).encode_motion(x)[0], params,
                         jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.bfloat16))
    assert out.shape == (1, 16, 16, 3)


def test_identity_swap_keeps_the_state_and_changes_the_identity():
    cfg = _config("synthface_tiny", "--config.data.swap_prob=1.0")
    batch = next(iter(objective.dataset(cfg, "train")))
    world_seed = cfg.data.synthface.world_seed
    assert np.all(batch["driver_identity"] != batch["identity"])
    for row in range(len(batch["target"])):
        a, b = int(batch["identity"][row]), int(batch["driver_identity"][row])
        assert identity_lib.identity_split(b) == identity_lib.identity_split(a) == "train"
        state = batch["state"][row]
        np.testing.assert_array_equal(render.render_frames(identity_lib.sample_identity(a, world_seed), state, 32),
                                      batch["target"][row])
        np.testing.assert_array_equal(render.render_frames(identity_lib.sample_identity(b, world_seed), state, 32),
                                      batch["driver"][row])
    same = next(iter(objective.dataset(_config(), "eval", swap_prob=0.0)))
    np.testing.assert_array_equal(same["driver"], same["target"])
    np.testing.assert_array_equal(same["driver_identity"], same["identity"])


def test_neutral_source_is_the_identity_at_rest():
    cfg = _config("synthface_tiny", "--config.data.neutral_source_prob=1.0")
    batch = next(iter(objective.dataset(cfg, "train")))
    world_seed = cfg.data.synthface.world_seed
    for row in range(len(batch["target"])):
        identity = identity_lib.sample_identity(int(batch["identity"][row]), world_seed)
        neutral = render.render_frames(identity, schema.neutral_state(1), 32)[0]
        # float32 rounding of a batch of two renders flips a few anti-aliased edge pixels: near, not equal
        assert np.mean(neutral != batch["source"][row]) < 0.01
    # probability 0 draws nothing extra: the released objective's frame picks are unchanged
    released = next(iter(objective.dataset(_config(), "eval")))
    explicit = next(iter(objective.dataset(_config(), "eval", neutral_source_prob=0.0)))
    np.testing.assert_array_equal(released["source"], explicit["source"])
    with pytest.raises(ConfigError, match="neutral_source_prob"):
        objective.dataset(_config("synthface_tiny", "--config.data.neutral_source_prob=1.5"), "train")


def test_moving_weight_adds_the_l1_of_the_pixels_that_differ_from_the_source():
    cfg = _config("synthface_tiny", "--config.model.num_res_blocks=0")
    weighted = _config("synthface_tiny", "--config.model.num_res_blocks=0", "--config.model.moving_weight=2.0")
    graphdef, abstract, _ = _abstract(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype), abstract)
    batch = objective.example_batch(cfg, 2)
    batch["source"] = rng.integers(0, 256, batch["source"].shape, np.uint8)
    batch["target"] = batch["source"].copy()
    batch["target"][:, :8] = 255 - batch["target"][:, :8]  # the top 8 rows move (by 2+ levels of 255)
    batch["driver"] = batch["target"]
    key = jax.random.key(0)
    plain, m = objective.loss(nnx.merge(graphdef, params), batch, key, jnp.int32(0))
    graphdef_w, _, _ = _abstract(weighted)
    total, mw = objective.loss(nnx.merge(graphdef_w, params), batch, key, jnp.int32(0))
    moving = np.asarray(objective.moving_pixels(mv.to_model_range(batch["source"]),
                                                mv.to_model_range(batch["target"])))
    assert 0 < moving.mean() <= 0.25 and np.all(moving[:, 8:] == 0)
    np.testing.assert_allclose(float(total - plain), 2.0 * float(m["l1_moving"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["l1_moving"]), float(mw["l1_moving"]), rtol=1e-6)
    model = nnx.merge(graphdef, params)
    app_key, mot_key = jax.random.split(key)  # as the loss draws its posterior samples
    recon = model.decode(mv.sample_posterior(*model.encode_appearance(mv.to_model_range(batch["source"])), app_key),
                         mv.sample_posterior(*model.encode_motion(mv.to_model_range(batch["driver"])), mot_key))
    error = np.abs(np.asarray(recon) - np.asarray(mv.to_model_range(batch["target"])))
    np.testing.assert_allclose(float(m["l1_moving"]), (error * moving).sum() / (moving.sum() * 3), rtol=1e-5)


def test_discriminator_learns_only_from_its_own_loss():
    cfg = _config("synthface_tiny", "--config.model.adversarial_weight=0.5", "--config.model.perceptual_weight=1.0",
                  "--config.model.num_res_blocks=0", "--config.model.disc_channels=8", "--config.model.disc_layers=2")
    graphdef, abstract, _ = _abstract(cfg)
    rng = np.random.default_rng(0)  # numpy values: a jitted init would compile one RNG kernel per shape
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype), abstract)
    batch = {k: rng.integers(0, 256, v.shape, np.uint8) if v.dtype == np.uint8 else v
             for k, v in objective.example_batch(cfg, 4).items()}
    key = jax.random.key(0)

    def generator_and_discriminator(p):
        model = nnx.merge(graphdef, p)
        total, metrics = objective.loss(model, batch, key, jnp.int32(0))
        return jnp.stack([total - metrics["discriminator"], metrics["discriminator"]]), metrics

    @jax.jit
    def grads(p):
        _, vjp, metrics = jax.vjp(generator_and_discriminator, p, has_aux=True)
        return vjp(jnp.array([1.0, 0.0]))[0], vjp(jnp.array([0.0, 1.0]))[0], metrics

    gen, disc, metrics = jax.device_get(grads(params))
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["generator"] != 0
    vae_parts = ("appearance_encoder", "motion_encoder", "decoder")
    assert all(np.all(g == 0) for g in jax.tree.leaves(gen["discriminator"]))
    assert all(np.all(g == 0) for part in vae_parts for g in jax.tree.leaves(disc[part]))
    assert all(np.any(g != 0) for g in jax.tree.leaves(disc["discriminator"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(gen["decoder"]))


def test_trains_and_a_sharded_run_matches_one_device(tmp_path):
    """8 steps on 1 device (the loss falls); steps 5-8 again from the step-4 checkpoint on a 4x2 mesh; then the
    sampler on the trained model."""
    cfg = _config("synthface_tiny", "--config.train.steps=8", "--config.checkpoint.every=4")
    single = Trainer(cfg, tmp_path / "one", mesh=make_mesh(cfg, 1)).run()
    losses = np.array([single.losses[s] for s in range(1, 9)])
    assert np.all(np.isfinite(losses)) and losses[-2:].mean() < losses[:2].mean()
    assert {"l1", "kl", "psnr"} <= set(single.last_metrics)

    shutil.copytree(tmp_path / "one", tmp_path / "eight")
    shutil.rmtree(tmp_path / "eight" / "checkpoints" / "8")
    cfg8 = _config("synthface_tiny", "--config.train.steps=8", "--config.checkpoint.every=4",
                   "--config.mesh.data=4", "--config.mesh.fsdp=2")
    trainer = Trainer(cfg8, tmp_path / "eight", mesh=make_mesh(cfg8, 8))
    sharded = trainer.run()
    assert dict(trainer.mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1, "sequence": 1}
    np.testing.assert_allclose([sharded.losses[s] for s in range(5, 9)], losses[4:], rtol=1e-5)

    model, saved = load_model(tmp_path / "one")
    result = objective.sample(model, saved, tmp_path / "samples", ["--batches", "1", "--examples", "4", "--clips", "2"])
    sheet = cv2.imread(result["output"])
    assert sheet.shape[0] > sheet.shape[1] and 0 <= result["motion_identity_share"] <= 1
    assert {"eval_psnr_swap", "eval_psnr_self", "eval_psnr_copy", "motion_latent_std"} <= set(result)
    assert {"eval_neutral_psnr_swap_moving", "eval_neutral_psnr_copy_moving"} <= set(result)
    transfer = objective.motion_transfer(model, saved, seconds=1.0)
    assert 0 <= transfer["transfer_mouth_amplitude"] < 10 and -1 <= transfer["transfer_mouth_correlation"] <= 1
    assert 0 < transfer["transfer_l1"] < 255
