"""The face-reader task: learn to read keypoints and the face state from rendered synthface frames.

Examples. Each record (a clip) gives ``frames_per_clip`` frames: frames of the clip drawn with the clip's identity
and, with probability ``perturb_prob`` per frame, *perturbed* frames: a frame of the clip's state plus Gaussian
noise of ``perturb_scale`` (per group: AU, gaze, pose, mouth, translation; a fraction of each channel's half
range), clipped to the schema ranges, gaze put in canonical form, drawn on a fresh training identity (one per
record). Why: in the clips the channels move together (emotions drive fixed AU sets, smiles come with AU6, the
head barely translates), so a reader trained on clips alone can lean on those correlations and the clip's
identities; the generators we evaluate produce combinations the clips rarely show. Noise decorrelates the
channels, fills the region around the AU thresholds (where AU-F1 is decided) and, with fresh identities (only
training-split indices), widens the face shapes and colours the reader sees; the held-out identities stay unseen.

Batch (per record, ``F = frames_per_clip``): ``frames`` uint8 ``[F, S, S, 3]``, ``reference`` uint8 ``[F, S, S, 3]``
(the neutral render of each frame's identity, read when ``model.reference``), ``state`` float32 ``[F, 24]``,
``keypoints`` float32 ``[F, 99, 2]`` (``geometry.keypoints`` of that state), ``identity_vector`` float32
``[F, 19]`` (what the frame was drawn with).

Loss: L1 on normalised keypoints + MSE on range-standardised state (``models.face_reader``); a fraction
``model.identity_dropout`` of the frames is read without its identity. Metrics: keypoint
error in pixels (mean Euclidean distance at the frame size) and the mean absolute state error per group in
schema units (pose in degrees).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.data.synthface import dynamics, geometry, identity as identity_lib, loader, reader, render, schema
from avatarjax.errors import AvatarError, ConfigError
from avatarjax.eval.au import au_f1_dataset
from avatarjax.models.face_reader import (STATE_HALF_RANGE, FaceReader, FaceReaderConfig, denormalise_keypoints,
                                          denormalise_state, face_reader_flops, frames_to_input,
                                          normalise_keypoints, normalise_state, read_frames)
from avatarjax.train.task import Task

GROUPS = {"au": schema.AU_SLICE, "gaze": schema.GAZE_SLICE, "pose": schema.POSE_SLICE,
          "mouth": schema.MOUTH_SLICE, "translation": schema.TRANSLATION_SLICE}


@dataclasses.dataclass(frozen=True)
class FaceReaderDataConfig:
    synthface: loader.SynthfaceDataConfig = loader.SynthfaceDataConfig()  # the world and source (window unused)
    frame_size: int = 64
    frames_per_clip: int = 16  # frames sampled per record; a batch holds train.batch_size * frames_per_clip
    perturb_prob: float = 0.5  # per frame, training split only
    # noise std as a fraction of each channel's half range, per group: AU, gaze, pose, mouth, translation
    perturb_scale: tuple[float, ...] = (0.3, 0.3, 0.3, 0.3, 0.1)


@dataclasses.dataclass(frozen=True)
class FaceReaderSampleConfig:
    clips: int = 48  # held-out (eval split) clips read by ``sample``
    read_batch: int = 256
    sheet_frames: int = 16


# ------------------------------------------------------------------------------------------------------- data
def _noise_std(scale: tuple[float, ...]) -> np.ndarray:
    """``[24]`` noise std per channel in schema units."""
    if len(scale) != len(GROUPS):
        raise ConfigError(f"data.perturb_scale needs {len(GROUPS)} numbers ({', '.join(GROUPS)}), got {scale}")
    per_channel = np.zeros(schema.NUM_CHANNELS, np.float32)
    for s, part in zip(scale, GROUPS.values()):
        per_channel[part] = s
    return per_channel * STATE_HALF_RANGE


def perturb(state: np.ndarray, rng: np.random.Generator, std: np.ndarray) -> np.ndarray:
    """``[N, 24]`` states plus Gaussian noise of ``std [24]``, gaze canonicalised, clipped to the ranges.

    Only the difference of opposite gaze channels shows in pixels, so the gaze channels are rewritten in the
    canonical form (``reader.gaze_channels``) that clips use; otherwise the target would be ambiguous.
    """
    noisy = state + rng.normal(size=state.shape).astype(np.float32) * std
    noisy[:, schema.GAZE_SLICE] = reader.gaze_channels(*schema.gaze_angles(noisy))
    return schema.clip_to_range(noisy)


def _training_identity(rng: np.random.Generator, seed: int) -> identity_lib.Identity:
    """A fresh identity whose index belongs to the training split (never a held-out face)."""
    while True:
        index = int(rng.integers(2**31))
        if identity_lib.identity_split(index) == "train":
            return identity_lib.sample_identity(index, seed)


def make_example(record: dict, rng: np.random.Generator, cfg: FaceReaderDataConfig, train: bool) -> dict:
    """``frames_per_clip`` frames of ``record`` (some perturbed when ``train``) with their labels."""
    n, length = cfg.frames_per_clip, len(record["state"])
    index = np.sort(rng.choice(length, n, replace=n > length))
    state = record["state"][index].astype(np.float32)
    keypoints = record["keypoints"][index].astype(np.float32)
    ident = identity_lib.Identity.from_vector(record["identity_vector"])
    frames = render.render_frames(ident, state, cfg.frame_size)
    identity_vector = np.repeat(np.asarray(record["identity_vector"], np.float32)[None], n, 0)
    neutral = lambda face: render.render_frames(face, schema.neutral_state(1), cfg.frame_size)[0]
    reference = np.repeat(neutral(ident)[None], n, 0)
    perturbed = rng.random(n) < (cfg.perturb_prob if train else 0.0)
    if perturbed.any():
        fresh = _training_identity(rng, cfg.synthface.world_seed)
        state[perturbed] = perturb(state[perturbed], rng, _noise_std(cfg.perturb_scale))
        keypoints[perturbed] = geometry.keypoints(fresh, state[perturbed])
        frames[perturbed] = render.render_frames(fresh, state[perturbed], cfg.frame_size)
        identity_vector[perturbed] = fresh.to_vector()
        reference[perturbed] = neutral(fresh)
    return {"frames": frames, "state": state, "keypoints": keypoints, "identity_vector": identity_vector,
            "reference": reference}


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    train = split == "train"
    syn = cfg.data.synthface
    ds = pipeline.batched(loader.source(syn, split), batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=lambda record, rng: make_example(record, rng, cfg.data, train))
    return pipeline.to_iter(ds, threads=syn.threads, prefetch=syn.prefetch)


def example_batch(cfg, batch_size: int) -> dict:
    n, s = cfg.data.frames_per_clip, cfg.data.frame_size
    return {"frames": np.zeros((batch_size, n, s, s, 3), np.uint8),
            "reference": np.zeros((batch_size, n, s, s, 3), np.uint8),
            "state": np.zeros((batch_size, n, schema.NUM_CHANNELS), np.float32),
            "keypoints": np.full((batch_size, n, schema.NUM_KEYPOINTS, 2), 0.5, np.float32),
            "identity_vector": np.zeros((batch_size, n, identity_lib.IDENTITY_DIM), np.float32)}


# ------------------------------------------------------------------------------------------------------ model
def build_model(cfg, rngs: nnx.Rngs) -> FaceReader:
    if cfg.model.image_size != cfg.data.frame_size:
        raise ConfigError(f"model.image_size={cfg.model.image_size} must equal data.frame_size="
                          f"{cfg.data.frame_size}: set both to the frame size the reader reads")
    return FaceReader(cfg.model, dtype=dtype_of(cfg.train.compute_dtype), param_dtype=dtype_of(cfg.train.param_dtype),
                      rngs=rngs)


def loss(model: FaceReader, batch, key, step):
    del step
    frames = batch["frames"]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    identity = flat(batch["identity_vector"])
    known = jax.random.bernoulli(key, 1.0 - model.cfg.identity_dropout, identity.shape[:1])
    reference = frames_to_input(flat(batch["reference"])) if model.cfg.reference else None
    out = model(frames_to_input(flat(frames)), identity, known=known, reference=reference, normalised=True)
    kp_true, state_true = flat(batch["keypoints"]), flat(batch["state"])
    kp_loss = jnp.mean(jnp.abs(out["keypoints"] - normalise_keypoints(kp_true)))
    state_loss = jnp.mean(jnp.square(out["state"] - normalise_state(state_true)))
    error = jnp.abs(denormalise_state(out["state"]) - state_true)
    kp_error = jnp.linalg.norm(denormalise_keypoints(out["keypoints"]) - kp_true, axis=-1)
    metrics = {"keypoint_loss": kp_loss, "state_loss": state_loss,
               "keypoint_px": jnp.mean(kp_error) * frames.shape[-2]}
    metrics.update({f"mae_{name}": jnp.mean(error[:, part]) for name, part in GROUPS.items()})
    return kp_loss + state_loss, metrics


def flops_per_example(cfg) -> float:
    return cfg.data.frames_per_clip * face_reader_flops(cfg.model)


# ----------------------------------------------------------------------------------------------------- sample
def reading_report(read: dict, true_state: np.ndarray, true_keypoints: np.ndarray, lengths: list[int],
                   frame_size: int) -> dict:
    """Score a reading of clips laid end to end: ``read`` = ``read_frames``'s output over all ``sum(lengths)``
    frames, against the true states ``[T, 24]`` and keypoints ``[T, 99, 2]``.

    AU-F1 per clip (clip-level activation with ``dynamics.AU_THRESHOLDS``, micro / macro / per AU), keypoint error
    in pixels (mean Euclidean distance), jaw-opening Pearson correlation over all frames, gaze MAE in degrees (the
    horizontal and vertical eye angles), pose MAE in degrees, state MAE per group.
    """
    splits = np.cumsum(lengths)[:-1]
    f1 = au_f1_dataset([s[:, schema.AU_SLICE] for s in np.split(read["state"], splits)],
                       [s[:, schema.AU_SLICE] for s in np.split(true_state, splits)], dynamics.AU_THRESHOLDS)
    gaze_error = np.stack(schema.gaze_angles(read["state"]), -1) - np.stack(schema.gaze_angles(true_state), -1)
    jaw = schema.INDEX["jaw_open"]
    error = np.abs(read["state"] - true_state)
    return {
        "clips": len(lengths), "frames": int(sum(lengths)), "frame_size": frame_size,
        "au_f1": f1.micro.f1, "au_precision": f1.micro.precision, "au_recall": f1.micro.recall,
        "au_f1_macro": f1.macro_f1,
        "au_f1_per_au": dict(zip(schema.AU_CHANNELS, np.round(f1.per_au.f1, 4).tolist())),
        "keypoint_error_px": float(np.linalg.norm(read["keypoints"] - true_keypoints, axis=-1).mean() * frame_size),
        "mouth_open_corr": float(np.corrcoef(read["state"][:, jaw], true_state[:, jaw])[0, 1]),
        "gaze_mae_deg": float(np.abs(gaze_error).mean()),
        "pose_mae_deg": float(error[:, schema.POSE_SLICE].mean()),
        "state_mae": {name: float(error[:, part].mean()) for name, part in GROUPS.items()},
    }


def render_clips(records: list[dict], frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth video of clips laid end to end: uint8 frames ``[T, S, S, 3]`` and identity vectors ``[T, 19]``."""
    frames = [render.render_frames(identity_lib.Identity.from_vector(r["identity_vector"]), r["state"], frame_size)
              for r in records]
    identity = [np.repeat(np.asarray(r["identity_vector"], np.float32)[None], len(r["state"]), 0) for r in records]
    return np.concatenate(frames), np.concatenate(identity)


def sample(model: FaceReader, cfg, out_dir, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --checkpoint W [-- --clips N]``: read held-out (eval split) clips from their renders and
    write ``face_reader_report.json`` and ``face_reader_sheet.png`` (true keypoints green, read ones red) to
    ``out_dir``; returns the report: the reading told each clip's identity, and under ``blind`` the same metrics
    read without it."""
    del checkpoint
    p = argparse.ArgumentParser(prog="avatarjax sample (face_reader)")
    p.add_argument("--clips", type=int, default=cfg.sample.clips)
    p.add_argument("--read_batch", type=int, default=cfg.sample.read_batch)
    ns = p.parse_args(args)
    src = loader.source(cfg.data.synthface, "eval")
    if ns.clips <= 0 or not len(src):
        raise AvatarError(f"nothing to read: --clips={ns.clips} and the eval split has {len(src)} clips; "
                          "pass --clips N with N >= 1")
    records = [src[i] for i in range(min(ns.clips, len(src)))]
    frames, identity = render_clips(records, cfg.data.frame_size)
    true_state = np.concatenate([r["state"] for r in records])
    true_kp = np.concatenate([r["keypoints"] for r in records])
    score = lambda read: reading_report(read, true_state, true_kp, [len(r["state"]) for r in records],
                                        cfg.data.frame_size)
    read = read_frames(model, frames, identity, ns.read_batch)
    report = score(read)
    blind = score(read_frames(model, frames, None, ns.read_batch))
    report["blind"] = {k: blind[k] for k in ("au_f1", "au_f1_macro", "keypoint_error_px", "mouth_open_corr",
                                             "gaze_mae_deg", "pose_mae_deg", "state_mae")}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pick = np.linspace(0, len(frames) - 1, cfg.sample.sheet_frames).round().astype(int)
    factor = max(1, -(-256 // cfg.data.frame_size))
    big = np.repeat(np.repeat(frames[pick], factor, 1), factor, 2)
    big = render.draw_keypoints(big, true_kp[pick], color=(40, 220, 40))
    sheet, path = out_dir / "face_reader_sheet.png", out_dir / "face_reader_report.json"
    render.contact_sheet(big, read["keypoints"][pick], columns=4, path=sheet, upscale=1)
    report = {**report, "contact_sheet": str(sheet.absolute()), "report": str(path.absolute())}
    path.write_text(json.dumps(report, indent=2))
    return report


FACE_READER_TASK = Task(name="face_reader", model_config=FaceReaderConfig, data_config=FaceReaderDataConfig,
                        build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                        example_batch=example_batch, sample_config=FaceReaderSampleConfig, sample=sample)
