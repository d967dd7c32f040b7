"""The DAC codec: RVQ round trip and quantizer dropout, codebook usage statistics, conv output lengths for every
stride, chunked / streaming decoding against the full decode, logical axes, and a short training run through the
Trainer in which the reconstruction improves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.codecs import dac
from avatarjax.config import load_config
from avatarjax.parallel import rules as rules_lib
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import dac as objective
from tests.conftest import REPO, make_mesh

CONFIGS = REPO / "configs" / "dac"
QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]
TINY = dac.DACConfig(sample_rate=16000, encoder_dim=4, encoder_rates=(2, 4), decoder_dim=32, decoder_rates=(4, 2),
                     n_codebooks=3, codebook_size=16, codebook_dim=4)


def _config(name="synthface_tiny", *overrides):
    return load_config(CONFIGS / f"{name}.py", [*QUIET, *overrides])


def _model(cfg: dac.DACConfig = TINY, seed: int = 0) -> dac.DAC:
    with nnx.use_eager_sharding(False):
        return dac.DAC(cfg, rngs=nnx.Rngs(seed))


def _audio(batch: int, samples: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(0.3 * np.random.default_rng(seed).standard_normal((batch, samples)), jnp.float32)


def test_rvq_round_trip_without_dropout():
    model = _model()
    z = jax.random.normal(jax.random.key(1), (2, 12, TINY.latent))
    audio = _audio(2, 500)

    @nnx.jit
    def run(m, z, audio):
        out, two = m.quantizer(z), m.quantizer(z, n_quantizers=2)
        codes = m.encode(audio)
        return {"out": out, "two": two, "decoded": m.quantizer.from_codes(out["codes"]),
                "decoded_two": m.quantizer.from_codes(two["codes"]),
                "train": m.quantizer(z, key=jax.random.key(0))["z"], "codes": codes,
                "audio": m.decode(codes)[:, :500], "forward": m(audio)["audio"]}

    r = run(model, z, audio)
    out = r["out"]
    assert out["codes"].shape == (2, TINY.n_codebooks, 12) and out["codes"].dtype == jnp.int32
    assert out["latents"].shape == (2, 12, TINY.n_codebooks * TINY.codebook_dim)
    np.testing.assert_allclose(r["decoded"], out["z"], atol=1e-5)
    # each code is the nearest entry by cosine to its projected residual
    e = np.asarray(out["latents"][..., :TINY.codebook_dim])
    c = np.asarray(model.quantizer.quantizers[0].codebook[...])
    cos = (e / np.linalg.norm(e, axis=-1, keepdims=True)) @ (c / np.linalg.norm(c, axis=-1, keepdims=True)).T
    np.testing.assert_array_equal(np.argmax(cos, -1), out["codes"][:, 0])
    # fewer quantizers: a prefix of the codes, decoded from the prefix
    np.testing.assert_array_equal(r["two"]["codes"], out["codes"][:, :2])
    np.testing.assert_allclose(r["decoded_two"], r["two"]["z"], atol=1e-5)
    # training mode with dropout 0 is inference; the full round trip audio -> codes -> audio is the forward
    np.testing.assert_allclose(r["train"], out["z"], atol=1e-6)
    assert r["codes"].shape == (2, TINY.n_codebooks, dac.encoder_frames(TINY, 500)) == (2, 3, 63)
    np.testing.assert_allclose(r["audio"], r["forward"], atol=1e-5)
    assert float(jnp.std(r["audio"])) > 1e-3


def test_quantizer_dropout_uses_a_prefix_of_codebooks_per_row():
    cfg = dac.DACConfig(**{**TINY.__dict__, "n_codebooks": 6, "quantizer_dropout": 1.0})
    z = jax.random.normal(jax.random.key(2), (16, 5, cfg.latent))

    @nnx.jit
    def run(m, z):
        out = m.quantizer(z, key=jax.random.key(3))
        prefixes = jnp.stack([m.quantizer.from_codes(out["codes"][:, :n]) for n in range(1, 7)])
        return out["z"], prefixes

    z_q, prefixes = run(_model(cfg), z)
    errors = np.abs(np.asarray(prefixes) - np.asarray(z_q)[None]).max(axis=(2, 3))  # [n, batch]
    assert np.all(errors.min(axis=0) < 1e-5)  # every row is the decode of some prefix of its codes
    assert len(set(np.argmin(errors, axis=0))) > 2  # random numbers of codebooks over the batch
    half = _model(dac.DACConfig(**{**cfg.__dict__, "quantizer_dropout": 0.5}))
    dropped, full = nnx.jit(lambda m, z: (m.quantizer(z, key=jax.random.key(3))["z"], m.quantizer(z)["z"]))(half, z)
    np.testing.assert_allclose(dropped[8:], full[8:], atol=1e-6)  # only the first half of the batch is dropped
    assert np.abs(np.asarray(dropped[:8]) - np.asarray(full[:8])).max() > 1e-3


def test_codebook_usage_statistics():
    uniform = np.tile(np.arange(16), 4).reshape(2, 1, 32)
    single = np.zeros((2, 1, 32), int)
    stats = dac.codebook_usage(np.concatenate([uniform, single], axis=1), 16)
    np.testing.assert_allclose(stats["perplexity"], [16.0, 1.0])
    np.testing.assert_allclose(stats["fraction_used"], [1.0, 1 / 16])
    half = dac.codebook_usage(np.array([[[0, 1, 0, 1]]]), 8)
    np.testing.assert_allclose(half["perplexity"], [2.0])
    np.testing.assert_allclose(half["fraction_used"], [0.25])


@pytest.mark.parametrize("stride", range(1, 9))
def test_conv_output_lengths_for_every_stride(stride):
    kw = dict(param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    pad = -(-stride // 2)
    with nnx.use_eager_sharding(False):
        down = dac.WNConv1d(2, 3, 2 * stride, stride=stride, padding=pad, **kw)
        up = dac.WNConvTranspose1d(2, 3, 2 * stride, stride=stride, padding=pad, **kw)
        units = [dac.ResidualUnit(4, d, dtype=None, **kw) for d in (1, 3, 9)]
    for length in (1, 7, 16, 33, 64):
        x = jax.ShapeDtypeStruct((1, length, 2), jnp.float32)
        out_down = jax.eval_shape(down, x).shape[1]
        out_up = jax.eval_shape(up, x).shape[1]
        assert out_down == dac.conv_output_length(length, 2 * stride, stride, pad)
        assert out_up == dac.conv_transpose_output_length(length, 2 * stride, stride, pad)
        if stride % 2 == 0:
            assert out_down == length // stride and out_up == length * stride
        else:  # odd strides: ceil(s / 2) pads one more sample than half the extra kernel
            assert out_down == (length + 1) // stride and out_up == length * stride - 1
    for unit in units:
        assert jax.eval_shape(unit, jax.ShapeDtypeStruct((1, 40, 4), jnp.float32)).shape == (1, 40, 4)


@pytest.mark.parametrize("rates", [(2, 4), (3, 5), (2, 2, 2)])
def test_codec_lengths_follow_the_bookkeeping(rates):
    cfg = dac.DACConfig(**{**TINY.__dict__, "encoder_rates": rates, "decoder_rates": rates[::-1]})
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _model(cfg)))
    for samples in (1, 99, 160, 301):
        codes = jax.eval_shape(lambda s, a: nnx.merge(graphdef, s).encode(a), state,
                               jax.ShapeDtypeStruct((1, samples), jnp.float32))
        frames = dac.encoder_frames(cfg, samples)
        assert codes.shape == (1, cfg.n_codebooks, frames) and frames == -(-samples // cfg.hop_length)
        audio = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).decode(c), state, codes)
        assert audio.shape == (1, dac.decoder_samples(cfg, frames))
    assert dac.decoder_samples(dac.DACConfig(), 86) == 86 * 512
    assert dac.DACConfig().frame_rate == pytest.approx(86.1328125)


def test_chunked_and_streaming_decoding_match_the_full_decode():
    cfg = dac.DACConfig(**{**TINY.__dict__, "encoder_rates": (4, 8), "decoder_rates": (8, 4)})
    model = _model(cfg, seed=1)
    codes = jax.random.randint(jax.random.key(4), (2, cfg.n_codebooks, 80), 0, cfg.codebook_size)
    decode = dac.jit_decode(model)
    full = np.asarray(decode(codes))
    context = dac.decoder_context_frames(cfg)
    assert context == 13
    chunked = np.asarray(dac.decode_chunked(model, codes, chunk=8))
    assert chunked.shape == full.shape == (2, 80 * cfg.hop_length)
    assert np.abs(chunked - full).max() < 1e-5
    stream = dac.StreamingDecoder(model, chunk=8)
    pieces, start = [], 0
    for size in (1, 5, 30, 2, 9, 15, 18):
        pieces.append(stream.push(codes[:, :, start:start + size]))
        start += size
    assert sum(p.shape[1] for p in pieces) < full.shape[1]  # the tail waits for its right context
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces, axis=1)
    assert streamed.shape == full.shape and np.abs(streamed - full).max() < 1e-5
    # without context the seams differ: the context is what makes chunks agree
    assert np.abs(np.asarray(dac.decode_chunked(model, codes, chunk=8, context=0)) - full).max() > 1e-3


def test_parameters_carry_logical_axes_and_the_paper_size():
    cfg = _config("paper")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: objective.build_model(cfg, nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == var.ndim and set(names) <= set(rules_lib.LOGICAL_AXES), path
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    codec = count(model.encoder) + count(model.quantizer) + count(model.decoder)
    assert 74e6 < codec < 77e6  # the released 44.1 kHz DAC has 76M parameters
    assert cfg.model.hop_length == 512 and cfg.model.latent == 1024 and cfg.model.n_codebooks == 9
    codes = jax.eval_shape(lambda m, a: m.encode(a), model, jax.ShapeDtypeStruct((1, 44100), jnp.float32))
    assert codes.shape == (1, 9, 87)


def test_analytic_flops_match_xla():
    cfg = dac.DACConfig(**{**TINY.__dict__, "encoder_rates": (2, 4, 2), "decoder_rates": (2, 4, 2)})
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _model(cfg)))
    audio = jax.ShapeDtypeStruct((1, 1024), jnp.float32)
    xla = jax.jit(lambda s, a: nnx.merge(graphdef, s)(a)["audio"]).lower(state, audio).cost_analysis()["flops"]
    assert dac.flops_per_example(cfg, 1024) == pytest.approx(xla, rel=0.15)


def test_wav_folder_source(tmp_path):
    from avatarjax import media

    rng = np.random.default_rng(0)
    for i in range(4):
        media.write_audio(tmp_path / "sub" / f"a{i}.wav", 0.2 * rng.standard_normal(8000 + 4000 * i), 8000)
    cfg = _config("synthface_tiny", "--config.data.source=wav_dir", f"--config.data.wav_dir={tmp_path}",
                  "--config.data.eval_every=4", "--config.train.batch_size=2")
    batch = next(iter(objective.dataset(cfg, "train")))
    assert batch["audio"].shape == (2, 2048) and batch["audio"].dtype == np.float32
    assert np.abs(batch["audio"]).max() > 0.05
    evals = [b["audio"] for b in objective.dataset(cfg, "eval")]
    assert len(evals) == 3  # the held-out a0.wav: 1 s = 16000 samples at 16 kHz = 7 segments -> 3 batches of 2
    with pytest.raises(Exception, match="wav_dir"):
        next(iter(objective.dataset(_config("synthface_tiny", "--config.data.source=wav_dir"), "train")))


def test_training_improves_the_reconstruction(tmp_path):
    """16 Trainer steps on synthface speech: the eval mel distance (all codebooks) falls by more than 20%."""
    cfg = _config("synthface_tiny", "--config.train.steps=16", "--config.checkpoint.every=16")
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1))
    state = trainer.init_state()
    with trainer._context():
        initial = nnx.merge(trainer.graphdef, state.params, state.rest)
        before = objective.evaluate(initial, cfg, ["--batches", "2"])
    result = trainer.run()
    losses = np.array([result.losses[s] for s in sorted(result.losses)])
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    assert {"mel", "l1", "commitment", "codebook"} <= set(result.last_metrics)

    model, saved = load_model(tmp_path / "run")
    after = objective.sample(model, saved, tmp_path / "samples", ["--batches", "2", "--examples", "2"])
    assert (tmp_path / "samples" / "dac_1_reconstruction.wav").exists()
    assert after["mel_distance"] < 0.8 * before["mel_distance"], (before, after)
    assert 1 <= after["codebook_perplexity"] <= cfg.model.codebook_size


def test_adversarial_terms_trace_with_the_discriminator():
    cfg = _config("synthface_tiny", "--config.model.adversarial=true", "--config.model.disc_periods=[2,3]")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: objective.build_model(cfg, nnx.Rngs(0)))
    assert len(model.discriminator.discs) == 2
    batch = {"audio": jax.ShapeDtypeStruct((2, cfg.data.segment), jnp.float32)}
    total, metrics = jax.eval_shape(lambda m, b: objective.loss(m, b, jax.random.key(0), jnp.int32(0)), model, batch)
    assert total.shape == () and {"generator", "feature_match", "discriminator", "mel"} <= set(metrics)
    assert objective.flops_per_example(cfg) > dac.flops_per_example(cfg.model, cfg.data.segment)


@pytest.mark.parametrize("k, stride, padding", [(16, 8, 4), (4, 2, 1), (5, 2, 0), (7, 1, 3)])
def test_transposed_conv_gemm_form_equals_the_conv_form_and_its_gradients(k, stride, padding):
    from avatarjax.nn.conv import conv_transpose_1d

    x = jax.random.normal(jax.random.key(0), (2, 9, 5))
    w = jax.random.normal(jax.random.key(1), (k, 5, 3))
    outs = {impl: conv_transpose_1d(x, w, stride, padding, impl) for impl in ("gemm", "conv")}
    assert outs["gemm"].shape == (2, dac.conv_transpose_output_length(9, k, stride, padding), 3)
    np.testing.assert_allclose(outs["gemm"], outs["conv"], atol=1e-5)
    grads = {impl: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_transpose_1d(x, w, stride, padding, impl))),
                            argnums=(0, 1))(x, w) for impl in ("gemm", "conv")}
    for a, b in zip(grads["gemm"], grads["conv"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    if k == 4:  # the scope picks the form "auto" takes (what `bench dac` times both ways)
        from avatarjax.nn.conv import use_transposed_conv

        auto = jax.jit(lambda x, w: conv_transpose_1d(x, w, stride, padding))
        with use_transposed_conv("conv"):
            np.testing.assert_array_equal(auto(x, w), outs["conv"])
        np.testing.assert_array_equal(jax.jit(lambda x, w: conv_transpose_1d(x, w, stride, padding))(x, w),
                                      outs["gemm"])
        with pytest.raises(ValueError, match="auto, gemm, conv"):
            with use_transposed_conv("fft"):
                pass
