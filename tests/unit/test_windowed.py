"""Long-form windowed generation: length arithmetic, the window plan, replacement guidance inside a jitted sampler,
the cross-fade, pose knobs, colour anchoring, seam measures, and one progress bar over windows x steps (on the
shipped small InstructAvatar checkpoint)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avatarjax.diffusion import samplers, schedules
from avatarjax.errors import ConfigError
from avatarjax.eval import lipsync
from avatarjax.data.synthface import audio as synth_audio
from avatarjax import media
from avatarjax.pipelines import windowed

SPF = 640


@pytest.mark.parametrize("window, overlap", [(64, 16), (16, 4), (10, 0), (25, 24)])
def test_plan_covers_every_frame_for_many_durations(window, overlap):
    for num_samples in [1, 639, 640, 641, 16000, 16001, 40 * 640 - 1] + [window * SPF * m + r for m in (1, 3, 10)
                                                                     for r in (-1, 0, 1, 333)]:
        padded, frames = media.pad_audio_to_frames(np.ones(num_samples, np.float32), 16000)
        assert frames == math.ceil(num_samples / SPF)  # one frame per 40 ms, the last partial one included
        assert len(padded) == frames * SPF
        plan = windowed.plan_windows(frames, window, overlap)
        chunks = plan.chunks()
        assert chunks[0][0] == 0 and chunks[-1][1] == frames  # the end is never lost
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # a partition: no gap, no double frame
        assert plan.starts[-1] + plan.window >= frames and all(0 < plan.valid(k) <= window
                                                                for k in range(plan.num_windows))
        assert all(plan.known_frames(k) == overlap for k in range(1, plan.num_windows))
        assert all(plan.valid(k) > plan.known_frames(k) for k in range(plan.num_windows))  # every window adds frames
        if frames > window:  # minimal: one window fewer would not reach the end
            assert plan.starts[-2] + window < frames
        assert plan.frame_mask(plan.num_windows - 1).sum() == plan.valid(plan.num_windows - 1)
    ten = windowed.plan_windows(10 * window, window, overlap)
    assert ten.num_windows == 1 + math.ceil(9 * window / (window - overlap))


def test_plan_rejects_bad_windows():
    with pytest.raises(Exception, match="overlap"):
        windowed.plan_windows(100, 16, 16)
    with pytest.raises(Exception, match="nothing"):
        windowed.plan_windows(0, 16, 4)


def test_commit_stitches_exactly_and_crossfades():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((203, 3)).astype(np.float32)
    plan = windowed.plan_windows(203, 32, 8)
    out = np.zeros_like(truth)
    for k, (start, valid) in enumerate(plan):
        known, mask = plan.known(out, k)
        np.testing.assert_array_equal(known[mask], truth[start:start + mask.sum()])  # the committed tail
        window = np.zeros((32, 3), np.float32)
        window[:valid] = truth[start:start + valid]
        plan.commit(out, window, k)
    np.testing.assert_allclose(out, truth, atol=1e-6)  # windows that agree on the overlap stitch exactly
    out = np.zeros((40, 1), np.float32)
    plan = windowed.plan_windows(40, 24, 8)
    plan.commit(out, np.zeros((24, 1), np.float32), 0)
    plan.commit(out, np.ones((24, 1), np.float32), 1)
    fade = out[16:24, 0]
    assert np.all(np.diff(fade) > 0) and 0 < fade[0] < 0.2 and 0.8 < fade[-1] < 1  # a ramp, no step
    assert np.all(out[:16] == 0) and np.all(out[24:] == 1)


def test_replacement_sees_forward_noised_tail_and_continues_it_inside_one_jit():
    schedule = schedules.make_discrete_schedule("linear", 1000)
    noiser = windowed.forward_noise_fn("ddpm", schedule=schedule)
    key = jax.random.key(0)
    known = jnp.zeros((1, 12, 2)).at[:, :4].set(4.0)
    mask = jnp.arange(12) < 4
    eps = jax.random.normal(key, (1, 12, 2))
    x_t = jax.random.normal(jax.random.key(1), (1, 12, 2))
    seen = windowed.replacement_denoise(lambda x, t: x, noiser, known, mask, eps)(x_t, jnp.array([500]))
    np.testing.assert_allclose(seen[:, :4], schedules.q_sample(schedule, known, jnp.array([500]), eps)[:, :4],
                               rtol=1e-6)
    np.testing.assert_array_equal(seen[:, 4:], x_t[:, 4:])
    plan = windowed.plan_windows(20, 12, 4)
    release = plan.release(1, 0.8)  # known frames 0..3 released below noise levels 0.2, 0.4, 0.6, 0.8
    np.testing.assert_allclose(release[:5], [0.2, 0.4, 0.6, 0.8, 0.0], atol=1e-6)
    assert not plan.release(1, 0.0).any() and not plan.release(0, 0.8).any()  # no prefix in the first window
    partly = windowed.replacement_denoise(lambda x, t: x, noiser, known, mask, eps, jnp.asarray(release), 1000.0)
    seen = partly(x_t, jnp.array([500]))  # level 0.5: frames 0 and 1 still re-imposed, 2 and 3 left to the network
    np.testing.assert_allclose(seen[:, :2], schedules.q_sample(schedule, known, jnp.array([500]), eps)[:, :2],
                               rtol=1e-6)
    np.testing.assert_array_equal(seen[:, 2:], x_t[:, 2:])
    with pytest.raises(ConfigError, match="harmonize"):
        plan.release(1, 1.5)

    def flat_model(x, t):  # the exact x0 posterior mean for clips constant in time, level ~ N(0, 1)
        a, s = schedules.signal_noise_scales(schedule, t, x)
        level = a * jnp.sum(x, axis=1, keepdims=True) / (x.shape[1] * a ** 2 + s ** 2)
        return jnp.broadcast_to(level, x.shape)

    @jax.jit
    def sample(noise, known, mask):
        return samplers.ddim_sample(windowed.replacement_denoise(flat_model, noiser, known, mask, noise), schedule,
                                    noise, num_steps=20)

    with_tail = sample(eps, known, mask)
    without = sample(eps, known, jnp.zeros(12, bool))
    assert np.abs(np.asarray(with_tail) - 4.0).max() < 1.0  # the new frames continue the known tail
    assert np.abs(np.asarray(without) - 4.0).min() > 2.5
    assert sample._cache_size() == 1  # one compiled sampler for every window


def test_pose_knobs_and_smoothing():
    t = np.arange(200, dtype=np.float32)
    pose = np.stack([10 * np.sin(t / 15), np.where(t < 100, 0.0, 6.0), 0 * t], axis=1).astype(np.float32)
    rest = np.array([1.0, -2.0, 0.5], np.float32)
    held = windowed.smooth_pose(pose, lip_only=True, portrait_pose=rest)
    np.testing.assert_array_equal(held, np.broadcast_to(rest, pose.shape))
    np.testing.assert_allclose(windowed.smooth_pose(pose, smoothing=0, head_motion_scale=0, portrait_pose=rest),
                               np.broadcast_to(rest, pose.shape))
    np.testing.assert_allclose(windowed.smooth_pose(pose, smoothing=0, head_motion_scale=2.0), 2 * pose, rtol=1e-6)
    np.testing.assert_array_equal(windowed.smooth_pose(pose, smoothing=0), pose)
    smooth = windowed.smooth_pose(pose, smoothing=3.0)
    assert np.abs(np.diff(smooth[:, 1])).max() < 0.25 * 6.0  # the step is spread over several frames
    np.testing.assert_allclose(smooth[:, 1].mean(), pose[:, 1].mean(), atol=0.05)


def test_colour_anchoring_and_distance():
    size = 32
    region = windowed.face_region(size)
    assert region[size // 2, size // 2] == 1 and region[0, 0] == 0
    rng = np.random.default_rng(0)
    reference = rng.integers(60, 200, (size, size, 3)).astype(np.uint8)
    drifted = np.clip(reference[None].astype(int) * [1.1, 0.9, 1.0] + [12, -8, 20], 0, 255).astype(np.uint8)
    drifted = np.repeat(drifted, 4, axis=0)
    before = windowed.chunk_colour_distance(drifted, reference, region)
    fixed = windowed.anchor_colours(drifted, reference, region)
    after = windowed.chunk_colour_distance(fixed, reference, region)
    assert before > 15 and after < 0.1 * before
    outside = region == 0
    np.testing.assert_array_equal(fixed[:, outside], drifted[:, outside])  # background untouched


def test_seam_jumps_find_the_seams():
    plan = windowed.plan_windows(100, 32, 8)
    motion = np.full(99, 1.0)
    assert windowed.seam_jumps(motion, plan)["seam_max_over_within_p95"] == pytest.approx(1.0)
    motion[plan.starts[2] + plan.overlap - 1] = 5.0  # a jump where window 2 takes over
    report = windowed.seam_jumps(motion, plan)
    assert report["per_seam"][1] == 5.0 and report["seam_max"] == 5.0 and report["within_p95"] == 1.0
    # seamless random motion: seam jumps (larger of two transitions) match the like-for-like within-chunk statistic
    noise = np.random.default_rng(0).gamma(2.0, 1.0, 20_000)
    fair = windowed.seam_jumps(noise, windowed.plan_windows(20_001, 64, 16))
    assert fair["seam_p95_over_within_p95"] > 1.1 and 0.85 < fair["seam_p95_over_within_pair_p95"] < 1.15


def test_smooth_seams_removes_a_step_at_the_hand_over_and_leaves_the_rest():
    plan = windowed.plan_windows(120, 32, 8)
    t = np.arange(120, dtype=np.float32)
    track = np.stack([np.sin(t / 5), np.cos(t / 7)], axis=1)
    stepped = track.copy()
    exit_ = plan.starts[2] + plan.known_frames(2)  # window 2 leaves its prefix with a step
    stepped[exit_:] += 0.5
    motion = lambda x: np.abs(np.diff(x, axis=0)).mean(axis=1)  # noqa: E731
    before = windowed.seam_jumps(motion(stepped), plan)
    out = windowed.smooth_seams(stepped, plan, 1.0)
    after = windowed.seam_jumps(motion(out), plan)
    assert after["per_seam"][1] < 0.5 * before["per_seam"][1]
    zone = np.zeros(120, bool)
    for k in range(1, plan.num_windows):  # seam zone plus the ramp of ceil(2 sigma) = 2 frames each side
        zone[max(plan.starts[k] - 3, 0):plan.starts[k] + plan.known_frames(k) + 3] = True
    np.testing.assert_array_equal(out[~zone], stepped[~zone])
    np.testing.assert_array_equal(windowed.smooth_seams(stepped, plan, 0), stepped)
    one = windowed.plan_windows(20, 32, 8)
    np.testing.assert_array_equal(windowed.smooth_seams(track[:20], one, 1.0), track[:20])


def test_causal_seam_smoothing_shrinks_the_step_into_a_window_and_leaves_later_frames():
    previous = np.zeros(2, np.float32)
    new = np.ones((10, 2), np.float32)  # a unit step at the hand-over, then flat
    out = windowed.smooth_seam_causal(previous, new, 1.0)
    assert out[0] == pytest.approx([0.5, 0.5])  # the step halves at sigma 1
    steps = np.diff(np.concatenate([previous[None], out]), axis=0)[:, 0]
    assert np.all(steps >= 0) and steps.max() == pytest.approx(0.5) and out[:, 0].max() <= 1.0
    np.testing.assert_array_equal(out[2:], new[2:])  # ramp ceil(2 sigma) = 2 frames; the rest as generated
    np.testing.assert_array_equal(windowed.smooth_seam_causal(previous, new, 0.0), new)
    assert windowed.smooth_seam_causal(previous, new[:1], 3.0).shape == (1, 2)


@pytest.fixture(scope="module")
def small_pipe():
    from pathlib import Path

    from avatarjax.pipelines import instruct_avatar

    path = Path(__file__).resolve().parents[2] / "assets" / "instructavatar_small" / "generator"
    return instruct_avatar.load(path)


def test_pipeline_any_length_one_bar_and_knobs(small_pipe, monkeypatch):
    from avatarjax.data.synthface import identity, render, schema

    bars = []
    real = windowed.WindowProgress

    class Recording(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)

    monkeypatch.setattr(windowed, "WindowProgress", Recording)
    portrait = render.render_frames(identity.sample_identity(3), schema.neutral_state(1),
                                    size=small_pipe.frame_size)[0]
    audio = (np.random.default_rng(0).standard_normal(44 * SPF + 101) * 0.1).astype(np.float32)
    kw = dict(window=16, overlap=4, num_steps=2, seed=1, progress=False)
    a = small_pipe.sample(portrait, audio, "talk happily", **kw)
    assert a.frames.shape[0] == 45 and len(a.audio) == 45 * SPF  # 44 frames + a partial one: nothing lost
    np.testing.assert_array_equal(a.audio[:len(audio)], audio)
    plan = windowed.plan_windows(45, 16, 4)
    assert a.info["windows"] == plan.num_windows == 4
    assert len(bars) == 1 and bars[0].total == plan.num_windows * 2 == bars[0].done  # one bar, windows x steps
    b = small_pipe.sample(portrait, audio, "talk happily", lip_only=True, expression_scale=0.0, **kw)
    np.testing.assert_allclose(b.pose, 0.0)  # head held at the (frontal) portrait's pose
    assert np.abs(a.pose).max() > 0
    spread = np.abs(b.frames.astype(int) - b.frames[:1].astype(int)).max()
    assert spread <= 2 < np.abs(a.frames.astype(int) - a.frames[:1].astype(int)).max()  # no motion left


def test_sample_pastes_the_animated_face_back_into_a_wider_picture(small_pipe, tmp_path):
    """`sample --paste-back`: the face found in a wider picture is animated at the model's size and composited
    back; the picture outside the feathered mask is unchanged and the crop video is kept beside it."""
    import cv2

    from avatarjax import media
    from avatarjax.data.synthface import identity, render, schema
    from avatarjax.pipelines import instruct_avatar, portrait_prep

    face = render.render_frames(identity.sample_identity(3), schema.neutral_state(1), size=128)[0]
    scene = cv2.copyMakeBorder(face, 30, 30, 50, 90, cv2.BORDER_CONSTANT, value=[int(v) for v in face[0, 0]])
    media.write_image(tmp_path / "scene.png", scene)  # 268 x 188, the face centred at (114, 94)
    ns = instruct_avatar.sample_parser().parse_args(
        ["--portrait", str(tmp_path / "scene.png"), "--instruction", "turn your head to the left", "--frames", "20",
         "--paste-back", "--smoothing", "0"])
    report = instruct_avatar.sample_files(small_pipe, ns, tmp_path / "out.mp4", num_steps=2, seed=0)
    frames, _ = media.read_video_at(report["video"])
    crops, _ = media.read_video_at(report["crop_video"])
    assert frames.shape == (20, 188, 268, 3) and crops.shape[1:3] == (small_pipe.frame_size,) * 2
    prepared = portrait_prep.prepare_portrait(tmp_path / "scene.png", small_pipe.frame_size)
    outside = portrait_prep.paste_back(scene, np.zeros_like(crops[0]), prepared) == scene  # where the mask is 0
    assert outside.all(axis=-1).mean() > 0.5
    assert np.abs(frames.astype(int) - scene.astype(int))[:, outside.all(-1)].mean() < 3  # video-codec error only
    inside = ~outside.any(-1)
    assert np.abs(frames[-1].astype(int) - scene.astype(int))[inside].mean() > 1  # the face there moved
    centre = report["crop_box"]["centre"]
    assert abs(centre[0] - 114) < 8 and abs(centre[1] - 94) < 8  # the face's box in the picture


def test_long_form_drift_report_scores_lip_sync_against_the_worlds_own_face(small_pipe, tmp_path):
    """The drift report: exact durations, per-chunk curves, and a ground-truth lip-sync reference (the synthface
    world's own jaw for the same audio, measured the same way) that itself syncs well."""
    import json

    from avatarjax.pipelines.instruct_avatar_eval import long_form

    report = long_form(small_pipe, seconds=2.0, out_dir=tmp_path, progress=False, window=16, overlap=4,
                       num_steps=2)
    assert report["duration"]["exact_match"] and report["duration"]["tail_lost_s"] == 0.0
    assert report["windows"] == windowed.plan_windows(report["duration"]["frames"], 16, 4).num_windows
    assert report["lipsync"]["truth_whole"] > 0.8  # the measurement sees the true face's mouth follow the audio
    chunks = [c for c in report["chunks"] if c["lipsync_relative"] is not None]
    assert chunks and all(abs(c["lipsync_relative"] - c["lipsync"] / c["lipsync_truth"]) < 1e-9 for c in chunks)
    saved = json.loads((tmp_path / "drift.json").read_text())
    assert saved["lipsync_relative"] == report["lipsync_relative"] and (tmp_path / "drift.png").stat().st_size > 0


def test_drift_report_mouth_amplitude_says_how_much_the_mouth_moves():
    """Correlation ignores scale: a mouth that follows the audio at a fifth of the true face's swing still has the
    true face's lip-sync score, and ``mouth_amplitude`` is what shows the difference."""
    from avatarjax.data.synthface import audio as synth_audio
    from avatarjax.eval import drift

    rng = np.random.default_rng(0)
    n, size = 96, 16
    wave, _, _ = synth_audio.synth_speech(rng, n + 1)
    wave = wave[:n * 640].astype(np.float32)
    swing = np.clip(lipsync.audio_rms_envelope(wave, num_frames=n) / 0.2, 0, 1)
    truth = np.full((n, size, size, 3), 40, np.uint8) + (swing * 200).astype(np.uint8)[:, None, None, None]
    faint = np.full((n, size, size, 3), 40, np.uint8) + (swing * 40).astype(np.uint8)[:, None, None, None]
    plan = windowed.plan_windows(n, 32, 8)
    report = drift.drift_report(faint, wave, truth[0], plan, mouth_of=lambda f: f.mean(axis=(1, 2, 3)),
                                truth_frames=truth)
    assert report["lipsync"]["whole"] > 0.95 * report["lipsync"]["truth_whole"]
    assert report["mouth_amplitude"]["whole"] == pytest.approx(0.2, abs=0.02)
    assert all(c["mouth_amplitude"] == pytest.approx(0.2, abs=0.03) for c in report["chunks"])


def test_online_generation_smooths_each_hand_over_causally(small_pipe):
    """``InstructAvatarOnline``: the shown latents equal the generated ones except the first ceil(2 sigma) frames
    after each hand-over, which ``smooth_seam_causal`` pulls towards the frame already shown."""
    from avatarjax.data.synthface import identity, render, schema
    from avatarjax.pipelines.instruct_avatar import InstructAvatarOnline

    portrait = render.render_frames(identity.sample_identity(3), schema.neutral_state(1), size=small_pipe.frame_size)
    wave, _, _ = synth_audio.synth_speech(np.random.default_rng(1), 41)
    online = InstructAvatarOnline(small_pipe, portrait[0], wave[:40 * 640].astype(np.float32), "talk happily",
                                  window=16, overlap=4, num_steps=2, seam_smoothing=1.0)
    chunks = online.plan.chunks()
    frames, generated = [], []
    for k, (first, end) in enumerate(chunks):  # the next window cross-fades this one's tail: compare as generated
        frames.append(online(k))
        generated.append(online.latents[first:end].copy())
    assert sum(len(f) for f in frames) == 40 and online.plan.num_windows == 3
    np.testing.assert_array_equal(online.shown[:chunks[0][1]], generated[0])
    for (first, end), gen in zip(chunks[1:], generated[1:]):
        shown = online.shown[first:end]
        np.testing.assert_array_equal(shown[2:], gen[2:])  # ceil(2 sigma) = 2 frames smoothed, the rest as made
        # the step into the window: the generated frame pulled halfway to the frame already shown
        np.testing.assert_allclose(shown[0], 0.5 * (gen[0] + online.shown[first - 1]), rtol=1e-6, atol=1e-6)
        assert np.abs(shown[0] - online.shown[first - 1]).sum() < np.abs(gen[0] - online.shown[first - 1]).sum()


def test_long_form_with_a_reader_scores_frames_against_the_world_render_of_what_it_reads(small_pipe):
    """With a reader, the ``target`` curve compares each frame with the synthface render of the portrait's
    identity in the state read from that frame (expression and pose factored out of the identity drift)."""
    from avatarjax.data.synthface import schema
    from avatarjax.pipelines.instruct_avatar_eval import long_form

    calls = []

    def reader(frames, identity):  # a stand-in reader: every frame reads as the neutral face, jaw from brightness
        calls.append(len(frames))
        state = schema.neutral_state(len(frames))
        state[:, schema.CHANNELS.index("jaw_open")] = frames.mean(axis=(1, 2, 3)) / 255.0
        return state, None

    report = long_form(small_pipe, seconds=1.0, reader=reader, progress=False, window=16, overlap=4, num_steps=2)
    assert report["mouth_signal"] == "face_reader jaw_open" and "target" in report
    chunks = report["chunks"]
    assert all(c["target_distance"] > 0 for c in chunks) and report["target"]["first"] == chunks[0]["target_distance"]
    assert calls.count(report["duration"]["frames"]) >= 2  # the generated frames: once for the mouth, once here
    # the reader read every frame as neutral with the jaw set by brightness: the target is that world face, and
    # the generated (VAE-decoded) frames differ from it by a few grey levels, not by a different face
    assert 0 < report["target"]["mean"] < 40
    assert all(c["target_colour_distance"] >= 0 for c in chunks) and "target_colour" in report
