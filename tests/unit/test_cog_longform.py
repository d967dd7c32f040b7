"""CogPortrait any-length generation: windows over the Wan VAE's latent time axis, the previous window's tail
re-imposed inside the one jitted sampler, exact output length, one progress bar, the control knobs.

The DiT is the tiny config's, freshly initialised (numpy weights, no compile); the Wan VAE and the text encoder are
replaced by stand-ins with the same shapes and strides (a pooling "VAE" with 4x8x8 causal strides, fixed random
instruction tokens), so the test compiles only the sampler: the real Wan VAE runs through the same code in
tests/e2e/test_cog_portrait.py."""

import math
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax import media
from avatarjax.pipelines import cog_portrait as pl
from avatarjax.pipelines import windowed
from avatarjax.planning import controls as C
from avatarjax.train.objectives import cog_portrait as task
from tests.unit.test_cog_portrait import _random_model

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "cogportrait" / "synthface_tiny.py")
Z = 4
SPF = 640


class PoolVAE(nnx.Module):
    """Wan-VAE stand-in with its causal 4x8x8 strides: frame 0 -> latent 0, each later group of 4 frames -> one
    latent (8x8 average pools through a fixed 3 -> z projection); decode inverts the projection and repeats."""

    def __init__(self, z: int):
        rng = np.random.default_rng(1)
        self.proj = nnx.Param(jnp.asarray(rng.standard_normal((3, z)), jnp.float32))

    def encode(self, video):
        b, f, h, w, _ = video.shape
        rest = video[:, 1:].reshape(b, (f - 1) // 4, 4, h, w, 3).mean(2)
        t = jnp.concatenate([video[:, :1], rest], 1)
        pooled = t.reshape(b, t.shape[1], h // 8, 8, w // 8, 8, 3).mean((3, 5))
        mean = pooled @ self.proj[...]
        return mean, jnp.zeros_like(mean)

    def _rgb(self, z):
        rgb = z @ jnp.linalg.pinv(self.proj[...])
        return jnp.repeat(jnp.repeat(rgb, 8, 2), 8, 3)

    def decode(self, z):
        rgb = self._rgb(z)
        return jnp.clip(jnp.concatenate([rgb[:, :1], jnp.repeat(rgb[:, 1:], 4, 1)], 1), -1, 1)

    def decode_start(self, z0):  # frame-local: the streaming decode needs no cache
        return jnp.clip(self._rgb(z0), -1, 1), jnp.zeros(())

    def decode_continue(self, z, cache):
        return jnp.clip(jnp.repeat(self._rgb(z), 4, 1), -1, 1), cache


class FakeText:
    dim = 384

    def __init__(self, spec, length):
        self.length = length

    def __call__(self, texts):
        rng = np.random.default_rng(len(texts[0]))
        mask = np.arange(self.length) < 3
        return {"text_tokens": (rng.standard_normal((1, self.length, self.dim)) * mask[:, None]).astype(np.float32),
                "text_mask": mask[None], "text_pooled": np.zeros((1, self.dim), np.float32)}


@pytest.fixture(scope="module")
def pipe():
    from avatarjax.config import load_config
    from avatarjax.encoders import instruction_features

    cfg = load_config(TINY, ["--config.data.vae=stand-in", f"--config.model.net.in_channels={Z}",
                             f"--config.model.net.out_channels={Z}", f"--config.model.net.pose_channels={Z}"])
    vae_cfg = SimpleNamespace(z_dim=Z, latents_mean=(0.0,) * Z, latents_std=(1.0,) * Z)
    with pytest.MonkeyPatch.context() as mp, nnx.use_eager_sharding(False):
        mp.setattr(task, "load_vae", lambda path: (PoolVAE(Z), vae_cfg))
        mp.setattr(instruction_features, "InstructionFeatures", FakeText)
        system = SimpleNamespace(dit=_random_model(cfg.model.net, 0), settings=cfg.model)
        yield pl.CogPortraitPipeline(system, cfg)


@pytest.fixture(scope="module")
def run(pipe):
    """One long-form generation of ~3 training clips of audio (windows of 9 frames advance by 4) with every
    sampler call, every network input and the progress bar recorded."""
    calls, seen, bars = [], [], []
    real_velocity, real_sampler, real_bar = task.velocity, pipe._sampler, windowed.WindowProgress

    def spy_velocity(dit, x, t, cond):
        jax.debug.callback(lambda x_, t_: seen.append((len(calls) - 1, float(t_[0]), np.asarray(x_[0]))), x, t)
        return real_velocity(dit, x, t, cond)

    def counting_sampler(opts, shape):
        fn = real_sampler(opts, shape)

        def call(*args):
            calls.append([np.asarray(a) for a in args[2:]])  # noise, clean, gaussian, known, known_mask
            out = jax.block_until_ready(fn(*args))
            calls[-1].append(np.asarray(out))
            return out

        call.jitted = fn
        return call

    class Bar(real_bar):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)

    rng = np.random.default_rng(0)
    window = pipe.cfg.data.synthface.window  # 9 frames = reference + 2 latents
    samples = 3 * window * SPF + 123  # ~3x the training clip, ending mid-frame
    audio = (rng.standard_normal(samples) * 0.1).astype(np.float32)
    kps = rng.uniform(0.35, 0.65, (40, 62, 2)).astype(np.float32)
    portrait = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task, "velocity", spy_velocity)
        mp.setattr(pipe, "_sampler", counting_sampler)
        mp.setattr(windowed, "WindowProgress", Bar)
        result = pipe.sample(portrait, kps, audio, "look left", progress=False)
    return SimpleNamespace(result=result, calls=calls, seen=seen, bars=bars, samples=samples, audio=audio, kps=kps,
                           portrait=portrait, jitted=pipe._compiled)


def test_exact_length_one_compiled_call_per_window_one_bar(pipe, run):
    frames = media.frames_for_audio(run.samples, 16000)
    assert frames == math.ceil(run.samples / SPF) == 3 * 9 + 1
    result, info = run.result, run.result.info
    assert result.frames.shape == (frames, 32, 32, 3) and result.frames.dtype == np.uint8
    assert info["frames"] == frames and info["audio_samples"] == frames * SPF
    lw = pipe.plan(frames)
    assert info["windows"] == lw.plan.num_windows == len(run.calls) >= 3
    assert info["window_starts"] == [4 * s for s in lw.plan.starts]
    (sampler,) = [v for k, v in run.jitted.items()]  # one sampler for the whole utterance ...
    assert sampler._cache_size() == 1  # ... compiled once, called once per window
    (bar,) = run.bars
    steps = pipe.cfg.sample.num_steps
    assert bar.total == info["progress_total"] == lw.plan.num_windows * steps and bar.done == bar.total
    # guided: one batched (conditional + null) network call per sampler step
    assert len(run.seen) == lw.plan.num_windows * steps
    # the reference portrait is the clean first slot of every window: identity from the portrait only
    reference = pipe.latents.encode(run.portrait[None])[0]
    for noise, clean, _, known, known_mask, out in run.calls:
        np.testing.assert_allclose(clean[0, 0], reference, atol=1e-6)
        np.testing.assert_allclose(out[0, 0], reference, atol=1e-6)
        assert not known_mask[0]


def test_previous_tail_is_fed_at_every_step(pipe, run):
    lw = pipe.plan(run.result.info["frames"])
    plan = lw.plan
    for k in range(1, plan.num_windows):
        noise, _, _, known, known_mask, _ = run.calls[k]
        n = plan.known_frames(k)
        assert known_mask.tolist() == [False] + [True] * n + [False] * (plan.window - n)
        prev_out = run.calls[k - 1][-1][0, 1:]  # window k - 1's content latents
        shift = plan.starts[k] - plan.starts[k - 1]
        np.testing.assert_allclose(known[0, 1:1 + n], prev_out[shift:shift + n], atol=1e-6)  # its tail
        steps = [(t, x) for i, t, x in run.seen if i == k]
        for t, x in steps:  # the network sees the tail noised to the step's flow time, x_t = (1 - s) x0 + s eps
            s = t / 1000.0
            np.testing.assert_allclose(x[1:1 + n], (1 - s) * known[0, 1:1 + n] + s * noise[0, 1:1 + n],
                                       rtol=1e-5, atol=1e-5)
        assert len(steps) == pipe.cfg.sample.num_steps
        t_last, x_last = steps[-1]  # the final step: the least noise, the tail dominates what the network sees
        assert t_last == min(t for t, _ in steps) and t_last < 1000 * 0.55
        tail, eps = known[0, 1:1 + n].ravel(), noise[0, 1:1 + n].ravel()
        assert np.corrcoef(x_last[1:1 + n].ravel(), tail)[0, 1] > np.corrcoef(x_last[1:1 + n].ravel(), eps)[0, 1]
    # and the tail steers the new latents: without it (all-False mask) window 1 comes out differently
    jitted = next(iter(run.jitted.values()))
    noise, clean, gaussian, known, known_mask, out = run.calls[1]
    args = [jnp.asarray(a) for a in (noise, clean, gaussian, known)]
    kps, clip = pipe._window_inputs(lw, 1, run.kps[:run.result.info["frames"]], run.kps[0],
                                    media.pad_audio_to_frames(run.audio, 16000)[0])
    text = pipe.text(["look left"])
    cond = {"text": jnp.asarray(text["text_tokens"]), "text_mask": jnp.asarray(text["text_mask"]),
            "audio": task.audio_features(jnp.asarray(clip[None])),
            "pose": jnp.asarray(pipe.latents.encode(pl.pose_video.render_pose_video(kps, pipe.frame_size))[None])}
    again = np.asarray(jitted(pipe._state, cond, *args, jnp.asarray(known_mask)))
    np.testing.assert_allclose(again, out, atol=1e-5)  # the recorded call, reproduced
    free = np.asarray(jitted(pipe._state, cond, *args, jnp.zeros_like(jnp.asarray(known_mask))))
    n = plan.known_frames(1)
    assert np.abs(free[0, 1 + n:] - out[0, 1 + n:]).max() > 1e-3


def test_commit_crossfades_and_chunks_partition(pipe, run):
    frames = run.result.info["frames"]
    lw = pipe.plan(frames)
    content = np.zeros_like(run.result.latents)
    for k, call in enumerate(run.calls):
        lw.plan.commit(content, call[-1][0, 1:], k)
    np.testing.assert_allclose(run.result.latents, content, atol=1e-6)
    chunks = lw.chunks()
    assert chunks[0][0] == 0 and chunks[-1][1] == frames and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_knobs_colour_anchor_and_smoothing_reuse_the_compiled_sampler(pipe, run):
    n_compiled = len(pipe._compiled)
    anchored = pipe.sample(run.portrait, run.kps, run.audio, "look left", anchor_colours=True, smoothing=1.5,
                           progress=False)
    assert anchored.frames.shape == run.result.frames.shape and len(pipe._compiled) == n_compiled
    region = windowed.face_region(32)
    for first, end in pipe.plan(anchored.info["frames"]).chunks():
        d_anchor = windowed.chunk_colour_distance(anchored.frames[first:end], run.portrait, region)
        assert d_anchor <= windowed.chunk_colour_distance(run.result.frames[first:end], run.portrait, region) + 1.0
    # a short utterance (one padded window) is exact too
    short = pipe.sample(run.portrait, run.kps, run.audio[:3 * SPF + 1], "look left", progress=False)
    assert short.frames.shape[0] == 4 and short.info["windows"] == 1
    with pytest.raises(Exception, match="keypoints cover 10 frames"):
        pipe.sample(run.portrait, run.kps[:10], run.audio, "look left", progress=False)


@pytest.mark.parametrize("window, overlap", [(9, 4), (17, 4), (17, 8), (33, 0)])
def test_latent_windows_cover_every_frame(window, overlap):
    for frames in [1, 2, 5, 8, 9, 10, 17, 18, 100, 751, 7501]:
        lw = windowed.plan_latent_windows(frames, window, overlap)
        chunks = lw.chunks()
        assert chunks[0][0] == 0 and chunks[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])) and all(e > f for f, e in chunks)
        assert lw.latent_frames >= frames and (frames == 1 or frames > lw.latent_frames - 4)  # fewest latents
        assert lw.window_frames == window and lw.overlap_frames == overlap
        fp = lw.frame_plan()
        assert [fp.starts[k] + fp.known_frames(k) for k in range(1, fp.num_windows)] == [f for f, _ in chunks[1:]]
    with pytest.raises(Exception, match="multiple of 4"):
        windowed.plan_latent_windows(100, 17, 6)
    with pytest.raises(Exception, match="1 \\+ 4k"):
        windowed.plan_latent_windows(100, 16, 4)


def test_flow_forward_noise_and_replacement_on_video_latents():
    noiser = windowed.forward_noise_fn("flow")
    x0, eps = jnp.ones((2, 3, 2, 2, 4)), jnp.zeros((2, 3, 2, 2, 4))
    np.testing.assert_allclose(noiser(x0, jnp.array([250.0, 1000.0]), eps)[:, 0, 0, 0, 0], [0.75, 0.0])
    mask = jnp.array([False, True, False])
    fn = windowed.replacement_denoise(lambda x, t, rho: x * rho, noiser, x0, mask, eps)
    out = np.asarray(fn(jnp.full((2, 3, 2, 2, 4), 5.0), jnp.array([0.0, 0.0]), 2.0))
    assert (out[:, 1] == 2.0).all() and (out[:, [0, 2]] == 10.0).all()


def test_apply_knobs():
    rng = np.random.default_rng(0)
    values = rng.uniform(C.LOW, C.HIGH, (30, C.NUM_CHANNELS)).astype(np.float32)
    rest = values[0]
    same = pl.apply_knobs(values)
    np.testing.assert_array_equal(same, values)
    held = pl.apply_knobs(values, lip_only=True, head_motion_scale=3.0)
    np.testing.assert_allclose(held[:, C.POSE_SLICE], np.broadcast_to(rest[C.POSE_SLICE], (30, 3)))
    np.testing.assert_allclose(held[:, C.AU_SLICE], values[:, C.AU_SLICE])
    half = pl.apply_knobs(values, head_motion_scale=0.5, expression_scale=0.0)
    np.testing.assert_allclose(half[:, C.POSE_SLICE] - rest[C.POSE_SLICE],
                               0.5 * (values[:, C.POSE_SLICE] - rest[C.POSE_SLICE]), atol=1e-5)
    np.testing.assert_allclose(half[:, C.AU_SLICE], np.broadcast_to(rest[C.AU_SLICE], (30, 10)))
    np.testing.assert_allclose(half[:, C.GAZE_SLICE], values[:, C.GAZE_SLICE])  # gaze as planned
    big = pl.apply_knobs(values, expression_scale=10.0)
    assert (big[:, C.AU_SLICE] <= C.HIGH[C.AU_SLICE] + 1e-6).all()


def test_long_form_drift_report(pipe, tmp_path, monkeypatch):
    """`eval -- --long-seconds S` (the task's evaluate dispatches to the drift report): exact durations, one chunk per
    window, a target distance per chunk (the world's own face for the driving keypoints) and the shared curves,
    written as drift.json + drift.png."""
    import json

    monkeypatch.setattr(task, "_pipeline", lambda model, cfg: pipe)
    summary = task.evaluate(None, pipe.cfg, ["--long-seconds", "2.0", "--steps", "2", "--out", str(tmp_path)])
    assert "chunks" not in summary
    report = json.loads((tmp_path / "drift.json").read_text())
    assert report["duration"]["exact_match"] and report["duration"]["frames"] == 51
    assert report["system"] == "cog_portrait" and len(report["chunks"]) == report["windows"]
    assert report["steps_per_window"] == 2 and report["instruction"] == "talk calmly"
    assert all(c["target_distance"] > 0 for c in report["chunks"])  # an untrained DiT: far from the target
    assert report["lipsync"]["truth_whole"] > 0.5  # the true face's mouth follows the audio, even at 32 px
    assert set(report["target"]) >= {"first", "max_rel_dev_from_first", "fitted_change"}
    assert summary["target"] == report["target"] and (tmp_path / "drift.png").stat().st_size > 0
