"""synthface dynamics, audio, instructions, clips, dyadic sessions and REACT export (numpy only; no JAX)."""

import io
import json

import numpy as np
import pytest

from avatarjax.data.synthface import audio as A
from avatarjax.data.synthface import clips as C
from avatarjax.data.synthface import dynamics as D
from avatarjax.data.synthface import dyadic as DY
from avatarjax.data.synthface import instructions as I
from avatarjax.data.synthface import react as R
from avatarjax.data.synthface import schema as S

FPS = S.FPS
IX = S.INDEX


def _clips(n, seed, **kw):
    return list(C.generate_clips(n, seed, num_identities=7, **kw))


@pytest.fixture(scope="module")
def mixed():
    """A mixed bag of default-drawn clips (all kinds)."""
    return _clips(40, 123)


@pytest.fixture(scope="module")
def talking():
    return _clips(40, 7, kind="talking")


def _assert_same(a: C.Clip, b: C.Clip):
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.au_active, b.au_active)
    assert (a.kind, a.label, a.emotion, a.intensity, a.audio_flag, a.identity, a.seed) == \
        (b.kind, b.label, b.emotion, b.intensity, b.audio_flag, b.identity, b.seed)
    assert a.instructions == b.instructions
    assert a.events == b.events


# ----------------------------------------------------------------------------------------------------------------
# Determinism, shapes, ranges, serialisation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["talking", "motion", "listening", None])
def test_deterministic_per_seed(kind):
    a = C.generate_clip(11, identity=3, kind=kind)
    b = C.generate_clip(11, identity=3, kind=kind)
    _assert_same(a, b)
    c = C.generate_clip(12, identity=3, kind=kind)
    assert a.state.shape != c.state.shape or not np.array_equal(a.state, c.state)


def test_explicit_spec_equals_drawn_spec_and_split_changes_only_text():
    for seed in range(8):
        a = C.generate_clip(seed, identity=1)
        b = C.generate_clip(seed, identity=1, kind=a.kind, label=a.label,
                            intensity=a.intensity if a.label in S.EMOTIONS else None, num_frames=a.num_frames)
        _assert_same(a, b)
        e = C.generate_clip(seed, identity=1, split="eval")
        np.testing.assert_array_equal(a.state, e.state)
        np.testing.assert_array_equal(a.audio, e.audio)


def test_generate_clips_subranges_reproduce():
    full = list(C.generate_clips(5, 99, num_identities=4))
    tail = list(C.generate_clips(2, 99, num_identities=4, start=3))
    _assert_same(full[3], tail[0])
    _assert_same(full[4], tail[1])


def test_shapes_ranges_and_labels(mixed):
    kinds = set()
    for c in mixed:
        kinds.add(c.kind)
        T = c.num_frames
        assert c.state.dtype == np.float32 and c.state.shape == (T, S.NUM_CHANNELS)
        assert C.TALKING_FRAMES[0] <= T <= C.TALKING_FRAMES[1]
        assert c.audio.dtype == np.float32 and c.audio.shape == (T * S.SAMPLES_PER_FRAME,)
        assert np.isfinite(c.state).all() and np.isfinite(c.audio).all()
        np.testing.assert_array_equal(c.state, S.clip_to_range(c.state))
        assert (c.state >= S.LOW).all() and (c.state <= S.HIGH).all()
        assert np.abs(c.audio).max() <= 1.0
        assert c.au_active.dtype == bool and c.au_active.shape == (10,)
        np.testing.assert_array_equal(c.au_active, D.clip_au_activation(c.state))
        assert c.kind in S.KINDS and len(c.instructions) == C.NUM_INSTRUCTIONS
        if c.label in S.EMOTIONS:
            assert c.kind == "talking" and S.EMOTIONS[c.emotion] == c.label and c.intensity in S.INTENSITIES
        else:
            assert c.emotion == -1 and c.intensity == 0
            assert c.label in S.STATES or c.label == c.kind
        assert c.audio_flag == (1 if c.kind == "talking" else 0)
    assert kinds == set(S.KINDS)


def test_record_roundtrip(mixed):
    for c in mixed[:6]:
        rec = c.to_record()
        assert all(isinstance(v, (np.ndarray, np.generic, bytes)) for v in rec.values())
        json.loads(rec["instructions"])
        _assert_same(C.Clip.from_record(rec), c)
        buf = io.BytesIO()  # through a real container: npz stores bytes as 0-d 'S' arrays
        np.savez(buf, **{k: np.asarray(v) for k, v in rec.items()})
        buf.seek(0)
        with np.load(buf) as z:
            _assert_same(C.Clip.from_record({k: z[k] for k in z.files}), c)


def test_invalid_specs_raise():
    with pytest.raises(ValueError):
        C.generate_clip(0, identity=0, kind="motion", label="happy")
    with pytest.raises(ValueError):
        C.generate_clip(0, identity=0, label="happy", intensity=4)
    with pytest.raises(ValueError):
        C.generate_clip(0, identity=0, label="drowsiness", intensity=2)
    with pytest.raises(ValueError):
        C.generate_clip(0, identity=0, label="bored")


# ----------------------------------------------------------------------------------------------------------------
# Emotions and AU ground truth
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("emotion", S.EMOTIONS)
def test_emotion_au_ground_truth_matches_table(emotion):
    expected = np.array([ch in D.EMOTION_PATTERNS[emotion] for ch in S.AU_CHANNELS[:8]])
    peaks = []
    for intensity in ((1,) if emotion == "neutral" else S.INTENSITIES):
        c = C.generate_clip(5, identity=2, label=emotion, intensity=intensity, num_frames=60)
        np.testing.assert_array_equal(c.au_active[:8], expected)  # blinks drive only AU45
        frames = D.au_activation(c.state)
        assert frames.shape == (60, 10) and frames.dtype == bool
        peaks.append(np.abs(c.state[:, :8]).max() + np.abs(c.state[:, IX["smile"]]).max())
        ev = c.events["expression"]
        assert ev["emotion"] == emotion and ev["intensity"] == intensity
    if emotion != "neutral":
        assert peaks[0] < peaks[1] < peaks[2]


def test_au_thresholds_documented():
    assert D.AU_THRESHOLDS.shape == (10,)
    assert (D.AU_THRESHOLDS[:8] == 0.15).all() and (D.AU_THRESHOLDS[8:] == 0.5).all()
    # every AU in the table clears its threshold at intensity 1 with the least expressive identity and wobble
    for emo, pat in D.EMOTION_PATTERNS.items():
        for ch, v in pat.items():
            if ch in S.AU_CHANNELS:
                assert v * D.INTENSITY_SCALE[1] * 0.9 * 0.9 > D.AU_THRESHOLDS[S.AU_CHANNELS.index(ch)], (emo, ch)


# ----------------------------------------------------------------------------------------------------------------
# Blinks
# ----------------------------------------------------------------------------------------------------------------


def test_blink_durations_intervals_and_visibility(talking):
    n = asym = 0
    for c in talking:
        blinks = c.events["blinks"]
        au45 = c.state[:, [IX["au45_l"], IX["au45_r"]]]
        for b in blinks:
            n += 1
            asym += b["amp_l"] != b["amp_r"]
            if b["long"]:
                assert c.label == "drowsiness" and 0.4 <= b["duration_s"] <= 0.8
                continue
            assert 0.1 <= b["duration_s"] <= 0.4
            assert 0.3 <= b["close_frac"] <= 0.4  # fast close, slower opening
            if b["offset_frame"] <= c.num_frames:  # every blink is visible at frame rate
                assert au45[b["onset_frame"]:b["offset_frame"] + 1].max() > D.AU_THRESHOLDS[8]
        onsets = np.array([b["onset_s"] for b in blinks])
        if len(onsets) > 1:
            assert np.diff(onsets).min() >= D.IBI_MIN_S
        if c.label not in ("drowsiness", "laughter"):  # outside blinks the lids stay open
            closed = (au45 > 0.5).any(1)
            in_blink = np.zeros(c.num_frames, bool)
            for b in blinks:
                in_blink[b["onset_frame"]:b["offset_frame"] + 1] = True
            assert not (closed & ~in_blink).any()
    assert n > 50
    assert 0.03 < asym / n < 0.35  # mostly symmetric, occasionally asymmetric


def test_blink_interval_distribution_long_run():
    rng = np.random.default_rng(0)
    ev = D.blink_events(1200.0, rng, rate_per_min=20.0)
    ibi = np.diff([b["onset_s"] for b in ev])
    assert abs(ibi.mean() - 3.0) < 0.35  # mean interval = 60 / rate
    assert ibi.min() >= D.IBI_MIN_S and ibi.max() <= D.IBI_MAX_S
    assert 1.8 < np.median(ibi) < 3.0  # right-skewed (log-normal)
    d = np.array([b["duration_s"] for b in ev])
    assert 0.15 < np.median(d) < 0.25 and d.min() >= 0.1 and d.max() <= 0.4


def test_drowsiness_long_blinks_droop_and_nods():
    longs = 0
    for seed in range(4):
        c = C.generate_clip(seed, identity=1, label="drowsiness", num_frames=150)
        longs += sum(b["long"] for b in c.events["blinks"])
        for b in c.events["blinks"]:
            assert (0.4 <= b["duration_s"] <= 0.8) if b["long"] else (0.1 <= b["duration_s"] <= 0.4)
        mid = c.num_frames // 2
        assert 0.2 < np.median(c.state[mid:, IX["au45_l"]]) < 0.5  # droopy lids below the AU45 threshold
        drops = c.events["state"]["head_drops"]
        assert 1 <= len(drops) <= 2 and all(8 <= d["depth_deg"] <= 15 for d in drops)
    assert longs >= 2


# ----------------------------------------------------------------------------------------------------------------
# Gaze
# ----------------------------------------------------------------------------------------------------------------


def test_saccades_obey_main_sequence(talking):
    checked = 0
    for c in talking[:15]:
        g = c.events["gaze"]
        t = np.arange(0.0, c.num_frames / FPS, 0.0005)  # 2 kHz
        w = D.gaze_world_at(g, t)
        speed = np.hypot(*np.gradient(w, t, axis=0).T)
        for s in g["saccades"]:
            amp, dur = s["amplitude_deg"], s["duration_s"]
            assert dur == pytest.approx(0.021 + 0.0022 * amp, abs=1e-4)
            assert s["peak_velocity"] == pytest.approx(500 * (1 - np.exp(-amp / 7.35)), rel=1e-3)
            m = (t >= s["onset_s"] - 0.002) & (t <= s["onset_s"] + dur + 0.002)
            if s["onset_s"] + dur > t[-1]:
                continue
            vp = speed[m].max()
            moving = t[m][speed[m] > 0.01 * vp]
            assert vp == pytest.approx(D.saccade_peak_velocity(amp), rel=0.03)
            assert moving[-1] - moving[0] == pytest.approx(D.saccade_duration(amp), rel=0.15)
            assert vp <= 500.0
            end = np.searchsorted(t, s["onset_s"] + dur + 0.001)
            assert w[end] == pytest.approx([s["to_h"], s["to_v"]], abs=1e-3)
            checked += 1
    assert checked > 20


def test_gaze_head_coordination_and_channels():
    beh = D.Behaviour(aversion_prob=0.9, aversion_deg=(18.0, 25.0), coupling_threshold_deg=12.0)
    eye, head, ev = D.gaze_track(200, np.random.default_rng(3), beh)
    assert eye.shape == head.shape == (200, 2)
    big = [s for s in ev["saccades"] if np.hypot(s["to_h"], s["to_v"]) >= 12.0]
    assert big and ev["head_moves"]
    for s in big:  # the head follows in the same direction after the saccade
        later = [m for m in ev["head_moves"] if s["onset_s"] + s["duration_s"] <= m["onset_s"]
                 <= s["onset_s"] + s["duration_s"] + 0.031]
        assert later and np.sign(later[0]["d_yaw"]) == np.sign(s["to_h"] - s["from_h"])
    # eye-in-head + head = world gaze; channels encode eye-in-head
    t = np.arange(200) / FPS
    np.testing.assert_allclose(eye + head, D.gaze_world_at(ev, t), atol=1e-4)
    st = S.neutral_state(200)
    D._set_gaze(st, eye[:, 0], eye[:, 1])
    h, v = S.gaze_angles(st)
    np.testing.assert_allclose(h, np.clip(eye[:, 0], -30, 30), atol=1e-4)
    np.testing.assert_allclose(v, np.clip(eye[:, 1], -30, 30), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Lip sync and audio
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lag", [-1, 0, 2, 3])
def test_lip_lag_is_peak_cross_correlation(lag):
    for seed, label in enumerate(["neutral", "surprised", "laughter", "happy", "drowsiness"]):
        c = C.generate_clip(seed, identity=seed, label=label, num_frames=100, lip_lag_frames=lag)
        env = A.frame_envelope(c.audio)
        assert env.shape == (100,)
        assert A.estimate_lag(env, c.state[:, IX["jaw_open"]]) == lag, label
        assert c.events["lip_lag_frames"] == lag


def test_jaw_from_envelope_convention():
    env = np.zeros(30, np.float32)
    env[10] = 1.0
    jaw = A.jaw_from_envelope(env, 3)
    assert int(np.argmax(jaw)) == 13  # positive lag: the mouth follows the audio
    assert int(np.argmax(A.jaw_from_envelope(env, -2))) == 8
    assert A.jaw_from_envelope(np.zeros(5), 2).tolist() == [0.0] * 5


def test_synthetic_speech_properties():
    wav, env, ev = A.synth_speech(np.random.default_rng(1), 125, f0_hz=120.0, rate_hz=4.5)
    assert wav.shape == (125 * 640,) and wav.dtype == np.float32 and env.shape == (125,)
    np.testing.assert_array_equal(env, A.frame_envelope(wav))
    syl = ev["syllables"]
    rate = len(syl) / sum(d for _, d, _, _ in syl)
    assert 3.0 < rate < 6.0
    assert ev["pauses"] and all(0.25 <= b - a <= 0.7 + 1e-6 for a, b in ev["pauses"])
    pauses = A.detect_pauses(env)
    for a, b in ev["pauses"]:  # every scheduled inter-phrase pause is detected from the envelope
        assert any(p["start_frame"] <= a * FPS + 2 and p["end_frame"] >= b * FPS - 2 for p in pauses)
    f0s = []  # voiced harmonics: autocorrelation pitch of the loudest frames is near f0
    for k in np.argsort(env)[-10:]:
        x = wav[k * 640:(k + 1) * 640].astype(np.float64)
        ac = np.correlate(x, x, "full")[639:]
        lo, hi = 16000 // 400, 16000 // 60
        f0s.append(16000 / (lo + np.argmax(ac[lo:hi])))
    assert np.median(f0s) == pytest.approx(120.0, rel=0.25)
    e = env - env.mean()  # syllabic modulation at 3-6 Hz
    pw = np.abs(np.fft.rfft(e)) ** 2
    fm = np.fft.rfftfreq(len(e), 1 / FPS)
    assert pw[(fm >= 1.5) & (fm <= 8)].sum() > pw[fm > 8].sum()
    assert np.array_equal(A.silence(3), np.zeros(1920, np.float32))


@pytest.mark.skipif(not A.espeak_available(), reason="espeak-ng not installed")
def test_espeak_speech_length():
    wav = A.espeak_speech("Hello there, how are you?", 60)
    assert wav.shape == (60 * 640,) and np.abs(wav).max() > 0.01
    c = C.generate_clip(0, identity=0, label="happy", num_frames=80, audio_source="espeak", lip_lag_frames=2)
    assert c.audio.shape == (80 * 640,) and A.estimate_lag(A.frame_envelope(c.audio), c.state[:, IX["jaw_open"]]) == 2


# ----------------------------------------------------------------------------------------------------------------
# Text-only motion
# ----------------------------------------------------------------------------------------------------------------


def test_motion_clips_are_silent_with_flag_zero():
    for c in _clips(10, 5, kind="motion"):
        assert c.audio_flag == 0 and c.kind == "motion" and c.label == "motion"
        assert not c.audio.any() and c.audio.shape == (c.num_frames * 640,)
        steps = c.events["motion_steps"]
        assert 1 <= len(steps) <= 3 and steps[-1]["end_frame"] <= c.num_frames
        assert all(s["primitive"] in D.PRIMITIVES for s in steps)


@pytest.mark.parametrize("prim, channel, target, tol", [
    ("turn_head_left", "yaw", 25.0, 5.0), ("turn_head_right", "yaw", -25.0, 5.0), ("tilt_head_left", "roll", 15.0, 5.0),
    ("lower_head", "pitch", -15.0, 5.0), ("raise_eyebrows", "au2_l", 0.8, 0.01), ("frown", "au4", 0.8, 0.01),
    ("open_mouth", "jaw_open", 0.7, 0.01), ("close_eyes", "au45_r", 1.0, 0.01), ("smile", "smile", 0.8, 0.01),
])
def test_motion_primitive_reaches_documented_target(prim, channel, target, tol):
    steps = [D.Step(prim, 0.3, D.PRIMITIVES[prim].duration_s)]
    rngs = C.clip_streams(0, 0)
    state, ev = D.synthesize_face(60, rngs, mode="motion", script=steps)
    k0, k1 = ev["motion_steps"][0]["start_frame"], ev["motion_steps"][0]["end_frame"]
    x = state[k0:k1, IX[channel]]
    peak = x[np.argmax(np.abs(x))]
    assert peak == pytest.approx(target, abs=tol)
    rest = max(tol, 0.05) + (2.5 if channel in ("yaw", "pitch", "roll") else 0.0)  # head noise before the step
    assert np.abs(state[:k0 - 2, IX[channel]]).max() < rest


def test_motion_gaze_and_oscillation_primitives():
    steps = [D.Step("look_left", 0.3, 1.0), D.Step("nod", 1.5, 1.2), D.Step("shake_head", 2.9, 1.4)]
    state, ev = D.synthesize_face(120, C.clip_streams(1, 0), mode="motion", script=steps)
    h, _ = S.gaze_angles(state)
    assert h[int(1.0 * FPS):int(4.0 * FPS)] == pytest.approx(20.0, abs=2.5)  # look_left held (20 deg)
    looks = [s for s in ev["gaze"]["saccades"] if s["kind"] == "look_left"]
    assert len(looks) == 1 and looks[0]["to_h"] == 20.0
    pitch = state[:, IX["pitch"]]
    nod_win = pitch[int(1.5 * FPS):int(2.7 * FPS)]
    assert nod_win.min() < pitch[:int(1.5 * FPS)].mean() - 7.0  # nod goes 10 deg down
    yaw = state[int(2.9 * FPS):int(4.3 * FPS), IX["yaw"]]
    assert yaw.max() - yaw.min() > 18.0  # shake: +-15 deg
    text = I.motion_instruction(ev["motion_steps"], np.random.default_rng(0))
    assert "left" in text.lower() and "nod" in text.lower() and "shake" in text.lower()


def test_random_script_natural_length_roundtrip():
    for seed in range(20):
        steps, T = D.random_motion_script(np.random.default_rng(seed))
        assert D.MIN_FRAMES <= T <= D.MAX_FRAMES
        steps2, T2 = D.random_motion_script(np.random.default_rng(seed), T)
        assert steps2 == steps and T2 == T
        short, Ts = D.random_motion_script(np.random.default_rng(seed), 48)
        assert Ts == 48 and (short[-1].start_s + short[-1].duration_s) * FPS <= 48


# ----------------------------------------------------------------------------------------------------------------
# Beyond-emotion states
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state_name", S.STATES)
def test_state_patterns(state_name):
    c = C.generate_clip(3, identity=4, label=state_name, num_frames=140)
    assert c.kind == "talking" and c.label == state_name and c.events["state"]["state"] == state_name
    st, au = c.state, c.au_active
    sacc = c.events["gaze"]["saccades"]
    if state_name == "laughter":
        assert au[IX["au6"]] and st[:, IX["smile"]].max() > 0.8 and c.events["audio"]["style"] == "laughter"
    elif state_name == "cognitive_effort":
        assert au[IX["au4"]] and au[IX["au7"]]
        av = [s for s in sacc if s["kind"] == "aversion"]
        assert av and all(s["to_v"] > 0 for s in av)  # up-left / up-right
        assert c.events["gaze"]["head_moves"]  # coupled gaze-head shifts
    elif state_name == "drowsiness":
        assert np.median(st[:, IX["au45_l"]]) > 0.2
    elif state_name == "low_arousal_negative":
        assert au[IX["au1_l"]] and au[IX["au4"]] and any(s["kind"] == "downcast" and s["to_v"] < 0 for s in sacc)
    elif state_name == "social_engagement":
        assert c.events["state"]["brow_flashes"] and au[IX["au2_l"]] and st[:, IX["smile"]].max() > 0.3
    elif state_name == "evasive_response":
        assert sum(s["kind"] == "aversion" for s in sacc) >= 2
    assert any(I.template_regex(p).fullmatch(x) or x.startswith(p)
               for x in c.instructions for p in I.STATE_PROMPTS[state_name]["train"])


# ----------------------------------------------------------------------------------------------------------------
# Instructions
# ----------------------------------------------------------------------------------------------------------------


def test_emotion_instructions_mention_emotion_and_intensity():
    rng = np.random.default_rng(0)
    for split in I.SPLITS:
        for emo in S.EMOTIONS:
            for intensity in ((1,) if emo == "neutral" else S.INTENSITIES):
                for _ in range(25):
                    text = I.emotion_instruction(rng, emo, intensity, split)
                    assert text.strip() and text[0].isupper() and "{" not in text
                    assert I.mentions_emotion(text, emo), text
                    if emo != "neutral":
                        assert I.mentions_intensity(text, intensity), text


def test_canonical_adverbs_and_template_count():
    assert len(I.EMOTION_TEMPLATES["train"]) == 60
    rng = np.random.default_rng(1)
    texts = [I.emotion_instruction(rng, "happy", 3) for _ in range(200)]
    assert any("extremely" in t for t in texts)
    texts = [I.emotion_instruction(rng, "sad", 1) for _ in range(200)]
    assert any("slightly" in t for t in texts)


def test_held_out_templates_never_in_train_split(mixed):
    markers = I.EVAL_ONLY_MARKERS
    for text in I._iter_train_text():
        assert not any(m in text.lower() for m in markers), text
    for tpl in I.all_templates("eval"):
        assert any(m in tpl.lower() for m in markers), tpl
        assert tpl not in I.all_templates("train")
    rng = np.random.default_rng(5)
    train = [x for c in mixed for x in c.instructions]
    for emo in S.EMOTIONS:
        for i in (1, 2, 3):
            train += [I.emotion_instruction(rng, emo, i, "train") for _ in range(20)]
    for st in S.STATES:
        train += [I.state_instruction(rng, st, "train") for _ in range(10)]
    for seed in range(40):
        steps, _ = D.random_motion_script(np.random.default_rng(seed))
        train.append(I.motion_instruction(steps, rng, "train"))
    eval_res = [I.template_regex(t) for t in I.all_templates("eval")]
    for text in train:
        assert text.strip()
        assert not any(m in text.lower() for m in markers), text
        assert not any(r.fullmatch(text) for r in eval_res), text
    evals = [x for c in _clips(12, 4, split="eval") for x in c.instructions]
    assert sum(any(m in x.lower() for m in markers) for x in evals) > len(evals) // 2


def test_sample_instructions_variants_and_au_sentences():
    c = C.generate_clip(2, identity=0, label="surprised", intensity=3, num_frames=70)
    variants = I.sample_instructions(c, np.random.default_rng(0), "train", k=6)
    assert len(variants) == 6 and all(v.strip() for v in variants) and len(set(variants)) >= 4
    assert any(I.mentions_emotion(v, "surprised") for v in variants)
    assert any("brow" in v.lower() for v in variants)  # AU sentences from the ground truth
    assert I.au_sentences(np.array([1, 1, 0, 0, 1, 0, 0, 1, 0, 0], bool)) == [
        "Raise your inner eyebrows.", "Lower your eyebrows.", "Tighten your eyelids."]
    assert I.au_sentences(["au2_l", "au45_r"]) == ["Raise your left outer eyebrow.", "Close your right eye."]
    assert I.au_sentences(np.zeros(10, bool)) == []
    for kind in ("motion", "listening"):
        c = C.generate_clip(4, identity=1, kind=kind)
        assert all(x.strip() for x in c.instructions)
    with pytest.raises(ValueError):
        I.emotion_instruction(np.random.default_rng(0), "happy", 0)


# ----------------------------------------------------------------------------------------------------------------
# Dyadic sessions
# ----------------------------------------------------------------------------------------------------------------


def test_listener_smiles_follow_speaker_by_configured_delay():
    sess = DY.generate_session(3, 1, 2, 125, num_reactions=10, reaction_delay_s=0.6, speaker_label="happy")
    assert len(sess.listeners) == 10 and sess.reaction_delays_frames == [15] * 10
    sp = sess.speaker
    assert sp.kind == "talking" and sp.events["speaker_smiles"]
    states = np.stack([l.state for l in sess.listeners])
    assert len({s.tobytes() for s in states}) == 10  # different reactions
    for l in sess.listeners:
        assert l.kind == "listening" and l.audio_flag == 0 and l.identity == 2
        np.testing.assert_array_equal(l.audio, sp.audio)
        assert DY.mirror_lag(sp.state, l.state, "smile") == 15
        g = l.events["mirror_gain"]
        np.testing.assert_allclose(l.state[15:, IX["smile"]], g * np.maximum(sp.state[:-15, IX["smile"]], 0), atol=1e-5)
        for n in l.events["nods"]:  # nods start 0.1-0.35 s after a detected speaker pause
            gap = n["start_s"] - n["pause_start_frame"] / FPS
            assert 0.1 - 1e-6 <= gap <= 0.35 + 1e-6
    assert sum(len(l.events["nods"]) for l in sess.listeners) >= 5
    # per-reaction delays when not fixed
    s2 = DY.generate_session(4, 1, 2, 110, num_reactions=4)
    for l, d in zip(s2.listeners, s2.reaction_delays_frames):
        assert 10 <= d <= 25 and DY.mirror_lag(s2.speaker.state, l.state, "smile", 40) == d


def test_listening_clip_via_generate_clip():
    c = C.generate_clip(8, identity=5, kind="listening", num_frames=110)
    assert c.kind == "listening" and c.audio_flag == 0 and c.audio.any() and c.identity == 5
    assert c.events["speaker_identity"] == 6 and 10 <= c.events["reaction_delay_frames"] <= 25


# ----------------------------------------------------------------------------------------------------------------
# REACT export
# ----------------------------------------------------------------------------------------------------------------


def test_react_export_shapes_and_mappings():
    c = C.generate_clip(1, identity=0, label="happy", intensity=3, num_frames=90)
    co = R.to_react_coefficients(c.state)
    assert co.shape == (90, 58) and co.dtype == np.float32
    assert len(R.EXPRESSION_NAMES) == 52 and len(set(R.EXPRESSION_NAMES)) == 52
    np.testing.assert_allclose(co[:, 52], np.deg2rad(c.state[:, IX["pitch"]]), atol=1e-6)
    np.testing.assert_allclose(co[:, 53], np.deg2rad(c.state[:, IX["yaw"]]), atol=1e-6)
    np.testing.assert_allclose(co[:, 55:], c.state[:, S.TRANSLATION_SLICE])
    np.testing.assert_allclose(co[:, R.EXPRESSION_NAMES.index("jawOpen")], c.state[:, IX["jaw_open"]])
    assert (co[:, :52] >= 0).all() and (co[:, :52] <= 1).all()
    probs = R.emotion_probs_from_clip(c)
    at = R.to_react_attributes(c.state, probs)
    assert at.shape == (90, 25) and at.dtype == np.float32
    aus = dict(zip(R.REACT_AUS, at[-1, :15]))
    assert aus["AU6"] == 1 and aus["AU12"] == 1 and aus["AU4"] == 0 and aus["AU9"] == 0
    assert at[-1, 15] > 0.5  # positive valence
    assert R.REACT_EXPRESSIONS[int(np.argmax(at[-1, 17:]))] == "happy"
    np.testing.assert_allclose(at[:, 17:].sum(-1), 1.0, atol=1e-5)
    at0 = R.to_react_attributes(c.state)  # no emotion given: unmodelled AUs are 0, probabilities from the face
    assert at0.shape == (90, 25) and not at0[:, [5, 6, 8, 10, 11, 12]].any()
    assert R.REACT_EXPRESSIONS[int(np.argmax(at0[-1, 17:]))] == "happy"
    d = C.generate_clip(1, identity=0, label="disgusted", intensity=2, num_frames=60)
    ad = R.to_react_attributes(d.state, R.emotion_probs_from_clip(d))
    assert ad[-1, R.REACT_AUS.index("AU9")] == 1 and ad[-1, R.REACT_AUS.index("AU15")] == 1
    assert R.to_react_attributes(np.zeros((4, 3, 24), np.float32)).shape == (4, 3, 25)
