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


# ---------------------------------------------------------------------------------------------- long-form drift
def long_form(pipe, *, seconds: float = 60.0, instruction: str = "talk with a big happy smile", seed: int = 0,
              reader: Reader | None = None, out_dir: str | Path | None = None, identity: int | None = None,
              extra_samples: int = 137, progress: bool | None = None, **knobs) -> dict:
    """Drift report (``eval.drift``) of one long synthetic utterance generated with the windowed pipeline.

    A held-out synthface identity's neutral portrait speaks ``seconds`` (+ ``extra_samples``, a partial last
    frame, to exercise the tail) of synthetic speech. Identity code: the motion VAE's appearance code
    (appearance is what carries identity through this VAE). Mouth signal for lip-sync: the face reader's
    ``jaw_open`` with ``reader``, else the mouth box's mean pixel change from the portrait. With ``reader`` the
    report also has the ``target`` curve: each frame against the synthface world's render of the portrait's
    identity in the state the reader reads from that frame, so expression and pose are factored out and what is
    left is the drift of identity and colour (plus the VAE's and the reader's own error, constant over time).
    Seams are scored on pixels and on the motion latents. ``knobs`` go to ``pipe.sample`` (head_motion_scale, anchor_colours, ...).
    With ``out_dir``: ``drift.json`` and ``drift.png`` written there."""
    import time

    import jax.numpy as jnp

    from avatarjax.eval import drift
    from avatarjax.pipelines import windowed

    size = pipe.frame_size
    index, ident, portrait, wave = drift.utterance(size, seconds, seed, identity, extra_samples)
    t0 = time.perf_counter()
    result = pipe.sample(portrait, wave, instruction, seed=seed, progress=progress, **knobs)
    wall = time.perf_counter() - t0
    frames, info = result.frames, result.info
    plan = windowed.WindowPlan(info["frames"], info["window"], info["overlap"], tuple(info["window_starts"]))
    target = None
    if reader is not None:
        def mouth_of(video):
            state, _ = reader(video, ident.to_vector())
            return state[:, schema.CHANNELS.index("jaw_open")]

        mouth_source = "face_reader jaw_open"
        target = render.render_frames(ident, reader(frames, ident.to_vector())[0], size)
    else:
        mouth_of, mouth_source = drift.mouth_box_signal(ident, portrait), "mouth-box pixel change from the portrait"

    def appearance(video):
        return np.asarray(pipe._vae("encode")(pipe._vae_state, jnp.asarray(video))[0], np.float32)

    measured = drift.drift_report(frames, result.audio, portrait, plan, mouth_of=mouth_of,
                                  truth_frames=drift.true_talking_frames(ident, result.audio, len(frames), size),
                                  identity_code=appearance, target_frames=target,
                                  latent_motion=np.abs(np.diff(result.latents, axis=0)).mean(axis=1),
                                  input_audio_samples=len(wave))
    report = {
        "system": "instruct_avatar", "seconds_requested": seconds, "instruction": instruction,
        "identity_index": index, "mouth_signal": mouth_source, "identity_code": "motion VAE appearance code",
        "windows": plan.num_windows, "window": plan.window, "overlap": plan.overlap,
        "steps_per_window": pipe.steps_per_window(seed=seed), "wall_s": round(wall, 2),
        "real_time_factor": round(wall / (len(frames) / schema.FPS), 3),
        "knobs": {k: info[k] for k in ("head_motion_scale", "expression_scale", "lip_only", "smoothing",
                                        "anchor_colours", "harmonize", "seam_smoothing")},
        **measured,
    }
    return drift.write_report(report, out_dir) if out_dir is not None else report


def long_form_command(model, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W -- --long-seconds 300 [--reader R] [--instruction T] [--out DIR]
    [long-form knobs]``: the drift report of one long utterance (``long_form``), JSON + PNG in ``--out``."""
    import argparse

    from avatarjax.pipelines.instruct_avatar import (InstructAvatarPipeline, add_long_form_options,
                                                     long_form_kwargs, resolve_vae)
    from avatarjax.train.export import load_model
    from avatarjax.train.objectives.instruct_avatar import read_latent_statistics

    p = argparse.ArgumentParser(prog="avatarjax eval (instruct_avatar, long form)")
    p.add_argument("--long-seconds", type=float, required=True, help="length of the synthetic utterance")
    p.add_argument("--reader", default=None, help="a face_reader (lip-sync from jaw_open; default: pixel proxy)")
    p.add_argument("--instruction", default="talk with a big happy smile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identity", type=int, default=None, help="synthface identity (default: first held-out)")
    p.add_argument("--out", default="outputs/long_form", help="directory for drift.json and drift.png")
    add_long_form_options(p)
    ns = p.parse_args(args)
    vae_path = resolve_vae(cfg.data.vae, checkpoint)
    vae, vae_cfg = load_model(vae_path)
    pipe = InstructAvatarPipeline(model, cfg, vae, vae_cfg, read_latent_statistics(vae_path))
    report = long_form(pipe, seconds=ns.long_seconds, instruction=ns.instruction, seed=ns.seed,
                       reader=None if ns.reader is None else Reader(ns.reader), out_dir=ns.out, identity=ns.identity,
                       **long_form_kwargs(ns))
    return {k: v for k, v in report.items() if k != "chunks"}
