"""Synthetic speech-like audio at 16 kHz, its 25-fps envelope, and the envelope -> jaw mapping (numpy + scipy).

A clip of ``T`` frames always has exactly ``T * schema.SAMPLES_PER_FRAME`` (= T * 640) samples; frame ``k`` owns
samples ``[640 k, 640 (k + 1))``.

Lip-sync lag convention: ``jaw_from_envelope(env, lag_frames)`` returns ``jaw[t] = g(env[t - lag_frames])``, so a
POSITIVE lag means the mouth FOLLOWS the audio by ``lag_frames`` frames (negative: the mouth leads). The lag that
maximises the normalised cross-correlation ``corr(env[t], jaw[t + L])`` over ``L`` (:func:`estimate_lag`) equals
``lag_frames``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import signal
from scipy.io import wavfile

from . import schema as S

SR = S.SAMPLE_RATE
HOP = S.SAMPLES_PER_FRAME
CTRL_RATE = 1000  # Hz, control rate of envelopes and f0 contours (interpolated to audio rate)

#: Vowel formants (F1, F2, F3 in Hz; Peterson & Barney adult averages) used per syllable.
VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
          "u": (300, 870, 2240)}
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)

#: Prosody per emotion / state at full intensity: (f0 scale, syllable-rate scale, loudness, f0 excursion scale).
#: Emotion values are interpolated towards 1 by ``dynamics.INTENSITY_SCALE`` (see :func:`prosody`).
PROSODY = {
    "neutral": (1.0, 1.0, 1.0, 1.0), "happy": (1.15, 1.05, 1.1, 1.3), "sad": (0.9, 0.8, 0.7, 0.6),
    "angry": (1.1, 1.1, 1.4, 1.2), "surprised": (1.25, 1.0, 1.2, 1.5), "fear": (1.2, 1.15, 0.9, 1.1),
    "disgusted": (0.95, 0.9, 1.0, 0.9), "contempt": (0.95, 0.9, 0.9, 0.8),
    "laughter": (1.5, 1.0, 1.2, 1.4), "cognitive_effort": (0.97, 0.8, 0.9, 0.9),
    "drowsiness": (0.9, 0.7, 0.6, 0.6), "low_arousal_negative": (0.88, 0.8, 0.6, 0.6),
    "social_engagement": (1.1, 1.05, 1.1, 1.2), "evasive_response": (0.95, 0.9, 0.8, 0.9),
}

#: Short sentences for optional espeak-ng speech.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.", "I will meet you at the station tomorrow morning.",
    "Please put the books back on the shelf.", "It has been raining all day in the city.",
    "We should try the new restaurant near the park.", "She told me the whole story last night.",
    "The meeting starts at nine, so do not be late.", "Could you pass me the salt, please?",
    "My brother bought a red bicycle yesterday.", "The children were playing in the garden.",
    "I think the answer is somewhere in this book.", "Let us take a walk along the river.",
)


def prosody(label: str, intensity: int = 3) -> tuple[float, float, float, float]:
    """(f0 scale, rate scale, loudness, f0 excursion) for an emotion / state label (1.0s for unknown labels)."""
    from .dynamics import INTENSITY_SCALE

    vals = PROSODY.get(label, (1.0, 1.0, 1.0, 1.0))
    if label in S.EMOTIONS:
        k = INTENSITY_SCALE.get(intensity, 1.0)
        vals = tuple(1.0 + (v - 1.0) * k for v in vals)
    return tuple(float(v) for v in vals)


# ----------------------------------------------------------------------------------------------------------------
# Envelopes, lag
# ----------------------------------------------------------------------------------------------------------------


def frame_envelope(wav: np.ndarray, sr: int = SR, fps: int = S.FPS) -> np.ndarray:
    """RMS envelope per video frame, float32 ``[ceil(len(wav) / hop)]`` with ``hop = sr // fps`` (640 at 16 kHz).

    Frame ``k`` is the RMS of samples ``[hop k, hop (k + 1))`` (the last partial frame is zero-padded).
    """
    wav = np.asarray(wav, np.float64).reshape(-1)
    hop = sr // fps
    n = -(-wav.shape[0] // hop)
    x = np.zeros(n * hop)
    x[:wav.shape[0]] = wav
    return np.sqrt(np.mean(x.reshape(n, hop) ** 2, axis=1)).astype(np.float32)


def jaw_from_envelope(envelope: np.ndarray, lag_frames: int, *, reference: float | None = None,
                      gate: float = 0.05, exponent: float = 0.6, max_open: float = 0.8) -> np.ndarray:
    """Map a frame envelope ``[T]`` to jaw_open ``[T]`` in [0, max_open], delayed by ``lag_frames``.

    ``g(e) = max_open * (max(e / reference - gate, 0) / (1 - gate)) ** exponent`` (clipped to 1 inside), with
    ``reference`` = the 95th percentile of the envelope (its maximum if that is 0; silence -> zeros). Then
    ``jaw[t] = g(env[t - lag])``:
    positive lag = the mouth follows the audio by ``lag`` frames; negative = it leads. Frames shifted in from
    outside the clip repeat the first / last value.
    """
    env = np.asarray(envelope, np.float64).reshape(-1)
    T = env.shape[0]
    if reference is None and T:
        ref = float(np.percentile(env, 95)) or float(env.max())
    else:
        ref = float(reference or 0.0)
    if T == 0 or ref <= 0.0:
        return np.zeros(T, np.float32)
    x = np.clip((env / ref - gate) / (1.0 - gate), 0.0, 1.0)
    g = max_open * x ** exponent
    idx = np.clip(np.arange(T) - int(lag_frames), 0, T - 1)
    return g[idx].astype(np.float32)


def estimate_lag(envelope: np.ndarray, jaw: np.ndarray, max_lag: int = 8) -> int:
    """The lag ``L`` in [-max_lag, max_lag] maximising Pearson ``corr(envelope[t], jaw[t + L])`` (same convention
    as :func:`jaw_from_envelope`: positive = the jaw follows the audio)."""
    e = np.asarray(envelope, np.float64)
    j = np.asarray(jaw, np.float64)
    best, best_c = 0, -np.inf
    for L in range(-max_lag, max_lag + 1):
        a, b = (e[:len(e) - L], j[L:]) if L >= 0 else (e[-L:], j[:len(j) + L])
        if len(a) < 3 or a.std() == 0 or b.std() == 0:
            continue
        c = float(np.corrcoef(a, b)[0, 1])
        if c > best_c:
            best, best_c = L, c
    return best


def detect_pauses(envelope: np.ndarray, *, rel_threshold: float = 0.1, min_pause_frames: int = 5,
                  fps: int = S.FPS) -> list[dict]:
    """Pauses in speech: runs of at least ``min_pause_frames`` frames whose envelope is below ``rel_threshold`` x
    the 95th percentile, preceded by speech (leading silence is not a pause). Returns dicts with
    ``start_frame`` (first silent frame), ``end_frame`` (first frame after it; == T if the clip ends silent),
    ``start_s``, ``end_s``."""
    env = np.asarray(envelope, np.float64)
    ref = float(np.percentile(env, 95)) if env.size else 0.0
    if ref <= 0:
        return []
    quiet = env < rel_threshold * ref
    out, k, T = [], 0, len(env)
    spoken = False
    while k < T:
        if not quiet[k]:
            spoken = True
            k += 1
            continue
        j = k
        while j < T and quiet[j]:
            j += 1
        if spoken and j - k >= min_pause_frames:
            out.append({"start_frame": k, "end_frame": j, "start_s": round(k / fps, 5), "end_s": round(j / fps, 5)})
        k = j
    return out


# ----------------------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _vowel_sos(sr: int) -> dict[str, np.ndarray]:
    """Cascade of three Klatt resonators per vowel (unity DC gain), normalised to unit peak gain."""
    out = {}
    for v, formants in VOWELS.items():
        rows = []
        for f, bw in zip(formants, FORMANT_BANDWIDTHS):
            r = math.exp(-math.pi * bw / sr)
            a1, a2 = -2.0 * r * math.cos(2.0 * math.pi * f / sr), r * r
            rows.append([1.0 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
        sos = np.array(rows)
        _, h = signal.sosfreqz(sos, worN=2048, fs=sr)
        sos[0, :3] /= np.abs(h).max()
        out[v] = sos
    return out


@lru_cache(maxsize=8)
def _filters(sr: int) -> dict[str, np.ndarray]:
    return {"tilt": signal.butter(1, 250.0, fs=sr, output="sos"),
            "aspiration": signal.butter(2, 1200.0, btype="high", fs=sr, output="sos"),
            "frication": signal.butter(2, [2500.0, 6500.0], btype="band", fs=sr, output="sos")}


def _schedule(rng: np.random.Generator, dur: float, rate: float, style: str) -> tuple[list, list, float]:
    """Syllables [(onset_s, dur_s, vowel, stress, consonant)] and phrases [(start_s, end_s)]."""
    vowels = list(VOWELS)
    syl, phrases = [], []
    lead = float(rng.uniform(0.05, 0.3))
    t = lead
    while t < dur - 0.1:
        if style == "laughter":
            n, pause = int(rng.integers(3, 9)), float(rng.uniform(0.3, 0.8))
        else:
            n, pause = int(rng.integers(3, 13)), float(rng.uniform(0.25, 0.7))
        start = t
        for i in range(n):
            d = float(rng.uniform(0.75, 1.25) / rate)
            if style == "laughter":
                v, cons = "a", True
            else:
                v, cons = vowels[int(rng.integers(len(vowels)))], bool(rng.random() < 0.6)
            stress = float(rng.uniform(0.8, 1.0) if (i == 0 or rng.random() < 0.25) else rng.uniform(0.5, 0.8))
            syl.append((t, d, v, stress, cons))
            t += d
            if t >= dur:
                break
        phrases.append((start, min(t, dur)))
        t += pause
    return syl, phrases, lead


def synth_speech(rng: np.random.Generator, num_frames: int, *, style: str = "speech", f0_hz: float = 120.0,
                 rate_hz: float = 4.5, loudness: float = 1.0, f0_excursion: float = 1.0,
                 sr: int = SR) -> tuple[np.ndarray, np.ndarray, dict]:
    """Speech-like audio: (wav float32 ``[num_frames * sr // 25]``, envelope float32 ``[num_frames]``, events).

    - Phrases of 3-12 syllables (laughter: 3-8 "ha"s) separated by 0.25-0.7 s pauses (laughter 0.3-0.8 s), after
      0.05-0.3 s of leading silence; syllable durations ``U(0.75, 1.25) / rate_hz`` (rate 3-6 Hz in practice);
      syllable amplitude ``sin(pi u) ** 0.7`` times a stress in [0.5, 1].
    - Voicing: a band-limited pulse train (harmonics up to 5 kHz, Dirichlet kernel) on an f0 contour that
      declines over each phrase, rises on stressed syllables (``f0_excursion`` scales the movements) and carries
      1 % slow jitter; spectral tilt by a 250 Hz one-pole low-pass.
    - Formant filtering: the source goes through the five vowel resonator cascades of :data:`VOWELS`; per-sample
      weights (each syllable's vowel, cross-faded over 40 ms) mix them, so formants change per syllable.
    - Noise: frication bursts (2.5-6.5 kHz) at 60 % of syllable onsets, aspiration (x8 for laughter) and a
      -50 dB noise floor.
    - Level: speech RMS 0.08 x ``loudness`` (clipped to [-1, 1]).

    ``envelope`` is :func:`frame_envelope` of the returned waveform. ``events``: ``syllables`` [[onset_s, dur_s,
    vowel, stress]], ``phrases`` [[start_s, end_s]], ``pauses`` [[start_s, end_s]] (between phrases),
    ``leading_silence_s``, ``f0_hz``, ``rate_hz``, ``style``.
    """
    hop = sr // S.FPS
    n = num_frames * hop
    dur = n / sr
    syl, phrases, lead = _schedule(rng, dur, rate_hz, style)
    nc = int(math.ceil(dur * CTRL_RATE)) + 1
    tc = np.arange(nc) / CTRL_RATE
    env_c = np.zeros(nc)
    f0_c = np.full(nc, f0_hz * 0.95)
    vowel_names = list(VOWELS)
    vw_c = np.zeros((len(vowel_names), nc))
    vw_c[0] = 1.0
    for (s0, s1) in phrases:
        m = (tc >= s0) & (tc < s1 + 0.3)
        u = np.clip((tc[m] - s0) / max(s1 - s0, 1e-3), 0.0, 1.0)
        start_scale, end_scale = 1.0 + 0.12 * f0_excursion * rng.uniform(0.5, 1.5), 1.0 - 0.1 * f0_excursion
        f0_c[m] = f0_hz * (start_scale + (end_scale - start_scale) * u)
    for (o, d, v, stress, _c) in syl:
        m = (tc >= o) & (tc < o + d)
        u = (tc[m] - o) / d
        env_c[m] = np.maximum(env_c[m], stress * np.sin(np.pi * u) ** 0.7)
        f0_c[m] *= 1.0 + 0.15 * f0_excursion * (stress - 0.5) * np.sin(np.pi * u)
        vw_c[:, m] = 0.0
        vw_c[vowel_names.index(v), m] = 1.0
    # smooth the vowel weights (40 ms cross-fades) and the f0 contour (60 ms window)
    win = np.hanning(41)
    vw_c = np.stack([np.convolve(w, win / win.sum(), mode="same") for w in vw_c])
    vw_c /= np.maximum(vw_c.sum(0, keepdims=True), 1e-6)
    f0_c = np.convolve(np.pad(f0_c, 30, mode="edge"), np.hanning(61) / np.hanning(61).sum(), mode="same")[30:-30]
    f0_c *= 1.0 + 0.01 * np.convolve(rng.standard_normal(nc), np.hanning(101) / np.hanning(101).sum() * 10,
                                     mode="same")
    ts = np.arange(n) / sr
    env = np.interp(ts, tc, env_c)
    f0 = np.interp(ts, tc, f0_c)
    phase = np.mod(2.0 * np.pi * np.cumsum(f0) / sr, 2.0 * np.pi)
    K = np.maximum(np.floor(5000.0 / f0), 1.0)
    half = np.sin(0.5 * phase)  # sum_{k=1..K} cos(k phase) = sin((K + 1/2) phase) / (2 sin(phase / 2)) - 1/2
    safe = np.abs(half) > 1e-6
    pulse = np.where(safe, np.sin((K + 0.5) * phase) / (2.0 * np.where(safe, half, 1.0)) - 0.5, K) / np.sqrt(K)
    filt = _filters(sr)
    source = signal.sosfilt(filt["tilt"], pulse)
    voiced = np.zeros(n)
    for i, v in enumerate(vowel_names):
        w = np.interp(ts, tc, vw_c[i])
        if w.max() > 1e-4:
            voiced += w * signal.sosfilt(_vowel_sos(sr)[v], source)
    voiced /= max(float(np.sqrt(np.mean(voiced ** 2))), 1e-9)
    noise = rng.standard_normal(n)
    asp = signal.sosfilt(filt["aspiration"], noise)
    asp /= max(float(np.std(asp)), 1e-9)
    fric_src = signal.sosfilt(filt["frication"], rng.standard_normal(n))
    fric_src /= max(float(np.std(fric_src)), 1e-9)
    fric = np.zeros(n)
    for (o, d, v, stress, cons) in syl:
        if not cons:
            continue
        fd = float(rng.uniform(0.03, 0.08))
        a, b = int(max(o - 0.5 * fd, 0.0) * sr), int(min(o + 0.5 * fd, dur) * sr)
        if b > a:
            fric[a:b] += 0.4 * stress * np.hanning(b - a)
    breath = 0.4 if style == "laughter" else 0.05
    wav = env * (voiced + breath * asp) + fric * fric_src
    speech = env > 0.05
    rms = float(np.sqrt(np.mean(wav[speech] ** 2))) if speech.any() else 1.0
    wav = wav * (0.08 * loudness / max(rms, 1e-9))
    wav += 0.08 * 10 ** (-50 / 20) * rng.standard_normal(n)
    wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
    pauses = [[round(a1, 5), round(b0, 5)] for (_, a1), (b0, _) in zip(phrases[:-1], phrases[1:])]
    events = {"syllables": [[round(o, 5), round(d, 5), v, round(st, 4)] for (o, d, v, st, _c) in syl],
              "phrases": [[round(a, 5), round(b, 5)] for a, b in phrases], "pauses": pauses,
              "leading_silence_s": round(lead, 5), "f0_hz": round(float(f0_hz), 3),
              "rate_hz": round(float(rate_hz), 4), "style": style}
    return wav, frame_envelope(wav, sr), events


def silence(num_frames: int) -> np.ndarray:
    """Exact digital silence, float32 ``[num_frames * 640]`` (text-only motion clips)."""
    return np.zeros(num_frames * HOP, np.float32)


def fit_length(wav: np.ndarray, num_samples: int, offset: int = 0) -> np.ndarray:
    """Place ``wav`` at ``offset`` in a zero buffer of exactly ``num_samples`` (trimming what does not fit)."""
    out = np.zeros(num_samples, np.float32)
    seg = np.asarray(wav, np.float32)[: max(num_samples - offset, 0)]
    out[offset:offset + seg.shape[0]] = seg
    return out


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


def espeak_speech(text: str, num_frames: int, *, voice: str = "en", speed_wpm: int = 160, pitch: int = 50,
                  offset_s: float = 0.1, rms: float = 0.08) -> np.ndarray | None:
    """Real synthetic speech via ``espeak-ng`` (None when it is not installed), float32 ``[num_frames * 640]``.

    The sentence is rendered to a wav by a subprocess, converted to mono float, resampled to 16 kHz with
    ``scipy.signal.resample_poly``, scaled to RMS ``rms`` over its voiced part, placed ``offset_s`` into the clip
    and zero-padded / trimmed to exactly ``num_frames * 640`` samples. Output depends on the installed espeak-ng
    version, so it is deterministic per machine, not across machines.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", str(int(speed_wpm)), "-p", str(int(pitch)), "-w", str(path), text],
                       check=True, capture_output=True, timeout=60)
        sr_in, data = wavfile.read(path)
    x = data.astype(np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if np.issubdtype(data.dtype, np.integer):
        x /= float(np.iinfo(data.dtype).max)
    if sr_in != SR:
        g = math.gcd(int(sr_in), SR)
        x = signal.resample_poly(x, SR // g, int(sr_in) // g)
    loud = np.abs(x) > 0.02 * (np.abs(x).max() + 1e-12)
    level = float(np.sqrt(np.mean(x[loud] ** 2))) if loud.any() else 1.0
    x = np.clip(x * (rms / max(level, 1e-9)), -1.0, 1.0)
    return fit_length(x, num_frames * HOP, int(offset_s * SR))
