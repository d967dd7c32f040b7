"""Clips: a face-state track, its audio, labels, instructions and exact ground truth (numpy + scipy).

``generate_clip(seed, identity=...)`` is fully deterministic per arguments. Unspecified ``kind`` / ``label`` /
``intensity`` / ``num_frames`` are drawn from the seed with these defaults:

- kind: talking 0.6, motion 0.25, listening 0.15 (:data:`KIND_PROBS`);
- talking label: a beyond-emotion state (uniform over ``schema.STATES``) with probability 0.25, else an emotion
  (uniform over the 8 MEAD emotions); intensity uniform in 1-3 (neutral: 1, as in MEAD; states / motion /
  listening: 0);
- num_frames: talking uniform in [48, 150] (1.9-6 s); listening uniform in [100, 150] (the listener needs speaker
  pauses); motion: the script's natural length (lead-in + steps + gaps + tail) clipped to [48, 150].

The draws are made in a fixed order from separate random streams (``numpy.random.SeedSequence([seed, identity])``
children), so passing a field explicitly with the value the seed would have drawn gives the identical clip, and
changing ``split`` changes only the instructions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import audio as A
from . import dynamics as D
from . import instructions as I
from . import schema as S

KIND_PROBS = {"talking": 0.6, "motion": 0.25, "listening": 0.15}
STATE_PROB = 0.25
TALKING_FRAMES = (48, 150)
LISTENING_FRAMES = (100, 150)
NUM_INSTRUCTIONS = 4
AUDIO_SOURCES = ("synth", "espeak", "auto")
_STREAMS = ("spec",) + D.STREAMS + ("audio", "instructions")


def clip_streams(seed: int, identity: int) -> dict[str, np.random.Generator]:
    """Independent generators for one clip: children of ``SeedSequence([seed, identity])`` named by stream."""
    if seed < 0 or identity < 0:
        raise ValueError(f"seed and identity must be >= 0, got {seed}, {identity}")
    children = np.random.SeedSequence([int(seed), int(identity)]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(_STREAMS, children)}


def _jsonable(obj):
    return json.loads(json.dumps(obj))


@dataclass
class Clip:
    """One synthface clip.

    state: float32 ``[T, 24]`` (schema layout, within ``schema.RANGES``); audio: float32 ``[T * 640]`` at 16 kHz;
    audio_flag: 1 = the subject talks (audio drives the jaw), 0 = it does not (silence for text-only motion; for
    listening clips the audio is the partner's speech); kind: one of ``schema.KINDS``; emotion: index in
    ``schema.EMOTIONS`` or -1; intensity: 1-3, 0 if none; label: the emotion / beyond-emotion state name,
    ``'motion'`` or ``'listening'``; instructions: several instruction variants; identity: identity index;
    seed: the generation seed; au_active: bool ``[10]`` clip-level AU ground truth
    (``dynamics.clip_au_activation``); events: JSON-serialisable ground truth (blinks, gaze, expression timing,
    state events, motion steps, audio syllables / pauses, lip lag, ...).
    """

    state: np.ndarray
    audio: np.ndarray
    audio_flag: int
    kind: str
    emotion: int
    intensity: int
    label: str
    instructions: list[str]
    identity: int
    seed: int
    au_active: np.ndarray
    events: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.state.shape[0])

    def au_frames(self, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Per-frame AU ground truth, bool ``[T, 10]`` (``dynamics.au_activation``)."""
        return D.au_activation(self.state, thresholds)

    def to_record(self) -> dict:
        """A flat dict of numpy arrays / scalars and bytes for serialisation (e.g. array_record, tfrecord, npz).

        ``state`` float32 [T, 24], ``audio`` float32 [T * 640], ``au_active`` bool [10]; ``audio_flag``,
        ``emotion``, ``intensity`` int32 and ``identity``, ``seed`` int64 0-d arrays; ``kind`` and ``label`` utf-8
        bytes; ``instructions`` and ``events`` utf-8 JSON bytes.
        """
        return {"state": np.asarray(self.state, np.float32), "audio": np.asarray(self.audio, np.float32),
                "audio_flag": np.int32(self.audio_flag), "kind": self.kind.encode(), "emotion": np.int32(self.emotion),
                "intensity": np.int32(self.intensity), "label": self.label.encode(),
                "instructions": json.dumps(list(self.instructions)).encode(), "identity": np.int64(self.identity),
                "seed": np.int64(self.seed), "au_active": np.asarray(self.au_active, bool),
                "events": json.dumps(self.events).encode()}

    @classmethod
    def from_record(cls, record: dict) -> "Clip":
        """Inverse of :meth:`to_record` (also accepts ``str`` instead of bytes and 1-element arrays)."""

        def text(v) -> str:
            if isinstance(v, np.ndarray):
                v = v.reshape(-1)[0] if v.dtype.kind in "SUO" else v.tobytes()
            return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)

        def integer(v) -> int:
            return int(np.asarray(v).reshape(-1)[0])

        return cls(state=np.asarray(record["state"], np.float32), audio=np.asarray(record["audio"], np.float32),
                   audio_flag=integer(record["audio_flag"]), kind=text(record["kind"]),
                   emotion=integer(record["emotion"]), intensity=integer(record["intensity"]),
                   label=text(record["label"]), instructions=list(json.loads(text(record["instructions"]))),
                   identity=integer(record["identity"]), seed=integer(record["seed"]),
                   au_active=np.asarray(record["au_active"], bool).reshape(-1),
                   events=json.loads(text(record["events"])))


def resolve_spec(seed: int, identity: int, kind: str | None = None, label: str | None = None,
                 intensity: int | None = None, num_frames: int | None = None) -> tuple[str, str, int, int | None]:
    """Fill unspecified fields from the seed (see the module docstring); validates the explicit ones.

    Returns (kind, label, intensity, num_frames); num_frames is None for motion clips whose length comes from the
    sampled script.
    """
    u = clip_streams(seed, identity)["spec"].random(6)  # fixed draw order: kind, state?, emotion, state, int, len
    if kind is not None and kind not in S.KINDS:
        raise ValueError(f"kind must be one of {S.KINDS}, got {kind!r}")
    if label is not None:
        if label in S.EMOTIONS or label in S.STATES:
            implied = "talking"
        elif label in ("motion", "listening"):
            implied = label
        else:
            raise ValueError(f"unknown label {label!r}: expected an emotion {S.EMOTIONS}, a state {S.STATES}, "
                             f"'motion' or 'listening'")
        if kind is not None and kind != implied:
            raise ValueError(f"label {label!r} requires kind {implied!r}, got kind {kind!r}")
        kind = implied
    if kind is None:
        cum = np.cumsum(list(KIND_PROBS.values()))
        kind = list(KIND_PROBS)[int(np.searchsorted(cum, u[0] * cum[-1], side="right"))]
    if label is None:
        if kind == "talking":
            if u[1] < STATE_PROB:
                label = S.STATES[int(u[3] * len(S.STATES))]
            else:
                label = S.EMOTIONS[int(u[2] * len(S.EMOTIONS))]
        else:
            label = kind
    if label in S.EMOTIONS and label != "neutral":
        intensity = 1 + int(u[4] * 3) if intensity is None else intensity
        if intensity not in S.INTENSITIES:
            raise ValueError(f"intensity must be one of {S.INTENSITIES} for {label!r}, got {intensity!r}")
    elif label == "neutral":
        if intensity not in (None, 1):
            raise ValueError(f"neutral clips have intensity 1 (MEAD), got {intensity!r}")
        intensity = 1
    else:
        if intensity not in (None, 0):
            raise ValueError(f"intensity applies to emotion labels only, got {intensity!r} for {label!r}")
        intensity = 0
    if num_frames is None:
        lo, hi = LISTENING_FRAMES if kind == "listening" else TALKING_FRAMES
        num_frames = None if kind == "motion" else lo + int(u[5] * (hi - lo + 1))
    elif int(num_frames) < 16:
        raise ValueError(f"num_frames must be >= 16, got {num_frames}")
    return kind, label, int(intensity), None if num_frames is None else int(num_frames)


def talking_audio(label: str, intensity: int, num_frames: int, rng: np.random.Generator, style: dict, *,
                  audio_source: str = "synth") -> tuple[np.ndarray, dict]:
    """Audio of a talking clip, float32 ``[T * 640]``, and its events (prosody from ``audio.prosody(label)``).

    ``audio_source``: ``synth`` (:func:`audio.synth_speech`), ``espeak`` (:func:`audio.espeak_speech`; raises if
    espeak-ng is missing), ``auto`` (espeak when available, else synth). Laughter always uses the synthetic
    laughter style.
    """
    if audio_source not in AUDIO_SOURCES:
        raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
    f0s, rs, loud, exc = A.prosody(label, intensity)
    use_espeak = label != "laughter" and (audio_source == "espeak" or (audio_source == "auto" and A.espeak_available()))
    if use_espeak:
        text = A.SENTENCES[int(rng.integers(len(A.SENTENCES)))]
        wav = A.espeak_speech(text, num_frames, speed_wpm=int(150 * rs), pitch=int(np.clip(50 * f0s, 0, 99)),
                              rms=0.08 * loud)
        if wav is None:
            raise RuntimeError("audio_source='espeak' but espeak-ng is not installed")
        return wav, {"source": "espeak", "text": text}
    wav, _env, ev = A.synth_speech(rng, num_frames, style="laughter" if label == "laughter" else "speech",
                                   f0_hz=style["f0_hz"] * f0s,
                                   rate_hz=5.0 if label == "laughter" else style["speech_rate_hz"] * rs,
                                   loudness=loud, f0_excursion=exc)
    return wav, {"source": "synth", **ev}


LIP_LAG_FRAMES = 2  # the mouth follows the audio by 2 frames (80 ms) in every generated talking clip


def generate_clip(seed: int, *, identity: int, kind: str | None = None, label: str | None = None,
                  intensity: int | None = None, num_frames: int | None = None, split: str = "train",
                  lip_lag_frames: int = LIP_LAG_FRAMES, num_instructions: int = NUM_INSTRUCTIONS,
                  audio_source: str = "synth",
                  partner_identity: int | None = None) -> Clip:
    """Generate one clip, fully deterministic per arguments (see the module docstring for the defaults).

    - talking: speech-like audio (prosody per emotion / state) whose frame envelope drives jaw_open through
      ``audio.jaw_from_envelope(env, lip_lag_frames)`` (positive lag = the mouth follows the audio), combined
      with the emotion / state pattern as ``base + (1 - base) * speech_jaw``; blinks, gaze, head motion.
    - motion: a text-only motion script (``dynamics.random_motion_script``), exact silence, ``audio_flag`` 0.
    - listening: the listener of a dyadic session with ``partner_identity`` (default ``identity + 1``) as the
      speaker (``dyadic.generate_session(seed, ..., num_reactions=1)``); audio = the speaker's speech,
      ``audio_flag`` 0.

    ``split`` ('train' / 'eval') selects the instruction templates only. ``num_instructions`` variants are stored.
    """
    kind, label, intensity, num_frames = resolve_spec(seed, identity, kind, label, intensity, num_frames)
    if kind == "listening":
        from .dyadic import generate_session

        partner = identity + 1 if partner_identity is None else int(partner_identity)
        session = generate_session(seed, partner, identity, num_frames, num_reactions=1, split=split,
                                   lip_lag_frames=lip_lag_frames, num_instructions=num_instructions,
                                   audio_source=audio_source)
        return session.listeners[0]
    rngs = clip_streams(seed, identity)
    style = D.identity_style(identity)
    events: dict = {"lip_lag_frames": int(lip_lag_frames), "style": style, "split": split,
                    "au_thresholds": D.AU_THRESHOLDS.tolist()}
    if kind == "motion":
        steps, num_frames = D.random_motion_script(rngs["script"], num_frames)
        state, ev = D.synthesize_face(num_frames, rngs, mode="motion", script=steps, style=style)
        wav = A.silence(num_frames)
        events["audio"] = {"source": "silence"}
        audio_flag, emotion = 0, -1
    else:
        wav, audio_events = talking_audio(label, intensity, num_frames, rngs["audio"], style,
                                          audio_source=audio_source)
        env = A.frame_envelope(wav)
        jaw = A.jaw_from_envelope(env, lip_lag_frames)
        ref = float(np.percentile(env, 95)) or 1.0
        drive = np.clip(env / ref, 0.0, 1.0)
        is_emotion = label in S.EMOTIONS
        state, ev = D.synthesize_face(num_frames, rngs, mode="talking", emotion=label if is_emotion else None,
                                      intensity=intensity, state_name=None if is_emotion else label,
                                      speech_jaw=jaw, drive=drive, style=style)
        events["audio"] = audio_events
        audio_flag, emotion = 1, (S.EMOTIONS.index(label) if is_emotion else -1)
    events.update(ev)
    clip = Clip(state=state, audio=wav, audio_flag=audio_flag, kind=kind, emotion=emotion, intensity=intensity,
                label=label, instructions=[], identity=int(identity), seed=int(seed),
                au_active=D.clip_au_activation(state), events=_jsonable(events))
    clip.instructions = I.sample_instructions(clip, rngs["instructions"], split, num_instructions)
    return clip


def clip_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th clip of :func:`generate_clips` (a 32-bit hash of (seed, index))."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def generate_clips(n: int, seed: int, *, identity: int | None = None, num_identities: int | None = None,
                   start: int = 0, **kwargs) -> Iterator[Clip]:
    """Yield clips ``start .. start + n - 1`` of the stream defined by ``seed``.

    Clip ``i`` uses ``clip_seed(seed, i)`` and identity ``identity`` if given, else ``hash(seed, i) %
    num_identities`` (else 0). ``kwargs`` go to :func:`generate_clip`. Any sub-range is reproducible on its own.
    """
    for i in range(start, start + n):
        if identity is not None:
            ident = int(identity)
        elif num_identities:
            ident = int(np.random.SeedSequence([int(seed), i, 1]).generate_state(1)[0]) % int(num_identities)
        else:
            ident = 0
        yield generate_clip(clip_seed(seed, i), identity=ident, **kwargs)
