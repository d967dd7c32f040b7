"""InstructAvatar training: text- and audio-conditioned diffusion over per-frame motion latents.

Data: synthface clips (talking clips carry speech and emotion instructions; motion and listening clips carry
silence - the paper's pseudo-empty audio - and motion instructions). Each clip's frames are rendered once and
encoded by the frozen motion VAE (``data.vae``: a motion_vae workdir or export); the latents, key-frame
candidates and instruction features are memoised, so an epoch after the first costs no encoder work.

Key frames: by default (the paper's anti-leakage trick) the key frame is a frame of the same identity showing a
*different* emotion (the clip's frame with its expression replaced by another emotion's apex pattern), so the
key frame cannot leak the target emotion; ``data.keyframe_substitution=False`` takes a frame of the clip itself.

Loss (``model.loss``): the paper's ``||x0 - x0_hat||^2 + l_pose L_pose + l_au L_au + l_inten L_inten`` or the
released code's ``L1(x0) + L1(eps) + MSE(pose)`` with the VP-SDE; classifier-free guidance is trained by
dropping the instruction (``cond_drop_prob``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline, transforms
from avatarjax.data.synthface import dynamics, identity as identity_lib, render, schema
from avatarjax.data.synthface.loader import SynthfaceDataConfig, source
from avatarjax.data.synthface.records import audio_float
from avatarjax.diffusion import guidance, schedules
from avatarjax.errors import ConfigError
from avatarjax.models.instruct_avatar import InstructAvatar, InstructAvatarConfig, instruct_avatar_flops
from avatarjax.nn.melspec import MelConfig, log_mel
from avatarjax.train.task import Task

POSE_SCALE = 30.0  # degrees -> the pose head's unit
STATS_FILE = "motion_latent_stats.json"
MEL_SHIFT, MEL_SCALE = 4.5, 2.5  # log-mel (floor log 1e-5 = -11.5) -> roughly zero mean, unit spread


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    formulation: str = "ddpm"  # ddpm: the paper (discrete steps, x0-prediction, DDIM) | vpsde: the released code
    num_train_steps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | cosine (ddpm)
    beta_min: float = 0.05  # vpsde
    beta_max: float = 20.0  # vpsde
    latent_scale: float = 0.25  # latents are multiplied by this (the release divides by std 4)
    # x0: the network's output is x0 (the paper and the release). v: it predicts v and x0 = a_t x_t - s_t v (the
    # x_t skip of EDM / v-prediction). With x0 an L2 network has to rebuild x_t through every post-LN layer, and
    # the small synthface generator under-shoots motion even at low noise (x0 MSE 0.16 at t = 50 where returning
    # x_t alone gives 0.03); the loss stays the configured x0 loss either way.
    parameterization: str = "x0"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    x0: str = "l2"  # l2 (paper) | l1 (release)
    eps_weight: float = 0.0  # the release adds L1(eps) with weight 1 (vpsde)
    pose_weight: float = 1.0
    au_weight: float = 0.1  # 0 = the paper's "without AU loss" ablation
    intensity_weight: float = 0.1
    cond_drop_prob: float = 0.1  # instruction dropped (classifier-free guidance)


@dataclasses.dataclass(frozen=True)
class InstructAvatarTaskConfig:
    """The ``model`` section: the network, the diffusion formulation and the loss."""

    net: InstructAvatarConfig = InstructAvatarConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    loss: LossConfig = LossConfig()


@dataclasses.dataclass(frozen=True)
class InstructAvatarDataConfig:
    synthface: SynthfaceDataConfig = SynthfaceDataConfig(frame_size=0, audio=True, window=64)
    vae: str = ""  # a motion_vae training workdir or export (required)
    audio_frontend: str = "mel"  # mel (80-bin log-mel, in the jitted step) | wav2vec2:HF_DIR (frozen CNN features)
    text_encoder: str = "minilm"  # minilm | clip:HF_DIR | bert:DIR
    text_len: int = 32
    keyframe_substitution: bool = True
    keyframe_candidates: int = 4


@dataclasses.dataclass(frozen=True)
class InstructAvatarSampleConfig:
    sampler: str = "ddim"  # ddim | ddpm (formulation ddpm) | euler (formulation vpsde)
    num_steps: int = 50
    eta: float = 0.0
    temperature: float = 1.8  # vpsde: start from N(0, 1) / temperature (the release's 1.8)
    guidance_scale: float = 1.0  # classifier-free guidance on the instruction (1 = off)
    num_frames: int = 100  # text-only motion control length
    seed: int = 0


class InstructAvatarSystem(nnx.Module):
    """The trained module: the generator plus its static task settings (diffusion formulation, loss weights)."""

    def __init__(self, cfg: InstructAvatarTaskConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        self.settings = cfg
        self.net = InstructAvatar(cfg.net, remat=remat, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def build_model(cfg, rngs: nnx.Rngs) -> InstructAvatarSystem:
    check_config(cfg)
    return InstructAvatarSystem(cfg.model, remat=cfg.train.remat, dtype=dtype_of(cfg.train.compute_dtype),
                                param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)


def check_config(cfg) -> None:
    m, d = cfg.model, cfg.model.diffusion
    if d.formulation not in ("ddpm", "vpsde"):
        raise ConfigError(f"model.diffusion.formulation must be 'ddpm' or 'vpsde', got '{d.formulation}'")
    if m.loss.x0 not in ("l1", "l2"):
        raise ConfigError(f"model.loss.x0 must be 'l1' or 'l2', got '{m.loss.x0}'")
    if d.parameterization not in ("x0", "v"):
        raise ConfigError(f"model.diffusion.parameterization must be 'x0' or 'v', got '{d.parameterization}'")
    if d.formulation == "vpsde" and m.net.time_scale == 1.0:
        raise ConfigError("the vpsde formulation samples t in (0, 1): set model.net.time_scale=1000 so the timestep "
                          "embedding sees the discrete-step range")


# ------------------------------------------------------------------------------------------------ conditions
def audio_features(audio: jax.Array) -> jax.Array:
    """16 kHz audio ``[b, T * 640]`` -> normalised log-mel ``[b, 2T, 80]`` (two mel frames per video frame)."""
    return (log_mel(audio, MelConfig()) + MEL_SHIFT) / MEL_SCALE


def conditions(batch: dict, drop: jax.Array | None = None) -> dict:
    """The generator's ``cond`` from a batch; ``drop`` bool ``[b]`` replaces the instruction by the null one.
    Audio features come from the batch (a host front-end such as wav2vec2) or, without them, log-mel of the audio."""
    features = batch["audio_features"] if "audio_features" in batch else audio_features(batch["audio"])
    cond = {"audio_features": features, "mask": batch["mask"],
            "audio_flag": batch["audio_flag"], "keyframe": batch["keyframe"], "text_pooled": batch["text_pooled"],
            "text_tokens": batch["text_tokens"], "text_mask": batch["text_mask"]}
    if drop is not None:
        keep = ~drop
        cond["text_pooled"] = cond["text_pooled"] * keep[:, None]
        cond["text_tokens"] = cond["text_tokens"] * keep[:, None, None]
        cond["text_mask"] = cond["text_mask"] | (drop[:, None] & (jnp.arange(cond["text_mask"].shape[1]) == 0))
    if "pose" in batch:
        cond["pose"] = batch["pose"]
    return cond


def _noised(settings: InstructAvatarTaskConfig, x0: jax.Array, key: jax.Array):
    """(x_t, t, eps) for x0 ``[b, T, D]`` in the configured formulation."""
    d = settings.diffusion
    k_t, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    if d.formulation == "ddpm":
        schedule = schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, d.num_train_steps)
        return schedules.q_sample(schedule, x0, t, eps), t, eps
    sde = schedules.VPSDE(d.beta_min, d.beta_max)
    t = sde.sample_t(k_t, x0.shape[0])
    return sde.q_sample(x0, t, eps), t, eps


def output_to_x0(settings: InstructAvatarTaskConfig):
    """``to_x0(output, x_t, t)`` for the generator (see ``InstructAvatar.denoise``), or None when it predicts x0."""
    d = settings.diffusion
    if d.parameterization == "x0":
        return None
    if d.formulation == "ddpm":
        schedule = schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps)
        scales = lambda t, like: schedules.signal_noise_scales(schedule, t, like)  # noqa: E731
    else:
        sde = schedules.VPSDE(d.beta_min, d.beta_max)

        def scales(t, like):
            mean_scale, var = sde.marginal(t, like)
            return mean_scale, jnp.sqrt(var)

    def to_x0(v: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        a, s = scales(t, x_t)
        return a.astype(x_t.dtype) * x_t - s.astype(x_t.dtype) * v

    return to_x0


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` ``[b, T, ...]`` over valid frames ``mask`` ``[b, T]`` and trailing dims."""
    weight = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - 2)), values.shape).astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def loss(model: InstructAvatarSystem, batch, key, step):
    del step
    settings = model.settings
    lw = settings.loss
    k_noise, k_drop, k_model = jax.random.split(key, 3)
    x0 = batch["latents"] * settings.diffusion.latent_scale
    x_t, t, eps = _noised(settings, x0, k_noise)
    drop = guidance.drop_condition_mask(k_drop, x0.shape[0], lw.cond_drop_prob)
    out = model.net(x_t, t, conditions(batch, drop), key=k_model, train=True, to_x0=output_to_x0(settings))
    mask = batch["mask"]
    err = out["x0"] - x0
    x0_loss = _masked_mean(jnp.square(err) if lw.x0 == "l2" else jnp.abs(err), mask)
    total = x0_loss
    metrics = {"x0_loss": x0_loss}
    if lw.eps_weight > 0:
        eps_hat = _eps_from_x0(settings, x_t, t, out["x0"])
        eps_loss = _masked_mean(jnp.abs(eps_hat - eps), mask)
        total += lw.eps_weight * eps_loss
        metrics["eps_loss"] = eps_loss
    pose_loss = _masked_mean(jnp.square(out["pose"] - batch["pose"]), mask & (batch["audio_flag"] > 0)[:, None])
    au = optax.sigmoid_binary_cross_entropy(out["au_logits"], batch["au_active"].astype(jnp.float32)).mean()
    has_intensity = batch["intensity"] > 0
    inten = optax.softmax_cross_entropy_with_integer_labels(out["intensity_logits"],
                                                            jnp.maximum(batch["intensity"] - 1, 0))
    inten = jnp.sum(inten * has_intensity) / jnp.maximum(jnp.sum(has_intensity), 1)
    total += lw.pose_weight * pose_loss + lw.au_weight * au + lw.intensity_weight * inten
    metrics.update(pose_loss=pose_loss, au_loss=au, intensity_loss=inten)
    return total, metrics


def _eps_from_x0(settings: InstructAvatarTaskConfig, x_t, t, x0):
    d = settings.diffusion
    if d.formulation == "ddpm":
        return schedules.eps_from_x0(schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps), x_t, t, x0)
    return schedules.VPSDE(d.beta_min, d.beta_max).eps_from_x0(x_t, t, x0)


# ------------------------------------------------------------------------------------------------------- data
class AudioFrontend:
    """Host-side audio features for front-ends that are not computed in the step: ``wav2vec2:HF_DIR`` gives the
    frozen wav2vec2 CNN feature encoder's 512-d features at 50 Hz (two per video frame), as the release feeds its
    audio encoder; ``mel`` gives None (log-mel runs inside the jitted step)."""

    def __init__(self, spec: str):
        self.spec = spec
        kind, _, path = spec.partition(":")
        if kind == "mel":
            self.dim, self._encode = MelConfig().n_mels, None
        elif kind == "wav2vec2":
            from avatarjax.encoders import wav2vec2

            model, w2v_cfg = wav2vec2.from_pretrained(path)
            self.dim = w2v_cfg.conv_dim[-1]
            self._encode = wav2vec2.jit_forward(model, "feature_encoder")
            self._normalize = wav2vec2.normalize
        else:
            raise ConfigError(f"data.audio_frontend '{spec}' is unknown: use 'mel' or 'wav2vec2:HF_DIR'")

    def clip_features(self, wave: np.ndarray) -> np.ndarray | None:
        """16 kHz audio ``[T * 640]`` -> ``[2T, dim]`` (None for mel). Padded to a multiple of 1.28 s so that few
        shapes compile; the conv's last frames are repeated to reach 2T."""
        if self._encode is None:
            return None
        frames = len(wave) // schema.SAMPLES_PER_FRAME
        bucket = 32 * schema.SAMPLES_PER_FRAME
        padded = np.zeros(-(-len(wave) // bucket) * bucket, np.float32)
        padded[:len(wave)] = self._normalize(wave)[0]
        feats = np.asarray(self._encode(jnp.asarray(padded[None])))[0]
        feats = feats[:2 * frames]
        if len(feats) < 2 * frames:
            feats = np.concatenate([feats, np.repeat(feats[-1:], 2 * frames - len(feats), axis=0)])
        return feats.astype(np.float32)


class ClipLatents:
    """Per-clip motion latents ``[T, D]``, key-frame candidates ``[K, D]`` (frozen motion VAE) and host audio
    features ``[2T, F]`` (or None), memoised by clip index (thread-safe: loader threads share it)."""

    def __init__(self, vae_path: str, keyframe_candidates: int, frontend: AudioFrontend):
        from avatarjax.codecs import motion_vae
        from avatarjax.train.export import load_model

        if not vae_path:
            raise ConfigError("data.vae is empty: train the motion VAE first (avatarjax train --config "
                              "configs/motion_vae/synthface_small.py --workdir W) and pass --config.data.vae=W")
        vae, vae_cfg = load_model(vae_path)
        self.frame_size = vae_cfg.model.frame_size
        self.motion_dim = vae_cfg.model.motion_dim
        self.keyframe_candidates = keyframe_candidates
        self.frontend = frontend
        graphdef, state = nnx.split(vae)

        @jax.jit
        def encode(frames):
            model = nnx.merge(graphdef, state)
            mean, _ = model.encode_motion(motion_vae.to_model_range(frames))
            return motion_vae.flatten_motion(mean)

        self._encode = encode
        self.mean = self.std = None  # set by standardize(); until then latents are raw
        self._memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def standardize(self, vae_path: str, world: SynthfaceDataConfig) -> None:
        """From now on return standardised latents (see ``statistics``)."""
        self.mean, self.std = self.statistics(vae_path, world)
        self._memo.clear()

    def statistics(self, vae_path: str, world: SynthfaceDataConfig, clips: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std ``[D]`` of the motion latents over ``clips`` training clips, kept in the VAE
        directory (``motion_latent_stats.json``) so that training and sampling standardise identically. The
        latents vary little around per-dimension offsets (std 0.05-0.5 around means near 1 for the small VAE):
        standardising gives the diffusion unit-variance targets."""
        path = Path(vae_path) / STATS_FILE
        if path.exists():
            return read_latent_statistics(vae_path)
        src = source(world, "train")
        values = np.concatenate([self._compute(src[i], False)[0] for i in range(min(clips, len(src)))])
        mean, std = values.mean(0), np.maximum(values.std(0), 1e-3)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist(), "clips": clips}))
        tmp.replace(path)
        return mean.astype(np.float32), std.astype(np.float32)

    def encode_frames(self, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` -> ``[N, D]`` in fixed-size chunks (one compilation)."""
        out = []
        for i in range(0, len(frames), chunk):
            part = frames[i:i + chunk]
            padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
            out.append(np.asarray(self._encode(padded))[:len(part)])
        return np.concatenate(out)

    def __call__(self, record: dict, substitute: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        clip = int(record["clip"])
        with self._lock:
            hit = self._memo.get(clip)
        if hit is None:
            hit = self._compute(record, substitute)
            with self._lock:
                self._memo[clip] = hit
        return hit

    def _compute(self, record: dict, substitute: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
        state = np.asarray(record["state"], np.float32)
        rng = np.random.default_rng([int(record["clip"]), 11])
        picks = rng.integers(0, len(state), self.keyframe_candidates)
        keyframes = state[picks].copy()
        if substitute:
            keyframes = np.stack([keyframe_substitute(s, int(record["emotion"]), rng) for s in keyframes])
        frames = render.render_frames(ident, np.concatenate([state, keyframes]), size=self.frame_size)
        latents = self.encode_frames(frames)
        if self.mean is not None:
            latents = (latents - self.mean) / self.std
        features = self.frontend.clip_features(audio_float(record["audio"]))
        return latents[:len(state)], latents[len(state):], features


def read_latent_statistics(vae_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) ``[D]`` written beside the motion VAE by the generator's training run."""
    path = Path(vae_path) / STATS_FILE
    if not path.exists():
        raise ConfigError(f"'{path}' is missing: the motion VAE's latent statistics are written by the generator's "
                          "training run; use the VAE the generator was trained with")
    stats = json.loads(path.read_text())
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)


def keyframe_substitute(state: np.ndarray, emotion: int, rng: np.random.Generator) -> np.ndarray:
    """``state`` ``[24]`` with its expression (AU and mouth channels) replaced by the apex of another emotion."""
    others = [e for e in range(len(schema.EMOTIONS)) if e != emotion]
    other = int(rng.choice(others))
    intensity = int(rng.integers(1, 4))
    out = state.copy()
    expression = np.r_[schema.AU_SLICE, schema.MOUTH_SLICE]
    pattern = dynamics.emotion_pattern(other, intensity)
    out[expression] = pattern[expression]
    return schema.clip_to_range(out[None])[0]


def make_example(record: dict, rng: np.random.Generator | None, cfg: InstructAvatarDataConfig,
                 latents: ClipLatents, text) -> dict[str, Any]:
    """One fixed-shape window: latents, audio, instruction features, key frame, pose and labels."""
    window = cfg.synthface.window
    clip_latents, keyframes, features = latents(record, cfg.keyframe_substitution)
    start = transforms.window_start(len(clip_latents), window, rng)
    lat, mask = transforms.crop_or_pad(clip_latents, start, window)
    state, _ = transforms.crop_or_pad(np.asarray(record["state"], np.float32), start, window)
    pick = rng or np.random.default_rng(0)
    instruction = transforms.sample_instruction(json.loads(record["instructions"]), pick)
    example = {
        "latents": lat.astype(np.float32), "mask": mask,
        "audio": transforms.crop_audio(audio_float(record["audio"]), start, window, schema.SAMPLES_PER_FRAME),
        "keyframe": keyframes[int(pick.integers(len(keyframes)))].astype(np.float32),
        "pose": state[:, schema.POSE_SLICE] / POSE_SCALE, "state": state,
        "audio_flag": np.int32(record["audio_flag"]), "au_active": np.asarray(record["au_active"], bool),
        "intensity": np.int32(record["intensity"]), "emotion": np.int32(record["emotion"]),
    }
    if features is not None:
        example["audio_features"], _ = transforms.crop_or_pad(features, 2 * start, 2 * window)
    example.update({k: v[0] for k, v in text([instruction]).items()})
    return example


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    from avatarjax.encoders.instruction_features import InstructionFeatures

    data = cfg.data
    frontend = AudioFrontend(data.audio_frontend)
    if frontend.dim != cfg.model.net.audio_feature_dim:
        raise ConfigError(f"audio front-end '{data.audio_frontend}' gives {frontend.dim}-d features but "
                          f"model.net.audio_feature_dim is {cfg.model.net.audio_feature_dim}: set "
                          f"--config.model.net.audio_feature_dim={frontend.dim}")
    latents = ClipLatents(data.vae, data.keyframe_candidates, frontend)
    if latents.motion_dim != cfg.model.net.latent_dim:
        raise ConfigError(f"the motion VAE '{data.vae}' gives {latents.motion_dim}-d motion latents but "
                          f"model.net.latent_dim is {cfg.model.net.latent_dim}: set "
                          f"--config.model.net.latent_dim={latents.motion_dim}")
    latents.standardize(data.vae, data.synthface)
    text = InstructionFeatures(data.text_encoder, data.text_len)
    if text.dim != cfg.model.net.text_dim:
        raise ConfigError(f"text encoder '{data.text_encoder}' gives {text.dim}-d features but model.net.text_dim "
                          f"is {cfg.model.net.text_dim}: set --config.model.net.text_dim={text.dim}")
    train = split == "train"
    ds = pipeline.batched(source(data.synthface, split), batch_size=cfg.train.batch_size, seed=cfg.seed,
                          shuffle=train, num_epochs=None if train else 1, process_index=process_index,
                          process_count=process_count,
                          transform=lambda record, rng: make_example(record, rng if train else None, data, latents,
                                                                     text))
    return pipeline.to_iter(ds, threads=data.synthface.threads, prefetch=data.synthface.prefetch)


def flops_per_example(cfg) -> float:
    return instruct_avatar_flops(cfg.model.net, cfg.data.synthface.window, cfg.data.text_len)


def example_batch(cfg, batch_size: int):
    net, window, length = cfg.model.net, cfg.data.synthface.window, cfg.data.text_len
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal((batch_size, *shape)).astype(np.float32)
    return {
        "latents": f32(window, net.latent_dim), "mask": np.ones((batch_size, window), bool),
        "audio": f32(window * schema.SAMPLES_PER_FRAME) * 0.1, "keyframe": f32(net.latent_dim),
        "pose": f32(window, 3) * 0.1, "state": f32(window, schema.NUM_CHANNELS),
        "audio_flag": np.ones((batch_size,), np.int32), "au_active": np.zeros((batch_size, len(schema.AU_CHANNELS)), bool),
        "intensity": np.ones((batch_size,), np.int32), "emotion": np.zeros((batch_size,), np.int32),
        "text_pooled": f32(net.text_dim), "text_tokens": f32(length, net.text_dim),
        "text_mask": np.ones((batch_size, length), bool),
        **({} if cfg.data.audio_frontend == "mel" else {"audio_features": f32(2 * window, net.audio_feature_dim)}),
    }


def sample(model: InstructAvatarSystem, cfg, out, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --checkpoint W --portrait IMG [--audio WAV] --instruction TEXT --out OUT.mp4``."""
    from avatarjax.pipelines.instruct_avatar import sample_command

    return sample_command(model, cfg, out, args, checkpoint)


def evaluate(model: InstructAvatarSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W --reader R [--clips N] [--motion-clips M] [--out report.json]``; with
    ``--long-seconds S``: the long-form drift report (``instruct_avatar_eval.long_form_command``)."""
    import argparse
    from pathlib import Path

    from avatarjax.pipelines import instruct_avatar_eval
    from avatarjax.pipelines.instruct_avatar import InstructAvatarPipeline, resolve_vae
    from avatarjax.train.export import load_model

    if any(a == "--long-seconds" or a.startswith("--long-seconds=") for a in args):  # the long-form drift report
        return instruct_avatar_eval.long_form_command(model, cfg, args, checkpoint)
    p = argparse.ArgumentParser(prog="avatarjax eval (instruct_avatar)",
                                epilog="--long-seconds S [--out DIR] [knobs]: the long-form drift report instead")
    p.add_argument("--reader", required=True, help="a face_reader workdir or export (reads the generated videos)")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--motion-clips", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the report to this JSON file")
    ns = p.parse_args(args)
    vae_path = resolve_vae(cfg.data.vae, checkpoint)
    vae, vae_cfg = load_model(vae_path)
    pipe = InstructAvatarPipeline(model, cfg, vae, vae_cfg, read_latent_statistics(vae_path))
    report = instruct_avatar_eval.evaluate(pipe, instruct_avatar_eval.Reader(ns.reader), num_clips=ns.clips,
                                           num_motion_clips=ns.motion_clips, seed=ns.seed)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(json.dumps(report, indent=2))
    return report


INSTRUCT_AVATAR_TASK = Task(name="instruct_avatar", model_config=InstructAvatarTaskConfig,
                            data_config=InstructAvatarDataConfig, sample_config=InstructAvatarSampleConfig,
                            build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                            example_batch=example_batch, sample=sample, evaluate=evaluate)
