"""Online generation of several appropriate listener reactions with the trained reaction generator.

The listener track is produced segment by segment (``segment_length(cfg)`` frames each): segment ``n`` sees the
speaker's coefficients and audio over the ``context`` frames ending at ``(n + 1) S`` (never later frames) and the
listener's own previous segment, as generated. Each segment is sampled by DDIM with every diffusion step inside
one ``jax.jit`` (``lax.scan``); that per-segment sampler is compiled once per (model structure, K, steps) and reused
for every segment and every later call. The ``K`` reactions of one speaker clip are one batch.

    from avatarjax.train.export import load_model
    from avatarjax.pipelines.reaction_generate import generate_online
    model, cfg = load_model("outputs/reaction")
    reactions = generate_online(model, cfg, speaker, audio, num_reactions=10, seed=0)  # [10, T', 58]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.diffusion import samplers, schedules
from avatarjax.errors import DataError
from avatarjax.models.reaction_generator import (SAMPLES_PER_FRAME, ReactionGenerator, ReactionGeneratorConfig,
                                                 crop_context)


def _net_config(cfg: Any) -> ReactionGeneratorConfig:
    """The generator config from a run config (``cfg.model.net``), a task model section (``.net``) or itself."""
    for getter in (lambda c: c.model.net, lambda c: c.net, lambda c: c):
        try:
            net = getter(cfg)
        except AttributeError:
            continue
        if isinstance(net, ReactionGeneratorConfig):
            return net
    raise TypeError(f"expected a reaction run config (cfg.model.net), got {type(cfg).__name__}")


def segment_length(cfg: Any) -> int:
    """Frames per online segment ``S`` (the window PosNet slides by)."""
    return int(_net_config(cfg).segment)


def context_length(cfg: Any) -> int:
    """Speaker frames ``C`` seen by each segment, ending at the segment's end."""
    return int(_net_config(cfg).context)


def _diffusion(cfg: Any) -> tuple[str, int]:
    d = getattr(getattr(cfg, "model", None), "diffusion", None)
    return (d.beta_schedule, int(d.num_train_steps)) if d is not None else ("linear", 1000)


def _sample_defaults(cfg: Any) -> tuple[int, float]:
    s = getattr(cfg, "sample", None)
    return int(getattr(s, "num_steps", 50)), float(getattr(s, "eta", 0.0))


@functools.partial(jax.jit, static_argnames=("graphdef", "beta_schedule", "train_steps", "num_steps", "eta"))
def sample_segment(graphdef, state, speaker, audio, speaker_mask, previous, has_previous, noise, key, *,
                   beta_schedule: str, train_steps: int, num_steps: int, eta: float) -> jax.Array:
    """One online segment for K reactions (one compiled function: all DDIM steps in a ``lax.scan``).

    speaker ``[1, C, D]`` and audio ``[1, C * 640]`` (standardised / raw), speaker_mask ``[1, C]``, previous
    ``[K, S, D]`` (standardised), has_previous ``[K]``, noise ``[K, S, D]``, key (used when ``eta > 0``) ->
    standardised x0 ``[K, S, D]``. The speaker context is encoded once and shared by the K rows.
    """
    net: ReactionGenerator = nnx.merge(graphdef, state)
    k = noise.shape[0]
    c = net.encode_conditions({"speaker": speaker, "audio": audio, "speaker_mask": speaker_mask,
                               "previous": previous, "has_previous": has_previous})
    for name in ("speaker", "speaker_mask"):
        c[name] = jnp.broadcast_to(c[name], (k,) + c[name].shape[1:])
    schedule = schedules.make_discrete_schedule(beta_schedule, train_steps)
    return samplers.ddim_sample(lambda x_t, t: net.denoise(x_t, t, c), schedule, noise, key,
                                num_steps=num_steps, eta=eta)


class OnlineReactionGenerator:
    """Stateful online use: feed the speaker's frames as they arrive, get each new listener segment.

    ``generator.step(speaker, audio)`` with the speaker track so far (``[T, D]``, ``T >= (n + 1) S`` for the
    next segment ``n``) returns the next listener segment ``[K, S, D]`` (raw coefficients) for the K reactions.
    """

    def __init__(self, model, cfg, *, num_reactions: int, seed: int, num_steps: int | None = None,
                 eta: float | None = None):
        if num_reactions < 1:
            raise ValueError(f"num_reactions must be >= 1, got {num_reactions}")
        net = getattr(model, "net", model)
        if not isinstance(net, ReactionGenerator):
            raise TypeError(f"expected a reaction model (ReactionGenerator or its system), got {type(model).__name__}")
        self.cfg = _net_config(cfg)
        default_steps, default_eta = _sample_defaults(cfg)
        self.num_steps = int(num_steps or default_steps)
        self.eta = float(default_eta if eta is None else eta)
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        self.beta_schedule, self.train_steps = _diffusion(cfg)
        self.graphdef, self.state = nnx.split(net)
        stats = {k: np.asarray(v) for k, v in net.stats().items()}
        self.speaker_mean, self.speaker_std = stats["speaker_mean"], stats["speaker_std"]
        self.listener_mean, self.listener_std = stats["listener_mean"], stats["listener_std"]
        self.k = int(num_reactions)
        self.key = jax.random.key(int(seed))
        self.segment = 0
        s, d = self.cfg.segment, self.cfg.coeff_dim
        self.previous = np.zeros((self.k, s, d), np.float32)  # standardised

    def step(self, speaker: np.ndarray, audio: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        end = (self.segment + 1) * cfg.segment
        if len(speaker) < end or len(audio) < end * SAMPLES_PER_FRAME:
            raise DataError(f"segment {self.segment} needs the speaker's first {end} frames and "
                            f"{end * SAMPLES_PER_FRAME} audio samples, got {len(speaker)} and {len(audio)}")
        spk = (np.asarray(speaker, np.float32) - self.speaker_mean) / self.speaker_std
        spk_ctx, wav_ctx, mask = crop_context(spk, np.asarray(audio, np.float32), end, cfg.context)
        key = jax.random.fold_in(self.key, self.segment)
        k_noise, k_sample = jax.random.split(key)
        noise = jax.random.normal(k_noise, (self.k, cfg.segment, cfg.coeff_dim), jnp.float32)
        has_prev = np.full((self.k,), float(self.segment > 0), np.float32)
        x0 = sample_segment(self.graphdef, self.state, spk_ctx[None], wav_ctx[None], mask[None], self.previous,
                            has_prev, noise, k_sample, beta_schedule=self.beta_schedule, train_steps=self.train_steps,
                            num_steps=self.num_steps, eta=self.eta)
        self.previous = np.asarray(x0, np.float32)
        self.segment += 1
        return self.previous * self.listener_std + self.listener_mean


def _check_inputs(speaker, audio, segment: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    speaker = np.asarray(speaker, np.float32)
    audio = np.asarray(audio, np.float32)
    if speaker.ndim != 2 or speaker.shape[1] != dim:
        raise DataError(f"speaker must be [T, {dim}] REACT coefficients (52 expression + 3 rotation + 3 "
                        f"translation), got shape {speaker.shape}")
    t = speaker.shape[0]
    if t < segment:
        raise DataError(f"the speaker clip has {t} frames, fewer than one segment of {segment}: give at least "
                        f"{segment} frames ({segment / 25:.2f} s at 25 fps)")
    if audio.ndim != 1:
        raise DataError(f"audio must be mono 16 kHz samples [T * 640], got shape {audio.shape}")
    if audio.shape[0] < t * SAMPLES_PER_FRAME:
        raise DataError(f"audio has {audio.shape[0]} samples but {t} frames at 25 fps need {t * SAMPLES_PER_FRAME} "
                        "(16 kHz, 640 per frame): resample the audio to 16 kHz or trim the speaker track")
    if not (np.isfinite(speaker).all() and np.isfinite(audio).all()):
        raise DataError("speaker or audio holds NaN/inf values: clean the inputs")
    return speaker, audio


def generate_online(model, cfg, speaker: np.ndarray, audio: np.ndarray, *, num_reactions: int, seed: int,
                    num_steps: int | None = None) -> np.ndarray:
    """``num_reactions`` appropriate listener reactions to one speaker clip, generated online.

    Args:
      model: the trained reaction model (``load_model(path)[0]``; a bare ``ReactionGenerator`` also works).
      cfg: its config (``load_model(path)[1]``).
      speaker: float32 ``[T, 58]`` REACT coefficients of the speaker (raw, not standardised).
      audio: float32 ``[T * 640]`` mono 16 kHz speaker audio (longer audio is trimmed).
      num_reactions: K, sampled together as one batch.
      seed: the result is a deterministic function of (model, inputs, seed, num_steps).
      num_steps: DDIM steps per segment (default ``cfg.sample.num_steps``).

    Returns:
      float32 ``[K, T', 58]`` with ``T' = (T // S) * S``: segment ``n`` depends only on speaker frames and audio
      before ``(n + 1) S`` and on the reaction's own earlier segments.
    """
    net_cfg = _net_config(cfg)
    speaker, audio = _check_inputs(speaker, audio, net_cfg.segment, net_cfg.coeff_dim)
    gen = OnlineReactionGenerator(model, cfg, num_reactions=num_reactions, seed=seed, num_steps=num_steps)
    n = speaker.shape[0] // net_cfg.segment
    return np.concatenate([gen.step(speaker, audio) for _ in range(n)], axis=1).astype(np.float32)
