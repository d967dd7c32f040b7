"""The continuous video tokenizer: shapes and logical axes, the block-causal temporal mask (a frame's latents
never depend on later frames), the KL term against a hand computation, analytic FLOPs against XLA, and
reconstruction improving through the real Trainer with the tiny config; the tokenize command round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.codecs import video_tokenizer as vt
from avatarjax.config import load_config
from avatarjax.parallel import rules as rules_lib
from avatarjax.registry import TASKS
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import video_tokenizer as objective
from tests.conftest import REPO, make_mesh

CONFIGS = REPO / "configs" / "video_tokenizer"
QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]


def _config(name="synthface_tiny", *overrides):
    return load_config(CONFIGS / f"{name}.py", [*QUIET, *overrides])


def _model(cfg) -> vt.VideoTokenizer:
    with nnx.use_eager_sharding(False):
        return TASKS.get("video_tokenizer").build_model(cfg, nnx.Rngs(0))


def _frames(shape, seed=0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


# TiTok's layout (what ``avatarjax convert titok`` sets): every switch on, a wider decoder of its own
TITOK_LAYOUT = ("--config.model.class_token=true", "--config.model.pre_norm=true", "--config.model.pixel_conv=true",
                "--config.model.legacy_token_layout=true", "--config.model.temporal_final_norm=false",
                "--config.model.qk_norm=false", "--config.model.norm_eps=1e-5", "--config.model.decoder_dim=48",
                "--config.model.decoder_heads=3", "--config.model.decoder_mlp_dim=96")
LAYOUTS = pytest.mark.parametrize("layout", [(), TITOK_LAYOUT], ids=["ours", "titok"])


@LAYOUTS
def test_shapes_and_logical_axes(layout):
    cfg = _config("synthface_tiny", *layout)
    mesh = make_mesh(cfg, 1)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_lib.resolve(cfg.mesh.rules)):
        model = nnx.eval_shape(lambda: TASKS.get("video_tokenizer").build_model(cfg, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == var.ndim and set(names) <= set(rules_lib.LOGICAL_AXES) | {None}, path
    m = cfg.model
    frames = jax.ShapeDtypeStruct((2, 3, m.frame_size, m.frame_size, 3), jnp.float32)

    def run(p, x):
        model = nnx.merge(graphdef, p, rest)
        mean, logvar = model.posterior(x)
        return mean, logvar, model.encode(x), model.decode(mean)

    mean, logvar, latents, out = jax.eval_shape(run, params, frames)
    assert mean.shape == logvar.shape == latents.shape == (2, 3, m.num_latent_tokens, m.latent_dim)
    assert out.shape == frames.shape and out.dtype == jnp.float32


def test_patchify_round_trip_and_mask():
    x = _frames((2, 16, 16, 3))
    patches = vt.patchify(x, 4)
    assert patches.shape == (2, 16, 48)
    np.testing.assert_array_equal(patches[0, 1], np.asarray(x[0, 0:4, 4:8]).reshape(-1))
    np.testing.assert_array_equal(vt.unpatchify(patches, 4), x)
    mask = np.asarray(vt.block_causal_mask(3, 2))
    expected = np.kron(np.tril(np.ones((3, 3), bool)), np.ones((2, 2), bool))
    np.testing.assert_array_equal(mask, expected)
    windowed = np.asarray(vt.block_causal_mask(3, 2, window=2))
    np.testing.assert_array_equal(windowed, np.kron(np.tril(np.ones((3, 3), bool)) & np.triu(np.ones((3, 3), bool), -1),
                                                    np.ones((2, 2), bool)))


def test_latents_never_depend_on_later_frames():
    cfg = _config()
    model = _model(cfg)
    encode = vt.jitted_encode(model)
    s, t = cfg.model.frame_size, 5
    frames = _frames((2, t, s, s, 3))
    base = np.asarray(encode(frames))
    for changed in (0, 2, 4):
        perturbed = frames.at[:, changed].set(_frames((2, s, s, 3), seed=changed + 1))
        diff = np.abs(np.asarray(encode(perturbed)) - base).max(axis=(0, 2, 3))  # per frame
        assert np.all(diff[:changed] == 0.0), (changed, diff)
        assert np.all(diff[changed:] > 1e-4), (changed, diff)  # the change reaches its own and every later frame
    # the decoder is per frame: changing one frame's latents changes only that frame
    out = vt.jitted_decode(model)
    z = jnp.asarray(base)
    delta = np.abs(np.asarray(out(z.at[:, 1].add(1.0))) - np.asarray(out(z))).max(axis=(0, 2, 3, 4))
    assert delta[1] > 0 and np.all(np.delete(delta, 1) == 0)


@pytest.mark.parametrize("regularizer", ["kl", "noise"])
def test_kl_term_matches_a_hand_computation(regularizer):
    cfg = _config("synthface_tiny", f"--config.model.regularizer={regularizer}", "--config.model.noise_std=0.3")
    model = _model(cfg)
    batch = objective.example_batch(cfg, 2)
    batch["frames"] = np.random.default_rng(0).integers(0, 256, batch["frames"].shape, np.uint8)

    @nnx.jit
    def run(m, b):
        metrics = objective.loss(m, b, jax.random.key(0), jnp.int32(0))[1]
        return metrics, m.posterior(objective.to_model_range(b["frames"]))

    metrics, (mean, logvar) = run(model, batch)
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    var = np.exp(logvar) if regularizer == "kl" else np.full_like(mean, 0.3 ** 2)
    if regularizer == "noise":
        np.testing.assert_allclose(np.exp(logvar), 0.09, rtol=1e-6)
    hand = 0.5 * (mean ** 2 + var - 1.0 - np.log(var))  # KL(N(m, v) || N(0, 1)) per latent element
    expected = hand.sum(axis=(2, 3)).mean()  # summed over a frame's K * D latents, averaged over frames
    assert float(metrics["kl"]) == pytest.approx(expected, rel=1e-4)
    # scalars of the same hand computation: N(0, 1) costs nothing, N(1, e) costs 0.5 (1 + e - 1 - 1)
    kl = vt.kl_per_frame(jnp.array([[[[0.0, 1.0]]]]), jnp.array([[[[0.0, 1.0]]]]))
    assert float(kl[0, 0]) == pytest.approx(0.5 * (1.0 + np.e - 2.0), rel=1e-6)


@LAYOUTS
def test_analytic_flops_match_xla(layout):
    cfg = _config("synthface_tiny", *layout)
    model = _model(cfg)
    graphdef, state = nnx.split(model)
    m, t = cfg.model, 3
    frames = jax.ShapeDtypeStruct((1, t, m.frame_size, m.frame_size, 3), jnp.float32)
    # XLA's cost analysis counts a scan body once: with one layer per stack the counts are comparable
    xla = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, frames).cost_analysis()["flops"]
    assert m.encoder_layers == m.temporal_layers == m.decoder_layers == 1
    assert t * vt.flops_per_frame(m, t) == pytest.approx(xla, rel=0.15)


def test_reconstruction_improves_in_a_short_training_run(tmp_path):
    cfg = _config("synthface_tiny", "--config.train.steps=24", "--config.checkpoint.every=24",
                  "--config.optim.warmup_steps=4")
    batch = next(iter(objective.dataset(cfg, "train")))
    assert batch["frames"].shape == (8, 4, 32, 32, 3) and batch["frames"].dtype == np.uint8
    assert np.any(batch["frames"][:, 0] != batch["frames"][:, -1])  # frames move within a clip

    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1))
    result = trainer.run()
    losses = np.array([result.losses[s] for s in range(1, 25)])
    assert np.all(np.isfinite(losses)) and losses[-4:].mean() < 0.8 * losses[:4].mean()
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    psnr = [row["psnr"] for row in log if "psnr" in row]
    assert psnr[-1] > psnr[0] + 1.0, psnr
    assert log[-1]["mfu"] > 0 and log[-1]["tflops_per_device"] > 0
    _check_tokenize(tmp_path / "run", tmp_path / "tokens")


def _check_tokenize(workdir, out):
    """Token records of the trained run: one latent set per clip frame, equal to encoding the clip's windows
    (the padded last window gives what the unpadded one gives: the temporal Transformer is causal)."""
    from avatarjax.data import tokenize
    from avatarjax.data.synthface.loader import source
    from avatarjax.train.export import load_model

    result = tokenize.tokenize_command(["--checkpoint", str(workdir), "--out", str(out), "--clips", "2",
                                        "--splits", "eval"])
    assert result["clips"] == {"eval": 2}
    model, cfg = load_model(workdir)
    record = source(cfg.data.synthface, "eval")[1]
    tokens = tokenize.TokenSource(out, "eval")[1]
    frames = tokenize.clip_frames(record, cfg.model.frame_size)
    assert tokens["video_latents"].shape == (len(frames), cfg.model.num_latent_tokens, cfg.model.latent_dim)
    assert tokens["clip"] == int(record["clip"]) and tokens["split"] == "eval"
    encode = vt.jitted_encode(model)
    chunk = cfg.data.clip_frames
    assert len(frames) % chunk  # so the last window is a padded one
    last = len(frames) // chunk * chunk
    for start in (0, last):
        window = objective.to_model_range(frames[None, start:start + chunk])
        np.testing.assert_allclose(tokens["video_latents"][start:start + chunk], np.asarray(encode(window))[0],
                                   atol=1e-5)
    info = tokenize.info_command(["--out", str(out)])
    assert info["first_record_shapes"]["eval"]["video_latents"][1:] == [cfg.model.num_latent_tokens,
                                                                        cfg.model.latent_dim]
    # the audio hook: codes from any AudioEncoder land in the records
    path = tokenize.record_path(out, "hook")
    fake_codes = lambda wav: np.stack([np.arange(len(wav) // 640), np.full(len(wav) // 640, 7)])
    assert tokenize.tokenize_split([record], path, lambda f: np.zeros((len(f), 1, 1)), 32, fake_codes) == 1
    tokens = tokenize.TokenSource(out, "hook")[0]
    assert tokens["audio_codes"].shape == (2, len(record["audio"]) // 640) and tokens["audio_codes"][1, 0] == 7


def test_gan_terms_train_disjoint_parameters():
    cfg = _config("synthface_tiny", "--config.model.perceptual_weight=1.0", "--config.model.adversarial_weight=0.1",
                  "--config.model.disc_channels=8", "--config.model.disc_layers=2",
                  "--config.data.clip_frames=2")
    model = _model(cfg)
    batch = objective.example_batch(cfg, 1)
    batch["frames"] = np.random.default_rng(1).integers(0, 256, batch["frames"].shape, np.uint8)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def parts(p):
        total, metrics = objective.loss(nnx.merge(graphdef, p, rest), batch, jax.random.key(0), jnp.int32(0))
        return jnp.stack([total - metrics["discriminator"], metrics["discriminator"]]), metrics

    @jax.jit
    def grads(p):
        _, vjp, metrics = jax.vjp(parts, p, has_aux=True)
        return vjp(jnp.array([1.0, 0.0]))[0], vjp(jnp.array([0.0, 1.0]))[0], metrics

    gen, disc, metrics = jax.device_get(grads(params))
    assert all(np.isfinite(float(v)) for v in metrics.values()) and metrics["feature_match"] > 0
    assert all(np.all(g == 0) for g in jax.tree.leaves(gen["discriminator"]))
    assert all(np.all(g == 0) for part in ("encoder", "temporal", "decoder") for g in jax.tree.leaves(disc[part]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(disc["discriminator"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(gen["encoder"]))


def test_bench_reports_realtime_factors():
    result = objective.bench_video_tokenizer(["--config", str(CONFIGS / "synthface_tiny.py"), "--frames", "3",
                                              "--repeats", "1"])
    for name in ("encode", "decode"):
        assert result[name]["frames_per_second"] > 0
        assert result[name]["realtime_factor_24fps"] == pytest.approx(result[name]["frames_per_second"] / 24)
    assert result["frames_per_call"] == 3 and result["latent_shape_per_frame"] == [4, 4]


def test_dac_hook_adds_audio_codes(tmp_path):
    dac = pytest.importorskip("avatarjax.codecs.dac")
    from avatarjax.data import tokenize
    from avatarjax.data.synthface.records import ProceduralSource, WorldConfig

    cfg = dac.DACConfig(sample_rate=16000, encoder_dim=4, encoder_rates=(2, 4, 8), decoder_dim=16,
                        decoder_rates=(8, 4, 2), n_codebooks=2, codebook_size=16, codebook_dim=4)
    with nnx.use_eager_sharding(False):
        codec = dac.DAC(cfg, rngs=nnx.Rngs(0))
    encode_audio, info = tokenize.audio_encoder_from_dac(codec)
    assert info["n_codebooks"] == 2 and info["frame_rate"] == 250
    record = ProceduralSource(WorldConfig(num_clips=4), "train")[0]
    path = tokenize.record_path(tmp_path, "train")
    (tmp_path / tokenize.META_FILE).write_text("{}")
    tokenize.tokenize_split([record], path, lambda f: np.zeros((len(f), 1, 1), np.float32), 32, encode_audio)
    codes = tokenize.TokenSource(tmp_path, "train")[0]["audio_codes"]
    assert codes.shape == (2, -(-len(record["audio"]) // 64)) and codes.min() >= 0 and codes.max() < 16
