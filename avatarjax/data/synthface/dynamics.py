"""Face-state dynamics with exactly known ground truth (numpy + scipy only; no JAX).

Every generator writes into (or returns) float32 ``[T, schema.NUM_CHANNELS]`` state tracks at ``schema.FPS`` and
returns JSON-serialisable ground-truth metadata (event times in seconds and frames). Randomness comes only from
the ``numpy.random.Generator`` passed in, so everything is deterministic per seed.

Time convention: frame ``k`` is sampled at ``t = k / fps`` seconds (continuous-time events such as blinks and
saccades are evaluated at these instants; ``*_at(events, t)`` functions evaluate them at any time, e.g. 1 kHz).

Sign conventions (see ``schema``): horizontal gaze / yaw > 0 = towards the subject's left; vertical gaze /
pitch > 0 = up; roll > 0 = head tilted towards the subject's left shoulder (schema does not fix the roll sign;
this module and the instructions use that convention). "Left" in primitives and instructions is the subject's left.

Contents

- Emotions: :data:`EMOTION_PATTERNS` (values at intensity 3) scaled by :data:`INTENSITY_SCALE`, applied with an
  onset / apex / offset :func:`envelope` (:func:`apply_emotion`).
- Blinks: :func:`blink_events`, :func:`blink_at`, :func:`blink_track` (durations, IBI distribution: see
  :data:`BLINK_DURATION_RANGE_S`, :func:`blink_events`).
- Gaze: fixations + main-sequence saccades with gaze-head coupling (:func:`gaze_track`, :func:`gaze_world_at`,
  :func:`saccade_duration`, :func:`saccade_peak_velocity`).
- Head: :func:`head_motion` (band-limited Gaussian noise, amplitude knob).
- Beyond-emotion states: :func:`plan_state` for each of ``schema.STATES``.
- Text-only motion scripts: :data:`PRIMITIVES`, :func:`random_motion_script`, :func:`render_motion_script`.
- Composition: :func:`synthesize_face` (used by ``clips.py``).
- Ground truth: :data:`AU_THRESHOLDS`, :func:`au_activation`, :func:`clip_au_activation`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import signal, special

from . import schema as S

FPS = S.FPS
IX = S.INDEX

# ----------------------------------------------------------------------------------------------------------------
# Ground-truth AU activation
# ----------------------------------------------------------------------------------------------------------------

#: Per-AU-channel activation thresholds (same order as ``schema.AU_CHANNELS``). A channel is "active" in a frame
#: when its value is strictly greater than the threshold. Brow / lid / cheek AUs: 0.15 (every AU of the emotion
#: table reaches >= 0.18 at its apex at intensity 1; beyond-emotion states and motion primitives drive AUs to
#: >= 0.3; the generators never add sub-threshold AU noise, so "active" is unambiguous).
#: AU45 (eye closure): 0.5, i.e. the lid is more than half closed: every blink (peak >= 0.9, >= 50 ms above 0.5)
#: crosses it, while the drowsy eyelid droop (<= 0.40) and the laughter / cheek squeeze (<= 0.30) do not.
AU_THRESHOLDS = np.array([0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.5, 0.5], np.float32)


def au_activation(state: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Per-frame ground-truth AU activation: bool ``[..., T, 10]`` = ``state[..., :10] > thresholds``.

    ``state`` is ``[..., T, 24]`` (or already the ``[..., T, 10]`` AU block); ``thresholds`` defaults to
    :data:`AU_THRESHOLDS` (shape ``[10]``).
    """
    thr = AU_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float32)
    return np.asarray(state)[..., S.AU_SLICE] > thr


def clip_au_activation(state: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Clip-level ground truth: bool ``[..., 10]``, an AU is active when its maximum over time exceeds its threshold."""
    return au_activation(state, thresholds).any(axis=-2)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def min_jerk(u: np.ndarray | float) -> np.ndarray:
    """Minimum-jerk step ``10u^3 - 15u^4 + 6u^5`` with ``u`` clipped to [0, 1] (0 -> 0, 1 -> 1, zero end velocities)."""
    u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


@lru_cache(maxsize=32)
def _lowpass(cutoff_hz: float, fps: float, order: int) -> tuple[np.ndarray, float]:
    sos = signal.butter(order, cutoff_hz, fs=fps, output="sos")
    n = 8192
    x = np.zeros(n)
    x[n // 2] = 1.0
    h = signal.sosfiltfilt(sos, x)
    return sos, float(np.sqrt(np.sum(h * h)))  # std of the zero-phase-filtered unit white noise


def smooth_noise(rng: np.random.Generator, num_frames: int, cutoff_hz: float, *, channels: int = 1,
                 fps: float = FPS, order: int = 2) -> np.ndarray:
    """Band-limited Gaussian noise, float64 ``[T, channels]`` with unit stationary standard deviation.

    White noise filtered forward-backward by an order-``order`` Butterworth low-pass at ``cutoff_hz`` (zero phase),
    divided by the filter's noise gain; ``3 / cutoff_hz`` seconds of padding on each side remove edge effects.
    """
    sos, gain = _lowpass(float(cutoff_hz), float(fps), order)
    pad = int(math.ceil(3.0 * fps / cutoff_hz))
    x = rng.standard_normal((num_frames + 2 * pad, channels))
    return signal.sosfiltfilt(sos, x, axis=0)[pad:pad + num_frames] / gain


def envelope(num_frames: int, onset_frame: float, onset_frames: float, apex_frames: float,
             offset_frames: float) -> np.ndarray:
    """Onset / apex / offset envelope, float32 ``[T]`` in [0, 1].

    0 before ``onset_frame``; a minimum-jerk rise over ``onset_frames``; 1 for ``apex_frames``; a minimum-jerk fall
    over ``offset_frames``; 0 afterwards. Any phase may run past the end of the clip (``apex_frames=inf`` holds the
    apex to the end). Frame positions are the integers ``0 .. T-1``.
    """
    k = np.arange(num_frames, dtype=np.float64)
    rise = min_jerk((k - onset_frame) / max(onset_frames, 1e-6))
    fall_start = onset_frame + onset_frames + apex_frames
    fall = 1.0 - min_jerk((k - fall_start) / max(offset_frames, 1e-6)) if np.isfinite(fall_start) else 1.0
    return (rise * fall).astype(np.float32)


def _bump(t: np.ndarray, start: float, duration: float, ramp: float) -> np.ndarray:
    """Trapezoid with minimum-jerk ramps: rises over ``ramp`` from ``start``, falls to 0 at ``start + duration``."""
    ramp = min(ramp, duration / 2.0)
    return min_jerk((t - start) / ramp) * (1.0 - min_jerk((t - (start + duration - ramp)) / ramp))


def _f(x) -> float:
    return round(float(x), 5)


def _set_gaze(state: np.ndarray, h_deg: np.ndarray, v_deg: np.ndarray) -> None:
    """Write eye-in-head angles (degrees; + = subject's left / up) into the 4 gaze magnitude channels."""
    g = S.GAZE_DEGREES
    state[:, IX["gaze_left"]] = np.clip(h_deg / g, 0.0, 1.0)
    state[:, IX["gaze_right"]] = np.clip(-h_deg / g, 0.0, 1.0)
    state[:, IX["gaze_up"]] = np.clip(v_deg / g, 0.0, 1.0)
    state[:, IX["gaze_down"]] = np.clip(-v_deg / g, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Emotions
# ----------------------------------------------------------------------------------------------------------------

#: Amplitude multiplier per MEAD intensity level (1 = slight, 2 = moderate, 3 = extreme).
INTENSITY_SCALE = {1: 0.45, 2: 0.7, 3: 1.0}

#: Emotion -> {channel: value at intensity 3}. AU values are either >= 0.5 (active at every intensity) or absent,
#: so the set of active AUs of an emotion does not depend on intensity. Pose offsets are degrees, depth is scale-1.
#: contempt: schema has no unilateral mouth channel, so its one-sided smile (R12+R14) is approximated by a weak
#: symmetric smile plus a chin-up, head-tilted, turned pose.
EMOTION_PATTERNS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"au6": 0.7, "smile": 0.85, "pitch": 2.0},
    "sad": {"au1_l": 0.7, "au1_r": 0.7, "au4": 0.5, "smile": -0.55, "pitch": -4.0},
    "angry": {"au4": 0.85, "au7": 0.7, "lip_stretch": 0.2, "pitch": -2.0, "depth": 0.03},
    "surprised": {"au1_l": 0.8, "au1_r": 0.8, "au2_l": 0.8, "au2_r": 0.8, "au5": 0.7, "jaw_open": 0.45,
                  "pitch": 3.0},
    "fear": {"au1_l": 0.7, "au1_r": 0.7, "au2_l": 0.5, "au2_r": 0.5, "au4": 0.5, "au5": 0.6, "lip_stretch": 0.6,
             "jaw_open": 0.15, "depth": -0.03},
    "disgusted": {"au4": 0.6, "au7": 0.55, "smile": -0.35, "lip_stretch": 0.15, "pitch": -2.0},
    "contempt": {"smile": 0.3, "pitch": 4.0, "roll": 3.0, "yaw": 4.0},
}


def emotion_pattern(emotion: str | int, intensity: int, expressiveness: float = 1.0) -> np.ndarray:
    """Apex pattern, float32 ``[24]``: ``EMOTION_PATTERNS[emotion] * INTENSITY_SCALE[intensity] * expressiveness``."""
    name = S.EMOTIONS[emotion] if isinstance(emotion, (int, np.integer)) else emotion
    if name not in EMOTION_PATTERNS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {S.EMOTIONS}")
    if name != "neutral" and intensity not in INTENSITY_SCALE:
        raise ValueError(f"intensity must be one of {tuple(INTENSITY_SCALE)}, got {intensity!r}")
    out = np.zeros(S.NUM_CHANNELS, np.float32)
    scale = INTENSITY_SCALE.get(intensity, 1.0) * expressiveness
    for ch, v in EMOTION_PATTERNS[name].items():
        out[IX[ch]] = v * scale
    return out


def active_pattern_aus(emotion: str) -> tuple[str, ...]:
    """AU channel names the emotion drives (intensity-independent by construction of the table)."""
    return tuple(ch for ch in S.AU_CHANNELS if ch in EMOTION_PATTERNS[emotion])


def expression_timing(num_frames: int, rng: np.random.Generator, *, fps: float = FPS) -> dict:
    """Random onset / apex / offset timing (frames) of a clip-long expression.

    Onset starts at U(0, 0.3) s and lasts U(0.3, 0.7) s; the apex lasts at least 0.5 s; with probability 0.5 it
    holds to the end, otherwise the offset (U(0.4, 0.8) s) starts U(0.3, 0.8) s before the end (a partial return).
    """
    onset = float(rng.uniform(0.0, 0.3) * fps)
    rise = float(rng.uniform(0.3, 0.7) * fps)
    hold_to_end = bool(rng.random() < 0.5)
    tail = float(rng.uniform(0.3, 0.8) * fps)
    fall = float(rng.uniform(0.4, 0.8) * fps)
    min_apex = 0.5 * fps
    onset = min(onset, max(0.0, (num_frames - min_apex) * 0.2))
    rise = min(rise, max(1.0, (num_frames - min_apex) * 0.4))
    apex = math.inf if hold_to_end else max(min_apex, num_frames - tail - onset - rise)
    return {"onset_frame": _f(onset), "onset_frames": _f(rise), "apex_frames": apex if hold_to_end else _f(apex),
            "offset_frames": _f(fall)}


def timing_envelope(num_frames: int, timing: dict) -> np.ndarray:
    """:func:`envelope` from a :func:`expression_timing` dict (``apex_frames`` may be ``inf`` or None)."""
    apex = timing["apex_frames"]
    apex = math.inf if apex is None else float(apex)
    return envelope(num_frames, timing["onset_frame"], timing["onset_frames"], apex, timing["offset_frames"])


def apply_emotion(state: np.ndarray, emotion: str | int, intensity: int, rng: np.random.Generator, *,
                  fps: float = FPS, expressiveness: float = 1.0, timing: dict | None = None) -> dict:
    """Add the emotion's pattern with an onset/apex/offset envelope into ``state`` (``[T, 24]``, in place).

    The apex carries a slow multiplicative fluctuation of 4 % std (clipped to +-10 %). Returns the timing dict
    (frames; ``apex_frames`` None = held to the end) plus ``emotion``, ``intensity`` and the apex ``pattern``.
    """
    num_frames = state.shape[0]
    name = S.EMOTIONS[emotion] if isinstance(emotion, (int, np.integer)) else emotion
    pattern = emotion_pattern(name, intensity, expressiveness)
    timing = dict(timing) if timing is not None else expression_timing(num_frames, rng, fps=fps)
    env = timing_envelope(num_frames, timing)
    wobble = np.clip(1.0 + 0.04 * smooth_noise(rng, num_frames, 0.4, fps=fps)[:, 0], 0.9, 1.1)
    state += (env * wobble)[:, None].astype(np.float32) * pattern[None, :]
    if not np.isfinite(timing["apex_frames"]):
        timing["apex_frames"] = None
    return {**timing, "emotion": name, "intensity": int(intensity),
            "pattern": {S.CHANNELS[i]: _f(v) for i, v in enumerate(pattern) if v != 0.0}}


# ----------------------------------------------------------------------------------------------------------------
# Blinks
# ----------------------------------------------------------------------------------------------------------------

#: Spontaneous blink duration (lid starts closing -> fully reopened), seconds. Drawn from a log-normal with
#: median 0.20 s and sigma 0.3, truncated to this range. Closing takes 30-40 % of it (fast close, slower opening).
BLINK_DURATION_RANGE_S = (0.10, 0.40)
BLINK_DURATION_MEDIAN_S = 0.20
#: Prolonged (drowsy) blinks: uniform in this range, close 25 %, held closed 30 %, reopen 45 %.
LONG_BLINK_RANGE_S = (0.40, 0.80)
#: Inter-blink interval (onset to onset): ``refractory + LogNormal(median m, sigma 0.6)`` with the median chosen so
#: the mean interval is ``60 / rate_per_min``; truncated to [IBI_MIN_S, IBI_MAX_S].
IBI_REFRACTORY_S = 0.3
IBI_SIGMA = 0.6
IBI_MIN_S, IBI_MAX_S = 0.5, 12.0
#: Default spontaneous blink rates (blinks/min): talking raises the rate, reading / attending lowers it.
BLINK_RATE_TALKING = 22.0
BLINK_RATE_RESTING = 16.0


def _truncated_lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    a = special.ndtr((math.log(lo) - math.log(median)) / sigma)
    b = special.ndtr((math.log(hi) - math.log(median)) / sigma)
    u = rng.uniform(a, b)
    return float(np.clip(median * math.exp(sigma * special.ndtri(u)), lo, hi))


def blink_events(duration_s: float, rng: np.random.Generator, *, rate_per_min: float = BLINK_RATE_TALKING,
                 long_blink_prob: float = 0.0, duration_scale: float = 1.0, asymmetry_prob: float = 0.15,
                 forbidden: Sequence[tuple[float, float]] = (), fps: float = FPS) -> list[dict]:
    """Spontaneous blinks in ``[0, duration_s)``: a list of JSON-serialisable dicts, ordered by onset.

    Each blink: ``onset_s``, ``duration_s``, ``close_frac`` (fraction of the duration spent closing), ``hold_frac``
    (fraction held fully closed; 0 except long blinks), ``amp_l`` / ``amp_r`` (peak closure, 0.9-1.0),
    ``delay_r_s`` (right eye's delay, may be negative), ``long`` (prolonged drowsy blink), ``onset_frame`` /
    ``offset_frame`` (first frame at or after onset / first frame at or after the end).

    Intervals: first onset at U(0, 1) x an interval draw (stationary start), then ``refractory + log-normal``
    intervals (see :data:`IBI_REFRACTORY_S`), always >= the previous blink's end + 0.25 s. Durations: see
    :data:`BLINK_DURATION_RANGE_S` (times ``duration_scale``, still truncated to that range); with probability
    ``long_blink_prob`` a prolonged blink from :data:`LONG_BLINK_RANGE_S`. Asymmetry: with probability
    ``asymmetry_prob`` one eye closes to 85-97 % of the other's amplitude and lags by up to 15 ms; otherwise both
    eyes are identical. Blinks whose span would intersect a ``forbidden`` (start_s, end_s) interval are dropped.
    """
    mean_ibi = 60.0 / max(rate_per_min, 1e-3)
    median = max(mean_ibi - IBI_REFRACTORY_S, 0.05) / math.exp(IBI_SIGMA ** 2 / 2)

    def interval() -> float:
        return float(np.clip(IBI_REFRACTORY_S + median * math.exp(IBI_SIGMA * rng.standard_normal()),
                             IBI_MIN_S, IBI_MAX_S))

    out: list[dict] = []
    t = rng.random() * interval()
    while t < duration_s:
        is_long = bool(rng.random() < long_blink_prob)
        if is_long:
            dur, close, hold = float(rng.uniform(*LONG_BLINK_RANGE_S)), 0.25, 0.30
        else:
            lo, hi = BLINK_DURATION_RANGE_S
            dur = float(np.clip(_truncated_lognormal(rng, BLINK_DURATION_MEDIAN_S, 0.3, lo, hi) * duration_scale,
                                lo, hi))
            close, hold = float(rng.uniform(0.30, 0.40)), 0.0
        amp = float(rng.uniform(0.9, 1.0))
        amp_l = amp_r = amp
        delay = 0.0
        if rng.random() < asymmetry_prob:
            weaker = rng.uniform(0.85, 0.97)
            delay = float(rng.uniform(-0.015, 0.015))
            if rng.random() < 0.5:
                amp_l = amp * weaker
            else:
                amp_r = amp * weaker
        span = (t - abs(delay), t + dur + abs(delay))
        if not any(span[0] < b and a < span[1] for a, b in forbidden):
            out.append({"onset_s": _f(t), "duration_s": _f(dur), "close_frac": _f(close), "hold_frac": _f(hold),
                        "amp_l": _f(amp_l), "amp_r": _f(amp_r), "delay_r_s": _f(delay), "long": is_long,
                        "onset_frame": int(math.ceil(t * fps - 1e-9)),
                        "offset_frame": int(math.ceil((t + dur) * fps - 1e-9))})
        t = max(t + interval(), t + dur + 0.25)
    return out


def blink_shape(u: np.ndarray, close_frac: float, hold_frac: float = 0.0) -> np.ndarray:
    """Lid closure of one blink at normalised time ``u`` (0 = onset, 1 = reopened): raised-cosine close, optional
    hold, raised-cosine (slower) opening; 0 outside [0, 1]."""
    u = np.asarray(u, np.float64)
    c, h = close_frac, hold_frac
    o = max(1.0 - c - h, 1e-6)
    closing = 0.5 * (1.0 - np.cos(np.pi * np.clip(u / c, 0.0, 1.0)))
    opening = 0.5 * (1.0 + np.cos(np.pi * np.clip((u - c - h) / o, 0.0, 1.0)))
    out = np.where(u < c, closing, np.where(u < c + h, 1.0, opening))
    return np.where((u >= 0.0) & (u <= 1.0), out, 0.0)


def blink_at(events: Sequence[dict], t: np.ndarray) -> np.ndarray:
    """Blink closure, float64 ``[len(t), 2]`` (left, right eye), at arbitrary times ``t`` (seconds)."""
    t = np.asarray(t, np.float64)
    out = np.zeros((t.shape[0], 2))
    for ev in events:
        for eye, (amp, delay) in enumerate(((ev["amp_l"], 0.0), (ev["amp_r"], ev["delay_r_s"]))):
            u = (t - ev["onset_s"] - delay) / ev["duration_s"]
            out[:, eye] = np.maximum(out[:, eye], amp * blink_shape(u, ev["close_frac"], ev["hold_frac"]))
    return out


def blink_track(num_frames: int, rng: np.random.Generator, *, fps: float = FPS, **kwargs) -> tuple[np.ndarray, list]:
    """Blink closure per frame, float32 ``[T, 2]`` (au45_l, au45_r), and the :func:`blink_events` list."""
    events = blink_events(num_frames / fps, rng, fps=fps, **kwargs)
    return blink_at(events, np.arange(num_frames) / fps).astype(np.float32), events


def add_blinks(state: np.ndarray, blinks: np.ndarray) -> None:
    """Combine blink closure ``[T, 2]`` with the lid baseline already in au45: ``base + (1 - base) * blink``."""
    sl = [IX["au45_l"], IX["au45_r"]]
    base = np.clip(state[:, sl], 0.0, 1.0)
    state[:, sl] = base + (1.0 - base) * blinks


# ----------------------------------------------------------------------------------------------------------------
# Gaze: fixations and main-sequence saccades, gaze-head coupling
# ----------------------------------------------------------------------------------------------------------------

#: Saccade main sequence: duration = 21 ms + 2.2 ms/deg * amplitude; peak velocity = 500 (1 - exp(-A / 7.35)) deg/s
#: (saturating at ~500 deg/s; the constant keeps peak/mean velocity at 1.35-1.6 as measured for human saccades).
SACCADE_DURATION_INTERCEPT_S = 0.021
SACCADE_DURATION_SLOPE_S_PER_DEG = 0.0022
SACCADE_PEAK_VELOCITY_MAX = 500.0
SACCADE_PEAK_VELOCITY_CONST_DEG = 7.35
MIN_SACCADE_DEG = 0.3


def saccade_duration(amplitude_deg: np.ndarray | float) -> np.ndarray | float:
    """Main-sequence saccade duration in seconds: ``0.021 + 0.0022 * amplitude_deg``."""
    return SACCADE_DURATION_INTERCEPT_S + SACCADE_DURATION_SLOPE_S_PER_DEG * np.asarray(amplitude_deg)


def saccade_peak_velocity(amplitude_deg: np.ndarray | float) -> np.ndarray | float:
    """Main-sequence peak velocity in deg/s: ``500 * (1 - exp(-amplitude_deg / 7.35))``."""
    return SACCADE_PEAK_VELOCITY_MAX * (1.0 - np.exp(-np.asarray(amplitude_deg) / SACCADE_PEAK_VELOCITY_CONST_DEG))


def saccade_progress(u: np.ndarray, taper: float) -> np.ndarray:
    """Fraction of a saccade's amplitude covered at normalised time ``u`` in [0, 1].

    The velocity profile is a Tukey window (raised-cosine ramps over ``taper`` of the duration at each end, flat
    in between), whose peak/mean ratio is ``1 / (1 - taper)``; ``taper = 1 - A / (D * Vpeak)`` makes a saccade of
    amplitude A and duration D reach exactly the main-sequence peak velocity.
    """
    u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
    a = float(np.clip(taper, 1e-3, 0.5))

    def ramp(x):  # integral of 0.5 (1 - cos(pi s / a)) from 0 to x, for x in [0, a]
        return 0.5 * (x - (a / np.pi) * np.sin(np.pi * x / a))

    mid = 0.5 * a + (u - a)
    area = 1.0 - a
    out = np.where(u < a, ramp(u), np.where(u <= 1.0 - a, mid, area - ramp(np.clip(1.0 - u, 0.0, a))))
    return out / area


@dataclass(frozen=True)
class Behaviour:
    """Parameters of the background processes of one clip (blinks, gaze, head).

    blink_rate_per_min / long_blink_prob / blink_duration_scale: see :func:`blink_events`.
    fixation_median_s: median fixation duration (log-normal, sigma 0.45, truncated to [0.15, 4] s).
    aversion_prob: probability that the next fixation (when looking at the partner) is a gaze aversion.
    aversion_deg: amplitude range (deg) of aversions; aversion_vertical: mean vertical direction of aversions
    (-1 down .. +1 up); scan_deg: std (deg) of small scanning fixations around the partner (the camera, 0, 0).
    head_coupling / coupling_gain / coupling_threshold_deg: fixations at least ``coupling_threshold_deg`` off
    centre recruit the head by ``coupling_gain`` (horizontal; x0.6 vertical) of the target eccentricity.
    head_amplitude: multiplier of the :func:`head_motion` amplitudes.
    """

    blink_rate_per_min: float = BLINK_RATE_TALKING
    long_blink_prob: float = 0.0
    blink_duration_scale: float = 1.0
    fixation_median_s: float = 0.8
    aversion_prob: float = 0.25
    aversion_deg: tuple[float, float] = (8.0, 20.0)
    aversion_vertical: float = 0.2
    scan_deg: float = 1.5
    head_coupling: bool = True
    coupling_gain: tuple[float, float] = (0.3, 0.5)
    coupling_threshold_deg: float = 12.0
    head_amplitude: float = 1.0


@dataclass(frozen=True)
class GazeEpisode:
    """A forced gaze target (deg) from ``start_s`` to ``end_s`` (None = end of clip); the eyes saccade there at
    ``start_s`` and back towards the partner at ``end_s``. ``coupling_gain`` overrides the behaviour's head gain."""

    start_s: float
    end_s: float | None
    h_deg: float
    v_deg: float
    label: str = "episode"
    coupling_gain: float | None = None


def gaze_world_at(gaze_events: dict, t: np.ndarray) -> np.ndarray:
    """Gaze direction in the world frame (eye-in-head + head contribution), float64 ``[len(t), 2]`` (h, v) deg."""
    t = np.asarray(t, np.float64)
    out = np.tile(np.asarray(gaze_events["initial_deg"], np.float64), (t.shape[0], 1))
    for s in gaze_events["saccades"]:
        p = saccade_progress((t - s["onset_s"]) / s["duration_s"], s["taper"])
        out[:, 0] += (s["to_h"] - s["from_h"]) * p
        out[:, 1] += (s["to_v"] - s["from_v"]) * p
    return out


def head_contribution_at(gaze_events: dict, t: np.ndarray) -> np.ndarray:
    """Head rotation recruited by gaze shifts, float64 ``[len(t), 2]`` (yaw, pitch) deg (minimum-jerk moves)."""
    t = np.asarray(t, np.float64)
    out = np.zeros((t.shape[0], 2))
    for m in gaze_events["head_moves"]:
        p = min_jerk((t - m["onset_s"]) / m["duration_s"])
        out[:, 0] += m["d_yaw"] * p
        out[:, 1] += m["d_pitch"] * p
    return out


def eye_in_head_at(gaze_events: dict, t: np.ndarray) -> np.ndarray:
    """Eye-in-head angles (what the gaze channels encode), float64 ``[len(t), 2]`` deg: world gaze - head."""
    return gaze_world_at(gaze_events, t) - head_contribution_at(gaze_events, t)


def gaze_track(num_frames: int, rng: np.random.Generator, behaviour: Behaviour = Behaviour(), *,
               episodes: Sequence[GazeEpisode] = (), fps: float = FPS) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fixations and saccades: eye-in-head ``[T, 2]``, head contribution ``[T, 2]`` (yaw, pitch) deg, events.

    Fixation durations are log-normal (median ``behaviour.fixation_median_s``). When looking at the partner, the
    next target is an aversion with probability ``aversion_prob`` (amplitude U(aversion_deg), random left/right,
    vertical component biased by ``aversion_vertical``), otherwise a small scan (N(0, scan_deg) per axis); an
    aversion is always followed by a return to the partner. Forced :class:`GazeEpisode` targets override the free
    process inside their spans. Every shift of at least :data:`MIN_SACCADE_DEG` is a saccade obeying the main
    sequence exactly (:func:`saccade_duration`, :func:`saccade_peak_velocity`, :func:`saccade_progress`).

    Gaze-head coupling: when the new target's eccentricity is >= ``coupling_threshold_deg`` the head turns to
    ``gain * target`` (vertical gain x0.6), else back to 0; the head move starts 0-30 ms after the saccade ends and
    lasts ``0.3 s + 8 ms/deg`` (minimum jerk). Eye-in-head = world gaze - head contribution (VOR counter-rotation).

    Events: ``initial_deg`` [h, v], ``saccades`` (onset_s, duration_s, amplitude_deg, peak_velocity, taper, from_h,
    from_v, to_h, to_v, onset_frame, kind: scan / aversion / return / episode label), ``head_moves`` (onset_s,
    duration_s, d_yaw, d_pitch).
    """
    b = behaviour
    dur = num_frames / fps
    cur = np.round(np.clip(rng.normal(0.0, b.scan_deg, 2), -3 * b.scan_deg, 3 * b.scan_deg), 5)
    init = cur.copy()
    head = np.zeros(2)
    saccades: list[dict] = []
    head_moves: list[dict] = []
    gain_default = float(rng.uniform(*b.coupling_gain))

    def fixation() -> float:
        return float(np.clip(b.fixation_median_s * math.exp(0.45 * rng.standard_normal()), 0.15, 4.0))

    def saccade(t0: float, target: np.ndarray, kind: str, gain: float | None) -> float:
        nonlocal cur, head
        target = np.clip(target, [-28.0, -25.0], [28.0, 25.0])
        amp = float(np.hypot(*(target - cur)))
        if amp < MIN_SACCADE_DEG or t0 >= dur:
            return t0
        d = float(saccade_duration(amp))
        vp = float(saccade_peak_velocity(amp))
        taper = 1.0 - amp / (d * vp)
        saccades.append({"onset_s": _f(t0), "duration_s": _f(d), "amplitude_deg": _f(amp), "peak_velocity": _f(vp),
                         "taper": _f(taper), "from_h": _f(cur[0]), "from_v": _f(cur[1]), "to_h": _f(target[0]),
                         "to_v": _f(target[1]), "onset_frame": int(math.ceil(t0 * fps - 1e-9)), "kind": kind})
        # the stored (rounded) values define the trajectory: keep `cur` identical to them
        cur = np.array([saccades[-1]["to_h"], saccades[-1]["to_v"]])
        if b.head_coupling:
            g = gain_default if gain is None else gain
            ecc = float(np.hypot(*target))
            new_head = np.zeros(2)
            if ecc >= b.coupling_threshold_deg:
                new_head = np.array([g * target[0], 0.6 * g * target[1]])
            delta = new_head - head
            if np.hypot(*delta) > 0.2:
                hd = 0.3 + 0.008 * float(np.hypot(*delta))
                head_moves.append({"onset_s": _f(t0 + d + rng.uniform(0.0, 0.03)), "duration_s": _f(hd),
                                   "d_yaw": _f(delta[0]), "d_pitch": _f(delta[1])})
                head = head + np.array([head_moves[-1]["d_yaw"], head_moves[-1]["d_pitch"]])
        return t0 + d

    def partner_target() -> np.ndarray:
        return np.clip(rng.normal(0.0, b.scan_deg, 2), -3 * b.scan_deg, 3 * b.scan_deg)

    # timeline: free segments between forced episodes (episodes trimmed so they do not overlap)
    eps: list[tuple[float, float, GazeEpisode]] = []
    for e in sorted(episodes, key=lambda e: e.start_s):
        start = max(e.start_s, eps[-1][1] if eps else 0.0)
        end = dur if e.end_s is None else min(e.end_s, dur)
        if start < end:
            eps.append((start, end, e))
    t = 0.0
    averted = False
    for i in range(len(eps) + 1):
        free_end = eps[i][0] if i < len(eps) else dur
        while True:  # free fixation / saccade process in [t, free_end)
            tn = t + fixation()
            if tn >= free_end:
                break
            if averted:
                target, kind, averted = partner_target(), "return", False
            elif rng.random() < b.aversion_prob:
                amp = rng.uniform(*b.aversion_deg)
                vert = float(np.clip(b.aversion_vertical + rng.normal(0.0, 0.5), -1.0, 1.0))
                ang = math.asin(vert * 0.8)
                side = 1.0 if rng.random() < 0.5 else -1.0
                target, kind, averted = np.array([side * amp * math.cos(ang), amp * math.sin(ang)]), "aversion", True
            else:
                target, kind = partner_target(), "scan"
            t = saccade(tn, target, kind, None)
        if i == len(eps):
            break
        start, end, ep = eps[i]
        t = saccade(max(t, start), np.array([ep.h_deg, ep.v_deg]), ep.label, ep.coupling_gain)
        averted = False
        next_start = eps[i + 1][0] if i + 1 < len(eps) else dur
        if end < next_start:  # free time follows: look back at the partner when the episode ends
            t = saccade(max(t + 0.15, end), partner_target(), "return", None)
        else:
            t = max(t, next_start)
    events = {"initial_deg": [_f(init[0]), _f(init[1])], "saccades": saccades, "head_moves": head_moves}
    tf = np.arange(num_frames) / fps
    world = gaze_world_at(events, tf)
    headc = head_contribution_at(events, tf)
    return (world - headc).astype(np.float32), headc.astype(np.float32), events


# ----------------------------------------------------------------------------------------------------------------
# Head motion
# ----------------------------------------------------------------------------------------------------------------

#: Stationary std at amplitude 1 of (yaw, pitch, roll) in degrees and (tx, ty, depth) in frame fractions / scale-1.
HEAD_STD = np.array([4.0, 3.0, 2.0, 0.012, 0.010, 0.015])
#: Low-pass cutoffs (Hz) of the pose and translation noise.
HEAD_CUTOFF_HZ = (0.5, 0.3)


def head_motion(num_frames: int, rng: np.random.Generator, amplitude: float = 1.0, *,
                fps: float = FPS) -> np.ndarray:
    """Smooth random head motion, float32 ``[T, 6]`` = (yaw, pitch, roll, tx, ty, depth).

    Zero-mean band-limited Gaussian noise (:func:`smooth_noise`, Butterworth order 2, cutoff 0.5 Hz for rotation
    and 0.3 Hz for translation) with stationary std ``HEAD_STD * amplitude``.
    """
    rot = smooth_noise(rng, num_frames, HEAD_CUTOFF_HZ[0], channels=3, fps=fps)
    trans = smooth_noise(rng, num_frames, HEAD_CUTOFF_HZ[1], channels=3, fps=fps)
    return (np.concatenate([rot, trans], axis=1) * HEAD_STD * amplitude).astype(np.float32)


def nod(t: np.ndarray, start: float, duration: float, amplitude_deg: float, cycles: int = 1) -> np.ndarray:
    """Pitch offset (deg) of a nod: ``cycles`` down-up movements of depth ``amplitude_deg`` over ``duration``."""
    u = np.clip((t - start) / duration, 0.0, 1.0)
    return -amplitude_deg * 0.5 * (1.0 - np.cos(2.0 * np.pi * cycles * u))


def shake(t: np.ndarray, start: float, duration: float, amplitude_deg: float, cycles: int = 2) -> np.ndarray:
    """Yaw offset (deg) of a head shake: ``cycles`` left-right oscillations tapered at both ends."""
    u = np.clip((t - start) / duration, 0.0, 1.0)
    return amplitude_deg * np.sin(2.0 * np.pi * cycles * u) * np.sin(np.pi * u) ** 0.5


# ----------------------------------------------------------------------------------------------------------------
# Beyond-emotion states (CogPortrait eye-region patterns)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StatePlan:
    """What a beyond-emotion state adds to a clip.

    additive: float32 ``[T, 24]`` added to the state (AUs, mouth, pose, translation; au45 = lid baseline, combined
    with blinks by :func:`add_blinks`); behaviour: the background-process parameters to use; episodes: forced gaze
    targets; events: JSON-serialisable ground truth (spans in frames and seconds).
    """

    additive: np.ndarray
    behaviour: Behaviour
    episodes: list[GazeEpisode] = field(default_factory=list)
    events: dict = field(default_factory=dict)


def _span(start_s: float, end_s: float, fps: float, **extra) -> dict:
    return {"start_s": _f(start_s), "end_s": _f(end_s), "start_frame": int(math.ceil(start_s * fps - 1e-9)),
            "end_frame": int(math.ceil(end_s * fps - 1e-9)), **extra}


def _episode_starts(rng: np.random.Generator, dur: float, n: int, length: tuple[float, float],
                    margin: float = 0.3, gap: float = 0.4) -> list[tuple[float, float]]:
    """Up to ``n`` non-overlapping (start, end) spans of U(length) seconds inside [margin, dur - margin]."""
    spans: list[tuple[float, float]] = []
    for _ in range(n):
        d = float(rng.uniform(*length))
        lo, hi = margin, dur - margin - d
        if hi <= lo:
            break
        for _try in range(8):
            s = float(rng.uniform(lo, hi))
            if all(s + d + gap <= a or b + gap <= s for a, b in spans):
                spans.append((s, s + d))
                break
    return sorted(spans)


def plan_state(name: str, num_frames: int, rng: np.random.Generator, base: Behaviour = Behaviour(), *,
               drive: np.ndarray | None = None, fps: float = FPS) -> StatePlan:
    """The eye-region pattern of a beyond-emotion state (one of ``schema.STATES``) over ``num_frames``.

    - laughter: AU6 0.8 + smile 0.9 + AU7 0.3 (scaled by the onset envelope), lids narrowed (au45 base 0.25),
      head tilted back 5 deg plus pitch bobbing 3 deg x ``drive`` (the normalised laughter-audio envelope; when
      None, synthetic 5 Hz "ha" bursts). Events: ``laugh_bursts``.
    - cognitive_effort: squint AU4 0.5 + AU7 0.55; 1-2 gaze aversions of 1.0-2.5 s to up-left / up-right
      (12-22 deg, 8-15 deg up) with strong gaze-head coupling (gain 0.45-0.6); blink rate x0.6 (suppression),
      fixations x1.3. Events: ``aversions``.
    - drowsiness: drooping lids (au45 base 0.28-0.36 with slow +-0.04 drift, below the AU45 threshold), prolonged
      blinks (probability 0.6, 400-800 ms), blink rate x0.8, 1-2 slow head nods (pitch drops 8-15 deg over 1-2 s,
      recovers in 0.3-0.5 s), gaze slightly down (aversions rare, downward), head motion x0.5. Events:
      ``head_drops``.
    - low_arousal_negative: AU1 0.3 + AU4 0.3, smile -0.25, head pitched down 5 deg, 1-2 downcast gaze
      episodes (8-14 deg down, 1-2.5 s), slow blinks (duration x1.3), fixations x1.5, head motion x0.5. Events:
      ``downcast``.
    - social_engagement: AU6 0.3 + smile 0.35, lean in (depth +0.04), head tilt +-4 deg roll, 1-3 eyebrow
      flashes (AU1 + AU2 0.6, 0.4-0.7 s), 1-2 small nods (5 deg, 0.6 s), mostly mutual gaze (aversion 0.08).
      Events: ``brow_flashes``, ``nods``.
    - evasive_response: frequent short aversions (probability 0.7, 10-25 deg, downward bias, fixations 0.45 s),
      head turned away 6-12 deg yaw, blink rate x1.5, AU4 0.3, lips pressed (pucker 0.15). Events:
      ``turn_away``.

    All additive components ramp in with an onset envelope (0.3-0.6 s) at the start of the clip.
    """
    if name not in S.STATES:
        raise ValueError(f"unknown state {name!r}; expected one of {S.STATES}")
    T = num_frames
    dur = T / fps
    t = np.arange(T) / fps
    add = np.zeros((T, S.NUM_CHANNELS), np.float32)
    env = envelope(T, float(rng.uniform(0.0, 0.2) * fps), float(rng.uniform(0.3, 0.6) * fps), math.inf, 1.0)
    events: dict = {"state": name}
    episodes: list[GazeEpisode] = []
    beh = base

    def put(ch: str, values) -> None:
        add[:, IX[ch]] += np.asarray(values, np.float32)

    if name == "laughter":
        if drive is None:
            drive = np.zeros(T)
            bursts = _episode_starts(rng, dur, 2, (0.8, 1.8), margin=0.2)
            for a, b_ in bursts:
                drive += _bump(t, a, b_ - a, 0.1) * (0.5 + 0.5 * np.cos(2 * np.pi * 5.0 * (t - a))) ** 2
            events["laugh_bursts"] = [_span(a, b_, fps) for a, b_ in bursts]
        else:
            drive = np.asarray(drive, np.float64)
            events["laugh_bursts"] = "from_audio"
        for ch, v in (("au6", 0.8), ("smile", 0.9), ("au7", 0.3), ("au45_l", 0.25), ("au45_r", 0.25)):
            put(ch, v * env)
        put("pitch", env * (5.0 + 3.0 * drive))
        beh = dataclasses.replace(beh, aversion_prob=0.15, head_amplitude=beh.head_amplitude * 1.2)
    elif name == "cognitive_effort":
        put("au4", 0.5 * env)
        put("au7", 0.55 * env)
        spans = _episode_starts(rng, dur, int(rng.integers(1, 3)), (1.0, 2.5), margin=0.4)
        av = []
        for a, b_ in spans:
            h = float(rng.uniform(12.0, 22.0)) * (1.0 if rng.random() < 0.5 else -1.0)
            v = float(rng.uniform(8.0, 15.0))
            g = float(rng.uniform(0.45, 0.6))
            episodes.append(GazeEpisode(a, b_, h, v, "aversion", g))
            av.append(_span(a, b_, fps, h_deg=_f(h), v_deg=_f(v), head_gain=_f(g)))
        events["aversions"] = av
        beh = dataclasses.replace(beh, blink_rate_per_min=beh.blink_rate_per_min * 0.6,
                                  fixation_median_s=beh.fixation_median_s * 1.3, aversion_prob=0.1)
    elif name == "drowsiness":
        droop = rng.uniform(0.28, 0.36) + np.clip(0.02 * smooth_noise(rng, T, 0.2, fps=fps)[:, 0], -0.04, 0.04)
        put("au45_l", droop * env)
        put("au45_r", droop * env)
        drops = []
        for a, _ in _episode_starts(rng, dur, int(rng.integers(1, 3)), (1.6, 2.6), margin=0.2):
            depth = float(rng.uniform(8.0, 15.0))
            fall = float(rng.uniform(1.0, 2.0))
            rec = float(rng.uniform(0.3, 0.5))
            put("pitch", -depth * (min_jerk((t - a) / fall) - min_jerk((t - a - fall) / rec)))
            drops.append(_span(a, a + fall + rec, fps, depth_deg=_f(depth), fall_s=_f(fall), recover_s=_f(rec)))
        events["head_drops"] = drops
        put("pitch", -3.0 * env)
        beh = dataclasses.replace(beh, long_blink_prob=0.6, blink_rate_per_min=beh.blink_rate_per_min * 0.8,
                                  fixation_median_s=beh.fixation_median_s * 1.6, aversion_prob=0.1,
                                  aversion_vertical=-0.8, aversion_deg=(5.0, 10.0),
                                  head_amplitude=beh.head_amplitude * 0.5, head_coupling=False)
    elif name == "low_arousal_negative":
        for ch, v in (("au1_l", 0.3), ("au1_r", 0.3), ("au4", 0.3), ("smile", -0.25), ("pitch", -5.0)):
            put(ch, v * env)
        down = []
        for a, b_ in _episode_starts(rng, dur, int(rng.integers(1, 3)), (1.0, 2.5), margin=0.3):
            v = -float(rng.uniform(8.0, 14.0))
            h = float(rng.normal(0.0, 4.0))
            episodes.append(GazeEpisode(a, b_, h, v, "downcast", 0.2))
            down.append(_span(a, b_, fps, h_deg=_f(h), v_deg=_f(v)))
        events["downcast"] = down
        beh = dataclasses.replace(beh, blink_duration_scale=1.3, fixation_median_s=beh.fixation_median_s * 1.5,
                                  aversion_prob=0.15, aversion_vertical=-0.8,
                                  head_amplitude=beh.head_amplitude * 0.5)
    elif name == "social_engagement":
        tilt = float(rng.uniform(2.0, 4.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        for ch, v in (("au6", 0.3), ("smile", 0.35), ("depth", 0.04), ("roll", tilt)):
            put(ch, v * env)
        flashes = []
        for a, b_ in _episode_starts(rng, dur, int(rng.integers(1, 4)), (0.4, 0.7), margin=0.3):
            amp = float(rng.uniform(0.5, 0.7))
            bump = amp * _bump(t, a, b_ - a, 0.12)
            for ch in ("au1_l", "au1_r", "au2_l", "au2_r"):
                put(ch, bump)
            flashes.append(_span(a, b_, fps, amplitude=_f(amp)))
        nods = []
        for a, b_ in _episode_starts(rng, dur, int(rng.integers(1, 3)), (0.6, 0.6), margin=0.3):
            put("pitch", nod(t, a, b_ - a, 5.0))
            nods.append(_span(a, b_, fps, depth_deg=5.0))
        events["brow_flashes"], events["nods"], events["roll_deg"] = flashes, nods, _f(tilt)
        beh = dataclasses.replace(beh, aversion_prob=0.08, scan_deg=1.0)
    else:  # evasive_response
        away = float(rng.uniform(6.0, 12.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        for ch, v in (("au4", 0.3), ("pucker", 0.15), ("yaw", away)):
            put(ch, v * env)
        events["turn_away"] = {"yaw_deg": _f(away)}
        beh = dataclasses.replace(beh, aversion_prob=0.7, aversion_deg=(10.0, 25.0), aversion_vertical=-0.4,
                                  fixation_median_s=0.45, blink_rate_per_min=beh.blink_rate_per_min * 1.5)
    return StatePlan(add, beh, episodes, events)


# ----------------------------------------------------------------------------------------------------------------
# Text-only motion scripts
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """A motion primitive.

    kind: ``posture`` (channels move to ``targets`` by a minimum-jerk transition of ``transition_s`` and stay there
    until another primitive moves them), ``gesture`` (``targets`` reached with ``transition_s`` ramps and released
    by the end of the step), ``oscillation`` (nod / shake: ``cycles`` oscillations of amplitude ``targets``),
    ``blink`` (one blink of ``transition_s`` seconds on the listed eyes) or ``gaze`` (a main-sequence saccade to
    the ``gaze_h`` / ``gaze_v`` target in degrees, held until the next gaze primitive).
    """

    name: str
    kind: str
    targets: dict
    duration_s: float
    transition_s: float = 0.5
    cycles: int = 0


def _prims() -> dict[str, Primitive]:
    P = Primitive
    brows = {"au1_l": 0.8, "au1_r": 0.8, "au2_l": 0.8, "au2_r": 0.8}
    items = [
        P("turn_head_left", "posture", {"yaw": 25.0}, 1.2, 0.6),
        P("turn_head_right", "posture", {"yaw": -25.0}, 1.2, 0.6),
        P("raise_head", "posture", {"pitch": 15.0}, 1.2, 0.6),
        P("lower_head", "posture", {"pitch": -15.0}, 1.2, 0.6),
        P("tilt_head_left", "posture", {"roll": 15.0}, 1.2, 0.6),
        P("tilt_head_right", "posture", {"roll": -15.0}, 1.2, 0.6),
        P("face_forward", "posture", {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}, 1.0, 0.6),
        P("lean_forward", "posture", {"depth": 0.12}, 1.2, 0.7),
        P("lean_back", "posture", {"depth": -0.12}, 1.2, 0.7),
        P("nod", "oscillation", {"pitch": 10.0}, 1.2, 0.0, 2),
        P("shake_head", "oscillation", {"yaw": 15.0}, 1.4, 0.0, 2),
        P("look_left", "gaze", {"gaze_h": 20.0, "gaze_v": 0.0}, 1.0),
        P("look_right", "gaze", {"gaze_h": -20.0, "gaze_v": 0.0}, 1.0),
        P("look_up", "gaze", {"gaze_h": 0.0, "gaze_v": 15.0}, 1.0),
        P("look_down", "gaze", {"gaze_h": 0.0, "gaze_v": -15.0}, 1.0),
        P("look_at_camera", "gaze", {"gaze_h": 0.0, "gaze_v": 0.0}, 0.8),
        P("raise_eyebrows", "gesture", brows, 1.2, 0.25),
        P("frown", "gesture", {"au4": 0.8, "au7": 0.5}, 1.2, 0.3),
        P("close_eyes", "gesture", {"au45_l": 1.0, "au45_r": 1.0}, 1.4, 0.15),
        P("widen_eyes", "gesture", {"au5": 0.8}, 1.0, 0.2),
        P("squint", "gesture", {"au7": 0.7}, 1.0, 0.2),
        P("smile", "gesture", {"au6": 0.6, "smile": 0.8}, 1.4, 0.3),
        P("open_mouth", "gesture", {"jaw_open": 0.7}, 1.2, 0.25),
        P("pucker_lips", "gesture", {"pucker": 0.8}, 1.2, 0.25),
        P("blink", "blink", {"au45_l": 1.0, "au45_r": 1.0}, 0.6, 0.25),
        P("wink_left", "blink", {"au45_l": 1.0}, 0.8, 0.35),
        P("wink_right", "blink", {"au45_r": 1.0}, 0.8, 0.35),
    ]
    return {p.name: p for p in items}


#: The motion vocabulary: name -> :class:`Primitive` (targets in channel units; degrees for pose and gaze).
#: Postures (held): turn_head_left/right yaw +-25 deg, raise/lower_head pitch +-15 deg, tilt_head_left/right roll
#: +-15 deg, face_forward (pose -> 0), lean_forward/back depth +-0.12 (1.2 s steps, 0.6-0.7 s transitions).
#: Oscillations: nod (2 x 10 deg down-up, 1.2 s), shake_head (2 x +-15 deg yaw, 1.4 s). Gaze (held): look_left/
#: right 20 deg, look_up/down 15 deg, look_at_camera (0, 0). Gestures (released within the step): raise_eyebrows
#: (AU1 + AU2 0.8, 1.2 s), frown (AU4 0.8 + AU7 0.5), close_eyes (AU45 1.0, 1.4 s), widen_eyes (AU5 0.8),
#: squint (AU7 0.7), smile (AU6 0.6 + smile 0.8, 1.4 s), open_mouth (jaw 0.7), pucker_lips (pucker 0.8).
#: Blinks: blink (250 ms, both eyes), wink_left / wink_right (350 ms, one eye).
PRIMITIVES: dict[str, Primitive] = _prims()
_EYE_PRIMS = {"close_eyes", "blink", "wink_left", "wink_right", "widen_eyes", "squint"}
_CONFLICT = {"turn_head_left": "turn_head_right", "turn_head_right": "turn_head_left",
             "tilt_head_left": "tilt_head_right", "tilt_head_right": "tilt_head_left",
             "lean_forward": "lean_back", "lean_back": "lean_forward"}
MOTION_LEAD_S = 0.3  # still time before the first step
MOTION_GAP_S = (0.1, 0.3)  # pause between steps
MOTION_TAIL_S = (0.3, 0.6)  # still time after the last step
MIN_FRAMES, MAX_FRAMES = 48, 150


@dataclass(frozen=True)
class Step:
    """One scheduled primitive: ``start_s`` .. ``start_s + duration_s``."""

    primitive: str
    start_s: float
    duration_s: float

    def to_dict(self, fps: float = FPS) -> dict:
        p = PRIMITIVES[self.primitive]
        return {"primitive": self.primitive, "kind": p.kind, "targets": dict(p.targets), "start_s": _f(self.start_s),
                "end_s": _f(self.start_s + self.duration_s),
                "start_frame": int(math.ceil(self.start_s * fps - 1e-9)),
                "end_frame": int(math.ceil((self.start_s + self.duration_s) * fps - 1e-9))}


def random_motion_script(rng: np.random.Generator, num_frames: int | None = None, *, fps: float = FPS,
                         max_steps: int = 3) -> tuple[list[Step], int]:
    """Sample a text-only motion script: (steps, num_frames).

    1-3 primitives (probabilities 0.35 / 0.4 / 0.25), never the same or an opposite posture twice in a row,
    starting after :data:`MOTION_LEAD_S` with U(0.1, 0.3) s gaps. The natural length (lead + steps + gaps + a
    U(0.3, 0.6) s tail) is clipped to [48, 150] frames when ``num_frames`` is None. With ``num_frames`` given,
    trailing steps are dropped until the script fits; a single step too long for the clip is time-compressed.
    Passing the natural length back reproduces the same script (same draws).
    """
    names = list(PRIMITIVES)
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    n = min(n, max_steps)
    chosen: list[str] = []
    while len(chosen) < n:
        c = names[int(rng.integers(len(names)))]
        if chosen and (c == chosen[-1] or _CONFLICT.get(chosen[-1]) == c):
            continue
        chosen.append(c)
    gaps = rng.uniform(*MOTION_GAP_S, size=max_steps).tolist()
    tail = float(rng.uniform(*MOTION_TAIL_S))

    def layout(names_: list[str], scale: float = 1.0) -> tuple[list[Step], float]:
        steps, t = [], MOTION_LEAD_S
        for i, nm in enumerate(names_):
            d = PRIMITIVES[nm].duration_s * scale
            steps.append(Step(nm, t, d))
            t += d + (gaps[i] if i + 1 < len(names_) else 0.0)
        return steps, t + tail

    steps, total = layout(chosen)
    if num_frames is None:
        while total * fps > MAX_FRAMES and len(chosen) > 1:
            chosen.pop()
            steps, total = layout(chosen)
        return steps, int(np.clip(math.ceil(total * fps), MIN_FRAMES, MAX_FRAMES))
    while total * fps > num_frames and len(chosen) > 1:
        chosen.pop()
        steps, total = layout(chosen)
    if total * fps > num_frames:
        avail = num_frames / fps - MOTION_LEAD_S - min(tail, 0.2)
        steps, total = layout(chosen, max(avail, 0.2) / PRIMITIVES[chosen[0]].duration_s)
    return steps, int(num_frames)


def script_gaze_episodes(steps: Sequence[Step]) -> list[GazeEpisode]:
    """Gaze primitives as forced gaze episodes (saccade 0.1 s into the step, held until the next gaze step)."""
    gz = [s for s in steps if PRIMITIVES[s.primitive].kind == "gaze"]
    out = []
    for i, s in enumerate(gz):
        p = PRIMITIVES[s.primitive]
        end = gz[i + 1].start_s + 0.1 if i + 1 < len(gz) else None
        out.append(GazeEpisode(s.start_s + 0.1, end, p.targets["gaze_h"], p.targets["gaze_v"], s.primitive, 0.0))
    return out


def script_blink_free_spans(steps: Sequence[Step], margin: float = 0.3) -> list[tuple[float, float]]:
    """Spans (s) around eye primitives where spontaneous blinks are suppressed."""
    return [(s.start_s - margin, s.start_s + s.duration_s + margin) for s in steps if s.primitive in _EYE_PRIMS]


def render_motion_script(state: np.ndarray, steps: Sequence[Step], *, fps: float = FPS) -> list[dict]:
    """Add the non-gaze primitives of a script into ``state`` ``[T, 24]`` (in place); returns step event dicts.

    Postures compose as minimum-jerk transitions per channel from the current held value (initially 0);
    gestures, oscillations and blinks are added on top (au45 from blink primitives is merged by ``max``).
    Gaze primitives are realised by :func:`gaze_track` via :func:`script_gaze_episodes`.
    """
    T = state.shape[0]
    t = np.arange(T) / fps
    held: dict[str, float] = {}
    for s in steps:
        p = PRIMITIVES[s.primitive]
        if p.kind == "posture":
            for ch, target in p.targets.items():
                prev = held.get(ch, 0.0)
                state[:, IX[ch]] += ((target - prev) * min_jerk((t - s.start_s) / p.transition_s)).astype(np.float32)
                held[ch] = target
        elif p.kind == "gesture":
            bump = _bump(t, s.start_s, s.duration_s, p.transition_s)
            for ch, target in p.targets.items():
                if ch.startswith("au45"):
                    state[:, IX[ch]] = np.maximum(state[:, IX[ch]], target * bump)
                else:
                    state[:, IX[ch]] += (target * bump).astype(np.float32)
        elif p.kind == "oscillation":
            (ch, amp), = p.targets.items()
            fn = nod if ch == "pitch" else shake
            state[:, IX[ch]] += fn(t, s.start_s, s.duration_s, amp, p.cycles).astype(np.float32)
        elif p.kind == "blink":
            u = (t - s.start_s - 0.15) / p.transition_s
            shape = blink_shape(u, 0.35)
            for ch, target in p.targets.items():
                state[:, IX[ch]] = np.maximum(state[:, IX[ch]], target * shape)
    return [s.to_dict(fps) for s in steps]


# ----------------------------------------------------------------------------------------------------------------
# Identity style and composition
# ----------------------------------------------------------------------------------------------------------------


def identity_style(identity: int) -> dict:
    """Per-identity idiosyncrasies, deterministic in ``identity`` (JSON-serialisable dict).

    ``f0_hz`` (voice pitch: half the identities 90-140 Hz, half 170-240 Hz), ``speech_rate_hz`` (syllables/s,
    3.5-5.5), ``blink_rate_scale`` (0.8-1.25), ``head_amplitude`` (0.7-1.3), ``expressiveness`` (0.9-1.1; kept
    narrow so intensity levels stay separable), ``aversion_scale`` (0.7-1.3).
    """
    rng = np.random.default_rng([int(identity), 0x5EED])
    low = rng.random() < 0.5
    return {"f0_hz": _f(rng.uniform(90, 140) if low else rng.uniform(170, 240)),
            "speech_rate_hz": _f(rng.uniform(3.5, 5.5)), "blink_rate_scale": _f(rng.uniform(0.8, 1.25)),
            "head_amplitude": _f(rng.uniform(0.7, 1.3)), "expressiveness": _f(rng.uniform(0.9, 1.1)),
            "aversion_scale": _f(rng.uniform(0.7, 1.3))}


def default_behaviour(mode: str, style: dict | None = None) -> Behaviour:
    """Background behaviour for ``mode`` in (talking, motion, listening), modulated by an :func:`identity_style`.

    talking: 22 blinks/min, aversions 0.25 (speakers look away to think), head amplitude 1; listening: 16/min,
    aversions 0.08, fixations 1.0 s, head 0.6; motion (text-only scripts): 16/min, no aversions or gaze-head
    coupling, 1.0 s fixations with 0.8 deg scans, head 0.35 (so scripted movements dominate).
    """
    st = style or {}
    br, ha, av = st.get("blink_rate_scale", 1.0), st.get("head_amplitude", 1.0), st.get("aversion_scale", 1.0)
    if mode == "talking":
        return Behaviour(blink_rate_per_min=BLINK_RATE_TALKING * br, aversion_prob=min(0.25 * av, 0.9),
                         head_amplitude=ha)
    if mode == "listening":
        return Behaviour(blink_rate_per_min=BLINK_RATE_RESTING * br, aversion_prob=0.08 * av, fixation_median_s=1.0,
                         head_amplitude=0.6 * ha)
    if mode == "motion":
        return Behaviour(blink_rate_per_min=BLINK_RATE_RESTING * br, aversion_prob=0.0, fixation_median_s=1.0,
                         scan_deg=0.8, head_coupling=False, head_amplitude=0.35 * ha)
    raise ValueError(f"unknown mode {mode!r}")


#: Named independent random streams used by :func:`synthesize_face` (children of the clip's SeedSequence).
STREAMS = ("expression", "blinks", "gaze", "head", "state", "script")


def synthesize_face(num_frames: int, rngs: dict[str, np.random.Generator], *, mode: str = "talking",
                    emotion: str | None = None, intensity: int = 0, state_name: str | None = None,
                    script: Sequence[Step] | None = None, speech_jaw: np.ndarray | None = None,
                    drive: np.ndarray | None = None, style: dict | None = None,
                    behaviour: Behaviour | None = None, additive: np.ndarray | None = None,
                    episodes: Sequence[GazeEpisode] = (), fps: float = FPS) -> tuple[np.ndarray, dict]:
    """Compose a full face-state track, float32 ``[T, 24]`` clipped to the schema ranges, and its events.

    Layers (each from its own generator in ``rngs``, keys :data:`STREAMS`): emotion pattern (``emotion`` /
    ``intensity``) or beyond-emotion state (``state_name``) -> motion script postures / gestures (``script``) ->
    head motion (``behaviour.head_amplitude``) + speech-related pitch (2 deg x the low-passed ``speech_jaw``) ->
    gaze (fixations, saccades, head coupling, forced episodes) -> jaw: ``base + (1 - base) * speech_jaw`` ->
    blinks (combined with the lid baseline). ``drive`` is the normalised audio envelope used by laughter;
    ``additive`` (``[T, 24]``) is added before the head / gaze layers and ``episodes`` are extra forced gaze targets
    (both used by ``dyadic.py`` for listener reactions).

    Events: ``blinks``, ``gaze`` (:func:`gaze_track` events), ``expression`` (:func:`apply_emotion`),
    ``state`` (:func:`plan_state`), ``motion_steps`` (:func:`render_motion_script`), ``behaviour``.
    """
    T = num_frames
    st = style or {}
    beh = behaviour or default_behaviour(mode, st)
    state = S.neutral_state(T)
    if additive is not None:
        state += np.asarray(additive, np.float32)
    events: dict = {}
    episodes = list(episodes)
    if emotion is not None:
        events["expression"] = apply_emotion(state, emotion, intensity, rngs["expression"], fps=fps,
                                             expressiveness=st.get("expressiveness", 1.0))
    if state_name is not None:
        plan = plan_state(state_name, T, rngs["state"], beh, drive=drive, fps=fps)
        state += plan.additive
        beh = plan.behaviour
        episodes += plan.episodes
        events["state"] = plan.events
    forbidden: list[tuple[float, float]] = []
    if script:
        events["motion_steps"] = render_motion_script(state, script, fps=fps)
        episodes += script_gaze_episodes(script)
        forbidden = script_blink_free_spans(script)
    head = head_motion(T, rngs["head"], beh.head_amplitude, fps=fps)
    state[:, S.POSE_SLICE] += head[:, :3]
    state[:, S.TRANSLATION_SLICE] += head[:, 3:]
    if speech_jaw is not None:
        sj = np.asarray(speech_jaw, np.float64)
        if T > 12:
            sos, _ = _lowpass(2.0, float(fps), 2)
            sj = signal.sosfiltfilt(sos, sj, padlen=min(12, T - 1))
        state[:, IX["pitch"]] += (2.0 * beh.head_amplitude * (sj - sj.mean())).astype(np.float32)
    eye, headc, gaze_events = gaze_track(T, rngs["gaze"], beh, episodes=episodes, fps=fps)
    _set_gaze(state, eye[:, 0], eye[:, 1])
    state[:, IX["yaw"]] += headc[:, 0]
    state[:, IX["pitch"]] += headc[:, 1]
    if speech_jaw is not None:
        base = np.clip(state[:, IX["jaw_open"]], 0.0, 1.0)
        state[:, IX["jaw_open"]] = base + (1.0 - base) * np.clip(np.asarray(speech_jaw, np.float32), 0.0, 1.0)
    blinks, blink_ev = blink_track(T, rngs["blinks"], fps=fps, rate_per_min=beh.blink_rate_per_min,
                                   long_blink_prob=beh.long_blink_prob, duration_scale=beh.blink_duration_scale,
                                   forbidden=forbidden)
    add_blinks(state, blinks)
    events.update(blinks=blink_ev, gaze=gaze_events, behaviour=dataclasses.asdict(beh))
    return S.clip_to_range(state), events
