"""The CogPortrait Stage 2 task: keypoint-, audio- and text-conditioned DiT flow matching on Wan VAE latents.

An example is a window of ``1 + 4k`` synthface frames. Its first frame is the reference portrait: its latent
occupies the first temporal slot, kept clean (timestep 0 on its tokens, left out of the loss), as in Wan2.2 TI2V
and the paper (section 3.4). The window's 62 eye-region keypoints (CogPortrait's set; ``data.keypoints="all"``
adds mouth and contour) are drawn as a pose video (``data/preprocess/pose_video.py``), encoded by the same frozen
VAE and fed to the pose adapter. The instruction goes through the text encoder (MiniLM tokens by default, umT5 in
the paper), the audio through log-mel (wav2vec2 in the paper) computed inside the step.

Conditioning dropout (``model.cond_drop_prob``): text, audio and pose are replaced together by the null condition
(zeros), the unconditional branch of classifier-free guidance at sampling.

Latents: a frozen Wan VAE (``data.vae``: a ``wan_vae`` workdir or export, or a converted ``wan-vae`` directory)
encodes video and pose windows in the loader (jitted, memoised by clip and window start: windows start on a grid of
``data.start_grid`` frames so the cache fills). Latents are normalised per channel by the VAE config's
``latents_mean/std`` (real Wan checkpoints) or by statistics measured once on training windows and stored beside
the VAE (``wan_latent_stats.json``), so training and sampling normalise identically.

Batch: ``latents``/``pose`` float32 ``[B, F', h, w, z]``, ``audio`` float32 ``[B, F * 640]``, ``text_tokens``
``[B, L, Dt]``, ``text_mask`` bool ``[B, L]``, ``keypoints`` float32 ``[B, F, K, 2]`` (normalised), ``state``
``[B, F, 24]``, ``identity_vector`` ``[B, 11]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline, transforms
from avatarjax.data.preprocess import pose_video
from avatarjax.data.synthface import geometry, identity as identity_lib, render, schema
from avatarjax.data.synthface.loader import SynthfaceDataConfig, source
from avatarjax.data.synthface.records import audio_float
from avatarjax.diffusion import flow, guidance
from avatarjax.diffusion.guidance import DynamicCFGConfig
from avatarjax.errors import ConfigError, DataError
from avatarjax.models import cog_portrait as dit_lib
from avatarjax.nn.melspec import MelConfig
from avatarjax.train.objectives.instruct_avatar import audio_features  # the same normalised log-mel front-end
from avatarjax.train.task import Task

STATS_FILE = "wan_latent_stats.json"
LEFT_IRIS, RIGHT_IRIS = geometry.LEFT_EYEBALL, geometry.RIGHT_EYEBALL  # iris ring + pupil of each eye


@dataclasses.dataclass(frozen=True)
class CogPortraitTaskConfig:
    net: dit_lib.CogPortraitDiTConfig = dit_lib.CogPortraitDiTConfig.synthface_small(audio_dim=80)
    flow: flow.FlowTrainConfig = flow.FlowTrainConfig(sampler="logit_normal", shift=1.0)
    cond_drop_prob: float = 0.1


@dataclasses.dataclass(frozen=True)
class CogPortraitDataConfig:
    synthface: SynthfaceDataConfig = SynthfaceDataConfig(frame_size=64, audio=True, window=17)
    vae: str = ""  # wan_vae workdir / export, or a converted wan-vae directory (required)
    text_encoder: str = "minilm"
    text_len: int = 32
    keypoints: str = "eye_region"  # eye_region: the 62 CogPortrait keypoints | all: 99 (adds mouth and contour)
    start_grid: int = 8  # window starts are multiples of this (the encoded-window cache is keyed by them)


@dataclasses.dataclass(frozen=True)
class CogPortraitSampleConfig:
    sampler: str = "unipc"  # unipc | euler
    num_steps: int = 20  # the paper: 40
    shift: float = 3.0  # Wan's sigma shift at sampling (TI2V: 5.0)
    guidance: str = "dynamic"  # dynamic (the paper) | static | none
    static_scale: float = 3.5  # Wan2.2's default, the paper's baseline
    dynamic: DynamicCFGConfig = DynamicCFGConfig()
    seed: int = 0


class CogPortraitSystem(nnx.Module):
    """The trained module: the DiT plus its static task settings."""

    def __init__(self, cfg: CogPortraitTaskConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.settings = cfg
        self.dit = dit_lib.CogPortraitDiT(cfg.net, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def build_model(cfg, rngs: nnx.Rngs) -> CogPortraitSystem:
    check_config(cfg)
    return CogPortraitSystem(cfg.model, dtype=dtype_of(cfg.train.compute_dtype),
                             param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)


def check_config(cfg) -> None:
    window = cfg.data.synthface.window
    if window < 5 or (window - 1) % 4:
        raise ConfigError(f"data.synthface.window={window}: the causal VAE needs 1 + 4k frames (5, 9, 17, 33, ...)")
    if cfg.data.keypoints not in ("eye_region", "all"):
        raise ConfigError(f"data.keypoints must be 'eye_region' or 'all', got '{cfg.data.keypoints}'")
    if cfg.model.net.audio_dim not in (0, MelConfig().n_mels):
        raise ConfigError(f"model.net.audio_dim={cfg.model.net.audio_dim}: the synthface task feeds "
                          f"{MelConfig().n_mels}-bin log-mel; set --config.model.net.audio_dim={MelConfig().n_mels}")


# ------------------------------------------------------------------------------------------------ conditions
def conditions(batch: dict, keep: jax.Array | None = None) -> dict:
    """The DiT's condition arguments; ``keep`` bool ``[b]`` (None = all kept) zeroes text, audio and pose of the
    dropped rows (the null condition)."""
    text, audio, pose = batch["text_tokens"], audio_features(batch["audio"]), batch["pose"]
    mask = batch["text_mask"]
    if keep is not None:
        k = keep.astype(text.dtype)
        text, audio, pose = text * k[:, None, None], audio * k[:, None, None], pose * k[:, None, None, None, None]
        mask = mask & keep[:, None] | (~keep[:, None] & (jnp.arange(mask.shape[1]) == 0))
    return {"text": text, "text_mask": mask, "audio": audio, "pose": pose}


def null_conditions(cond: dict) -> dict:
    """The unconditional branch: zeros with the same shapes (text keeps one valid token so attention is defined)."""
    mask = jnp.zeros_like(cond["text_mask"]).at[:, 0].set(True)
    return {"text": jnp.zeros_like(cond["text"]), "text_mask": mask, "audio": jnp.zeros_like(cond["audio"]),
            "pose": jnp.zeros_like(cond["pose"])}


def velocity(dit: dit_lib.CogPortraitDiT, x: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """The DiT's velocity for latents ``x [b, F', h, w, z]`` at per-example timesteps ``t [b]`` (the reference
    frame's tokens get timestep 0)."""
    grid = dit.grid(x.shape)
    return dit(x, dit_lib.token_timesteps(t, grid), cond["text"], audio=cond["audio"], pose=cond["pose"],
               text_mask=cond["text_mask"])


def loss(model: CogPortraitSystem, batch, key, step):
    del step
    settings = model.settings
    k_flow, k_drop = jax.random.split(key)
    x0 = batch["latents"]
    _, frames, h, w, _ = x0.shape
    ex = flow.make_flow_example(k_flow, x0, settings.flow, flow.first_frame_mask(frames, h, w))
    keep = ~guidance.drop_condition_mask(k_drop, x0.shape[0], settings.cond_drop_prob)
    cond = conditions(batch, keep)
    t = ex.timestep[:, -1, 0, 0]  # the per-example timestep (the last latent frame is never clean)
    pred = velocity(model.dit, ex.x_t, t, cond)
    per_example = flow.flow_loss(pred, ex.target, ex.loss_mask)
    total = jnp.mean(per_example)
    return total, {"flow_loss": total, "sigma": jnp.mean(ex.sigma[:, -1, 0, 0])}


# ------------------------------------------------------------------------------------------------------- data
class WindowLatents:
    """Frozen Wan VAE encoding of video and pose windows, normalised, memoised by (clip, start)."""

    def __init__(self, vae_path: str):
        if not vae_path:
            raise ConfigError("data.vae is empty: train the Wan VAE first (avatarjax train --config "
                              "configs/wan_vae/synthface_small.py --workdir W) and pass --config.data.vae=W")
        self.vae, self.vae_cfg = load_vae(vae_path)
        self.path = Path(vae_path)
        graphdef, state = nnx.split(self.vae)

        @jax.jit
        def encode(video):
            mean, _ = nnx.merge(graphdef, state).encode(video.astype(jnp.float32) / 127.5 - 1.0)
            return mean

        self._encode = encode
        self.mean = self.std = None
        self._memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def z_dim(self) -> int:
        return self.vae_cfg.z_dim

    def encode(self, video: np.ndarray) -> np.ndarray:
        """uint8 ``[F, S, S, 3]`` -> normalised latents ``[F', h, w, z]`` (raw until ``normalise`` is set up)."""
        z = np.asarray(self._encode(jnp.asarray(video[None])))[0]
        return z if self.mean is None else (z - self.mean) / self.std

    def setup_normalisation(self, windows=None) -> None:
        """Per-channel mean/std: the VAE config's (real Wan checkpoints), else the stored statistics, else measured
        on ``windows()`` (a callable giving uint8 videos; called only when nothing is stored)."""
        if self.vae_cfg.latents_mean:
            self.mean = np.asarray(self.vae_cfg.latents_mean, np.float32)
            self.std = np.asarray(self.vae_cfg.latents_std, np.float32)
            return
        path = self.path / STATS_FILE
        if path.exists():
            stats = json.loads(path.read_text())
        elif windows is None:
            raise ConfigError(f"'{path}' is missing: the latent statistics are written by the cog_portrait training "
                              "run; use the Wan VAE the model was trained with")
        else:
            videos = windows()
            z = np.concatenate([self.encode(video).reshape(-1, self.z_dim) for video in videos])
            stats = {"mean": z.mean(0).tolist(), "std": np.maximum(z.std(0), 1e-3).tolist(), "windows": len(videos)}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stats))
            tmp.replace(path)
        self.mean, self.std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)

    def window(self, key: tuple[int, int], make) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            hit = self._memo.get(key)
        if hit is None:
            video, pose = make()
            hit = (self.encode(video), self.encode(pose))
            with self._lock:
                self._memo[key] = hit
        return hit


def load_vae(path: str | Path):
    """(WanVAE, WanVAEConfig) from a wan_vae training workdir / export or a converted wan-vae directory."""
    from avatarjax.checkpoint.convert import META_FILE

    path = Path(path)
    if (path / META_FILE).exists():
        from avatarjax.checkpoint.convert import load_converted

        vae, cfg, name = load_converted(path)
        if name != "wan-vae":
            raise ConfigError(f"'{path}' holds a converted '{name}' model, not a Wan VAE (convert wan-vae)")
        return vae, cfg
    from avatarjax.train.export import load_model

    model, cfg = load_model(path)
    if cfg.task != "wan_vae":
        raise ConfigError(f"'{path}' was trained by task '{cfg.task}', not 'wan_vae': pass a Wan VAE run")
    return model.vae, model.vae.cfg


def keypoint_count(cfg) -> int:
    return schema.NUM_EYE_REGION_KEYPOINTS if cfg.data.keypoints == "eye_region" else schema.NUM_KEYPOINTS


def window_truth(record: dict, start: int, window: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints ``[F, K, 2]``, states ``[F, 24]``) of frames ``start .. start + window`` of a clip."""
    ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
    state = np.asarray(record["state"], np.float32)[start:start + window]
    return geometry.keypoints(ident, state)[:, :count], state


def render_window(record: dict, start: int, window: int, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 ``[F, S, S, 3]``, pose video uint8 ``[F, S, S, 3]``) of a clip window."""
    return render_truth(record, *window_truth(record, start, window, count), size)


def render_truth(record: dict, kps: np.ndarray, state: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``render_window`` from the window's keypoints and states (``window_truth``)."""
    ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
    return render.render_frames(ident, state, size=size), pose_video.render_pose_video(kps, size)


def make_example(record: dict, rng: np.random.Generator | None, cfg, latents: WindowLatents, text) -> dict:
    data = cfg.data
    window, size = data.synthface.window, data.synthface.frame_size
    frames = len(record["state"])
    if frames < window:
        raise DataError(f"clip {record['clip']} has {frames} frames, fewer than data.synthface.window={window}")
    starts = np.arange(0, frames - window + 1, data.start_grid)
    start = int(starts[rng.integers(len(starts))]) if rng is not None else 0
    count = keypoint_count(cfg)
    kps, state = window_truth(record, start, window, count)
    lat, pose_lat = latents.window((int(record["clip"]), start), lambda: render_truth(record, kps, state, size))
    pick = rng or np.random.default_rng(0)
    instruction = transforms.sample_instruction(json.loads(record["instructions"]), pick)
    example = {
        "latents": lat.astype(np.float32), "pose": pose_lat.astype(np.float32),
        "audio": transforms.crop_audio(audio_float(record["audio"]), start, window, schema.SAMPLES_PER_FRAME),
        "keypoints": kps.astype(np.float32), "state": state.astype(np.float32),
        "identity_vector": np.asarray(record["identity_vector"], np.float32),
    }
    example.update({k: v[0] for k, v in text([instruction]).items() if k in ("text_tokens", "text_mask")})
    return example


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    from avatarjax.encoders.instruction_features import InstructionFeatures

    check_config(cfg)
    data = cfg.data
    latents = WindowLatents(data.vae)
    net = cfg.model.net
    if latents.z_dim != net.in_channels or (net.pose_channels and latents.z_dim != net.pose_channels):
        raise ConfigError(f"the Wan VAE '{data.vae}' gives {latents.z_dim}-channel latents but model.net has "
                          f"in_channels={net.in_channels}, pose_channels={net.pose_channels}: set "
                          f"--config.model.net.in_channels={latents.z_dim} (and out_channels, pose_channels)")
    src = source(data.synthface, "train")
    count = keypoint_count(cfg)
    latents.setup_normalisation(lambda: [render_window(src[i], 0, data.synthface.window, data.synthface.frame_size,
                                                       count)[0] for i in range(min(32, len(src)))])
    text = InstructionFeatures(data.text_encoder, data.text_len)
    if text.dim != net.text_dim:
        raise ConfigError(f"text encoder '{data.text_encoder}' gives {text.dim}-d features but model.net.text_dim "
                          f"is {net.text_dim}: set --config.model.net.text_dim={text.dim}")
    train = split == "train"
    ds = pipeline.batched(source(data.synthface, split), batch_size=cfg.train.batch_size, seed=cfg.seed,
                          shuffle=train, num_epochs=None if train else 1, process_index=process_index,
                          process_count=process_count,
                          transform=lambda record, rng: make_example(record, rng if train else None, cfg, latents,
                                                                     text))
    return pipeline.to_iter(ds, threads=data.synthface.threads, prefetch=data.synthface.prefetch)


def latent_grid(cfg) -> tuple[int, int, int]:
    """(F', h, w) of a window's latents for the VAE strides of the synthface variant (4x8x8)."""
    window, size = cfg.data.synthface.window, cfg.data.synthface.frame_size
    return 1 + (window - 1) // 4, size // 8, size // 8


def flops_per_example(cfg) -> float:
    f, h, w = latent_grid(cfg)
    return dit_lib.flops_per_step(cfg.model.net, 1, f, h, w, cfg.data.text_len,
                                  audio_len=2 * cfg.data.synthface.window, per_token_timesteps=True)


def example_batch(cfg, batch_size: int) -> dict:
    net, data = cfg.model.net, cfg.data
    f, h, w = latent_grid(cfg)
    window = data.synthface.window
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal((batch_size, *shape)).astype(np.float32)
    return {"latents": f32(f, h, w, net.in_channels), "pose": f32(f, h, w, max(net.pose_channels, 1)),
            "audio": f32(window * schema.SAMPLES_PER_FRAME) * 0.1, "text_tokens": f32(data.text_len, net.text_dim),
            "text_mask": np.ones((batch_size, data.text_len), bool),
            "keypoints": rng.uniform(0.3, 0.7, (batch_size, window, keypoint_count(cfg), 2)).astype(np.float32),
            "state": f32(window, schema.NUM_CHANNELS), "identity_vector": f32(identity_lib.IDENTITY_DIM)}


# ------------------------------------------------------------------------------------------- sample and evaluate
def _pipeline(model, cfg):
    from avatarjax.pipelines.cog_portrait import CogPortraitPipeline

    return CogPortraitPipeline(model, cfg)


def _extend(track: np.ndarray, frames: int) -> np.ndarray:
    """``track [T, ...]`` to ``frames`` frames, mirrored back and forth past its end (continuous, no jump)."""
    if frames <= len(track):
        return track[:frames]
    period = max(1, 2 * (len(track) - 1))
    idx = np.arange(frames) % period
    return track[np.where(idx < len(track), idx, period - idx)]


def sample(model: CogPortraitSystem, cfg, out, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --config configs/cogportrait/V.py|--checkpoint W [--out OUT.mp4] [--label drowsiness
    --instruction TEXT] [--portrait IMG] [--audio WAV] [--clip N] [--frames F] [--guidance dynamic|static|none]
    [--window 17 --overlap 4] [--smoothing S] [--anchor-colours] [--head-motion-scale A] [--expression-scale E]
    [--lip-only]``.

    Any length: the video has one frame per 40 ms of ``--audio`` (the last partial one included), generated in
    overlapping windows of ``--window`` frames (default the training clip) each continuing the previous one's tail
    (``pipelines.cog_portrait.CogPortraitPipeline.sample``). With ``--label``, Stage 1 plans the controls for the
    whole utterance once; without it, the motion of held-out synthface clip ``--clip`` (mirrored back and forth
    when the audio is longer) with its portrait, audio and instruction as defaults. The knobs act on the 17
    controls before they become keypoints (``apply_knobs``), ``--smoothing`` on the keypoint trajectory."""
    import argparse

    from avatarjax import media
    from avatarjax.pipelines import cog_portrait as pipeline_lib
    from avatarjax.pipelines import windowed

    p = argparse.ArgumentParser(prog="avatarjax sample (cog_portrait)")
    p.add_argument("--label", default=None, help="Stage 1 label, e.g. drowsiness, happiness, thinking")
    p.add_argument("--instruction", default=None, help="fine-grained instruction (Stage 1) / text prompt")
    p.add_argument("--portrait", default=None, help="portrait image (the model's frame size); default: the clip's")
    p.add_argument("--audio", default=None, help="driving audio (wav/mp4, any length); default: the clip's")
    p.add_argument("--clip", type=int, default=0, help="held-out synthface clip giving the defaults")
    p.add_argument("--frames", type=int, default=None,
                   help="video frames (default: one per 40 ms of --audio, else the training window)")
    p.add_argument("--guidance", default=None, choices=("dynamic", "static", "none"))
    p.add_argument("--window", type=int, default=None, help="window frames, 1 + 4k (default: the training clip)")
    p.add_argument("--overlap", type=int, default=None, help="overlap frames, a multiple of 4 (default 4 per 16)")
    p.add_argument("--smoothing", type=float, default=0.0, help="Gaussian sigma (frames) on the keypoints; 0 = off")
    p.add_argument("--anchor-colours", action="store_true", help="match each chunk's face colours to the portrait")
    p.add_argument("--head-motion-scale", type=float, default=1.0, help="head motion about the portrait's pose")
    p.add_argument("--expression-scale", type=float, default=1.0, help="AU motion about the portrait's")
    p.add_argument("--lip-only", action="store_true", help="hold the head at the portrait's pose")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    ns = p.parse_args(args)
    pipe = _pipeline(model, cfg)
    data = cfg.data
    record = source(data.synthface, "eval")[ns.clip]
    size = data.synthface.frame_size
    spf = schema.SAMPLES_PER_FRAME
    given_audio = media.read_audio(ns.audio) if ns.audio else None
    if given_audio is not None and not len(given_audio):
        raise DataError(f"--audio '{ns.audio}' holds no samples: give a recording at least one frame (40 ms) long")
    if ns.frames is not None and ns.frames < 1:
        raise DataError(f"--frames {ns.frames}: need at least 1")
    frames = ns.frames or (media.frames_for_audio(len(given_audio), schema.SAMPLE_RATE) if given_audio is not None
                           else data.synthface.window)
    if given_audio is not None:
        audio = media.fit_audio(given_audio, frames, schema.SAMPLE_RATE)
    else:
        clip_audio = audio_float(record["audio"])
        audio = np.resize(clip_audio, frames * spf).astype(np.float32) if len(clip_audio) else \
            np.zeros(frames * spf, np.float32)
    count = keypoint_count(cfg)
    ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
    state = _extend(np.asarray(record["state"], np.float32), frames)
    portrait = media.read_image(ns.portrait, size) if ns.portrait else render.render_frames(ident, state[:1],
                                                                                             size=size)[0]
    instruction = ns.instruction if ns.instruction is not None else json.loads(record["instructions"])[0]
    knobs = dict(head_motion_scale=ns.head_motion_scale, expression_scale=ns.expression_scale, lip_only=ns.lip_only)
    out = Path(out or "outputs/cogportrait/sample.mp4")
    extra = {}
    if ns.label:
        from avatarjax.planning import agents
        from avatarjax.planning import keypoints as planning_keypoints

        if count > 62:
            raise ConfigError("--label plans the 62 eye-region keypoints: use a model with data.keypoints=eye_region")
        plan, seq, log = agents.compile_label(ns.label, ns.instruction, frames / schema.FPS)
        log["controls"] = seq.to_dict()
        neutral_controls = schema.neutral_state(1)[:, schema.CONTROL_SLICE]
        controls = pipeline_lib.apply_knobs(seq.values, rest=neutral_controls[0], **knobs)
        controls = np.concatenate([controls, np.repeat(controls[-1:], max(0, frames - len(controls)), 0)])[:frames]
        basis = agents.resolve_basis(agents.Stage1Config.from_any(None).basis)
        kps = planning_keypoints.controls_to_keypoints(controls, basis)
        neutral = planning_keypoints.controls_to_keypoints(neutral_controls, basis)[0]
        reference = geometry.keypoints(ident, schema.neutral_state(1))[0, :62]
        kps = pose_video.align_to_reference(kps, reference, neutral=neutral)
        plan_path = out.with_suffix(".plan.json")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps({"plan": plan.to_dict() if hasattr(plan, "to_dict") else str(plan),
                                         "critic": log}, indent=2, default=str))
        extra["plan"] = str(plan_path.absolute())
    else:
        state = state.copy()
        state[:, schema.CONTROL_SLICE] = pipeline_lib.apply_knobs(state[:, schema.CONTROL_SLICE], **knobs)
        kps = geometry.keypoints(ident, state)[:, :count].astype(np.float32)
    options = {"guidance": ns.guidance} if ns.guidance else {}
    result = pipe.sample(portrait, kps, audio, instruction, window=ns.window, overlap=ns.overlap,
                         smoothing=ns.smoothing, anchor_colours=ns.anchor_colours, progress=ns.progress, **options)
    media.write_video(out, result.frames, fps=schema.FPS, audio=audio, sample_rate=schema.SAMPLE_RATE)
    np.save(out.with_suffix(".keypoints.npy"), kps)
    keypoints_json = out.with_suffix(".keypoints.json")
    keypoints_json.write_text(json.dumps({"layout": f"synthface {kps.shape[1]} keypoints (geometry.py)",
                                          "units": "normalised image x, y", "fps": schema.FPS,
                                          "keypoints": np.round(kps, 5).tolist()}))
    lw = pipe.plan(frames, ns.window, ns.overlap)
    seams = windowed.seam_jumps(windowed.frame_motion(result.frames, windowed.face_region(size)), lw.frame_plan()) \
        if frames > 1 else {}
    return {"video": str(out.absolute()), "keypoints": str(keypoints_json.absolute()), "instruction": instruction,
            **result.info, **knobs, "seams": {k: v for k, v in seams.items() if k != "per_seam"}, **extra}


def evaluate(model: CogPortraitSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W -- --reader READER [--clips 8] [--settings dynamic,static,none]``: AU-F1,
    AU-Temp and Eye-LMD of generated held-out clips (read back by a trained synthface face reader) per guidance
    setting, beside the ground-truth video and the VAE reconstruction."""
    import argparse

    from avatarjax.pipelines import cog_portrait as pipeline_lib
    from avatarjax.pipelines.instruct_avatar_eval import Reader

    if any(a == "--long-seconds" or a.startswith("--long-seconds=") for a in args):  # the long-form drift report
        return _long_form_command(model, cfg, args)
    p = argparse.ArgumentParser(prog="avatarjax eval (cog_portrait)",
                                epilog="--long-seconds S [--out DIR] [--window W --overlap O ...]: the long-form "
                                       "drift report instead")
    p.add_argument("--reader", required=True, help="a trained face_reader workdir or export")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--settings", default="dynamic,static")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(args)
    return pipeline_lib.evaluate(_pipeline(model, cfg), Reader(ns.reader), clips=ns.clips,
                                 settings=tuple(ns.settings.split(",")), seed=ns.seed)


def _long_form_command(model: CogPortraitSystem, cfg, args: list[str]) -> dict:
    """``avatarjax eval --checkpoint W -- --long-seconds S [--out DIR] [--instruction T] [--seed S] [--window W]
    [--overlap O] [--smoothing S] [--anchor-colours] [--steps N] [--guidance G]``: ``pipelines.cog_portrait.long_form``
    (drift.json and drift.png in ``--out``)."""
    import argparse

    from avatarjax.pipelines import cog_portrait as pipeline_lib

    p = argparse.ArgumentParser(prog="avatarjax eval (cog_portrait, long form)")
    p.add_argument("--long-seconds", type=float, required=True, help="length of the synthetic utterance")
    p.add_argument("--out", default="outputs/long_form_cog", help="directory for drift.json and drift.png")
    p.add_argument("--instruction", default="talk calmly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identity", type=int, default=None, help="synthface identity (default: first held-out)")
    p.add_argument("--window", type=int, default=None, help="window frames, 1 + 4k (default: the training clip)")
    p.add_argument("--overlap", type=int, default=None, help="overlap frames, a multiple of 4")
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--anchor-colours", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the config's)")
    p.add_argument("--guidance", default=None, choices=("dynamic", "static", "none"))
    ns = p.parse_args(args)
    options = {k: v for k, v in (("num_steps", ns.steps), ("guidance", ns.guidance)) if v is not None}
    report = pipeline_lib.long_form(_pipeline(model, cfg), seconds=ns.long_seconds, instruction=ns.instruction,
                                    seed=ns.seed, out_dir=ns.out, identity=ns.identity, window=ns.window,
                                    overlap=ns.overlap, smoothing=ns.smoothing, anchor_colours=ns.anchor_colours,
                                    **options)
    return {k: v for k, v in report.items() if k != "chunks"}


COG_PORTRAIT_TASK = Task(name="cog_portrait", model_config=CogPortraitTaskConfig, data_config=CogPortraitDataConfig,
                         build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                         example_batch=example_batch, sample_config=CogPortraitSampleConfig, sample=sample,
                         evaluate=evaluate)
