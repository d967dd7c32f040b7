"""CogPortrait Stage 2 inference: reference portrait + keypoints + audio + text -> video, and its evaluation.

    pipe = CogPortraitPipeline(*load_model("outputs/cogportrait"))
    result = pipe.generate(portrait, keypoints, audio, "look slightly left", guidance="dynamic")

``keypoints`` are normalised ``[F, K, 2]`` (F = 1 + 4k frames) in synthface's layout; ``reference_keypoints``
(the portrait's own keypoints) aligns driving keypoints of another face by thin-plate spline first. The portrait is
encoded into the first latent slot and kept clean; the other slots start from noise. Every sampler step runs
inside one jit, conditional and unconditional passes batched in one forward; ``guidance`` is ``dynamic`` (the
paper's trapezoid x eye-region Gaussian), ``static`` (one scale) or ``none``.

Any length (``sample``): audio of any duration gives exactly one frame per 40 ms (``media.frames_for_audio``).
The utterance's keypoints are planned once (``apply_knobs`` / ``smoothing`` act on the whole trajectory) and
sliced per window; windows of the training clip length (``1 + 4k`` frames) overlap in latent time
(``windowed.plan_latent_windows``). In every window the portrait's latent is the clean first slot (identity always
comes from the portrait, never from generated frames) and the portrait's keypoints the first pose frame; the
window's first ``overlap / 4`` content latents are the previous window's committed tail, forward-noised to the
current flow time and re-imposed before every network call inside the one jitted sampler
(``windowed.replacement_denoise``), then cross-faded into the new prediction. The committed latents are decoded as
one causal stream (segments with the decoder's cache carried across, so no decoder seam at window boundaries), each
window's chunk optionally colour-anchored to the portrait, and cut to the exact length.
One progress bar runs over windows x steps.

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
from avatarjax.pipelines import windowed
from avatarjax.train.objectives import cog_portrait as task

COMPRESSION = 4  # the Wan VAE's temporal stride: a latent slot after the first holds 4 frames


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

        to_uint8 = lambda video: jnp.round((video + 1.0) * 127.5).astype(jnp.uint8)  # noqa: E731

        @jax.jit
        def decode(vae_state, z):
            return to_uint8(nnx.merge(vae_graphdef, vae_state).decode(z * std + mean))

        @jax.jit
        def decode_start(vae_state, z0):
            video, cache = nnx.merge(vae_graphdef, vae_state).decode_start(z0 * std + mean)
            return to_uint8(video), cache

        @jax.jit
        def decode_continue(vae_state, z, cache):
            video, cache = nnx.merge(vae_graphdef, vae_state).decode_continue(z * std + mean, cache)
            return to_uint8(video), cache

        self._decode, self._decode_start, self._decode_continue = decode, decode_start, decode_continue
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

        def run(state, cond, noise, clean_latent, gaussian, known, known_mask):
            """``known [1, F', h, w, z]`` / ``known_mask`` bool ``[F']``: latents continued from the previous window
            (all False: plain generation), re-imposed at every step noised to the step's flow time."""
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
            fn = windowed.replacement_denoise(fn, windowed.forward_noise_fn("flow"), known, known_mask, noise)
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
        portrait = self._check_portrait(portrait)
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
        latents = self._sampler(opts, shape)(self._state, cond, noise, clean, gaussian, jnp.zeros(shape, jnp.float32),
                                             jnp.zeros(shape[1], bool))
        video = np.asarray(self._decode(self._vae_state, latents))[0]
        elapsed = time.perf_counter() - t0
        info = {"frames": frames, "wall_s": round(elapsed, 3), "sampler": opts.sampler, "steps": opts.num_steps,
                "guidance": opts.guidance}
        return Generated(frames=video, latents=np.asarray(latents[0]), info=info)

    # -- any length -----------------------------------------------------------------------------------------------
    def plan(self, num_frames: int, window: int | None = None, overlap: int | None = None) -> windowed.LatentWindows:
        """Windows for ``num_frames``: ``window`` frames (default the training clip, ``1 + 4k``) overlapping by
        ``overlap`` frames (a multiple of 4; default 4 per 4 latents of the window, at least 4)."""
        window = window or self.cfg.data.synthface.window
        content = (window - 1) // COMPRESSION
        if overlap is None:
            overlap = COMPRESSION * max(1, content // 4) if content > 1 else 0
        return windowed.plan_latent_windows(num_frames, window, overlap, COMPRESSION)

    def steps_per_window(self, **options) -> int:
        return dataclasses.replace(self.cfg.sample, **options).num_steps

    def sample(self, portrait: np.ndarray, keypoints: np.ndarray, audio: np.ndarray | None = None,
               instruction: str = "", *, window: int | None = None, overlap: int | None = None,
               smoothing: float = 0.0, anchor_colours: bool = False, reference_keypoints: np.ndarray | None = None,
               portrait_keypoints: np.ndarray | None = None, progress: bool | None = None, **options) -> Generated:
        """Generate for audio of any length. ``portrait`` uint8 ``[S, S, 3]``; ``keypoints`` normalised
        ``[T, K, 2]`` for the whole utterance (at least one per 40 ms of audio; extra frames are cut); ``audio``
        float32 16 kHz mono of any length (None: ``T`` frames of silence); ``options`` override the ``sample``
        config (sampler, num_steps, shift, guidance, seed...).

        ``window`` / ``overlap`` (frames, see ``plan``); ``smoothing``: Gaussian sigma (frames) over the keypoint
        trajectory, 0 = off; ``anchor_colours``: match each chunk's face colours to the portrait's;
        ``reference_keypoints``: the portrait's keypoints when ``keypoints`` drive another face (aligned by thin-plate
        spline); ``portrait_keypoints``: the keypoints drawn in every window's reference pose frame (default: the
        first frame's); ``progress``: the bar (None = when attached to a terminal). Returns ``Generated`` with
        ``frames [num_frames, S, S, 3]`` and the content ``latents [n, h, w, z]`` (normalised)."""
        from avatarjax import media

        opts = dataclasses.replace(self.cfg.sample, **options)
        size = self.frame_size
        portrait = self._check_portrait(portrait)
        keypoints = np.asarray(keypoints, np.float32)
        if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or len(keypoints) < 1:
            raise DataError(f"keypoints have shape {keypoints.shape}: expected [frames, K, 2] (normalised x, y)")
        if audio is None:
            frames = len(keypoints)
            wave = np.zeros(frames * schema.SAMPLES_PER_FRAME, np.float32)
        else:
            audio = np.asarray(audio, np.float32)
            if audio.ndim != 1 or len(audio) == 0:
                raise DataError(f"the audio has shape {audio.shape}: pass mono 16 kHz samples (media.read_audio "
                                "resamples and downmixes files)")
            wave, frames = media.pad_audio_to_frames(audio, schema.SAMPLE_RATE, schema.FPS)
            if len(keypoints) < frames:
                raise DataError(f"the keypoints cover {len(keypoints)} frames but the audio needs {frames} (one per "
                                f"40 ms, {frames / schema.FPS:.2f} s): plan keypoints for the whole audio")
            keypoints = keypoints[:frames]
        if reference_keypoints is not None:
            keypoints = pose_video.align_to_reference(keypoints, reference_keypoints)
        if smoothing > 0:
            keypoints = windowed.gaussian_smooth(keypoints.reshape(frames, -1), smoothing).reshape(keypoints.shape)
        rest_kps = keypoints[0] if portrait_keypoints is None else np.asarray(portrait_keypoints, np.float32)
        lw = self.plan(frames, window, overlap)
        plan, wf, c = lw.plan, lw.window_frames, lw.compression
        t0 = time.perf_counter()
        reference = self.latents.encode(portrait[None])  # [1, h, w, z]: identity, every window
        shape = (1, 1 + plan.window) + reference.shape[1:]
        text = self.text([instruction])
        clean = jnp.zeros(shape, jnp.float32).at[:, :1].set(jnp.asarray(reference[None]))
        sampler = self._sampler(opts, shape)
        key = jax.random.key(opts.seed)
        content = np.zeros((plan.num_frames,) + reference.shape[1:], np.float32)  # committed content latents
        bar = windowed.WindowProgress(plan.num_windows, opts.num_steps, desc="cogportrait",
                                      disable=None if progress is None else not progress)
        try:
            for k in range(plan.num_windows):
                kps, clip = self._window_inputs(lw, k, keypoints, rest_kps, wave)
                cond = {"text": jnp.asarray(text["text_tokens"]), "text_mask": jnp.asarray(text["text_mask"]),
                        "audio": task.audio_features(jnp.asarray(clip[None])),
                        "pose": jnp.asarray(self.latents.encode(pose_video.render_pose_video(kps, size))[None])}
                gaussian = self.eye_gaussian(kps, shape[1:4], opts.dynamic.kappa)
                known, known_mask = plan.known(content, k)
                known = np.concatenate([np.zeros_like(known[:1]), known])[None]  # slot 0: the (clean) reference
                known_mask = np.concatenate([[False], known_mask])
                noise = jax.random.normal(jax.random.fold_in(key, k), shape, jnp.float32)
                out = sampler(self._state, cond, noise, clean, gaussian, jnp.asarray(known), jnp.asarray(known_mask))
                plan.commit(content, np.asarray(out[0, 1:], np.float32), k)
                first, end = lw.chunk(k)
                bar.window_done(end - first)
        finally:
            bar.close()
        video = self._decode_stream(lw, reference, content, portrait if anchor_colours else None)
        elapsed = time.perf_counter() - t0
        info = {"frames": frames, "seconds": frames / schema.FPS, "audio_samples": len(wave),
                "wall_s": round(elapsed, 3), "real_time_factor": round(elapsed / (frames / schema.FPS), 3),
                "windows": plan.num_windows, "window": wf, "overlap": lw.overlap_frames,
                "window_starts": [lw.frame_start(k) for k in range(plan.num_windows)],
                "progress_total": bar.total, "smoothing": smoothing, "anchor_colours": anchor_colours,
                "sampler": opts.sampler, "steps": opts.num_steps, "guidance": opts.guidance}
        return Generated(frames=video, latents=content, info=info)

    def _check_portrait(self, portrait) -> np.ndarray:
        size = self.frame_size
        portrait = np.asarray(portrait)
        if portrait.shape != (size, size, 3) or portrait.dtype != np.uint8:
            raise DataError(f"the portrait is {portrait.dtype} {portrait.shape}; the model expects uint8 "
                            f"({size}, {size}, 3)")
        return portrait

    @staticmethod
    def _window_inputs(lw: windowed.LatentWindows, k: int, keypoints: np.ndarray, rest_kps: np.ndarray,
                       wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window ``k``'s keypoints ``[W, K, 2]`` (frame 0: the portrait's; past the end: the last frame held) and
        audio ``[W * 640]`` (silence past the end)."""
        start, wf, spf = lw.frame_start(k), lw.window_frames, schema.SAMPLES_PER_FRAME
        idx = np.minimum(np.arange(start, start + wf), len(keypoints) - 1)
        kps = keypoints[idx].copy()
        kps[0] = rest_kps
        clip = np.zeros(wf * spf, np.float32)
        part = wave[start * spf:(start + wf) * spf]
        clip[:len(part)] = part
        return kps, clip

    def _decode_stream(self, lw: windowed.LatentWindows, reference: np.ndarray, content: np.ndarray,
                       anchor: np.ndarray | None) -> np.ndarray:
        """Decode ``[reference, committed content latents]`` as one stream (``WanVAE.decode_start`` /
        ``decode_continue`` in segments of ``plan.window`` latents, one compiled shape, the causal cache carried
        across segments): the frames one decode of the whole utterance gives, so window boundaries leave no decoder
        seam (decoding each window with only its overlap as context left mean errors of ~8 levels at the seams on
        the small config: the Wan decoder's causal context reaches ~8 latents back). Each window's chunk is
        optionally colour-anchored to ``anchor``."""
        plan, size = lw.plan, self.frame_size
        seg = plan.window
        padded = np.zeros((-(-len(content) // seg) * seg,) + content.shape[1:], np.float32)
        padded[:len(content)] = content  # the zeros past the end only reach frames after it (causal); cut below
        first, cache = self._decode_start(self._vae_state, jnp.asarray(reference[None, :1]))
        parts = [np.asarray(first)[0]]
        for i in range(0, len(padded), seg):
            frames, cache = self._decode_continue(self._vae_state, jnp.asarray(padded[None, i:i + seg]), cache)
            parts.append(np.asarray(frames)[0])
        out = np.concatenate(parts)[:lw.num_frames]
        if anchor is not None:
            region = windowed.face_region(size)
            for k in range(plan.num_windows):
                a, b = lw.chunk(k)
                if b > a:
                    out[a:b] = windowed.anchor_colours(out[a:b], anchor, region)
        return out

    def reconstruct(self, video: np.ndarray) -> np.ndarray:
        """The VAE's own round trip of a true clip (the ceiling the DiT sees through this VAE)."""
        z = self.latents.encode(video)
        return np.asarray(self._decode(self._vae_state, jnp.asarray(z[None])))[0]


# --------------------------------------------------------------------------------------------------------- knobs
def apply_knobs(controls: np.ndarray, *, head_motion_scale: float = 1.0, expression_scale: float = 1.0,
                lip_only: bool = False, rest: np.ndarray | None = None) -> np.ndarray:
    """The control knobs on a 17-channel control track ``[T, 17]`` (``planning.controls`` order: 10 AUs, 4 gaze,
    3 head pose), before the mapping layer turns it into keypoints. ``rest`` ``[17]``: the portrait's controls
    (default: the first frame's). ``head_motion_scale`` scales the head pose about the portrait's,
    ``expression_scale`` the AUs about the portrait's (clipped to the AU range), ``lip_only`` holds the head at the
    portrait's pose (the lips follow the audio; eyes and brows still move). Gaze is left as planned."""
    from avatarjax.planning import controls as C

    values = np.asarray(controls, np.float32).copy()
    if values.ndim != 2 or values.shape[1] != C.NUM_CHANNELS:
        raise DataError(f"controls have shape {values.shape}: expected [frames, {C.NUM_CHANNELS}]")
    rest = values[0] if rest is None else np.asarray(rest, np.float32)
    au, pose = C.AU_SLICE, C.POSE_SLICE
    if expression_scale != 1.0:
        values[:, au] = np.clip(rest[au] + expression_scale * (values[:, au] - rest[au]), C.LOW[au], C.HIGH[au])
    if lip_only:
        values[:, pose] = rest[pose]
    elif head_motion_scale != 1.0:
        values[:, pose] = rest[pose] + head_motion_scale * (values[:, pose] - rest[pose])
    return values  # the defaults leave the track untouched


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



# ---------------------------------------------------------------------------------------------- long-form drift
def long_form(pipe: CogPortraitPipeline, *, seconds: float = 60.0, instruction: str = "talk calmly", seed: int = 0,
              out_dir=None, identity: int | None = None, extra_samples: int = 137, progress: bool | None = None,
              **knobs) -> dict:
    """Drift report (``eval.drift``) of one long synthetic utterance generated with ``sample``.

    A held-out synthface identity's neutral portrait speaks ``seconds`` (+ ``extra_samples``, a partial last frame)
    of synthetic speech, driven by the keypoints of the world's own talking face for that audio (neutral, the
    jaw following the audio as in the training clips). Those keypoints fully determine the target face, so besides
    the shared curves each chunk gets ``target_distance``: the face region's mean absolute pixel error against that
    face rendered directly (0-255); its drift curve is the identity/appearance drift (the Wan VAE has no separate
    identity code). Mouth signal for lip-sync: the mouth box's pixel change from the portrait. ``knobs`` go to
    ``sample`` (window, overlap, smoothing, anchor_colours, num_steps, guidance...)."""
    from avatarjax import media
    from avatarjax.data.synthface import render
    from avatarjax.eval import drift

    size = pipe.frame_size
    index, ident, portrait, wave = drift.utterance(size, seconds, seed, identity, extra_samples)
    padded, frames = media.pad_audio_to_frames(wave, schema.SAMPLE_RATE, schema.FPS)
    state = drift.true_talking_state(padded, frames)
    keypoints = geometry.keypoints(ident, state)[:, :task.keypoint_count(pipe.cfg)]
    t0 = time.perf_counter()
    result = pipe.sample(portrait, keypoints, wave, instruction, seed=seed, progress=progress, **knobs)
    wall = time.perf_counter() - t0
    truth = render.render_frames(ident, state, size=size)
    plan = pipe.plan(frames, knobs.get("window"), knobs.get("overlap")).frame_plan()
    measured = drift.drift_report(result.frames, padded, portrait, plan, truth_frames=truth, target_frames=truth,
                                  mouth_of=drift.mouth_box_signal(ident, portrait), input_audio_samples=len(wave))
    info = result.info
    report = {"system": "cog_portrait", "seconds_requested": seconds, "instruction": instruction,
              "identity_index": index, "mouth_signal": "mouth-box pixel change from the portrait",
              "identity_code": None, "windows": info["windows"], "window": info["window"],
              "overlap": info["overlap"], "steps_per_window": info["steps"], "wall_s": round(wall, 2),
              "real_time_factor": round(wall / (frames / schema.FPS), 3),
              "knobs": {k: info[k] for k in ("smoothing", "anchor_colours", "guidance")}, **measured}
    return drift.write_report(report, out_dir) if out_dir is not None else report
