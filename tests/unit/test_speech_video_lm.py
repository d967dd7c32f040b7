"""Body of Her speech-video LM: delay pattern, streaming = full forward (KV cache), diffusion head, masks, packing,
FLOPs and a trainer smoke run on synthface dyadic sessions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.diffusion.samplers import ddim_sample
from avatarjax.diffusion.schedules import x0_from_eps
from avatarjax.models import speech_video_lm as S
from avatarjax.models.decoder_lm import DecoderLMConfig
from tests.conftest import REPO, make_mesh

TINY = str(REPO / "configs" / "speechvideo" / "synthface_tiny.py")
Q, V, K, D = 3, 16, 2, 4
CFG = S.SpeechVideoLMConfig(
    backbone=DecoderLMConfig(vocab_size=1, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                             tie_embeddings=True),
    num_codebooks=Q, codebook_size=V, video_tokens=K, video_dim=D, text_dim=8, motion_dim=6, num_identities=4,
    head=S.DiffusionHeadConfig(width=16, depth=2, sample_steps=4))


@pytest.fixture(scope="module")
def model():
    with nnx.use_eager_sharding(False):
        m = S.SpeechVideoLM(CFG, rngs=nnx.Rngs(0))
    # the zero-initialised head outputs 0; perturb it so that tests see a real denoiser
    state = nnx.state(m.video_head, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(state))))
    nnx.update(m.video_head, jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), state))
    return m


def make_batch(seed: int, b: int = 2, t: int = 6, **masks) -> dict:
    r = np.random.default_rng(seed)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    batch = dict(agent_codes=r.integers(0, V, (b, t, Q)), human_codes=r.integers(0, V, (b, t, Q)),
                 agent_video=f32(b, t, K, D), human_video=f32(b, t, K, D), text=f32(b, t, 8), motion=f32(b, t, 6),
                 identity=r.integers(0, 4, (b, t)))
    for name in ("agent_video_mask", "human_video_mask", "text_mask", "motion_mask"):
        batch[name] = np.full((b, t), masks.get(name, True))
    return jax.tree.map(jnp.asarray, batch)


def test_frame_layout_is_complete_and_ordered():
    layout = S.frame_layout(CFG)
    assert list(layout) == ["text", "motion", "identity", "human_audio", "human_video", "agent_audio", "agent_video"]
    slots = np.concatenate([np.arange(s.start, s.stop) for s in layout.values()])
    np.testing.assert_array_equal(slots, np.arange(CFG.tokens_per_frame))
    assert CFG.tokens_per_frame == 5 + 2 * K


def test_delay_pattern_round_trip_and_alignment():
    codes = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 7, Q)))
    delayed = S.build_delay_pattern(codes, V)
    assert delayed.shape == (2, 7 + Q, Q)
    np.testing.assert_array_equal(delayed[:, 0], V)  # the leading special step
    assert int(delayed[0, 1, 0]) == int(codes[0, 0, 0]) and int(delayed[0, 3, 2]) == int(codes[0, 0, 2])
    assert int(delayed[0, 2, 2]) == V  # codebook 2 not started yet
    np.testing.assert_array_equal(S.revert_delay_pattern(delayed), codes)
    # the per-frame inputs / targets of the model are the pattern's steps i and i + 1
    inputs, targets, mask = S.delayed_inputs_targets(codes, None, V)
    np.testing.assert_array_equal(inputs, delayed[:, :7])
    np.testing.assert_array_equal(targets, delayed[:, 1:8])
    np.testing.assert_array_equal(mask, delayed[:, 1:8] != V)
    # a head that outputs exactly its targets: aligned, frame t codebook q is codes[t, q] wherever valid
    logits = jax.nn.one_hot(targets, V + 1)[..., :V] * 10.0
    aligned, valid = S.align_delayed_logits(logits)
    np.testing.assert_array_equal(valid, np.arange(7)[:, None] + np.arange(Q)[None] < 7)
    picked = np.asarray(jnp.argmax(aligned, -1))
    np.testing.assert_array_equal(picked[:, np.asarray(valid)], np.asarray(codes)[:, np.asarray(valid)])


def test_streaming_equals_full_forward_and_compiles_once(model):
    t = 6
    batch = make_batch(1, t=t)
    full = model(batch)
    delayed = S.build_delay_pattern(batch["agent_codes"], V)
    graphdef, params = nnx.split(model)
    traces = []

    @jax.jit
    def step(params, state, controls, codes, video, key, agent_audio, agent_video):
        traces.append(1)
        return S.stream_step(nnx.merge(graphdef, params), state, controls, codes, video, key, greedy=True,
                             force_agent_audio=agent_audio, force_agent_video=agent_video)

    state = S.init_stream(CFG, 2, t)
    for i in range(t):
        prev = max(i - 1, 0)
        controls = S.StreamControls(batch["text"][:, i], batch["text_mask"][:, i], batch["motion"][:, i],
                                    batch["motion_mask"][:, i], batch["identity"][:, i],
                                    batch["human_video_mask"][:, i], batch["agent_video_mask"][:, i])
        out, state = step(params, state, controls, batch["human_codes"][:, prev], batch["human_video"][:, prev],
                          jax.random.key(i), delayed[:, i], batch["agent_video"][:, prev])
        np.testing.assert_allclose(out.hidden, full["hidden"][:, i], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.audio_logits, full["audio_logits"][:, i], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(out.delayed_codes[:, i + 1:], V)  # codebooks whose frame is still < 0
    assert len(traces) == 1 and int(state.frame) == t and int(state.cache.index[0]) == t * CFG.tokens_per_frame


def test_duplex_session_free_running_reverts_delays(model):
    session = S.DuplexSession(model, batch=1, max_frames=8, seed=0, greedy=True, video_steps=2)
    rng = np.random.default_rng(0)
    outs = list(session.stream((rng.integers(0, V, (1, Q)), rng.standard_normal((1, K, D))) for _ in range(7)))
    assert session.traces == 1
    delayed = np.stack([o.delayed_codes[0] for o in outs])  # step i + 1 of the agent's delay pattern
    # the agent's complete frames are the reverted pattern of its own samples (with the leading special step)
    pattern = np.concatenate([np.full((1, Q), V), delayed])[None]
    reverted = np.asarray(S.revert_delay_pattern(jnp.asarray(pattern)))[0]
    frames = np.stack([o.codes[0] for o in outs if o.codes_valid])
    np.testing.assert_array_equal(frames, reverted[:len(frames)])
    assert [bool(o.codes_valid) for o in outs] == [i >= Q - 1 for i in range(7)]
    assert all(o.video.shape == (1, K, D) and np.isfinite(o.video).all() for o in outs)
    # greedy samples feed back: the next step's input is this step's sample, so audio stays in range
    assert ((delayed >= 0) & (delayed <= V)).all()
    with pytest.raises(Exception, match="full"):
        session.step(np.zeros((1, Q)), np.zeros((1, K, D)))
        session.step(np.zeros((1, Q)), np.zeros((1, K, D)))
    session.reset(1)  # a new dialogue reuses the one compiled step (the fresh state is committed like its outputs)
    list(session.stream((rng.integers(0, V, (1, Q)), rng.standard_normal((1, K, D))) for _ in range(2)))
    assert session._step._cache_size() == 1 and session.frames == 2


def test_diffusion_head_loss_and_sampler(model):
    head, schedule = model.video_head, S.head_schedule(CFG.head)
    with nnx.use_eager_sharding(False):
        fresh = S.DiffusionHead(CFG.head, D, 32, rngs=nnx.Rngs(3))
    cond = jax.random.normal(jax.random.key(0), (5, 32))
    x = jax.random.normal(jax.random.key(1), (5, D))
    np.testing.assert_array_equal(fresh(x, jnp.arange(5), cond), 0.0)  # zero-initialised output
    # a zero predictor's loss is E[eps^2] = 1; masked rows do not count
    target = jax.random.normal(jax.random.key(2), (64, D))
    cond = jax.random.normal(jax.random.key(3), (64, 32))
    loss0 = S.diffusion_loss(fresh, schedule, target, cond, jnp.ones(64, bool), jax.random.key(4), batch_mul=4)
    assert abs(float(loss0) - 1.0) < 0.1
    mask = jnp.arange(64) < 32
    half = S.diffusion_loss(head, schedule, target, cond, mask, jax.random.key(4), batch_mul=2)
    changed = target.at[32:].set(100.0)
    np.testing.assert_allclose(S.diffusion_loss(head, schedule, changed, cond, mask, jax.random.key(4), batch_mul=2),
                               half, rtol=1e-6)
    assert float(S.diffusion_loss(head, schedule, target, cond, jnp.zeros(64, bool), jax.random.key(4))) == 0.0
    # sampler: shapes, and at temperature 1 the shared DDIM(eta=1) sampler with the same noise and keys
    key = jax.random.key(7)
    out = S.sample_video_tokens(head, schedule, cond[:6], key, token_dim=D, num_steps=5, temperature=1.0)
    assert out.shape == (6, D) and np.isfinite(out).all()
    noise_key, step_key = jax.random.split(key)
    c = cond[:6]
    ref = ddim_sample(lambda xt, t: x0_from_eps(schedule, xt, t, head(xt, t, c)), schedule,
                      jax.random.normal(noise_key, (6, D)), step_key, num_steps=5, eta=1.0)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    cold = S.sample_video_tokens(head, schedule, cond[:6], key, token_dim=D, num_steps=5, temperature=0.0)
    assert not np.allclose(cold, out)
    # clipped x0 (eps recomputed from it): the shared sampler's clip, and the result within the clip
    clipped = S.sample_video_tokens(head, schedule, cond[:6], key, token_dim=D, num_steps=5, temperature=1.0,
                                    x0_clip=0.5)
    ref = ddim_sample(lambda xt, t: x0_from_eps(schedule, xt, t, head(xt, t, c)), schedule,
                      jax.random.normal(noise_key, (6, D)), step_key, num_steps=5, eta=1.0, clip=0.5)
    np.testing.assert_allclose(clipped, ref, atol=1e-4, rtol=1e-4)
    assert np.abs(clipped).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("x0_clip", [4.0, 0.0])
def test_free_running_video_tokens_stay_bounded(x0_clip):
    """A random-init model (zero-init diffusion output: eps = 0) streamed for 50 frames with its own video fed
    back: the first respaced step divides by sqrt(abar_999) = 5e-5, so unclipped tokens reach ~1e4; with the
    default x0 clip every token stays within it and the audio logits stay finite."""
    import dataclasses

    cfg = dataclasses.replace(CFG, head=dataclasses.replace(CFG.head, x0_clip=x0_clip))
    with nnx.use_eager_sharding(False):
        lm = S.SpeechVideoLM(cfg, rngs=nnx.Rngs(1))
    b, n = 2, 50
    r = np.random.default_rng(0)
    codes = jnp.asarray(r.integers(0, V, (n, b, Q)), jnp.int32)
    video = jnp.asarray(r.standard_normal((n, b, K, D)), jnp.float32)

    @jax.jit
    def run(codes, video):
        def step(state, x):
            out, state = S.stream_step(lm, state, S.StreamControls.empty(cfg, b), x[0], x[1], x[2], video_steps=4)
            return state, (out.video, out.audio_logits)

        return jax.lax.scan(step, S.init_stream(cfg, b, n), (codes, video, jax.random.split(jax.random.key(0), n)))[1]

    tokens, logits = map(np.asarray, run(codes, video))
    assert tokens.shape == (n, b, K, D)
    if x0_clip:
        assert np.abs(tokens).max() <= x0_clip + 1e-5 and np.isfinite(logits).all()
        assert tokens[-10:].std() > 0.1  # still sampled, not collapsed
    else:
        assert np.abs(tokens).max() > 1e3  # the failure the clip prevents


def test_missing_modalities_use_empty_tokens(model):
    present = make_batch(2)
    absent = make_batch(2, agent_video_mask=False, human_video_mask=False, text_mask=False, motion_mask=False)
    absent["identity"] = jnp.full_like(absent["identity"], -1)
    other = make_batch(3, agent_video_mask=False, human_video_mask=False, text_mask=False, motion_mask=False)
    other = {**other, "agent_codes": absent["agent_codes"], "human_codes": absent["human_codes"],
             "identity": absent["identity"]}
    # absent signals: their values do not matter, and differ from present ones
    a, o, p = model(absent), model(other), model(present)
    np.testing.assert_allclose(a["hidden"], o["hidden"], atol=1e-6)
    assert not np.allclose(a["hidden"], p["hidden"], atol=1e-3)
    inputs, _ = model.model_inputs(absent)
    x = model.embed_frames(inputs)
    layout = S.frame_layout(CFG)
    np.testing.assert_allclose(x[:, :, layout["text"]][..., 0, :],
                               jnp.broadcast_to(model.empty_controls[0], x.shape[:2] + (32,)))
    np.testing.assert_allclose(x[:, :, layout["agent_video"]],
                               jnp.broadcast_to(model.empty_video[0], x.shape[:2] + (K, 32)))
    # first frame's previous video is empty even when video is present
    inputs, _ = model.model_inputs(present)
    x = model.embed_frames(inputs)
    np.testing.assert_allclose(x[:, 0, layout["human_video"]], jnp.broadcast_to(model.empty_video[1], (2, K, 32)))
    # the diffusion loss counts only frames with agent video; stage 1 has none
    total2, m2 = S.speech_video_loss(model, absent, jax.random.key(0), stage=2)
    assert float(m2["diffusion"]) == 0.0 and float(m2["video_frames"]) == 0.0
    total1, m1 = S.speech_video_loss(model, present, jax.random.key(0), stage=1)
    assert "diffusion" not in m1 and float(total1) == float(m1["nll"])
    total, m = S.speech_video_loss(model, present, jax.random.key(0), stage=2, diffusion_weight=0.5)
    np.testing.assert_allclose(total, m["nll"] + 0.5 * m["diffusion"], rtol=1e-6)


def test_context_noise_perturbs_only_the_agents_previous_frame(model):
    batch = make_batch(2)
    clean = model(batch)
    noisy = model(batch, 0.1, jax.random.key(3))
    for k in ("target_video", "target_audio", "target_video_mask"):
        np.testing.assert_array_equal(clean[k], noisy[k])  # targets stay clean
    assert not np.allclose(clean["hidden"], noisy["hidden"], atol=1e-5)
    # nothing of frame 0 changes (its previous frame is the empty token), and the human side is untouched
    np.testing.assert_allclose(clean["hidden"][:, 0], noisy["hidden"][:, 0], atol=1e-6)
    np.testing.assert_array_equal(model(batch, 0.1, jax.random.key(3))["hidden"], noisy["hidden"])
    a, _ = S.speech_video_loss(model, batch, jax.random.key(0), stage=2)
    b, _ = S.speech_video_loss(model, batch, jax.random.key(0), stage=2, context_noise=0.0)
    c, _ = S.speech_video_loss(model, batch, jax.random.key(0), stage=2, context_noise=0.5)
    assert float(a) == float(b) != float(c)
    with pytest.raises(Exception, match="random key"):
        model(batch, 0.1)


def test_packing_isolates_windows(model):
    t, cut = 8, 3  # window 1: frames 0..2, window 2: frames 3..7
    seg = jnp.asarray(np.repeat([[1] * cut + [2] * (t - cut)], 2, axis=0))
    base = {**make_batch(4, t=t), "segment_ids": seg}
    other = make_batch(5, t=t)
    changed = {k: (v.at[:, :cut].set(other[k][:, :cut]) if k != "segment_ids" else v) for k, v in base.items()}
    a, b = model(base), model(changed)
    np.testing.assert_allclose(a["hidden"][:, cut:], b["hidden"][:, cut:], atol=1e-5)
    assert not np.allclose(a["hidden"][:, :cut], b["hidden"][:, :cut], atol=1e-3)
    # window 2 packed equals window 2 alone
    alone = model({k: v[:, cut:] for k, v in base.items() if k != "segment_ids"})
    np.testing.assert_allclose(a["hidden"][:, cut:], alone["hidden"], atol=1e-4)
    np.testing.assert_array_equal(a["target_audio_mask"][:, cut:], alone["target_audio_mask"])
    # delay shifts restart: window 2's first input step is all special
    inputs, _ = model.model_inputs(base)
    np.testing.assert_array_equal(inputs.agent_audio[:, cut], V)


def test_flops_scale_with_config():
    from avatarjax.config import load_config

    paper = load_config(str(REPO / "configs" / "speechvideo" / "paper.py"), [])
    PAPER_NET = paper.model.net
    per_frame = S.flops_per_frame(PAPER_NET, context_frames=240, training=False, sample_steps=1)
    params = S.param_count(PAPER_NET)
    assert 6e9 < params < 9e9  # Qwen2-7B without its (unused) text vocabulary, plus our embeddings and heads
    # a decode step is about 2 x params FLOPs per token (plus attention to the context)
    assert 2 * params * PAPER_NET.tokens_per_frame * 0.8 < per_frame < 2 * params * PAPER_NET.tokens_per_frame * 1.5
    window = S.flops_per_window(CFG, 10)
    assert window > 10 * S.flops_per_frame(CFG, 0)


def test_trainer_smoke_three_steps(tmp_path):
    from avatarjax.config import load_config
    from avatarjax.train.loop import Trainer
    from avatarjax.train.objectives.speech_video import SPEECH_VIDEO_TASK

    cfg = load_config(TINY, ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false",
                             "--config.train.steps=3", "--config.log.every=1", "--config.checkpoint.every=3"])
    batch = next(iter(SPEECH_VIDEO_TASK.dataset(cfg, "train")))
    example = SPEECH_VIDEO_TASK.example_batch(cfg, cfg.train.batch_size)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (v.shape, v.dtype) for k, v in example.items()}
    assert (batch["segment_ids"].max(axis=1) >= 1).all() and batch["agent_codes"].max() < cfg.model.net.codebook_size
    result = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert result.step == 3 and len(losses) == 3 and np.isfinite(losses).all()
    assert all(np.isfinite(r["nll"]) and np.isfinite(r["diffusion"]) for r in rows if "nll" in r)
    # `avatarjax sample` of a stand-in LM: the duplex agent answers an eval session's speaker as a live stream
    from avatarjax.train.export import load_model

    model, run_cfg = load_model(tmp_path / "run")
    out = SPEECH_VIDEO_TASK.sample(model, run_cfg, tmp_path / "s", ["--frames", "12", "--sessions", "1"])
    q, net = cfg.model.net.num_codebooks, cfg.model.net
    assert np.load(tmp_path / "s" / "agent_codes_000.npy").shape == (12 - (q - 1), q)  # the delay pattern
    assert np.load(tmp_path / "s" / "agent_video_000.npy").shape == (12, net.video_tokens, net.video_dim)
    assert np.load(tmp_path / "s" / "agent_face_state_000.npy").shape[0] == 12
    assert out["latency"]["real_time_factor"] > 0 and "stand-in" in out["notes"][0]
