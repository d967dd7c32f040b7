"""CogPortrait Stage 2 inference: reference portrait + keypoints + audio + text -> video, and its evaluation.

    pipe = CogPortraitPipeline(*load_model("outputs/cogportrait"))
    result = pipe.generate(portrait, keypoints, audio, "look slightly left", guidance="dynamic")

``keypoints`` are normalised ``[F, K, 2]`` (F = 1 + 4k frames) in synthface's layout; ``reference_keypoints``
(the portrait's own keypoints) aligns driving keypoints of another face by thin-plate spline first. The portrait is
encoded into the first latent slot and kept clean; the other slots start from noise. Every sampler step runs
inside one jit, conditional and unconditional passes batched in one forward; ``guidance`` is ``dynamic`` (the
paper's trapezoid x eye-region Gaussian), ``static`` (one scale) or ``none``.

Evaluation (``evaluate``) on held-out synthface clips with ground-truth keypoints: the generated video is read
back with a trained synthface face reader and scored with AU-F1, AU-Temp and Eye-LMD, next to the same scores of
the VAE's own reconstruction of the true clip (the ceiling the DiT can reach through this VAE).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.data.preprocess import pose_video
from avatarjax.data.synthface import dynamics, geometry, schema
from avatarjax.data.synthface.loader import ProceduralSource
from avatarjax.data.synthface.records import audio_float
from avatarjax.diffusion import flow, flow_samplers, guidance
from avatarjax.errors import ConfigError, DataError
from avatarjax.eval import au as au_metrics, landmarks
from avatarjax.train.objectives import cog_portrait as task



@dataclasses.dataclass
class Generated:
    frames: np.ndarray  # uint8 [F, S, S, 3]
    latents: np.ndarray  # normalised [F', h, w, z]
    info: dict


class CogPortraitPipeline:
    def __init__(self, model: task.CogPortraitSystem, cfg):
        from avatarjax.encoders.instruction_features import InstructionFeatures

        self.cfg = cfg
        self.settings = model.settings
        self.latents = task.WindowLatents(cfg.data.vae)
        self.latents.setup_normalisation()  # written by training; a missing file means a different VAE
        self.text = InstructionFeatures(cfg.data.text_encoder, cfg.data.text_len)
        self.frame_size = cfg.data.synthface.frame_size
        self._graphdef, self._state = nnx.split(model.dit)
        vae_graphdef, self._vae_state = nnx.split(self.latents.vae)
        mean, std = jnp.asarray(self.latents.mean), jnp.asarray(self.latents.std)

        @jax.jit
        def decode(vae_state, z):
            video = nnx.merge(vae_graphdef, vae_state).decode(z * std + mean)
            return jnp.round((video + 1.0) * 127.5).astype(jnp.uint8)

        self._decode = decode
        self._compiled: dict[Any, Any] = {}

    # -- the jitted sampler ----------------------------------------------------------------------------------
    def _sampler(self, opts: task.CogPortraitSampleConfig, shape: tuple[int, ...]):
        key = (opts, shape)
        if key in self._compiled:
            return self._compiled[key]
        if opts.sampler not in ("unipc", "euler") or opts.guidance not in ("dynamic", "static", "none"):
            raise ConfigError(f"sample.sampler must be unipc|euler and sample.guidance dynamic|static|none, got "
                              f"{opts.sampler!r}, {opts.guidance!r}")
        make_schedule = flow_samplers.wan_schedule if opts.sampler == "unipc" else flow_samplers.euler_schedule
        schedule = make_schedule(opts.num_steps, opts.shift)
        graphdef = self._graphdef

        def run(state, cond, noise, clean_latent, gaussian):
            dit = nnx.merge(graphdef, state)
            clean_mask = flow.first_frame_mask(*noise.shape[1:4])[..., None]
            if opts.guidance == "none":
                fn, progress = (lambda x, t: task.velocity(dit, x, t, cond)), False
            else:
                pair = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, task.null_conditions(cond))
                velocity_pair = lambda x, t: task.velocity(dit, x, t, pair)  # noqa: E731
                fn = (guidance.dynamic_cfg_velocity(velocity_pair, gaussian, opts.dynamic)
                      if opts.guidance == "dynamic" else guidance.static_cfg_velocity(velocity_pair, opts.static_scale))
                progress = True
            sample = flow_samplers.unipc_sample if opts.sampler == "unipc" else flow_samplers.euler_sample
            return sample(fn, schedule, noise, takes_progress=progress, clean_mask=clean_mask,
                          clean_latent=clean_latent)

        self._compiled[key] = jax.jit(run)
        return self._compiled[key]

    def eye_gaussian(self, keypoints: np.ndarray, latent_shape: tuple[int, int, int], kappa: float) -> jax.Array:
        """``[1, F', h, w]`` eye-region map from normalised keypoints ``[F, K, 2]``."""
        stride = self.frame_size // latent_shape[1]
        return guidance.eye_gaussian_from_keypoints(
            jnp.asarray(keypoints[None] * self.frame_size), task.LEFT_IRIS, task.RIGHT_IRIS,
            latent_shape=latent_shape, stride=(4, stride, stride), kappa=kappa)

    # -- public --------------------------------------------------------------------------------------------
    def generate(self, portrait: np.ndarray, keypoints: np.ndarray, audio: np.ndarray | None = None,
                 instruction: str = "", *, reference_keypoints: np.ndarray | None = None, **options) -> Generated:
        """``portrait`` uint8 ``[S, S, 3]``; ``keypoints`` normalised ``[F, K, 2]`` (F = 1 + 4k);
        ``audio`` float32 16 kHz ``[F * 640]`` (None = silence); ``options`` override the ``sample`` config."""
        opts = dataclasses.replace(self.cfg.sample, **options)
        size = self.frame_size
        portrait = np.asarray(portrait)
        if portrait.shape != (size, size, 3) or portrait.dtype != np.uint8:
            raise DataError(f"the portrait is {portrait.dtype} {portrait.shape}; the model expects uint8 "
                            f"({size}, {size}, 3)")
        keypoints = np.asarray(keypoints, np.float32)
        frames = len(keypoints)
        if keypoints.ndim != 3 or frames < 5 or (frames - 1) % 4:
            raise DataError(f"keypoints have shape {keypoints.shape}: expected [1 + 4k frames (>= 5), K, 2]")
        if reference_keypoints is not None:
            keypoints = pose_video.align_to_reference(keypoints, reference_keypoints)
        if audio is None:
            audio = np.zeros(frames * schema.SAMPLES_PER_FRAME, np.float32)
        audio = np.asarray(audio, np.float32)
        if len(audio) < frames * schema.SAMPLES_PER_FRAME:
            raise DataError(f"the audio has {len(audio)} samples, fewer than the {frames * schema.SAMPLES_PER_FRAME} "
                            f"that {frames} frames need at 16 kHz")
        t0 = time.perf_counter()
        pose = self.latents.encode(pose_video.render_pose_video(keypoints, size))
        reference = self.latents.encode(portrait[None])  # [1, h, w, z]
        shape = (1,) + pose.shape
        text = self.text([instruction])
        cond = {"text": jnp.asarray(text["text_tokens"]), "text_mask": jnp.asarray(text["text_mask"]),
                "audio": task.audio_features(jnp.asarray(audio[None, :frames * schema.SAMPLES_PER_FRAME])),
                "pose": jnp.asarray(pose[None])}
        clean = jnp.zeros(shape, jnp.float32).at[:, :1].set(jnp.asarray(reference[None]))
        gaussian = self.eye_gaussian(keypoints, shape[1:4], opts.dynamic.kappa)
        noise = jax.random.normal(jax.random.key(opts.seed), shape, jnp.float32)
        latents = self._sampler(opts, shape)(self._state, cond, noise, clean, gaussian)
        video = np.asarray(self._decode(self._vae_state, latents))[0]
        elapsed = time.perf_counter() - t0
        info = {"frames": frames, "wall_s": round(elapsed, 3), "sampler": opts.sampler, "steps": opts.num_steps,
                "guidance": opts.guidance}
        return Generated(frames=video, latents=np.asarray(latents[0]), info=info)

    def reconstruct(self, video: np.ndarray) -> np.ndarray:
        """The VAE's own round trip of a true clip (the ceiling the DiT sees through this VAE)."""
        z = self.latents.encode(video)
        return np.asarray(self._decode(self._vae_state, jnp.asarray(z[None])))[0]


# ---------------------------------------------------------------------------------------------------- evaluation
def _scores(states: list[np.ndarray], kps: list[np.ndarray], trues: list[np.ndarray],
            true_kps: list[np.ndarray], targets: list[list[int]]) -> dict[str, float]:
    summary = au_metrics.au_f1_dataset([s[:, schema.AU_SLICE] for s in states],
                                       [t[:, schema.AU_SLICE] for t in trues], dynamics.AU_THRESHOLDS)
    temps = [au_metrics.au_temp(s[:, schema.AU_SLICE], t[:, schema.AU_SLICE], target)
             for s, t, target in zip(states, trues, targets) if target]
    lmd = [landmarks.eye_lmd(k, tk, geometry.LEFT_EYE_CORNERS, geometry.RIGHT_EYE_CORNERS,
                             points=geometry.EYE_REGION) for k, tk in zip(kps, true_kps)]
    return {"au_f1": float(summary.micro.f1), "au_temp": float(np.mean(temps)) if temps else float("nan"),
            "eye_lmd": float(np.mean(lmd)), "clips": len(states)}


def _target_aus(truth: np.ndarray) -> list[int]:
    """The AUs that move in a true clip (AU-Temp's target set)."""
    au = truth[:, schema.AU_SLICE]
    return [int(i) for i in np.flatnonzero(np.ptp(au, axis=0) > 0.1)]


def _random_windows(src, clips: int, window: int, seed: int):
    """(record, start) of the first ``clips`` clips long enough for ``window``, at random starts."""
    rng = np.random.default_rng(seed)
    used = 0
    for i in range(len(src)):
        if used >= clips:
            break
        record = src[i]
        if len(record["state"]) < window:
            continue
        used += 1
        yield record, int(rng.integers(0, len(record["state"]) - window + 1))


def evaluate(pipe: CogPortraitPipeline, reader, *, clips: int = 8, settings: tuple[str, ...] = ("dynamic", "static"),
             seed: int = 0, split: str = "eval", windows=None) -> dict:
    """Scores per guidance setting and for the VAE reconstruction on ``clips`` held-out synthface windows, or on
    ``windows`` (an iterable of (record, start frame) pairs, e.g. a boundary-case subset) when given."""
    data = pipe.cfg.data
    window, size = data.synthface.window, pipe.frame_size
    count = task.keypoint_count(pipe.cfg)
    if windows is None:
        windows = _random_windows(ProceduralSource(data.synthface.world(), split), clips, window, seed)
    results: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    trues, true_kps, targets, wall = [], [], [], defaultdict(float)
    from tqdm.auto import tqdm

    for record, start in tqdm(windows, desc="cogportrait eval", unit="clip", disable=None):
        all_kps, state = task.window_truth(record, start, window, schema.NUM_KEYPOINTS)
        kps = all_kps[:, :count]
        video, _ = task.render_truth(record, kps, state, size)
        ident = np.asarray(record["identity_vector"], np.float32)
        audio = audio_float(record["audio"])[start * schema.SAMPLES_PER_FRAME:(start + window) *
                                             schema.SAMPLES_PER_FRAME]
        instruction = json.loads(record["instructions"])[0] if record["instructions"] else ""
        trues.append(state)
        true_kps.append(all_kps)
        targets.append(_target_aus(state))

        def read(name: str, frames: np.ndarray) -> None:
            s, k = reader(frames, ident)
            results[name]["state"].append(s)
            results[name]["kps"].append(k)

        read("ground_truth_video", video)
        read("vae_reconstruction", pipe.reconstruct(video))
        for setting in settings:
            out = pipe.generate(video[0], kps, audio, instruction, guidance=setting)
            wall[setting] += out.info["wall_s"]
            read(f"generated_{setting}", out.frames)
    if not trues:
        raise DataError(f"no {split} clip has {window} frames: lower data.synthface.window")
    report = {name: _scores(r["state"], r["kps"], trues, true_kps, targets) for name, r in results.items()}
    vae_lmd = report["vae_reconstruction"]["eye_lmd"]
    for setting in settings:
        row = report[f"generated_{setting}"]
        row["eye_lmd_vs_vae"] = row["eye_lmd"] / max(vae_lmd, 1e-9)
        row["seconds_per_clip"] = wall[setting] / len(trues)
    return report

