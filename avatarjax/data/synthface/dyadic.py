"""Dyadic sessions: a speaker clip and several appropriate listener reactions that depend on it (numpy + scipy).

Every listener reaction follows the same, exactly known dependence on the speaker (REACT-style "several
appropriate reactions per speaker clip"), with its own random seed:

- mirrored smiles: ``listener.smile[t] = g * max(speaker.smile[t - d], 0)`` and ``listener.au6[t] = g *
  speaker.au6[t - d]`` with mirroring gain ``g ~ U(0.5, 0.9)`` and reaction delay ``d`` frames (``d =
  round(delay_s * fps)``, ``delay_s ~ U(0.4, 1.0)`` per reaction, or the fixed ``reaction_delay_s``); frames before
  ``d`` repeat the speaker's first frame;
- nods at speaker pauses (``audio.detect_pauses`` on the speaker's audio envelope): with probability 0.75 per
  pause, a 1-2 cycle nod of 4-8 deg lasting 0.5-0.9 s starting 0.1-0.35 s after the pause begins;
- gaze toward / away from the speaker (the camera, gaze 0): the listener mostly looks at the speaker; during a
  speaker phrase longer than 1.5 s it looks away with probability 0.35 (8-15 deg sideways, -8..+4 deg vertical,
  0.5-1.2 s) and looks back before the phrase ends;
- back-channel brow raises: at up to 2 speaker loudness peaks (envelope local maxima above its 90th percentile,
  >= 1.5 s apart), with probability 0.3 each, AU1 + AU2 of 0.4-0.6 for 0.5 s starting ``d`` frames later.

The speaker is a talking clip (label drawn from neutral / happy / social_engagement / sad / surprised unless
given) with 1-3 added transient smiles (smile 0.5-0.8, AU6 0.6 x smile, 1.0-2.5 s; ``events['speaker_smiles']``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import audio as A
from . import dynamics as D
from . import instructions as I
from . import schema as S
from .clips import NUM_INSTRUCTIONS, Clip, _jsonable, clip_seed, generate_clip

IX = S.INDEX
SPEAKER_LABELS = ("neutral", "happy", "social_engagement", "sad", "surprised")
SPEAKER_LABEL_PROBS = (0.3, 0.3, 0.15, 0.15, 0.1)
REACTION_DELAY_RANGE_S = (0.4, 1.0)
NOD_PROB = 0.75
AVERT_PROB = 0.35
BROW_PROB = 0.3


@dataclass
class Session:
    """speaker: the talking :class:`Clip`; listeners: ``num_reactions`` listening clips (state ``[T, 24]``, audio =
    the speaker's audio); reaction_delays_frames: the ground-truth mirroring delay of each listener; pauses:
    speaker pauses (``audio.detect_pauses``); seed: the session seed."""

    speaker: Clip
    listeners: list[Clip]
    reaction_delays_frames: list[int]
    pauses: list[dict]
    seed: int


def _streams(seed: int, speaker_identity: int, listener_identity: int, index: int) -> dict[str, np.random.Generator]:
    names = ("reaction",) + D.STREAMS + ("instructions",)
    ss = np.random.SeedSequence([int(seed), int(speaker_identity), int(listener_identity), 0xD1AD, int(index)])
    return {n: np.random.default_rng(c) for n, c in zip(names, ss.spawn(len(names)))}


def _shift(x: np.ndarray, d: int) -> np.ndarray:
    """``y[t] = x[t - d]`` (edge values repeated)."""
    idx = np.clip(np.arange(x.shape[0]) - d, 0, x.shape[0] - 1)
    return x[idx]


def add_speaker_smiles(speaker: Clip, rng: np.random.Generator) -> list[dict]:
    """Add 1-3 transient smiles (smile 0.5-0.8 plus AU6 0.6 x that, 1.0-2.5 s, 0.2 s ramps) to the speaker
    clip's state in place (then clipped to range); returns their spans."""
    T = speaker.num_frames
    t = np.arange(T) / S.FPS
    out = []
    for a, b in D._episode_starts(rng, T / S.FPS, int(rng.integers(1, 4)), (1.0, 2.5), margin=0.3, gap=0.5):
        amp = float(rng.uniform(0.5, 0.8))
        bump = D._bump(t, a, b - a, 0.25)
        speaker.state[:, IX["smile"]] += (amp * bump).astype(np.float32)
        speaker.state[:, IX["au6"]] += (0.6 * amp * bump).astype(np.float32)
        out.append(D._span(a, b, S.FPS, amplitude=D._f(amp)))
    speaker.state[:] = S.clip_to_range(speaker.state)
    return out


def _speech_segments(pauses: list[dict], env: np.ndarray) -> list[tuple[int, int]]:
    """Speech spans (frames) between leading silence, pauses and the end of the clip."""
    T = env.shape[0]
    ref = float(np.percentile(env, 95)) if T else 0.0
    loud = np.nonzero(env >= 0.1 * ref)[0] if ref > 0 else np.array([], int)
    if loud.size == 0:
        return []
    start, segs = int(loud[0]), []
    for p in pauses:
        if p["start_frame"] > start:
            segs.append((start, p["start_frame"]))
        start = p["end_frame"]
    if start < T:
        segs.append((start, T))
    return segs


def _loud_peaks(env: np.ndarray, min_gap: int) -> list[int]:
    thr = float(np.percentile(env, 90))
    cand = [k for k in range(1, len(env) - 1) if env[k] >= thr and env[k] >= env[k - 1] and env[k] >= env[k + 1]]
    out: list[int] = []
    for k in cand:
        if not out or k - out[-1] >= min_gap:
            out.append(k)
    return out


def listener_reaction(speaker: Clip, pauses: list[dict], rngs: dict[str, np.random.Generator], *,
                      listener_identity: int, reaction_delay_s: float | None = None) -> tuple[np.ndarray, dict]:
    """One appropriate listener reaction to ``speaker``: state float32 ``[T, 24]`` and its ground-truth events
    (``reaction_delay_frames``, ``reaction_delay_s``, ``mirror_gain``, ``nods``, ``gaze_shifts``,
    ``brow_raises`` plus the background ``blinks`` / ``gaze`` / ``behaviour``). See the module docstring."""
    r = rngs["reaction"]
    T, fps = speaker.num_frames, S.FPS
    t = np.arange(T) / fps
    delay_s = float(r.uniform(*REACTION_DELAY_RANGE_S)) if reaction_delay_s is None else float(reaction_delay_s)
    d = int(round(delay_s * fps))
    gain = float(r.uniform(0.5, 0.9))
    add = np.zeros((T, S.NUM_CHANNELS), np.float32)
    add[:, IX["smile"]] = gain * np.maximum(_shift(speaker.state[:, IX["smile"]], d), 0.0)
    add[:, IX["au6"]] = gain * _shift(speaker.state[:, IX["au6"]], d)
    nods = []
    for p in pauses:
        if r.random() >= NOD_PROB:
            continue
        start = p["start_s"] + float(r.uniform(0.1, 0.35))
        dur = float(r.uniform(0.5, 0.9))
        depth = float(r.uniform(4.0, 8.0))
        cycles = int(r.integers(1, 3))
        if start >= T / fps:
            continue
        add[:, IX["pitch"]] += D.nod(t, start, dur, depth, cycles).astype(np.float32)
        nods.append(D._span(start, start + dur, fps, depth_deg=D._f(depth), cycles=cycles,
                            pause_start_frame=p["start_frame"]))
    env = A.frame_envelope(speaker.audio)
    episodes, shifts = [], []
    for a, b in _speech_segments(pauses, env):
        if (b - a) / fps <= 1.5 or r.random() >= AVERT_PROB:
            continue
        length = float(r.uniform(0.5, 1.2))
        lo, hi = a / fps + 0.4, b / fps - length - 0.2
        if hi <= lo:
            continue
        s0 = float(r.uniform(lo, hi))
        h = float(r.uniform(8.0, 15.0)) * (1.0 if r.random() < 0.5 else -1.0)
        v = float(r.uniform(-8.0, 4.0))
        episodes.append(D.GazeEpisode(s0, s0 + length, h, v, "away"))
        shifts.append(D._span(s0, s0 + length, fps, direction="away", h_deg=D._f(h), v_deg=D._f(v)))
        shifts.append(D._span(s0 + length, s0 + length, fps, direction="toward", h_deg=0.0, v_deg=0.0))
    brows = []
    for k in _loud_peaks(env, int(1.5 * fps)):
        if len(brows) >= 2:
            break
        if r.random() >= BROW_PROB:
            continue
        start = (k + d) / fps
        if start >= T / fps:
            continue
        amp = float(r.uniform(0.4, 0.6))
        bump = amp * D._bump(t, start, 0.5, 0.12)
        for ch in ("au1_l", "au1_r", "au2_l", "au2_r"):
            add[:, IX[ch]] += bump.astype(np.float32)
        brows.append(D._span(start, start + 0.5, fps, amplitude=D._f(amp), speaker_peak_frame=int(k)))
    style = D.identity_style(listener_identity)
    state, ev = D.synthesize_face(T, rngs, mode="listening", style=style, additive=add, episodes=episodes)
    events = {"reaction_delay_frames": d, "reaction_delay_s": D._f(delay_s), "mirror_gain": D._f(gain),
              "nods": nods, "gaze_shifts": shifts, "brow_raises": brows, "style": style, **ev}
    return state, events


def generate_session(seed: int, speaker_identity: int, listener_identity: int, num_frames: int,
                     num_reactions: int = 10, *, reaction_delay_s: float | None = None,
                     speaker_label: str | None = None, split: str = "train", lip_lag_frames: int = 2,
                     num_instructions: int = NUM_INSTRUCTIONS, audio_source: str = "synth") -> Session:
    """A speaker clip and ``num_reactions`` listener reactions (deterministic per arguments).

    The speaker is ``generate_clip(clip_seed(seed, 0), identity=speaker_identity, kind='talking', ...)`` plus
    transient smiles (:func:`add_speaker_smiles`); reaction ``i`` uses its own seed stream
    (``SeedSequence([seed, speaker_identity, listener_identity, 0xD1AD, i + 1])``) and the same dependence rules.
    ``reaction_delay_s`` fixes every reaction's mirroring delay (else U(0.4, 1.0) s each). Listener clips:
    kind ``'listening'``, label ``'listening'``, emotion -1, intensity 0, audio = the speaker's audio,
    audio_flag 0, seed = ``seed``; their events hold ``reaction_index``, ``speaker_identity``,
    ``speaker_seed``, ``speaker_smiles`` and ``speaker_pauses``.
    """
    if num_reactions < 1:
        raise ValueError("num_reactions must be >= 1")
    rng0 = _streams(seed, speaker_identity, listener_identity, 0)["reaction"]
    if speaker_label is None:
        speaker_label = SPEAKER_LABELS[int(rng0.choice(len(SPEAKER_LABELS), p=SPEAKER_LABEL_PROBS))]
    sp_seed = clip_seed(seed, 0)
    speaker = generate_clip(sp_seed, identity=speaker_identity, kind="talking", label=speaker_label,
                            num_frames=num_frames, split=split, lip_lag_frames=lip_lag_frames,
                            num_instructions=num_instructions, audio_source=audio_source)
    smiles = add_speaker_smiles(speaker, rng0)
    speaker.au_active = D.clip_au_activation(speaker.state)
    speaker.events["speaker_smiles"] = _jsonable(smiles)
    speaker.instructions = I.sample_instructions(speaker, rng0, split, num_instructions)
    pauses = A.detect_pauses(A.frame_envelope(speaker.audio))
    listeners, delays = [], []
    for i in range(num_reactions):
        rngs = _streams(seed, speaker_identity, listener_identity, i + 1)
        state, ev = listener_reaction(speaker, pauses, rngs, listener_identity=listener_identity,
                                      reaction_delay_s=reaction_delay_s)
        ev.update(reaction_index=i, speaker_identity=int(speaker_identity), speaker_seed=int(sp_seed),
                  speaker_smiles=smiles, speaker_pauses=pauses, split=split,
                  au_thresholds=D.AU_THRESHOLDS.tolist())
        clip = Clip(state=state, audio=speaker.audio.copy(), audio_flag=0, kind="listening", emotion=-1,
                    intensity=0, label="listening", instructions=[], identity=int(listener_identity), seed=int(seed),
                    au_active=D.clip_au_activation(state), events=_jsonable(ev))
        clip.instructions = I.sample_instructions(clip, rngs["instructions"], split, num_instructions)
        listeners.append(clip)
        delays.append(int(ev["reaction_delay_frames"]))
    return Session(speaker=speaker, listeners=listeners, reaction_delays_frames=delays, pauses=pauses,
                   seed=int(seed))


def mirror_lag(speaker_state: np.ndarray, listener_state: np.ndarray, channel: str = "smile",
               max_lag: int = 40) -> int:
    """The lag (frames; positive = the listener follows) maximising the correlation of ``channel`` between the
    speaker's and a listener's tracks (``audio.estimate_lag``). For ``smile`` the speaker's track is rectified
    (``max(smile, 0)``) first, as the listener mirrors only positive smiles."""
    sp = speaker_state[:, IX[channel]]
    if channel == "smile":
        sp = np.maximum(sp, 0.0)
    return A.estimate_lag(sp, listener_state[:, IX[channel]], max_lag)
