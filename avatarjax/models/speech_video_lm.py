"""Body of Her's speech-video LM: a Qwen2-style decoder over interleaved per-frame audio codes, continuous video
tokens and control signals, with a per-codebook softmax head for audio and a MAR diffusion head for video.

Inputs per frame ``i`` (one *block* of ``L = 5 + 2K`` tokens, always in this order; ``frame_layout(cfg)``)::

    slot  0            text prompt P_i        CLIP text features -> Linear       (learned empty token if absent)
    slot  1            motion trajectory r_i  per-joint velocities -> Linear     (learned empty token if absent)
    slot  2            identity s_i           learned embedding per agent id     (learned empty token if absent)
    slot  3            human audio            delayed step i of the human's codes: sum of 9 codebook embeddings
    slots 4 .. 3+K     human video            frame i-1's K continuous tokens -> Linear, + per-slot embedding
    slot  4+K          agent audio            delayed step i of the agent's codes (summed codebook embeddings)
    slots 5+K .. 4+2K  agent video            frame i-1's K continuous tokens -> Linear, + per-slot embedding

A video frame that is absent (modality missing, or frame i-1 outside the segment) enters as K learned empty
tokens of its stream. So block ``i`` holds the controls for frame ``i`` and both parties' behaviour up to frame
``i - 1``: ``p(A_i^a, V_i^a | A_<i^a, V_<i^a, A_<i^h, V_<i^h, P_i, r_i, s_i)`` as in the paper.

Heads (read from the final-normed decoder states of block ``i``):

- audio: the state of the block's last token (slot ``L - 1``, which has seen the whole block) -> ``[Q, V]``
  logits, one softmax per codebook, predicting delayed step ``i + 1``;
- video: the state at agent-video slot ``5 + K + k`` conditions the diffusion head that generates token ``k`` of
  the agent's frame ``i`` (all K tokens of a frame are sampled at once).

Delay pattern (MusicGen): codebook ``q`` is delayed by ``q`` steps after one leading special step, so step ``s``
holds ``z[s - 1 - q, q]`` (the special id ``V = codebook_size`` outside the codes). Block ``i`` reads step ``i``
and predicts step ``i + 1``: the head at frame ``i`` predicts codebook ``q``'s code of frame ``i - q``. Within a
training window of T frames, codebook ``q``'s last ``q`` frames are predicted by blocks past the window (in
streaming they are, after ``q`` more frames); targets that fall before the window are masked.

Packing: several dialogue windows share a row when ``segment_ids`` ``[B, T]`` (per frame, >0; 0 = padding) is
given; delay shifts, previous-frame video and positions restart at each segment and attention never crosses
segments (a block mask on top of the causal mask).

Duplex streaming (``stream_step``, ``DuplexSession``): one jitted step per frame appends the ``L`` tokens of block
``i`` to a preallocated KV cache (fixed shapes: it compiles once) and emits the agent's delayed audio step and
video frame ``i``; the human's codes arrive undelayed (frame ``i - 1``) and are delayed by a ring buffer of the
last Q frames, the agent's samples are fed back as the next step's input and reverted into complete frames
(frame ``i - (Q - 1)`` after step ``i``).

Diffusion head (MAR ``SimpleMLPAdaLN``): input Linear(D -> w); sinusoid(256, cos first) of the integer timestep ->
Linear -> SiLU -> Linear; condition Linear(dim -> w); ``y = t + c``; ``depth`` residual blocks of [LayerNorm,
``x (1 + scale) + shift``, Linear, SiLU, Linear, gated residual] whose adaLN (SiLU -> Linear(w -> 3w)) is
zero-initialised; final [LayerNorm without affine, adaLN modulate, Linear(w -> D)] zero-initialised. Trained with
eps-prediction on a 1000-step cosine schedule (``diffusion_loss``, ``diffusion_batch_mul`` copies per condition);
sampled by ancestral DDPM over respaced steps with a temperature on the per-step noise and each x0 prediction
clipped to ``head.x0_clip`` (``sample_video_tokens``; without it the first step from t = T - 1 amplifies eps
errors by 1 / sqrt(abar) ~ 2e4 and free-running streams feed back exploding tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.diffusion.samplers import ddim_timesteps, ddim_variance
from avatarjax.diffusion.schedules import DiscreteSchedule, abar_and_complement, make_discrete_schedule, q_sample
from avatarjax.errors import ConfigError, DataError
from avatarjax.models.decoder_lm import DecoderLM, DecoderLMConfig, KVCache, sample_logits
from avatarjax.nn.embeddings import Embed, sinusoidal
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import LayerNorm
from avatarjax.parallel.mesh import constrain

# ----------------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class DiffusionHeadConfig:
    """MAR diffusion head: ``width`` x ``depth`` adaLN residual MLP; schedule and sampler settings."""

    width: int = 64
    depth: int = 2
    time_dim: int = 256  # sinusoid size of the timestep embedding (MAR: 256)
    num_train_steps: int = 1000
    schedule: str = "cosine"
    sample_steps: int = 100  # respaced ancestral steps at inference
    temperature: float = 0.95  # scale of the per-step noise when sampling
    # Each step's x0 prediction is clipped to [-x0_clip, x0_clip] (0: off). The first respaced step starts at
    # t = T - 1 where sqrt(abar) = 5e-5 (cosine), so x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies any eps
    # error by 2e4: unclipped, a few-step sampler (or an untrained head, eps = 0) emits tokens of size ~1e4, and
    # fed back as the next frame's input they derail the stream. Video tokens are expected normalised to about
    # unit scale (the synthface stand-in tokens lie within [-3, 3]).
    x0_clip: float = 4.0


@dataclasses.dataclass(frozen=True)
class SpeechVideoLMConfig:
    # The backbone's own token embedding and LM head are unused here (inputs are embedded per modality): keep
    # ``vocab_size`` tiny and ``tie_embeddings`` on unless the table is wanted for a converted checkpoint.
    backbone: DecoderLMConfig = DecoderLMConfig(vocab_size=1, tie_embeddings=True)
    num_codebooks: int = 9  # Q (DAC: 9)
    codebook_size: int = 1024  # V; id V is the delay pattern's special (pad / BOS) token
    video_tokens: int = 4  # K continuous tokens per video frame
    video_dim: int = 16  # D per video token
    text_dim: int = 768  # CLIP ViT-L/14 text features
    motion_dim: int = 6  # joints x 3 velocities
    num_identities: int = 16  # learnable agent identities
    head: DiffusionHeadConfig = DiffusionHeadConfig()

    @property
    def tokens_per_frame(self) -> int:
        return 5 + 2 * self.video_tokens

    @property
    def special_code(self) -> int:
        return self.codebook_size

    @property
    def max_delay(self) -> int:
        return self.num_codebooks - 1


def frame_layout(cfg: SpeechVideoLMConfig) -> dict[str, slice]:
    """Slots of each input within a frame's block of ``cfg.tokens_per_frame`` tokens, in order."""
    k = cfg.video_tokens
    return {"text": slice(0, 1), "motion": slice(1, 2), "identity": slice(2, 3), "human_audio": slice(3, 4),
            "human_video": slice(4, 4 + k), "agent_audio": slice(4 + k, 5 + k),
            "agent_video": slice(5 + k, 5 + 2 * k)}


def check_config(cfg: SpeechVideoLMConfig) -> None:
    if cfg.num_codebooks < 1 or cfg.codebook_size < 2:
        raise ConfigError(f"num_codebooks={cfg.num_codebooks} and codebook_size={cfg.codebook_size} must be >= 1 "
                          "and >= 2")
    if cfg.video_tokens < 1 or cfg.video_dim < 1:
        raise ConfigError(f"video_tokens={cfg.video_tokens} and video_dim={cfg.video_dim} must be >= 1")
    if cfg.head.sample_steps < 1 or cfg.head.sample_steps > cfg.head.num_train_steps:
        raise ConfigError(f"head.sample_steps={cfg.head.sample_steps} must be in [1, head.num_train_steps="
                          f"{cfg.head.num_train_steps}]")


# ----------------------------------------------------------------------------------------------- delay pattern


def build_delay_pattern(codes: jax.Array, special: int) -> jax.Array:
    """codes ``[B, T, Q]`` -> delayed ``[B, T + Q, Q]`` (= T + max_delay + 1 steps): step ``s`` holds
    ``codes[s - 1 - q, q]`` for codebook ``q`` where ``0 <= s - 1 - q < T``, else ``special``."""
    b, t, q = codes.shape
    src = jnp.arange(t + q)[:, None] - 1 - jnp.arange(q)[None, :]  # [S, Q]
    valid = (src >= 0) & (src < t)
    gathered = jnp.take_along_axis(codes, jnp.broadcast_to(jnp.clip(src, 0, t - 1), (b, t + q, q)), axis=1)
    return jnp.where(valid, gathered, special).astype(codes.dtype)


def revert_delay_pattern(delayed: jax.Array) -> jax.Array:
    """delayed ``[B, S, Q]`` -> codes ``[B, S - Q, Q]``: ``out[t, q] = delayed[t + q + 1, q]``."""
    b, s, q = delayed.shape
    t = s - q
    if t < 0:
        raise ValueError(f"a delayed sequence of {s} steps holds no complete frame of {q} codebooks")
    idx = jnp.arange(t)[:, None] + 1 + jnp.arange(q)[None, :]
    return jnp.take_along_axis(delayed, jnp.broadcast_to(idx, (b, t, q)), axis=1)


def _shift_in_segment(x: jax.Array, segment_ids: jax.Array, shifts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``y[b, t, c] = x[b, t - shifts[c], c]`` and whether that frame exists in ``t``'s segment.

    x ``[B, T, C, ...]``, segment_ids ``[B, T]``, shifts int ``[C]`` -> (y like x, valid bool ``[B, T, C]``)."""
    b, t = segment_ids.shape
    src = jnp.arange(t)[:, None] - shifts[None, :]  # [T, C]
    clipped = jnp.clip(src, 0, t - 1)
    seg_src = jnp.take(segment_ids, clipped, axis=1)  # [B, T, C]
    valid = (src >= 0)[None] & (seg_src == segment_ids[:, :, None]) & (segment_ids[:, :, None] > 0)
    idx = jnp.broadcast_to(clipped.reshape((1, t, shifts.shape[0]) + (1,) * (x.ndim - 3)),
                           (b, t, shifts.shape[0]) + x.shape[3:])
    return jnp.take_along_axis(x, idx, axis=1), valid


def delayed_inputs_targets(codes: jax.Array, segment_ids: jax.Array | None,
                           special: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-frame audio inputs and targets of the delay pattern, restarted at each segment.

    codes ``[B, T, Q]`` (undelayed), segment_ids ``[B, T]`` (None: one segment) -> ``inputs`` ``[B, T, Q]``
    (delayed step ``i``: ``codes[i - 1 - q, q]`` or ``special``), ``targets`` ``[B, T, Q]`` (step ``i + 1``:
    ``codes[i - q, q]``) and ``target_mask`` bool ``[B, T, Q]`` (the target is a real code of the segment).
    For one segment, ``inputs = build_delay_pattern(codes)[:, :T]`` and ``targets = ...[:, 1:T + 1]``.
    """
    if segment_ids is None:
        segment_ids = jnp.ones(codes.shape[:2], jnp.int32)
    q = jnp.arange(codes.shape[-1])
    inputs, in_valid = _shift_in_segment(codes, segment_ids, q + 1)
    targets, target_mask = _shift_in_segment(codes, segment_ids, q)
    return (jnp.where(in_valid, inputs, special).astype(jnp.int32),
            jnp.where(target_mask, targets, special).astype(jnp.int32), target_mask)


def align_delayed_logits(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Head outputs per block ``[B, N, Q, V]`` -> per-frame ``[B, N, Q, V]`` and valid ``[N, Q]``: frame ``t``
    codebook ``q`` comes from block ``t + q`` (invalid, zeros, when ``t + q >= N``)."""
    b, n, q, v = logits.shape
    src = jnp.arange(n)[:, None] + jnp.arange(q)[None, :]
    valid = src < n
    idx = jnp.broadcast_to(jnp.clip(src, 0, n - 1)[None, :, :, None], (b, n, q, v))
    aligned = jnp.take_along_axis(logits, idx, axis=1)
    return jnp.where(valid[None, :, :, None], aligned, 0), valid


def segment_positions(segment_ids: jax.Array, tokens_per_frame: int) -> jax.Array:
    """RoPE positions ``[B, T * L]`` restarting at each segment: ``(t - start_of_segment(t)) * L + slot``."""
    b, t = segment_ids.shape
    frames = jnp.arange(t)
    change = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start = jax.lax.cummax(jnp.where(change, frames, 0), axis=1)
    frame_pos = (frames - start)[:, :, None] * tokens_per_frame + jnp.arange(tokens_per_frame)
    return frame_pos.reshape(b, t * tokens_per_frame)


# ----------------------------------------------------------------------------------------------- diffusion head


class AdaLNResBlock(nnx.Module):
    """``x + gate * MLP(LN(x) (1 + scale) + shift)`` with (shift, scale, gate) = Linear(SiLU(y)), zero-init."""

    def __init__(self, width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = LayerNorm(width, eps=1e-6, axis_name=None, param_dtype=param_dtype)
        self.fc1 = Dense(width, width, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(width, width, axes=("mlp", "embed"), **kw)
        self.modulation = Dense(width, 3 * width, axes=("embed", "mlp"), kernel_init=nnx.initializers.zeros, **kw)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        shift, scale, gate = jnp.split(self.modulation(jax.nn.silu(y)), 3, axis=-1)
        h = self.norm(x) * (1 + scale) + shift
        return x + gate * self.fc2(jax.nn.silu(self.fc1(h)))


class DiffusionHead(nnx.Module):
    """MAR ``SimpleMLPAdaLN``: eps prediction ``(x_t [N, D], t int [N], cond [N, C]) -> [N, D]``."""

    def __init__(self, cfg: DiffusionHeadConfig, token_dim: int, cond_dim: int, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        w = cfg.width
        self.time_dim = cfg.time_dim
        self.time_fc1 = Dense(cfg.time_dim, w, axes=(None, "embed"), **kw)
        self.time_fc2 = Dense(w, w, axes=("embed", "mlp"), **kw)
        self.cond_proj = Dense(cond_dim, w, axes=("embed", None), **kw)
        self.input_proj = Dense(token_dim, w, axes=(None, "embed"), **kw)
        self.blocks = nnx.List([AdaLNResBlock(w, **kw) for _ in range(cfg.depth)])
        self.final_norm = LayerNorm(w, eps=1e-6, use_scale=False, use_bias=False, axis_name=None)
        self.final_modulation = Dense(w, 2 * w, axes=("embed", "mlp"), kernel_init=nnx.initializers.zeros, **kw)
        self.out = Dense(w, token_dim, axes=("embed", None), kernel_init=nnx.initializers.zeros, **kw)

    def embed_condition(self, cond: jax.Array) -> jax.Array:
        """Decoder states ``[N, C]`` -> ``[N, w]`` (computed once per sampling loop)."""
        return self.cond_proj(cond)

    def denoise(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        """eps from noisy tokens ``[N, D]``, steps ``[N]`` and embedded conditions ``[N, w]``."""
        temb = sinusoidal(t, self.time_dim, flip_sin_to_cos=True).astype(c.dtype)
        y = self.time_fc2(jax.nn.silu(self.time_fc1(temb))) + c
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, y)
        shift, scale = jnp.split(self.final_modulation(jax.nn.silu(y)), 2, axis=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift).astype(jnp.float32)

    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        return self.denoise(x, t, self.embed_condition(cond))


def head_schedule(cfg: DiffusionHeadConfig) -> DiscreteSchedule:
    return make_discrete_schedule(cfg.schedule, cfg.num_train_steps)


def diffusion_loss(head: DiffusionHead, schedule: DiscreteSchedule, target: jax.Array, cond: jax.Array,
                   mask: jax.Array, key: jax.Array, batch_mul: int = 4) -> jax.Array:
    """Masked eps-prediction MSE (paper eq. 4's second term; MAR ``DiffLoss``).

    target ``[N, D]`` clean tokens, cond ``[N, C]`` decoder states, mask ``[N]``; each row is repeated
    ``batch_mul`` times with its own timestep (uniform over the schedule) and noise. Returns the mean over
    channels and valid rows (0 when none is valid)."""
    target = jnp.tile(target.astype(jnp.float32), (batch_mul, 1))
    c = jnp.tile(head.embed_condition(cond), (batch_mul, 1))
    mask = jnp.tile(mask.astype(jnp.float32), batch_mul)
    t_key, n_key = jax.random.split(key)
    t = jax.random.randint(t_key, (target.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(n_key, target.shape, jnp.float32)
    pred = head.denoise(q_sample(schedule, target, t, noise), t, c)
    per_row = jnp.mean(jnp.square(pred - noise), axis=-1)
    return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sample_video_tokens(head: DiffusionHead, schedule: DiscreteSchedule, cond: jax.Array, key: jax.Array, *,
                        token_dim: int, num_steps: int, temperature: float | jax.Array = 1.0,
                        x0_clip: float = 0.0) -> jax.Array:
    """Ancestral DDPM over ``ddim_timesteps(T, num_steps)`` (respaced) from the conditions ``[N, C]``; returns
    tokens ``[N, D]``. Each step is DDIM with eta = 1 (the respaced DDPM posterior) with the noise scaled by
    ``temperature`` (MAR); at temperature 1 it equals ``samplers.ddim_sample(eta=1, clip=x0_clip or None)`` with
    the same keys. With ``x0_clip`` > 0 each x0 prediction is clipped to ``[-x0_clip, x0_clip]`` and eps
    recomputed from it (so the last step, ``abar_prev = 1``, returns the clipped x0: the tokens stay bounded)."""
    n = cond.shape[0]
    noise_key, step_key = jax.random.split(key)
    c = head.embed_condition(cond)
    timesteps = ddim_timesteps(schedule.num_steps, num_steps)
    log_abar = schedule.log_alphas_cumprod[timesteps]
    log_prev = jnp.concatenate([log_abar[1:], jnp.zeros((1,), log_abar.dtype)])
    keys = jax.random.split(step_key, num_steps)

    def step(x, inputs):
        t, la, lp, k = inputs
        (a, one_minus), (a_prev, one_minus_prev) = abar_and_complement(la), abar_and_complement(lp)
        eps = head.denoise(x, jnp.full((n,), t), c)
        x0 = (x - jnp.sqrt(one_minus) * eps) / jnp.sqrt(a)
        if x0_clip > 0:
            x0 = jnp.clip(x0, -x0_clip, x0_clip)
            eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(one_minus)
        var = ddim_variance(la, lp, 1.0)
        x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(one_minus_prev - var, 0.0)) * eps
        return x + temperature * jnp.sqrt(var) * jax.random.normal(k, x.shape, x.dtype), None

    x, _ = jax.lax.scan(step, jax.random.normal(noise_key, (n, token_dim), jnp.float32),
                        (timesteps, log_abar, log_prev, keys))
    return x


# -------------------------------------------------------------------------------------------------------- model


class FrameInputs(NamedTuple):
    """What block ``i`` reads, per frame (already shifted: audio = delayed step i, video = frame i - 1).

    agent_audio, human_audio int ``[B, T, Q]`` (special id where no code); agent_video, human_video
    ``[B, T, K, D]`` with masks bool ``[B, T]``; text ``[B, T, Dt]``, motion ``[B, T, Dm]`` with masks ``[B, T]``;
    identity int ``[B, T]`` (< 0: absent)."""

    agent_audio: jax.Array
    human_audio: jax.Array
    agent_video: jax.Array
    agent_video_mask: jax.Array
    human_video: jax.Array
    human_video_mask: jax.Array
    text: jax.Array
    text_mask: jax.Array
    motion: jax.Array
    motion_mask: jax.Array
    identity: jax.Array


class SpeechVideoLM(nnx.Module):
    """Full-sequence forward: a batch dict (see ``model_inputs``) -> decoder states ``[B, T, L, dim]``; heads:
    ``audio_logits`` ``[B, T, Q, V]`` float32 and ``video_condition`` ``[B, T, K, dim]``."""

    def __init__(self, cfg: SpeechVideoLMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        check_config(cfg)
        self.cfg = cfg
        self.dtype = dtype
        d, q, v, k = cfg.backbone.dim, cfg.num_codebooks, cfg.codebook_size, cfg.video_tokens
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.backbone = DecoderLM(cfg.backbone, remat=remat, **kw)
        # one table per stream, codebook q's ids offset by q * (V + 1) (the + 1 is the special id)
        self.agent_audio_embed = Embed(q * (v + 1), d, **kw)
        self.human_audio_embed = Embed(q * (v + 1), d, **kw)
        self.video_proj = Dense(cfg.video_dim, d, axes=(None, "embed"), **kw)
        small = nnx.initializers.normal(0.02)
        self.video_slots = nnx.Param(small(rngs.params(), (2, k, d), param_dtype), out_sharding=(None, None, "embed"))
        self.empty_video = nnx.Param(small(rngs.params(), (2, k, d), param_dtype), out_sharding=(None, None, "embed"))
        self.text_proj = Dense(cfg.text_dim, d, axes=(None, "embed"), **kw)
        self.motion_proj = Dense(cfg.motion_dim, d, axes=(None, "embed"), **kw)
        self.identity_embed = Embed(cfg.num_identities, d, **kw)
        # empty tokens of text, motion, identity (rows 0, 1, 2)
        self.empty_controls = nnx.Param(small(rngs.params(), (3, d), param_dtype), out_sharding=(None, "embed"))
        self.audio_head = Dense(d, (q, v), axes=("embed", "codebooks", "vocab"), use_bias=False, **kw)
        self.video_head = DiffusionHead(cfg.head, cfg.video_dim, d, **kw)

    # ---- inputs

    def _audio(self, table: Embed, codes: jax.Array) -> jax.Array:
        """codes ``[..., Q]`` (0..V, V = special) -> summed codebook embeddings ``[..., dim]``."""
        offsets = jnp.arange(self.cfg.num_codebooks) * (self.cfg.codebook_size + 1)
        return jnp.sum(table(codes + offsets).astype(jnp.float32), axis=-2)

    def _video(self, video: jax.Array, mask: jax.Array, stream: int) -> jax.Array:
        """``[B, T, K, D]`` -> ``[B, T, K, dim]``: projection + slot embedding, or the stream's empty tokens."""
        x = self.video_proj(video).astype(jnp.float32) + self.video_slots[stream]
        return jnp.where(mask[..., None, None], x, self.empty_video[stream])

    def embed_frames(self, f: FrameInputs) -> jax.Array:
        """Per-frame inputs -> block embeddings ``[B, T, L, dim]`` in ``frame_layout`` order."""
        empty = self.empty_controls[...]

        def control(x, mask, row):
            return jnp.where(mask[..., None], x.astype(jnp.float32), empty[row])[:, :, None]

        ident = self.identity_embed(jnp.maximum(f.identity, 0))
        tokens = [control(self.text_proj(f.text), f.text_mask, 0),
                  control(self.motion_proj(f.motion), f.motion_mask, 1),
                  control(ident, f.identity >= 0, 2),
                  self._audio(self.human_audio_embed, f.human_audio)[:, :, None],
                  self._video(f.human_video, f.human_video_mask, 1),
                  self._audio(self.agent_audio_embed, f.agent_audio)[:, :, None],
                  self._video(f.agent_video, f.agent_video_mask, 0)]
        return jnp.concatenate(tokens, axis=2).astype(self.dtype)

    def model_inputs(self, batch: dict[str, jax.Array]) -> tuple[FrameInputs, dict[str, jax.Array]]:
        """A training batch of per-frame data -> (block inputs, targets).

        batch: ``agent_codes``, ``human_codes`` int ``[B, T, Q]``; ``agent_video``, ``human_video`` ``[B, T, K, D]``
        with ``agent_video_mask``, ``human_video_mask`` ``[B, T]``; ``text`` ``[B, T, Dt]``, ``text_mask``;
        ``motion`` ``[B, T, Dm]``, ``motion_mask``; ``identity`` int ``[B, T]`` (< 0 absent); optional
        ``segment_ids`` int ``[B, T]`` (packing; 0 = padding). Targets: ``audio`` ``[B, T, Q]`` with
        ``audio_mask``, ``video`` ``[B, T, K, D]`` with ``video_mask`` ``[B, T]``.
        """
        seg = batch.get("segment_ids")
        seg = jnp.ones(batch["agent_codes"].shape[:2], jnp.int32) if seg is None else seg.astype(jnp.int32)
        special = self.cfg.special_code
        agent_in, audio_target, audio_mask = delayed_inputs_targets(batch["agent_codes"], seg, special)
        human_in, _, _ = delayed_inputs_targets(batch["human_codes"], seg, special)

        def previous(video, mask):
            prev, ok = _shift_in_segment(video[:, :, None], seg, jnp.ones((1,), jnp.int32))
            prev_mask, _ = _shift_in_segment(mask[:, :, None], seg, jnp.ones((1,), jnp.int32))
            return prev[:, :, 0], ok[:, :, 0] & prev_mask[:, :, 0].astype(bool)

        agent_video, agent_mask = previous(batch["agent_video"], batch["agent_video_mask"])
        human_video, human_mask = previous(batch["human_video"], batch["human_video_mask"])
        real = seg > 0
        inputs = FrameInputs(agent_in, human_in, agent_video, agent_mask, human_video, human_mask,
                             batch["text"], batch["text_mask"].astype(bool) & real, batch["motion"],
                             batch["motion_mask"].astype(bool) & real,
                             jnp.where(real, batch["identity"], -1).astype(jnp.int32))
        targets = {"audio": audio_target, "audio_mask": audio_mask, "video": batch["agent_video"],
                   "video_mask": batch["agent_video_mask"].astype(bool) & real, "segment_ids": seg}
        return inputs, targets

    # ---- backbone and heads

    def hidden_states(self, inputs: FrameInputs, segment_ids: jax.Array | None = None) -> jax.Array:
        """Block inputs -> final-normed decoder states ``[B, T, L, dim]`` (segments isolated when given)."""
        x = self.embed_frames(inputs)
        b, t, L, d = x.shape
        if segment_ids is None:
            positions = jnp.broadcast_to(jnp.arange(t * L), (b, t * L))
            mask = None
        else:
            positions = segment_positions(segment_ids, L)
            tok_seg = jnp.repeat(segment_ids, L, axis=1)
            mask = (tok_seg[:, :, None] == tok_seg[:, None, :])[:, None]
        h = self.backbone.hidden_states_from_embeddings(x.reshape(b, t * L, d), positions, mask)
        return h.reshape(b, t, L, d)

    def audio_logits(self, h: jax.Array) -> jax.Array:
        """States ``[..., L, dim]`` -> float32 logits ``[..., Q, V]`` from each block's last token."""
        logits = self.audio_head(h[..., -1, :]).astype(jnp.float32)
        return constrain(logits, ("batch", "length", None, "act_vocab")) if logits.ndim == 4 else logits

    def video_condition(self, h: jax.Array) -> jax.Array:
        """States ``[..., L, dim]`` -> the diffusion head's conditions ``[..., K, dim]`` (agent-video slots)."""
        return h[..., frame_layout(self.cfg)["agent_video"], :]

    def __call__(self, batch: dict[str, jax.Array], context_noise: float = 0.0,
                 key: jax.Array | None = None) -> dict[str, jax.Array]:
        """``context_noise`` (training only, with ``key``): Gaussian noise of that std added to the agent's
        previous-frame video tokens it reads (not to the targets), so the next frame cannot be copied from the
        last one and the controls (motion trajectory) carry a loss signal; it also trains the model on the
        imperfect frames it feeds itself when streaming."""
        inputs, targets = self.model_inputs(batch)
        if context_noise > 0:
            if key is None:
                raise ConfigError("context_noise needs a random key")
            noise = jax.random.normal(key, inputs.agent_video.shape, jnp.float32) * context_noise
            inputs = inputs._replace(agent_video=(inputs.agent_video + noise).astype(inputs.agent_video.dtype))
        seg = batch.get("segment_ids")
        h = self.hidden_states(inputs, None if seg is None else targets["segment_ids"])
        return {"hidden": h, "audio_logits": self.audio_logits(h), "video_condition": self.video_condition(h),
                **{f"target_{k}": v for k, v in targets.items()}}


def load_backbone(model: SpeechVideoLM, lm: DecoderLM) -> None:
    """Copy a (converted Qwen2) ``DecoderLM``'s layers and final norm into ``model``'s backbone in place; its
    token embedding and LM head are not used by the speech-video LM."""
    ours, theirs = model.cfg.backbone, lm.cfg
    fields = ("dim", "num_layers", "num_heads", "num_kv_heads", "resolved_head_dim", "mlp_dim", "qkv_bias",
              "qk_norm", "out_bias")
    diff = [f for f in fields if getattr(ours, f) != getattr(theirs, f)]
    if diff:
        raise ConfigError(f"the backbone config differs from the pretrained LM in {diff}: set model.net.backbone "
                          "to the checkpoint's dimensions (e.g. the qwen2 converter's config)")
    nnx.update(model.backbone.layers, nnx.state(lm.layers))
    nnx.update(model.backbone.final_norm, nnx.state(lm.final_norm))


# ------------------------------------------------------------------------------------------------------ losses


def nll_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked mean cross-entropy of ``[B, T, Q, V]`` logits against ``[B, T, Q]`` targets, and per-codebook
    accuracy (``accuracy`` overall, ``accuracy_q0`` for the first codebook)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    safe = jnp.where(mask, targets, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    m = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(m), 1.0)
    hit = (jnp.argmax(logits, -1) == safe).astype(jnp.float32) * m
    q0 = jnp.maximum(jnp.sum(m[..., 0]), 1.0)
    return jnp.sum(nll * m) / count, {"accuracy": jnp.sum(hit) / count, "accuracy_q0": jnp.sum(hit[..., 0]) / q0}


def speech_video_loss(model: SpeechVideoLM, batch: dict[str, jax.Array], key: jax.Array, *, stage: int,
                      diffusion_weight: float = 1.0, batch_mul: int = 4,
                      context_noise: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage 1: audio NLL (paper eq. 3; video inputs replaced by empty tokens). Stage 2: NLL + ``diffusion_weight``
    x the diffusion loss on the agent's video tokens (eq. 4). Missing modalities are masked via the batch.
    ``context_noise``: see ``SpeechVideoLM.__call__`` (0 = the paper's plain teacher forcing)."""
    if stage not in (1, 2):
        raise ConfigError(f"loss stage must be 1 (audio only) or 2 (audio + video), got {stage}")
    if stage == 1:
        batch = {**batch, "agent_video_mask": jnp.zeros_like(batch["agent_video_mask"]),
                 "human_video_mask": jnp.zeros_like(batch["human_video_mask"])}
    if stage == 2 and context_noise > 0:
        key, noise_key = jax.random.split(key)
        out = model(batch, context_noise, noise_key)
    else:
        out = model(batch)
    nll, metrics = nll_loss(out["audio_logits"], out["target_audio"], out["target_audio_mask"])
    metrics = {"nll": nll, **metrics}
    total = nll
    if stage == 2:
        cfg = model.cfg
        cond = out["video_condition"]
        mask = jnp.broadcast_to(out["target_video_mask"][..., None], cond.shape[:3])
        diff = diffusion_loss(model.video_head, head_schedule(cfg.head), out["target_video"].reshape(-1, cfg.video_dim),
                              cond.reshape(-1, cond.shape[-1]), mask.reshape(-1), key, batch_mul)
        metrics["diffusion"] = diff
        metrics["video_frames"] = jnp.sum(out["target_video_mask"].astype(jnp.float32))
        total = nll + diffusion_weight * diff
    return total, metrics


# ------------------------------------------------------------------------------------------------------- FLOPs


def _head_flops(head: DiffusionHeadConfig, token_dim: int, cond_dim: int) -> tuple[float, float]:
    """(condition embedding, one denoiser evaluation) forward FLOPs per video token."""
    w = head.width
    per_eval = 2 * (head.time_dim * w + w * w + token_dim * w + head.depth * (3 * w * w + 2 * w * w)
                    + 2 * w * w + w * token_dim)
    return float(2 * cond_dim * w), float(per_eval)


def flops_per_frame(cfg: SpeechVideoLMConfig, context_frames: int, *, training: bool = True,
                    batch_mul: int = 4, sample_steps: int | None = None) -> float:
    """Analytic forward FLOPs (2 per multiply-add) of one frame's block attending to ``context_frames`` frames
    (itself included) of keys: backbone matmuls and attention, input projections, audio head and the diffusion
    head (training: ``batch_mul`` noisy copies; inference: ``sample_steps`` evaluations, default
    ``cfg.head.sample_steps``)."""
    b, L, k = cfg.backbone, cfg.tokens_per_frame, cfg.video_tokens
    hd = b.resolved_head_dim
    per_token_layer = 2 * (b.dim * hd * (b.num_heads + 2 * b.num_kv_heads) + b.num_heads * hd * b.dim
                           + 3 * b.dim * b.mlp_dim)
    keys = context_frames * L
    attention = 2 * 2 * b.num_heads * hd * L * keys
    backbone = b.num_layers * (per_token_layer * L + attention)
    inputs = 2 * b.dim * (2 * k * cfg.video_dim + cfg.text_dim + cfg.motion_dim)
    audio_head = 2 * b.dim * cfg.num_codebooks * cfg.codebook_size
    cond, per_eval = _head_flops(cfg.head, cfg.video_dim, b.dim)
    evals = batch_mul if training else (sample_steps or cfg.head.sample_steps)
    return float(backbone + inputs + audio_head + k * (cond + evals * per_eval))


def flops_per_window(cfg: SpeechVideoLMConfig, frames: int, batch_mul: int = 4) -> float:
    """Training forward FLOPs of a causal window of ``frames`` frames (causal attention: on average half the
    window's keys, as ``decoder_lm_flops_per_sequence``)."""
    base = flops_per_frame(cfg, 0, batch_mul=batch_mul)
    attn_per_key_frame = flops_per_frame(cfg, 1, batch_mul=batch_mul) - base
    return float(frames * base + attn_per_key_frame * frames * frames / 2)


def param_count(cfg: SpeechVideoLMConfig) -> int:
    """Parameters of the model (without building it)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: SpeechVideoLM(cfg, rngs=nnx.Rngs(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


# --------------------------------------------------------------------------------------------------- streaming


@flax.struct.dataclass
class StreamState:
    """Everything a duplex stream carries between frames (fixed shapes).

    cache: the KV cache (``max_frames * L`` slots); frame int32 ``[]``: the next frame's index ``i``;
    human_history int32 ``[B, Q, Q]``: row ``j`` = the human's codes of frame ``i - 1 - j`` (after the push);
    agent_next int32 ``[B, Q]``: the agent's delayed step ``i`` (sampled at step ``i - 1``);
    agent_history int32 ``[B, Q, Q]``: row ``j`` = the delayed step sampled ``j`` steps ago;
    agent_video ``[B, K, D]``: the agent's video frame ``i - 1``."""

    cache: KVCache
    frame: jax.Array
    human_history: jax.Array
    agent_next: jax.Array
    agent_history: jax.Array
    agent_video: jax.Array


@flax.struct.dataclass
class StreamControls:
    """Per-stream conditions (may change between frames; fixed shapes): text ``[B, Dt]`` + text_mask ``[B]``,
    motion ``[B, Dm]`` + motion_mask ``[B]``, identity int ``[B]`` (< 0 absent), whether the human's and the
    agent's video are used (``human_video_mask``, ``agent_video_mask`` ``[B]``)."""

    text: jax.Array
    text_mask: jax.Array
    motion: jax.Array
    motion_mask: jax.Array
    identity: jax.Array
    human_video_mask: jax.Array
    agent_video_mask: jax.Array

    @classmethod
    def empty(cls, cfg: SpeechVideoLMConfig, batch: int, *, video: bool = True) -> StreamControls:
        """No text, motion or identity; both video streams on (``video``) or off."""
        f = jnp.zeros((batch,), bool)
        return cls(jnp.zeros((batch, cfg.text_dim)), f, jnp.zeros((batch, cfg.motion_dim)), f,
                   jnp.full((batch,), -1, jnp.int32), f | video, f | video)


class StreamOutput(NamedTuple):
    codes: jax.Array  # [B, Q] the agent's complete frame i - max_delay (reverted from the delay pattern)
    codes_valid: jax.Array  # [] bool: i >= max_delay
    delayed_codes: jax.Array  # [B, Q] this step's sample: codebook q of frame i - q
    video: jax.Array  # [B, K, D] the agent's video frame i
    audio_logits: jax.Array  # [B, Q, V] float32
    hidden: jax.Array  # [B, L, dim] decoder states of block i


def init_stream(cfg: SpeechVideoLMConfig, batch: int, max_frames: int, dtype=jnp.float32) -> StreamState:
    """A fresh stream with a cache for ``max_frames`` frames (``max_frames * L`` slots)."""
    q = cfg.num_codebooks
    special = jnp.full((batch, q), cfg.special_code, jnp.int32)
    state = StreamState(cache=KVCache.init(cfg.backbone, batch, max_frames * cfg.tokens_per_frame, dtype),
                       frame=jnp.int32(0), human_history=jnp.full((batch, q, q), cfg.special_code, jnp.int32),
                       agent_next=special, agent_history=jnp.full((batch, q, q), cfg.special_code, jnp.int32),
                       agent_video=jnp.zeros((batch, cfg.video_tokens, cfg.video_dim), jnp.float32))
    # one buffer per leaf (KVCache.init shares one zeros array between index and positions): the state is donated
    return jax.tree.map(jnp.copy, state)


def stream_step(model: SpeechVideoLM, state: StreamState, controls: StreamControls, human_codes_prev: jax.Array,
                human_video_prev: jax.Array, key: jax.Array, *, temperature: float | jax.Array = 1.0, top_k: int = 0,
                greedy: bool = False, video_steps: int | None = None,
                video_temperature: float | jax.Array | None = None, force_agent_audio: jax.Array | None = None,
                force_agent_video: jax.Array | None = None) -> tuple[StreamOutput, StreamState]:
    """One duplex frame: read the human's frame ``i - 1`` (codes ``[B, Q]`` undelayed, video ``[B, K, D]``; both
    ignored at ``i = 0``), append block ``i`` to the cache and sample the agent's delayed audio step and video
    frame ``i``.

    Teacher forcing (tests, scoring): ``force_agent_audio`` ``[B, Q]`` replaces the agent's delayed input step
    ``i`` and ``force_agent_video`` ``[B, K, D]`` its video frame ``i - 1``."""
    cfg = model.cfg
    q, special = cfg.num_codebooks, cfg.special_code
    i = state.frame
    b = human_codes_prev.shape[0]
    # human: push frame i-1, then delayed step i reads codebook q from frame i-1-q
    history = jnp.concatenate([human_codes_prev[:, None].astype(jnp.int32), state.human_history[:, :-1]], axis=1)
    history = jnp.where(i > 0, history, state.human_history)
    qs = jnp.arange(q)
    human_in = jnp.where(i - 1 - qs >= 0, history[:, qs, qs], special)
    agent_in = state.agent_next if force_agent_audio is None else force_agent_audio.astype(jnp.int32)
    agent_in = jnp.where(i - 1 - qs >= 0, agent_in, special)
    agent_video = state.agent_video if force_agent_video is None else force_agent_video
    first = i == 0
    f = FrameInputs(agent_in[:, None], human_in[:, None], agent_video[:, None].astype(jnp.float32),
                    (controls.agent_video_mask & ~first)[:, None], human_video_prev[:, None].astype(jnp.float32),
                    (controls.human_video_mask & ~first)[:, None], controls.text[:, None],
                    controls.text_mask[:, None], controls.motion[:, None], controls.motion_mask[:, None],
                    controls.identity[:, None])
    x = model.embed_frames(f)[:, 0]  # [B, L, dim]
    h, cache = model.backbone.extend_embeddings(x, state.cache)
    logits = model.audio_logits(h)  # [B, Q, V]
    audio_key, video_key = jax.random.split(key)
    delayed = sample_logits(logits.reshape(b * q, -1), None if greedy else audio_key, temperature,
                            top_k).reshape(b, q)
    cond = model.video_condition(h)  # [B, K, dim]
    temp = cfg.head.temperature if video_temperature is None else video_temperature
    video = sample_video_tokens(model.video_head, head_schedule(cfg.head), cond.reshape(-1, cond.shape[-1]),
                                video_key, token_dim=cfg.video_dim, num_steps=video_steps or cfg.head.sample_steps,
                                temperature=temp, x0_clip=cfg.head.x0_clip).reshape(b, cfg.video_tokens,
                                                                                    cfg.video_dim)
    # delayed step i+1 holds codebook q of frame i-q: special where that frame does not exist yet
    delayed = jnp.where(i - qs >= 0, delayed, special)
    agent_history = jnp.concatenate([delayed[:, None], state.agent_history[:, :-1]], axis=1)
    codes = agent_history[:, q - 1 - qs, qs]  # frame i-(Q-1): codebook q sampled Q-1-q steps ago
    out = StreamOutput(codes=codes, codes_valid=i >= q - 1, delayed_codes=delayed, video=video,
                       audio_logits=logits, hidden=h)
    new = StreamState(cache=cache, frame=i + 1, human_history=history, agent_next=delayed,
                      agent_history=agent_history, agent_video=video)
    return out, new


class DuplexSession:
    """A live duplex stream around one jitted ``stream_step`` (compiled once for the session's shapes).

    ``step(human_codes_prev, human_video_prev)`` consumes the human's frame ``i - 1`` and returns the agent's
    ``StreamOutput`` for frame ``i`` (numpy); ``stream(frames)`` is the generator form over an iterable of
    ``(codes [B, Q], video [B, K, D])``. ``set_controls`` changes the prompt / trajectory / identity between
    frames (e.g. from an asynchronous planner) without recompiling. A session holds ``max_frames`` frames."""

    def __init__(self, model: SpeechVideoLM, *, batch: int = 1, max_frames: int = 256, seed: int = 0,
                 temperature: float = 1.0, top_k: int = 0, greedy: bool = False, video_steps: int | None = None,
                 video_temperature: float | None = None, controls: StreamControls | None = None,
                 cache_dtype=None):
        self.cfg = model.cfg
        self.batch, self.max_frames = batch, max_frames
        self.graphdef, self.params = nnx.split(model)
        self.controls = controls or StreamControls.empty(self.cfg, batch)
        self.cache_dtype = cache_dtype or model.dtype
        self.traces = 0
        self.reset(seed)
        sampling = dict(top_k=top_k, greedy=greedy, video_steps=video_steps)

        def step(params, state, controls, codes, video, key, temperature, video_temperature):
            self.traces += 1  # runs only while tracing: counts compilations
            return stream_step(nnx.merge(self.graphdef, params), state, controls, codes, video, key,
                               temperature=temperature, video_temperature=video_temperature, **sampling)

        self._step = jax.jit(step, donate_argnums=(1,))
        self._temperature = jnp.float32(temperature)
        self._video_temperature = jnp.float32(self.cfg.head.temperature if video_temperature is None
                                              else video_temperature)

    def reset(self, seed: int = 0) -> None:
        """Start a new dialogue: an empty KV cache and frame 0 (no recompilation)."""
        # committed to a device like the step's outputs, else the second frame would compile the step again
        self.state = jax.device_put(init_stream(self.cfg, self.batch, self.max_frames, self.cache_dtype),
                                    jax.devices()[0])
        self.key = jax.random.key(seed)
        self.frames = 0

    def set_controls(self, **changes: Any) -> None:
        """Replace fields of the ``StreamControls`` (same shapes), e.g. ``text=..., text_mask=...``."""
        self.controls = self.controls.replace(**{k: jnp.asarray(v) for k, v in changes.items()})

    def step(self, human_codes_prev, human_video_prev) -> StreamOutput:
        if self.frames >= self.max_frames:
            raise DataError(f"the duplex session is full ({self.max_frames} frames): start a new session with a "
                            "larger max_frames")
        codes = jnp.asarray(human_codes_prev, jnp.int32).reshape(self.batch, self.cfg.num_codebooks)
        video = jnp.asarray(human_video_prev, jnp.float32).reshape(self.batch, self.cfg.video_tokens,
                                                                   self.cfg.video_dim)
        self.key, sub = jax.random.split(self.key)
        out, self.state = self._step(self.params, self.state, self.controls, codes, video, sub, self._temperature,
                                     self._video_temperature)
        self.frames += 1
        return jax.tree.map(np.asarray, out)

    def stream(self, frames: Iterable[tuple[Any, Any]]) -> Iterator[StreamOutput]:
        for codes, video in frames:
            yield self.step(codes, video)

