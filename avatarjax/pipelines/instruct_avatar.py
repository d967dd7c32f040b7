"""InstructAvatar inference: portrait + audio + instruction -> talking video; instruction alone -> text-only
facial motion control.

    pipe = avatarjax.pipelines.instruct_avatar.load("outputs/instructavatar")   # a workdir or an export
    result = pipe.sample(portrait, audio, "talk happily, raising your eyebrows")  # audio=None: motion control
    pipe.write(result, "out.mp4")   # mp4 (H.264 + AAC), contact sheet PNG, motion JSON

Audio of any length: one frame per 40 ms (the last partial one included), generated in overlapping windows of the
training length, each continuing the previous window's tail (``avatarjax.pipelines.windowed``); knobs
``head_motion_scale``, ``expression_scale``, ``lip_only``, ``smoothing``, ``anchor_colours``. One progress bar
covers all windows x steps. Each window's whole denoising loop (all steps, classifier-free guidance as one doubled
batch) runs inside one ``jax.jit`` compiled once for every window; conditions are encoded once per window. The
motion VAE then decodes the latents with the portrait's appearance latent, chunk by chunk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax import media
from avatarjax.codecs import motion_vae
from avatarjax.config import Config
from avatarjax.data.synthface import render, schema
from avatarjax.diffusion import guidance, samplers, schedules
from avatarjax.errors import AvatarError, ConfigError, DataError
from avatarjax.pipelines import windowed
from avatarjax.train.objectives import instruct_avatar as task
from avatarjax.train.objectives.instruct_avatar import InstructAvatarSampleConfig

FPS = schema.FPS
SAMPLES_PER_FRAME = schema.SAMPLES_PER_FRAME
MIN_FRAMES = 8
HARMONIZE = 0.0  # windowed.WindowPlan.release: 0 = the known prefix re-imposed at every sampler step
# windowed.smooth_seams sigma (frames) on the motion latents. On a 60 s utterance of the shipped small model the
# seams' p95 jump over within-chunk motion (windowed.seam_jumps, pixels) was 1.55 at 0, 0.96 at 1.0, 0.78 at 1.5;
# the motion inside the seam zones fell to 0.71 / 0.57 of the within-chunk mean: 1.0 is the least that meets p95.
# At 300 s: 1.24 -> 0.79 (pixels), lip sync over the utterance 0.81 -> 0.80.
SEAM_SMOOTHING = 1.0


@dataclasses.dataclass
class Generated:
    """frames uint8 ``[T, S, S, 3]``; latents ``[T, D]`` (the VAE's own units); pose degrees ``[T, 3]`` (predicted from
    audio); audio float32 ``[T * 640]`` at 16 kHz (silence for motion control); portrait uint8 ``[S, S, 3]``."""

    frames: np.ndarray
    latents: np.ndarray
    pose: np.ndarray
    audio: np.ndarray
    portrait: np.ndarray
    instruction: str
    talking: bool
    info: dict


class InstructAvatarPipeline:
    def __init__(self, system: task.InstructAvatarSystem, cfg: Config, vae: motion_vae.MotionVAE, vae_cfg: Config,
                 latent_stats: tuple[np.ndarray, np.ndarray]):
        from avatarjax.encoders.instruction_features import InstructionFeatures

        self.cfg, self.settings = cfg, system.settings
        self.frame_size = vae_cfg.model.frame_size
        self.text = InstructionFeatures(cfg.data.text_encoder, cfg.data.text_len)
        self.frontend = task.AudioFrontend(cfg.data.audio_frontend)
        self._graphdef, self._state = nnx.split(system)
        self._vae_graphdef, self._vae_state = nnx.split(vae)
        self._vae_cfg = vae_cfg.model
        self._mean, self._std = (jnp.asarray(a) for a in latent_stats)  # the generator's latent standardisation
        self._compiled: dict = {}

    @classmethod
    def load(cls, checkpoint: str | Path, *, vae: str | Path | None = None,
             overrides: tuple[str, ...] = ()) -> InstructAvatarPipeline:
        """From a training workdir or export; ``vae`` defaults to the motion VAE the model was trained with."""
        from avatarjax.train.export import load_model

        system, cfg = load_model(checkpoint, overrides=overrides)
        vae_path = resolve_vae(vae or cfg.data.vae, checkpoint)
        vae_model, vae_cfg = load_model(vae_path)
        return cls(system, cfg, vae_model, vae_cfg, task.read_latent_statistics(vae_path))

    # -- inputs --------------------------------------------------------------------------------------------------
    def _portrait(self, portrait) -> np.ndarray:
        if isinstance(portrait, (str, Path)):
            return media.read_image(portrait, self.frame_size)
        portrait = np.asarray(portrait)
        if portrait.shape != (self.frame_size, self.frame_size, 3) or portrait.dtype != np.uint8:
            raise DataError(f"the portrait is {portrait.dtype} {portrait.shape} but the model expects uint8 "
                            f"[{self.frame_size}, {self.frame_size}, 3]: resize it (media.read_image(path, size, "
                            "resize=True))")
        return portrait

    def _audio(self, audio, num_frames: int | None) -> tuple[np.ndarray, bool]:
        if audio is None:
            frames = num_frames or self.cfg.sample.num_frames
            return np.zeros(frames * SAMPLES_PER_FRAME, np.float32), False  # the paper's pseudo-empty audio
        wave = media.read_audio(audio) if isinstance(audio, (str, Path)) else np.asarray(audio, np.float32)
        if wave.ndim != 1:
            raise DataError(f"audio must be mono float32 [samples] at 16 kHz, got shape {wave.shape}: read files "
                            "with avatarjax.media.read_audio (it down-mixes and resamples)")
        padded, frames = media.pad_audio_to_frames(wave, 16000)  # the last partial 40 ms gets a frame too
        if frames < MIN_FRAMES:
            raise DataError(f"the audio lasts {len(wave) / 16000:.2f} s, shorter than the {MIN_FRAMES / FPS:.2f} s "
                            "minimum: give a longer utterance")
        return padded, True  # padded with silence, never cut

    # -- the jitted generator ------------------------------------------------------------------------------------
    def _pose_fn(self):
        """``(state, batch) -> pose_pred [1, W, 3]``: the audio pose head alone (the first pass of long-form
        generation, whose stitched and smoothed output conditions every window)."""
        if "pose" not in self._compiled:
            graphdef = self._graphdef

            def pose(state, batch):
                net = nnx.merge(graphdef, state).net
                return net.encode_conditions(task.conditions(batch), None, False)["pose_pred"]

            self._compiled["pose"] = jax.jit(pose)
        return self._compiled["pose"]

    def _generator(self, options: InstructAvatarSampleConfig, frames: int):
        """One window: ``(state, batch, noise, key, known, known_mask, release) -> (x0 [1, W, D], pose [1, W, 3])``.

        ``known [1, W, D]`` (standardised latents) / ``known_mask`` bool ``[W]``: the frames continued from the
        previous window, re-imposed forward-noised to the step's level while the step's noise level is at least
        ``release`` float ``[W]`` (``WindowPlan.release``; zeros: at every step) (``windowed``)."""
        key_ = (options, frames)
        if key_ in self._compiled:
            return self._compiled[key_]
        settings, graphdef = self.settings, self._graphdef
        d = settings.diffusion
        scale = float(options.guidance_scale)
        if d.formulation == "ddpm":
            noiser = windowed.forward_noise_fn("ddpm", schedule=schedules.make_discrete_schedule(
                d.beta_schedule, d.num_train_steps))
        else:
            noiser = windowed.forward_noise_fn("vpsde", sde=schedules.VPSDE(d.beta_min, d.beta_max))
        t_max = float(d.num_train_steps) if d.formulation == "ddpm" else 1.0

        def generate(state, batch, noise, key, known, known_mask, release):
            net = nnx.merge(graphdef, state).net
            cond = task.conditions(batch)
            if scale != 1.0:
                empty = {k: jnp.zeros_like(batch[k]) for k in ("text_pooled", "text_tokens")}
                empty["text_mask"] = jnp.zeros_like(batch["text_mask"]).at[:, 0].set(True)
                cond = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, task.conditions({**batch, **empty}))
            c = net.encode_conditions(cond, None, False)
            to_x0 = task.output_to_x0(settings)
            denoise = lambda x_t, t: net.denoise(x_t, t, c, to_x0=to_x0)  # noqa: E731
            if scale != 1.0:  # one doubled batch per step: conditional rows first, then the null instruction
                denoise = guidance.batched_cfg_denoise(denoise, scale)
            denoise = windowed.replacement_denoise(denoise, noiser, known * d.latent_scale, known_mask, noise,
                                                   release, t_max)
            x0 = _run_sampler(options, d, denoise, noise, key)
            pose = c["pose_pred"][:noise.shape[0]]
            return x0 / d.latent_scale, pose

        self._compiled[key_] = jax.jit(generate)
        return self._compiled[key_]

    def _vae(self, name: str):
        if name not in self._compiled:
            graphdef = self._vae_graphdef

            def encode(state, frame):
                vae = nnx.merge(graphdef, state)
                x = motion_vae.to_model_range(frame)
                appearance, _ = vae.encode_appearance(x)
                motion, _ = vae.encode_motion(x)
                return appearance, motion_vae.flatten_motion(motion)

            def decode(state, appearance, motion):
                vae = nnx.merge(graphdef, state)
                motion = motion_vae.unflatten_motion(motion, self._vae_cfg)
                appearance = jnp.broadcast_to(appearance, (motion.shape[0],) + appearance.shape[1:])
                return vae.decode(appearance, motion)

            self._compiled["encode"], self._compiled["decode"] = jax.jit(encode), jax.jit(decode)
        return self._compiled[name]

    def steps_per_window(self, **options) -> int:
        """Denoising steps one window takes with these ``sample`` options (the progress bar's unit)."""
        opts = dataclasses.replace(self.cfg.sample, **options)
        d = self.settings.diffusion
        return d.num_train_steps if (d.formulation == "ddpm" and opts.sampler == "ddpm") else opts.num_steps

    def plan(self, num_frames: int, window: int | None = None, overlap: int | None = None) -> windowed.WindowPlan:
        """The windows for ``num_frames``: ``window`` defaults to the training window (a shorter utterance is one
        window of its own length), ``overlap`` to a quarter of it."""
        window = window or self.cfg.data.synthface.window
        overlap = window // 4 if overlap is None else overlap
        if num_frames <= window:
            return windowed.plan_windows(num_frames, num_frames, 0)
        return windowed.plan_windows(num_frames, window, overlap)

    # -- public --------------------------------------------------------------------------------------------------
    def sample(self, portrait, audio=None, instruction: str = "", *, num_frames: int | None = None,
               window: int | None = None, overlap: int | None = None, head_motion_scale: float = 1.0,
               expression_scale: float = 1.0, lip_only: bool = False, smoothing: float = 1.5,
               anchor_colours: bool = False, portrait_pose=None, posnet=None, harmonize: float = HARMONIZE,
               seam_smoothing: float = SEAM_SMOOTHING, progress: bool | None = None, **options) -> Generated:
        """Generate, for audio of any length. ``portrait``: path or uint8 ``[S, S, 3]``; ``audio``: path, float32
        16 kHz mono array or None (text-only motion control for ``num_frames`` frames); ``options`` override the
        ``sample`` config (sampler, num_steps, eta, temperature, guidance_scale, seed).

        Long-form (see ``avatarjax.pipelines.windowed``): one frame per 40 ms of audio (the last partial one
        included; the audio is padded to match); windows of ``window`` frames (default: the training window)
        overlapping by ``overlap`` (default a quarter), each continuing the previous one's tail. Knobs:
        ``head_motion_scale`` (head motion about ``portrait_pose``, degrees ``[3]``, default frontal),
        ``expression_scale`` (motion-latent deviation from the portrait's), ``lip_only`` (head held at
        ``portrait_pose``), ``smoothing`` (pose smoothing sigma in frames, 0 = off), ``anchor_colours`` (match
        each chunk's face colours to the portrait's), ``posnet`` (a ``reaction.PoseSmoother`` or its checkpoint
        path for the pose seams), ``harmonize`` (``WindowPlan.release``: the share of the noise range over which
        the end of each window's continued prefix is left to the network; 0 = re-imposed at every step),
        ``seam_smoothing`` (``windowed.smooth_seams``: Gaussian sigma in frames on the motion latents around each
        window hand-over, 0 = off), ``progress`` (the tqdm bar: None = when attached to a terminal)."""
        opts = dataclasses.replace(self.cfg.sample, **options)
        portrait = self._portrait(portrait)
        wave, talking = self._audio(audio, num_frames)
        text = self.text([instruction])
        frames = len(wave) // SAMPLES_PER_FRAME
        plan = self.plan(frames, window, overlap)
        if isinstance(posnet, (str, Path)):
            from avatarjax.pipelines.reaction import PoseSmoother

            posnet = PoseSmoother.load(posnet)
        if posnet is not None and plan.num_windows > 1 and posnet.segment != plan.stride:
            raise ConfigError(f"the PosNet corrects {posnet.segment}-frame segments but windows of {plan.window} "
                              f"frames overlapping by {plan.overlap} add {plan.stride}: pass overlap="
                              f"{plan.window - posnet.segment} (--overlap)")
        t0 = time.perf_counter()
        # identity and appearance come from the portrait for every window, never from generated frames
        appearance, keyframe = self._vae("encode")(self._vae_state, jnp.asarray(portrait[None]))
        keyframe = (keyframe - self._mean) / self._std
        features = self.frontend.clip_features(wave)
        w = plan.window

        def window_batch(k: int) -> dict:
            start, valid = plan.starts[k], plan.valid(k)
            clip = np.zeros(w * SAMPLES_PER_FRAME, np.float32)
            clip[:valid * SAMPLES_PER_FRAME] = wave[start * SAMPLES_PER_FRAME:(start + valid) * SAMPLES_PER_FRAME]
            batch = {"audio": jnp.asarray(clip[None]), "mask": jnp.asarray(plan.frame_mask(k)[None]),
                     "audio_flag": jnp.array([int(talking)], jnp.int32), "keyframe": keyframe, **text}
            if features is not None:
                f = np.zeros((2 * w, features.shape[1]), np.float32)
                f[:2 * valid] = features[2 * start:2 * (start + valid)]
                batch["audio_features"] = jnp.asarray(f[None])
            return batch

        batches = [window_batch(k) for k in range(plan.num_windows)]
        predicted = windowed.blend_windows(plan, [np.asarray(self._pose_fn()(self._state, b))[0] for b in batches])
        pose = windowed.smooth_pose(predicted * task.POSE_SCALE, smoothing=smoothing,
                                    head_motion_scale=head_motion_scale, lip_only=lip_only,
                                    portrait_pose=portrait_pose, posnet=posnet, posnet_offset=plan.window)
        generator = self._generator(opts, w)
        key = jax.random.key(opts.seed)
        dim = self.settings.net.latent_dim
        latents = np.zeros((frames, dim), np.float32)
        bar = windowed.WindowProgress(plan.num_windows, self.steps_per_window(**options), disable=(
            None if progress is None else not progress))
        try:
            for k, batch in enumerate(batches):
                start, valid = plan.starts[k], plan.valid(k)
                cond_pose = np.zeros((w, pose.shape[1]), np.float32)
                cond_pose[:valid] = pose[start:start + valid] / task.POSE_SCALE
                if talking:
                    batch = {**batch, "pose": jnp.asarray(cond_pose[None])}
                known, known_mask = plan.known(latents, k)
                wkey = jax.random.fold_in(key, k)
                noise = jax.random.normal(jax.random.fold_in(wkey, 1), (1, w, dim))
                x0, _ = generator(self._state, batch, noise, wkey, jnp.asarray(known[None]), jnp.asarray(known_mask),
                                  jnp.asarray(plan.release(k, harmonize)))
                plan.commit(latents, np.asarray(x0[0], np.float32), k)
                bar.window_done(valid - plan.known_frames(k))
        finally:
            bar.close()
        latents = windowed.smooth_seams(latents, plan, seam_smoothing)
        key_std = np.asarray(keyframe[0], np.float32)
        shown = key_std + expression_scale * (latents - key_std) if expression_scale != 1.0 else latents
        shown = shown * np.asarray(self._std) + np.asarray(self._mean)
        rendered = self._decode_chunks(appearance, shown, plan, portrait if anchor_colours else None)
        elapsed = time.perf_counter() - t0
        info = {"frames": frames, "seconds": frames / FPS, "audio_samples": len(wave), "wall_s": round(elapsed, 3),
                "real_time_factor": round(elapsed / (frames / FPS), 3), "windows": plan.num_windows,
                "window": plan.window, "overlap": plan.overlap, "window_starts": list(plan.starts),
                "head_motion_scale": head_motion_scale, "expression_scale": expression_scale, "lip_only": lip_only,
                "smoothing": smoothing, "anchor_colours": anchor_colours, "harmonize": harmonize,
                "seam_smoothing": seam_smoothing, **dataclasses.asdict(opts)}
        out_pose = pose if talking else predicted * task.POSE_SCALE
        return Generated(frames=rendered, latents=latents * np.asarray(self._std) + np.asarray(self._mean),
                         pose=out_pose, audio=wave, portrait=portrait, instruction=instruction, talking=talking,
                         info=info)

    def _decode_chunks(self, appearance, latents: np.ndarray, plan: windowed.WindowPlan,
                       anchor: np.ndarray | None) -> np.ndarray:
        """Decode ``latents [T, D]`` (the VAE's units) chunk by chunk (each window's new frames, padded to one
        shape so one compiled decoder serves all), optionally colour-anchoring each chunk to ``anchor``."""
        decode = self._vae("decode")
        size = plan.window
        region = windowed.face_region(self.frame_size) if anchor is not None else None
        out = np.zeros((len(latents), self.frame_size, self.frame_size, 3), np.uint8)
        for first, end in plan.chunks():
            chunk = np.zeros((size, latents.shape[1]), np.float32)
            chunk[:end - first] = latents[first:end]
            frames = np.asarray(motion_vae.to_uint8(decode(self._vae_state, appearance, jnp.asarray(chunk))))
            frames = frames[:end - first]
            out[first:end] = windowed.anchor_colours(frames, anchor, region) if anchor is not None else frames
        return out

    def reconstruct(self, portrait, frames: np.ndarray) -> np.ndarray:
        """The motion VAE's own round trip of a true clip uint8 ``[T, S, S, 3]`` driven from ``portrait``'s
        appearance: the ceiling of what the generator can show through this VAE."""
        portrait = self._portrait(portrait)
        appearance, _ = self._vae("encode")(self._vae_state, jnp.asarray(portrait[None]))
        _, motion = self._vae("encode")(self._vae_state, jnp.asarray(frames))
        return motion_vae.to_uint8(self._vae("decode")(self._vae_state, appearance, motion))

    def write(self, result: Generated, out: str | Path) -> dict:
        """Write ``out`` (.mp4, H.264 with AAC audio), ``out`` .png (contact sheet) and ``out`` .json (motion)."""
        out = Path(out)
        if out.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
            raise DataError(f"--out '{out}' must be a video file name ending in .mp4")
        out.parent.mkdir(parents=True, exist_ok=True)
        media.write_video(out, result.frames, fps=FPS, audio=result.audio if result.talking else None)
        step = max(1, len(result.frames) // 16)
        sheet = out.with_suffix(".png")
        render.contact_sheet(np.concatenate([result.portrait[None], result.frames[::step]]), path=sheet)
        motion = out.with_suffix(".json")
        motion.write_text(json.dumps({
            "instruction": result.instruction, "mode": "talking" if result.talking else "motion_control",
            "fps": FPS, **result.info, "pose_degrees": np.round(result.pose, 3).tolist(),
            "latents": np.round(result.latents, 5).tolist()}, indent=1))
        return {"video": str(out.absolute()), "contact_sheet": str(sheet.absolute()), "motion": str(motion.absolute()),
                **{k: result.info[k] for k in ("frames", "seconds", "wall_s", "real_time_factor")}}


class InstructAvatarOnline:
    """Windowed online generation with an ``InstructAvatarPipeline``: ``self(k)`` generates window ``k`` as soon as
    its audio has arrived and returns its new frames uint8 ``[n, S, S, 3]`` decoded at once.

    Same window plan, jitted generator (the previous window's tail re-imposed at every step), reference-portrait
    identity and decoder as ``InstructAvatarPipeline.sample``, but causal, as a live stream must be: each window's
    audio features and pose prediction come from its own audio, the pose is cross-faded over the overlap and
    Gaussian-smoothed over the frames so far only (``sample`` smooths the whole utterance's pose up front), and
    each hand-over is smoothed by ``windowed.smooth_seam_causal`` (``seam_smoothing``; ``sample`` smooths both
    sides of each seam, which a live stream cannot wait for). ``self.shown``: the motion latents as shown."""

    def __init__(self, pipe, portrait, wave: np.ndarray, instruction: str = "", *, window: int | None = None,
                 overlap: int | None = None, smoothing: float = 1.5, harmonize: float = HARMONIZE,
                 seam_smoothing: float = SEAM_SMOOTHING, **options):
        self.pipe, self.task, self.windowed, self.spf = pipe, task, windowed, SAMPLES_PER_FRAME
        self.harmonize, self.seam_smoothing = harmonize, seam_smoothing
        self.opts = dataclasses.replace(pipe.cfg.sample, **options)
        self.portrait = pipe._portrait(portrait)
        self.wave, self.talking = pipe._audio(wave, None)
        frames = len(self.wave) // SAMPLES_PER_FRAME
        self.plan = pipe.plan(frames, window, overlap)
        self.smoothing = smoothing
        self.text = pipe.text([instruction])
        appearance, keyframe = pipe._vae("encode")(pipe._vae_state, jnp.asarray(self.portrait[None]))
        self.appearance, self.keyframe = appearance, (keyframe - pipe._mean) / pipe._std
        self.generator = pipe._generator(self.opts, self.plan.window)
        self.key = jax.random.key(self.opts.seed)
        self.latents = np.zeros((frames, pipe.settings.net.latent_dim), np.float32)
        self.shown = np.zeros_like(self.latents)
        self.pose = np.zeros((frames, 3), np.float32)

    def batch(self, k: int) -> dict:
        plan, w, spf = self.plan, self.plan.window, self.spf
        start, valid = plan.starts[k], plan.valid(k)
        clip = np.zeros(w * spf, np.float32)
        clip[:valid * spf] = self.wave[start * spf:(start + valid) * spf]
        batch = {"audio": jnp.asarray(clip[None]), "mask": jnp.asarray(plan.frame_mask(k)[None]),
                 "audio_flag": jnp.array([int(self.talking)], jnp.int32), "keyframe": self.keyframe, **self.text}
        features = self.pipe.frontend.clip_features(clip[:valid * spf])  # this window's audio only
        if features is not None:
            f = np.zeros((2 * w, features.shape[1]), np.float32)
            f[:len(features)] = features
            batch["audio_features"] = jnp.asarray(f[None])
        return batch

    def __call__(self, k: int) -> np.ndarray:
        pipe, plan, task = self.pipe, self.plan, self.task
        start, valid, w = plan.starts[k], plan.valid(k), plan.window
        batch = self.batch(k)
        predicted = np.asarray(pipe._pose_fn()(pipe._state, batch))[0] * task.POSE_SCALE
        plan.commit(self.pose, predicted, k)  # cross-fade over the overlap
        pose = self.windowed.smooth_pose(self.pose[:start + valid], smoothing=self.smoothing)
        if self.talking:
            cond = np.zeros((w, 3), np.float32)
            cond[:valid] = pose[start:start + valid] / task.POSE_SCALE
            batch = {**batch, "pose": jnp.asarray(cond[None])}
        known, known_mask = plan.known(self.latents, k)
        wkey = jax.random.fold_in(self.key, k)
        noise = jax.random.normal(jax.random.fold_in(wkey, 1), (1, w, self.latents.shape[1]))
        x0, _ = self.generator(pipe._state, batch, noise, wkey, jnp.asarray(known[None]), jnp.asarray(known_mask),
                               jnp.asarray(plan.release(k, self.harmonize)))
        plan.commit(self.latents, np.asarray(x0[0], np.float32), k)
        first, end = start + plan.known_frames(k), start + valid
        self.shown[first:end] = self.latents[first:end] if first == 0 else self.windowed.smooth_seam_causal(
            self.shown[first - 1], self.latents[first:end], self.seam_smoothing)
        chunk = np.zeros((w, self.latents.shape[1]), np.float32)
        chunk[:end - first] = self.shown[first:end] * np.asarray(pipe._std) + np.asarray(pipe._mean)
        frames = motion_vae.to_uint8(pipe._vae("decode")(pipe._vae_state, self.appearance, jnp.asarray(chunk)))
        return np.asarray(frames)[:end - first]


def resolve_vae(path: str | Path, checkpoint: str | Path | None) -> Path:
    """The motion VAE directory: ``path`` as given, else relative to the generator checkpoint (an export that
    ships beside its VAE stores ``../motion_vae``)."""
    candidates = [Path(path)] + ([Path(checkpoint) / path] if checkpoint is not None and path else [])
    for candidate in candidates:
        if str(path) and candidate.exists():
            return candidate
    raise AvatarError(f"the motion VAE '{path}' the model was trained with is not there: pass --vae DIR (a "
                      "motion_vae workdir or export)")


def _run_sampler(options: InstructAvatarSampleConfig, d: task.DiffusionConfig, denoise, noise, key):
    if d.formulation == "ddpm":
        schedule = schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps)
        if options.sampler == "ddim":
            return samplers.ddim_sample(denoise, schedule, noise, key, num_steps=options.num_steps, eta=options.eta)
        if options.sampler == "ddpm":
            return samplers.ddpm_sample(denoise, schedule, noise, key)
    elif options.sampler == "euler":
        return samplers.euler_vpsde_sample(denoise, schedules.VPSDE(d.beta_min, d.beta_max), noise,
                                           num_steps=options.num_steps, temperature=options.temperature)
    wanted = "ddim or ddpm" if d.formulation == "ddpm" else "euler"
    raise AvatarError(f"sampler '{options.sampler}' does not fit the {d.formulation} formulation: use "
                      f"--config.sample.sampler={wanted.split()[0]} ({wanted})")


def load(checkpoint: str | Path, *, vae: str | Path | None = None, overrides: tuple[str, ...] = ()
         ) -> InstructAvatarPipeline:
    return InstructAvatarPipeline.load(checkpoint, vae=vae, overrides=overrides)


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avatarjax sample (instruct_avatar)")
    p.add_argument("--portrait", required=True, help="portrait image (square, the model's frame size)")
    p.add_argument("--audio", default=None, help="speech (wav/flac/mp3/...; resampled to 16 kHz). Without it: "
                                                 "text-only motion control")
    p.add_argument("--instruction", required=True, help='e.g. "talk happily" or "turn your head to the left"')
    p.add_argument("--resize", action="store_true", help="resize a portrait of another size")
    g = p.add_argument_group("faces in the wild (portrait_prep)")
    g.add_argument("--detect", action="store_true",
                   help="detect the face, crop it with --margin, level the eyes and letterbox (any image size)")
    g.add_argument("--assume-cropped", action="store_true",
                   help="with --detect/--paste-back: the image is already a face crop (centre square, no detector)")
    g.add_argument("--margin", type=float, default=None, help="context around the detected face (fraction of its size)")
    g.add_argument("--paste-back", action="store_true",
                   help="write the animated face pasted back into the original image (implies --detect); the crop "
                        "video is written too, as NAME_crop.mp4")
    g.add_argument("--feather", type=float, default=0.15, help="paste-back mask feather (fraction of the crop)")
    p.add_argument("--frames", type=int, default=None, help="motion-control length in frames (25 fps)")
    p.add_argument("--name", default="instructavatar.mp4", help="output file name when --out is a directory")
    p.add_argument("--vae", default=None, help="motion VAE (default: the one the model was trained with)")
    add_long_form_options(p)
    return p


def add_long_form_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The long-form knobs shared by ``sample`` and the long-form evaluation."""
    g = p.add_argument_group("long-form generation (any length, overlapping windows)")
    g.add_argument("--head-motion-scale", type=float, default=1.0,
                   help="scale of the head motion about the portrait's pose (0 = still head, 1 = as predicted)")
    g.add_argument("--expression-scale", type=float, default=1.0,
                   help="scale of the face motion's deviation from the portrait (1 = as generated)")
    g.add_argument("--lip-only", action="store_true", help="hold the head at the portrait's pose; move the face")
    g.add_argument("--smoothing", type=float, default=1.5,
                   help="head-pose smoothing strength: Gaussian sigma in frames (0 = off)")
    g.add_argument("--anchor-colours", action="store_true",
                   help="match each chunk's face colours (per-channel mean/std) to the portrait's")
    g.add_argument("--window", type=int, default=None, help="frames per window (default: the training window)")
    g.add_argument("--overlap", type=int, default=None, help="frames each window continues (default: window / 4)")
    g.add_argument("--posnet", default=None, help="a trained 3-channel PosNet (workdir or export) for pose seams")
    g.add_argument("--harmonize", type=float, default=HARMONIZE,
                   help="share of the noise range (0-1) over which the end of each window's continued prefix is "
                        "left to the network, smoothing the seam (0 = re-imposed at every step)")
    g.add_argument("--seam-smoothing", type=float, default=SEAM_SMOOTHING,
                   help="Gaussian sigma in frames on the motion latents around each window hand-over (0 = off)")
    return p


def long_form_kwargs(ns: argparse.Namespace) -> dict:
    """``InstructAvatarPipeline.sample`` keyword arguments from ``add_long_form_options``' parsed options."""
    return {"head_motion_scale": ns.head_motion_scale, "expression_scale": ns.expression_scale,
            "lip_only": ns.lip_only, "smoothing": ns.smoothing, "anchor_colours": ns.anchor_colours,
            "window": ns.window, "overlap": ns.overlap, "posnet": ns.posnet, "harmonize": ns.harmonize,
            "seam_smoothing": ns.seam_smoothing}


def sample_command(system, cfg: Config, out, args: list[str], checkpoint: str | Path | None = None) -> dict:
    """The CLI sampler: ``--out`` may be a .mp4 path or a directory."""
    ns, rest = sample_parser().parse_known_args(args)
    if rest:
        raise AvatarError(f"unknown sample options {rest}: see `avatarjax sample --help` and --config.sample.*")
    from avatarjax.train.export import load_model

    vae_path = resolve_vae(ns.vae or cfg.data.vae, checkpoint)
    vae_model, vae_cfg = load_model(vae_path)
    pipe = InstructAvatarPipeline(system, cfg, vae_model, vae_cfg, task.read_latent_statistics(vae_path))
    return sample_files(pipe, ns, out)


def sample_files(pipe: InstructAvatarPipeline, ns: argparse.Namespace, out, **options) -> dict:
    """Run ``pipe`` on parsed ``sample_parser`` options and write the video (``out``: .mp4 or a directory);
    with ``--paste-back`` the animated face is composited into the original image and the crop video is kept
    beside it. ``options`` override the sample config (e.g. ``num_steps``)."""
    prepared = None
    if ns.detect or ns.paste_back:
        from avatarjax.pipelines import portrait_prep

        margin = {} if ns.margin is None else {"margin": ns.margin}
        prepared = portrait_prep.prepare_portrait(ns.portrait, pipe.frame_size, assume_cropped=ns.assume_cropped,
                                                  **margin)
        portrait = prepared.image
    else:
        portrait = media.read_image(ns.portrait, pipe.frame_size, resize=ns.resize)
    result = pipe.sample(portrait, ns.audio, ns.instruction, num_frames=ns.frames, **long_form_kwargs(ns),
                         **options)
    out = Path(out)
    target = out if out.suffix else out / ns.name
    if not ns.paste_back:
        return pipe.write(result, target)
    report = pipe.write(result, target.with_name(target.stem + "_crop" + target.suffix))
    from avatarjax.pipelines import portrait_prep

    pasted = portrait_prep.paste_back(media.read_image(ns.portrait), result.frames, prepared, feather=ns.feather)
    media.write_video(target, pasted, fps=FPS, audio=result.audio if result.talking else None)
    return {**report, "crop_video": report["video"], "video": str(target.absolute()),
            "crop_box": {"centre": [float(c) for c in prepared.centre], "side": float(prepared.side),
                         "angle": float(prepared.angle)}}

