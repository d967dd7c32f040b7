"""InstructAvatar evaluation on held-out synthface identities, shaped like the paper's tables.

Every generated video is read back from its pixels by the synthface face reader (the OpenFace of this world;
``--reader``: a face_reader workdir or export), so the scores measure the video a user would see:

Emotional talking (talking clips of eval identities, a fixed window, the clip's own audio, a neutral portrait):
- ``gt_instruction``: the clip's instruction in a held-out paraphrase; ``seen_paraphrase``: the same emotion and
  intensity in a training template; ``random_instruction``: another emotion; ``ref``: the portrait repeated;
  ``gt_video``: the clip itself (the reader's ceiling); ``vae_reconstruction``: the clip's motion through the
  motion VAE from the portrait's appearance (the ceiling of any generator decoding through this VAE).
- Metrics: ``au_f1`` (micro AU-F1 of clip-level AU activations against the ground-truth clip), ``au_emo``
  (fraction of the emotion's AUs active), ``lipsync`` (best mouth/audio correlation within +-200 ms) and its
  ``lipsync_lag_ms``, ``jitter`` (mean keypoint acceleration, image fractions/frame^2).

Text-only motion control (motion clips): ``motion_agreement`` = 1 - normalised DTW distance between the generated
and ground-truth trajectories of the control channels the instruction moves (the AU-Temp formula over pose, gaze
and AU channels), for the ground-truth instruction and for a random other motion instruction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avatarjax.data.synthface import dynamics, identity as identity_lib, instructions, render, schema
from avatarjax.data.synthface.records import ProceduralSource, audio_float
from avatarjax.eval import au as au_metrics, lipsync, smoothness

FRAME_MS = 1000.0 / schema.FPS


class Reader:
    """Frames (+ the identity vector when known) -> (state ``[T, 24]``, keypoints ``[T, 99, 2]`` in normalised image
    coordinates) with a trained face reader."""

    def __init__(self, path: str | Path):
        from avatarjax.models.face_reader import read_frames
        from avatarjax.train.export import load_model

        self.model, self.cfg = load_model(path)
        self._read = read_frames

    def __call__(self, frames: np.ndarray, identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ident = None if identity is None else np.repeat(np.asarray(identity, np.float32)[None], len(frames), 0)
        out = self._read(self.model, frames, ident)
        return out["state"], out["keypoints"]


def _expected_aus() -> dict[str, list[int]]:
    return {e: [schema.AU_CHANNELS.index(a) for a in dynamics.active_pattern_aus(e)] for e in schema.EMOTIONS}


def _instruction(record: dict, rng: np.random.Generator, split: str) -> str:
    label = record["label"].decode() if isinstance(record["label"], bytes) else str(record["label"])
    if label in schema.STATES:
        return instructions.state_instruction(rng, label, split)
    return instructions.emotion_instruction(rng, int(record["emotion"]), max(int(record["intensity"]), 1), split)


def _random_emotion_instruction(record: dict, rng: np.random.Generator, split: str) -> str:
    others = [e for e in range(len(schema.EMOTIONS)) if e != int(record["emotion"])]
    return instructions.emotion_instruction(rng, int(rng.choice(others)), int(rng.integers(1, 4)), split)


def _scores(setting: dict[str, list], trues: list[np.ndarray], audios: list[np.ndarray | None],
            emotions: list[str]) -> dict[str, float]:
    states, keypoints = setting["state"], setting["keypoints"]
    summary = au_metrics.au_f1_dataset([s[:, schema.AU_SLICE] for s in states],
                                       [t[:, schema.AU_SLICE] for t in trues], dynamics.AU_THRESHOLDS)
    expected = _expected_aus()
    au_emo = [au_metrics.au_emo_coverage(s[:, schema.AU_SLICE], e, expected, dynamics.AU_THRESHOLDS)
              for s, e in zip(states, emotions)]
    out = {"au_f1": float(summary.micro.f1), "au_emo": float(np.mean(au_emo)),
           "jitter": float(np.mean([smoothness.keypoint_jitter(k) for k in keypoints]))}
    syncs = [lipsync.lipsync_score(s[:, schema.CHANNELS.index("jaw_open")],
                                   lipsync.audio_rms_envelope(a, num_frames=len(s)), max_lag=5)
             for s, a in zip(states, audios) if a is not None]
    if syncs:
        out["lipsync"] = float(np.mean([c for c, _ in syncs]))
        out["lipsync_lag_ms"] = float(np.median([lag for _, lag in syncs]) * FRAME_MS)
    return out


def _moved_channels(state: np.ndarray) -> list[int]:
    span = np.ptp(state[:, schema.CONTROL_SLICE], axis=0) / (schema.HIGH - schema.LOW)[schema.CONTROL_SLICE]
    return [int(i) for i in np.flatnonzero(span > 0.1)]


def evaluate(pipe, reader: Reader, *, num_clips: int = 32, num_motion_clips: int = 16, seed: int = 0,
             window: int | None = None) -> dict:
    """Scores per setting (see the module docstring) on eval-split clips of the pipeline's synthface world."""
    data = pipe.cfg.data.synthface
    window = window or data.window
    src = ProceduralSource(data.world(), "eval")
    rng = np.random.default_rng(seed)
    talking, motion = [], []
    for i in range(len(src)):
        record = src[i]
        if len(record["state"]) < window:
            continue
        kind = record["kind"].decode() if isinstance(record["kind"], bytes) else str(record["kind"])
        if kind == "talking" and len(talking) < num_clips:
            talking.append(record)
        elif kind == "motion" and len(motion) < num_motion_clips:
            motion.append(record)
        if len(talking) >= num_clips and len(motion) >= num_motion_clips:
            break
    size = pipe.frame_size
    settings = defaultdict(lambda: defaultdict(list))
    trues, audios, emotions = [], [], []

    def add(name: str, frames: np.ndarray, identity: np.ndarray) -> None:
        state, kps = reader(frames, identity)
        settings[name]["state"].append(state)
        settings[name]["keypoints"].append(kps)

    for record in tqdm(talking, desc="eval talking clips", unit="clip", disable=None):
        start = (len(record["state"]) - window) // 2
        truth = np.asarray(record["state"][start:start + window], np.float32)
        ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
        portrait = render.render_frames(ident, schema.neutral_state(1), size=size)[0]
        audio = audio_float(record["audio"])[start * 640:(start + window) * 640]
        trues.append(truth)
        audios.append(audio)
        emotions.append(schema.EMOTIONS[int(record["emotion"])])
        for name, text in (("gt_instruction", _instruction(record, rng, "eval")),
                           ("seen_paraphrase", _instruction(record, rng, "train")),
                           ("random_instruction", _random_emotion_instruction(record, rng, "eval"))):
            add(name, pipe.sample(portrait, audio, text, seed=seed).frames, record["identity_vector"])
        add("ref", np.repeat(portrait[None], window, axis=0), record["identity_vector"])
        video = render.render_frames(ident, truth, size=size)
        add("gt_video", video, record["identity_vector"])
        add("vae_reconstruction", pipe.reconstruct(portrait, video), record["identity_vector"])
    report = {name: _scores(settings[name], trues, audios, emotions) for name in
              ("gt_instruction", "seen_paraphrase", "random_instruction", "ref", "gt_video", "vae_reconstruction")}

    agreement = defaultdict(list)
    for k, record in enumerate(tqdm(motion, desc="eval motion clips", unit="clip", disable=None)):
        truth = np.asarray(record["state"][:window], np.float32)
        moved = _moved_channels(truth)
        if not moved:
            continue
        ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
        portrait = render.render_frames(ident, schema.neutral_state(1), size=size)[0]
        own = json.loads(record["instructions"])[0]
        other = json.loads(motion[(k + 1) % len(motion)]["instructions"])[0]
        for name, text in (("gt_instruction", own), ("random_instruction", other)):
            state, _ = reader(pipe.sample(portrait, None, text, num_frames=window, seed=seed).frames,
                              record["identity_vector"])
            agreement[name].append(au_metrics.au_temp(state, truth, moved, norm="range"))
    report["motion_control"] = {name: float(np.mean(v)) for name, v in agreement.items()}
    report["clips"] = {"talking": len(talking), "motion": len(motion), "window_frames": window}
    return report
