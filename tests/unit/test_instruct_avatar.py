"""InstructAvatar generator, task and pipeline on the tiny config: shapes and masks, the zero-conv gate, key-frame
substitution, the sampler's determinism, sharded vs single-device loss, a short training run, the pipeline and
its errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, make_mesh

TINY = str(REPO / "configs" / "instructavatar" / "synthface_tiny.py")
TINY_VAE = str(REPO / "configs" / "motion_vae" / "synthface_tiny.py")


@pytest.fixture(scope="module")
def vae_export(tmp_path_factory):
    """A randomly initialised tiny motion VAE, exported (the generator only needs its encoder's shapes)."""
    from avatarjax.config import load_config
    from avatarjax.registry import TASKS
    from avatarjax.train.export import save_export

    cfg = load_config(TINY_VAE)
    with nnx.use_eager_sharding(False):
        vae = TASKS.get("motion_vae").build_model(cfg, nnx.Rngs(0))
    out = tmp_path_factory.mktemp("vae") / "export"
    save_export(vae, cfg, out)
    return str(out)


def tiny_cfg(vae: str, *overrides: str):
    from avatarjax.config import load_config

    return load_config(TINY, ["--config.log.progress=false", "--config.log.tensorboard=false",
                              "--config.log.plots=false", f"--config.data.vae={vae}", *overrides])


def _model(cfg):
    from avatarjax.train.objectives.instruct_avatar import build_model

    with nnx.use_eager_sharding(False):
        return build_model(cfg, nnx.Rngs(0))


def _batch(cfg, n=3):
    from avatarjax.train.objectives.instruct_avatar import example_batch

    batch = example_batch(cfg, n)
    batch["audio_flag"] = np.array([1, 0, 1][:n], np.int32)
    return jax.tree.map(jnp.asarray, batch)


def test_shapes_masks_and_padding_never_leaks(vae_export):
    from avatarjax.train.objectives.instruct_avatar import conditions

    cfg = tiny_cfg(vae_export)
    system = _model(cfg)
    batch = _batch(cfg)
    window, latent = cfg.data.synthface.window, cfg.model.net.latent_dim
    mask = jnp.arange(window)[None] < jnp.array([[window], [10], [window]])
    batch["mask"] = mask
    t = jnp.array([5, 500, 999])
    out = system.net(batch["latents"], t, conditions(batch))
    assert out["x0"].shape == (3, window, latent) and out["pose"].shape == (3, window, 3)
    assert out["au_logits"].shape == (3, 10) and out["intensity_logits"].shape == (3, 3)
    # garbage in padded frames (latents and audio) changes nothing on the valid frames of that sample
    noisy = dict(batch)
    noisy["latents"] = batch["latents"].at[1, 10:].set(1e3)
    noisy["audio"] = batch["audio"].at[1, 10 * 640:].set(0.9)
    out2 = system.net(noisy["latents"], t, conditions(noisy))
    np.testing.assert_allclose(out2["x0"][1, :10], out["x0"][1, :10], atol=1e-4)
    np.testing.assert_allclose(out2["au_logits"][1], out["au_logits"][1], atol=1e-4)


def test_zero_gate_makes_text_branches_a_no_op_at_init(vae_export):
    from avatarjax.train.objectives.instruct_avatar import conditions

    cfg = tiny_cfg(vae_export)
    batch = _batch(cfg)
    other = dict(batch, text_pooled=batch["text_pooled"] * -3.0, text_tokens=batch["text_tokens"] + 5.0)
    t = jnp.array([5, 500, 999])
    system = _model(cfg)
    a = system.net(batch["latents"], t, conditions(batch))["x0"]
    b = system.net(batch["latents"], t, conditions(other))["x0"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the ablation (ordinary init) does see the instruction
    ablation = _model(tiny_cfg(vae_export, "--config.model.net.zero_gate=false"))
    a = ablation.net(batch["latents"], t, conditions(batch))["x0"]
    b = ablation.net(batch["latents"], t, conditions(other))["x0"]
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_keyframe_substitution_takes_another_emotion():
    from avatarjax.data.synthface import schema
    from avatarjax.data.synthface.dynamics import emotion_pattern
    from avatarjax.train.objectives.instruct_avatar import keyframe_substitute

    rng = np.random.default_rng(0)
    state = schema.neutral_state(1)[0]
    state[schema.POSE_SLICE] = [10.0, -5.0, 2.0]
    happy = schema.EMOTIONS.index("happy")
    for _ in range(20):
        out = keyframe_substitute(state, happy, rng)
        np.testing.assert_array_equal(out[schema.POSE_SLICE], state[schema.POSE_SLICE])  # pose kept
        matches = [e for e in range(len(schema.EMOTIONS)) for i in (1, 2, 3)
                   if np.allclose(out[schema.AU_SLICE], schema.clip_to_range(emotion_pattern(e, i)[None])[0, :10])]
        assert matches and happy not in matches


def test_loss_sharded_on_8_devices_equals_single_device(vae_export):
    from avatarjax.train.loop import Trainer

    from avatarjax.parallel import mesh as mesh_lib
    from avatarjax.train.objectives.instruct_avatar import example_batch

    batch = example_batch(tiny_cfg(vae_export), 8)
    batch["audio_flag"] = (np.arange(8) % 2).astype(np.int32)
    losses = []
    for devices, mesh_over in ((1, []), (8, ["--config.mesh.data=4", "--config.mesh.fsdp=2"])):
        c = tiny_cfg(vae_export, "--config.train.batch_size=8", *mesh_over)
        trainer = Trainer(c, "/tmp/unused_ia_sharded", mesh=make_mesh(c, devices))
        try:
            state = trainer.init_state()
            with trainer._context():
                metrics = trainer.eval_step(state, mesh_lib.shard_batch(batch, trainer.mesh, trainer.rules))
            losses.append(float(metrics["loss"]))
        finally:
            trainer.checkpoints.close()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


def test_tiny_training_loss_falls_then_pipeline_samples(vae_export, tmp_path):
    from avatarjax.train.loop import Trainer

    cfg = tiny_cfg(vae_export, "--config.train.steps=30", "--config.log.every=1", "--config.checkpoint.every=30",
                   "--config.optim.lr=3e-3")
    result = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert result.step == 30 and np.mean(losses[-8:]) < 0.7 * np.mean(losses[:3]), losses

    from avatarjax.data.synthface import identity, render, schema
    from avatarjax.errors import DataError
    from avatarjax.pipelines import instruct_avatar

    pipe = instruct_avatar.load(tmp_path / "run")
    portrait = render.render_frames(identity.sample_identity(7), schema.neutral_state(1), size=pipe.frame_size)[0]
    audio = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    a = pipe.sample(portrait, audio, "Talk happily.", seed=3)
    b = pipe.sample(portrait, audio, "Talk happily.", seed=3)
    c = pipe.sample(portrait, audio, "Talk happily.", seed=4)
    assert a.frames.shape == (25, pipe.frame_size, pipe.frame_size, 3) and a.talking
    np.testing.assert_array_equal(a.latents, b.latents)  # deterministic per seed
    assert np.abs(a.latents - c.latents).max() > 1e-3
    motion = pipe.sample(portrait, None, "Turn your head to the left.", num_frames=12, guidance_scale=2.0)
    assert motion.frames.shape[0] == 12 and not motion.talking and not motion.audio.any()
    paths = pipe.write(a, tmp_path / "out" / "talk.mp4")
    from avatarjax import media

    frames, fps, wave, sr = media.read_video(paths["video"])
    assert frames.shape[0] == 25 and fps == 25 and wave is not None and sr > 0
    assert json.loads((tmp_path / "out" / "talk.json").read_text())["mode"] == "talking"
    with pytest.raises(DataError, match="portrait"):
        pipe.sample(portrait[:20], audio, "Talk happily.")
    with pytest.raises(DataError, match="empty"):
        pipe.sample(portrait, audio, "  ")
    with pytest.raises(DataError, match="shorter"):
        pipe.sample(portrait, audio[:1000], "Talk happily.")


def test_wav2vec2_frontend_gives_two_features_per_frame(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from avatarjax.train.objectives.instruct_avatar import AudioFrontend

    torch.manual_seed(0)
    hf = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    Wav2Vec2Model(hf).eval().save_pretrained(tmp_path / "w2v", safe_serialization=True)
    frontend = AudioFrontend(f"wav2vec2:{tmp_path / 'w2v'}")
    wave = (np.random.default_rng(0).standard_normal(37 * 640) * 0.1).astype(np.float32)
    feats = frontend.clip_features(wave)
    assert frontend.dim == 16 and feats.shape == (74, 16) and np.isfinite(feats).all()
    # features are aligned in time: a prefix gives (nearly) the same features; only the per-clip normalisation
    # statistics differ
    head = frontend.clip_features(wave[:20 * 640])
    np.testing.assert_allclose(head[:30], feats[:30], atol=1e-2)
    assert AudioFrontend("mel").clip_features(wave) is None


@pytest.mark.parametrize("formulation", ["ddpm", "vpsde"])
def test_v_parameterization_recovers_x0_from_the_true_v(vae_export, formulation):
    """x0 = a_t x_t - s_t v is exact for the true v = a_t eps - s_t x0 (a_t^2 + s_t^2 = 1), in both formulations;
    the loss and the pipeline use the same conversion."""
    from avatarjax.diffusion import schedules
    from avatarjax.train.objectives.instruct_avatar import output_to_x0

    extra = ["--config.model.net.time_scale=1000"] if formulation == "vpsde" else []
    cfg = tiny_cfg(vae_export, f"--config.model.diffusion.formulation={formulation}",
                   "--config.model.diffusion.parameterization=v", *extra)
    d = cfg.model.diffusion
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=(3, 8, 4)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=(3, 8, 4)), jnp.float32)
    if formulation == "ddpm":
        schedule = schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps)
        t = jnp.array([0, 500, 999])
        a, s = schedules.signal_noise_scales(schedule, t, x0)
    else:
        t = jnp.array([0.01, 0.5, 0.99])
        a, var = schedules.VPSDE(d.beta_min, d.beta_max).marginal(t, x0)
        s = jnp.sqrt(var)
    x_t = a * x0 + s * eps
    np.testing.assert_allclose(output_to_x0(cfg.model)(a * eps - s * x0, x_t, t), x0, atol=1e-5)
    assert output_to_x0(tiny_cfg(vae_export).model) is None  # the paper's x0 output needs no conversion
    from avatarjax.errors import ConfigError
    from avatarjax.train.objectives.instruct_avatar import check_config

    with pytest.raises(ConfigError, match="parameterization"):
        check_config(tiny_cfg(vae_export, "--config.model.diffusion.parameterization=eps"))
