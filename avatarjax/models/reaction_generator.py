"""Online multiple-appropriate facial reaction generator (MAFRG): a conditioned Conformer diffusion denoiser over
one listener segment of REACT coefficients (58 = 52 expression + 3 rotation + 3 translation).

Online windowing (PFLPosNet section 3/4, the REACT online protocol): the listener's reaction is produced segment by
segment; segment ``n`` covers frames ``[n S, (n + 1) S)`` (``S = segment``) and sees only

- the speaker's coefficients and audio over the ``context`` frames ``[(n + 1) S - C, (n + 1) S)`` (zero-padded and
  masked before frame 0), encoded by a small Conformer (``SpeakerEncoder``) from per-frame coefficients plus the
  two 20 ms log-mel frames of each 40 ms video frame;
- the listener's previous segment ``[(n - 1) S, n S)`` (the frames already generated; zeros, masked out, with
  ``has_previous = 0`` for the first segment).

Denoiser: the previous segment (``S`` tokens) and the noisy current segment (``S`` tokens) form one sequence of
``2 S`` tokens, so self-attention and the depthwise convolution see across the segment boundary (continuity).
Every token carries the sinusoid of its absolute frame index inside the context window, as do the speaker
encoder's frames, so cross-attention can align a listener frame with the speaker frames around it. Layer order:
add Linear(time + has_previous embedding); FFN/2; MHSA; cross-attention to the speaker context; conv module;
FFN/2; LayerNorm. The output head reads the last ``S`` tokens and predicts x0 (standardised coefficients).

The module also holds the coefficient standardisation statistics (non-trainable ``CoefficientStats``
variables, saved in checkpoints and exports) so that a trained model is self-contained.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.nn.attention import Attention
from avatarjax.nn.conditioning import TimestepEmbedding
from avatarjax.nn.conformer import (ACT, Conformer, ConformerConfig, ConvModule, FeedForward, SelfAttentionBlock,
                                    dropout, make_layers, run_layers, split_key)
from avatarjax.nn.embeddings import sinusoidal
from avatarjax.nn.linear import Dense
from avatarjax.nn.melspec import MelConfig, log_mel
from avatarjax.nn.norms import LayerNorm
from avatarjax.parallel.mesh import constrain

COEFF_DIM = 58
SAMPLES_PER_FRAME = 640  # 16 kHz audio per 25 fps frame
MELS_PER_FRAME = 2  # log-mel hop 320 = 20 ms
MEL_SHIFT, MEL_SCALE = 4.5, 2.5  # log-mel (floor log 1e-5 = -11.5) -> roughly zero mean, unit spread
STAT_NAMES = ("speaker_mean", "speaker_std", "listener_mean", "listener_std")


@dataclasses.dataclass(frozen=True)
class ReactionGeneratorConfig:
    """Shapes: a listener segment is ``[segment, coeff_dim]``; the speaker context ``[context, coeff_dim]`` with
    audio ``[context * 640]`` (16 kHz), i.e. log-mel ``[2 context, n_mels]`` regrouped to ``[context, 2 n_mels]``."""

    coeff_dim: int = COEFF_DIM
    segment: int = 25  # S: frames generated per online step (1 s at 25 fps)
    context: int = 50  # C: speaker frames seen, ending at the end of the current segment
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 256
    kernel_size: int = 7
    dropout: float = 0.0
    conv_norm: str = "group"  # group: independent of batch composition (K reactions sampled together)
    scan_layers: bool = True
    n_mels: int = 80
    speaker_encoder: ConformerConfig = ConformerConfig(dim=128, num_layers=2, num_heads=4, ffn_dim=256,
                                                       kernel_size=7, dropout=0.0, conv_norm="group")


class CoefficientStats(nnx.Variable):
    """Non-trainable standardisation statistics (kept in checkpoints and exports, never optimised)."""


# ------------------------------------------------------------------------------------------------ host helpers
def crop_context(speaker: np.ndarray, audio: np.ndarray, end: int, context: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The speaker context of a segment ending (exclusive) at frame ``end``: frames ``[end - context, end)``.

    speaker ``[T, D]``, audio ``[>= T * 640]`` -> (speaker ``[context, D]``, audio ``[context * 640]``, mask bool
    ``[context]``); frames before 0 are zeros with mask False. Only frames ``< end`` are read (online causality).
    """
    start = end - context
    lo = max(start, 0)
    pad = lo - start
    spk = np.zeros((context, speaker.shape[1]), np.float32)
    spk[pad:] = speaker[lo:end]
    wav = np.zeros(context * SAMPLES_PER_FRAME, np.float32)
    wav[pad * SAMPLES_PER_FRAME:] = audio[lo * SAMPLES_PER_FRAME:end * SAMPLES_PER_FRAME]
    mask = np.arange(context) >= pad
    return spk, wav, mask


def audio_features(audio: jax.Array, n_mels: int) -> jax.Array:
    """16 kHz audio ``[b, C * 640]`` -> normalised log-mel regrouped per video frame ``[b, C, 2 n_mels]``. Each
    mel frame's window lies inside its crop, so no sample at or after the crop's end is read."""
    mel = (log_mel(audio, MelConfig(n_mels=n_mels)) + MEL_SHIFT) / MEL_SCALE
    b, frames, _ = mel.shape
    return mel.reshape(b, frames // MELS_PER_FRAME, MELS_PER_FRAME * n_mels)


# ------------------------------------------------------------------------------------------------ modules
class SpeakerEncoder(nnx.Module):
    """Speaker coefficients ``[b, C, D]`` + audio ``[b, C * 640]`` + mask ``[b, C]`` -> ``[b, C, dim]``:
    Linear(coeffs) + Linear(log-mel pairs) -> Conformer (sinusoidal positions 0..C-1) -> Linear to ``dim``."""

    def __init__(self, cfg: ReactionGeneratorConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        enc = cfg.speaker_encoder
        self.n_mels = cfg.n_mels
        self.coeffs = Dense(cfg.coeff_dim, enc.dim, axes=("latent", "embed"), **kw)
        self.audio = Dense(MELS_PER_FRAME * cfg.n_mels, enc.dim, axes=("latent", "embed"), **kw)
        self.conformer = Conformer(enc, enc.dim, remat=remat, **kw)
        self.out = Dense(enc.dim, cfg.dim, axes=("mlp", "embed"), **kw)

    def __call__(self, speaker: jax.Array, audio: jax.Array, mask: jax.Array, key: jax.Array | None,
                 train: bool) -> jax.Array:
        h = self.coeffs(speaker) + self.audio(audio_features(audio, self.n_mels).astype(speaker.dtype))
        h = jnp.where(mask[..., None], h, 0)
        h = self.conformer(h, mask, key, train)
        return constrain(self.out(h), ACT)


class CrossAttentionBlock(nnx.Module):
    """Pre-LN cross-attention to the speaker context (residual added by the caller):
    x ``[b, L, dim]``, context ``[b, C, dim]``, context_mask ``[b, C]`` -> ``[b, L, dim]``."""

    def __init__(self, dim: int, num_heads: int, *, rate: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, param_dtype=param_dtype)
        self.attn = Attention(dim, num_heads, qkv_bias=True, out_bias=True, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
        self.rate = rate

    def __call__(self, x, context, context_mask, key):
        return dropout(self.attn(self.norm(x), context, mask=context_mask[:, None, None, :]), self.rate, key)


class ReactionLayer(nnx.Module):
    """One denoising block ``[b, 2S, dim]`` -> same (order in the module docstring)."""

    def __init__(self, cfg: ReactionGeneratorConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.time = Dense(cfg.dim, cfg.dim, axes=("mlp", "embed"), **kw)
        self.ffn1 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.attn = SelfAttentionBlock(cfg.dim, cfg.num_heads, rate=cfg.dropout, **kw)
        self.cross = CrossAttentionBlock(cfg.dim, cfg.num_heads, rate=cfg.dropout, **kw)
        self.conv = ConvModule(cfg.dim, cfg.kernel_size, rate=cfg.dropout, norm=cfg.conv_norm, **kw)
        self.ffn2 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.norm = LayerNorm(cfg.dim, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, c: dict, key: jax.Array | None, train: bool) -> jax.Array:
        k = split_key(key, 5)
        mask = c["mask"]
        x = x + self.time(c["time"])[:, None]
        x = x + 0.5 * self.ffn1(x, k[0])
        x = x + self.attn(x, mask, k[1])
        x = x + self.cross(x, c["speaker"], c["speaker_mask"], k[2])
        x = x + self.conv(x, mask, k[3], train)
        x = x + 0.5 * self.ffn2(x, k[4])
        return constrain(self.norm(x), ACT)


class ReactionGenerator(nnx.Module):
    """The denoiser. ``__call__(x_t, t, cond, key=None, train=False)`` -> x0 ``[b, S, D]`` (standardised).

    ``cond``: ``speaker`` ``[b, C, D]`` (standardised speaker coefficients), ``audio`` ``[b, C * 640]``,
    ``speaker_mask`` bool ``[b, C]``, ``previous`` ``[b, S, D]`` (standardised listener frames of the previous
    segment), ``has_previous`` ``[b]`` (1 / 0). ``x_t`` ``[b, S, D]``, ``t`` int ``[b]``.

    ``stats``: optional ``{name: [D]}`` for :data:`STAT_NAMES` (default: mean 0, std 1).
    """

    def __init__(self, cfg: ReactionGeneratorConfig, *, stats: dict[str, np.ndarray] | None = None,
                 remat: str = "none", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cfg, self.remat = cfg, remat
        for name in STAT_NAMES:
            default = np.ones if name.endswith("std") else np.zeros
            value = np.asarray(default(cfg.coeff_dim) if stats is None else stats[name], np.float32)
            if value.shape != (cfg.coeff_dim,):
                raise ValueError(f"stats['{name}'] must have shape ({cfg.coeff_dim},), got {value.shape}")
            setattr(self, name, CoefficientStats(jnp.asarray(value), out_sharding=("latent",)))
        self.speaker_encoder = SpeakerEncoder(cfg, remat=remat, **kw)
        self.input = Dense(cfg.coeff_dim, cfg.dim, axes=("latent", "embed"), **kw)
        self.previous = Dense(cfg.coeff_dim, cfg.dim, axes=("latent", "embed"), **kw)
        self.time_embed = TimestepEmbedding(cfg.dim, **kw)
        self.flag = Dense(1, cfg.dim, axes=(None, "embed"), **kw)
        self.layers = make_layers(lambda r: ReactionLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                  cfg.num_layers, cfg.scan_layers, rngs)
        self.output = Dense(cfg.dim, cfg.coeff_dim, axes=("embed", "latent"), **kw)

    def stats(self) -> dict[str, jax.Array]:
        """The standardisation statistics ``{name: [D]}``."""
        return {name: getattr(self, name)[...] for name in STAT_NAMES}

    def encode_conditions(self, cond: dict, key: jax.Array | None = None, train: bool = False) -> dict:
        """What does not depend on ``x_t``/``t`` (computed once per sampled segment): ``speaker`` ``[b, C, dim]``,
        ``speaker_mask`` ``[b, C]``, ``previous`` ``[b, S, dim]``, ``mask`` ``[b, 2S]`` (previous tokens valid
        only with ``has_previous``), ``flag`` ``[b, dim]``."""
        cfg = self.cfg
        k_spk, k_prev = split_key(key, 2)
        speaker = self.speaker_encoder(cond["speaker"], cond["audio"], cond["speaker_mask"], k_spk, train)
        has_prev = cond["has_previous"].astype(jnp.float32)
        prev = self.previous(cond["previous"] * has_prev[:, None, None].astype(cond["previous"].dtype))
        prev = dropout(prev, cfg.dropout, k_prev)
        b, s = prev.shape[0], cfg.segment
        mask = jnp.concatenate([jnp.broadcast_to(has_prev[:, None] > 0, (b, s)), jnp.ones((b, s), bool)], axis=1)
        return {"speaker": speaker, "speaker_mask": cond["speaker_mask"], "previous": prev, "mask": mask,
                "flag": self.flag(has_prev[:, None])}

    def denoise(self, x_t: jax.Array, t: jax.Array, c: dict, key: jax.Array | None = None,
                train: bool = False) -> jax.Array:
        """``x_t`` ``[b, S, D]``, ``t`` ``[b]``, ``c`` from ``encode_conditions`` -> x0 ``[b, S, D]``."""
        cfg = self.cfg
        k_in, k_layers = split_key(key, 2)
        current = self.input(x_t)
        h = jnp.concatenate([c["previous"].astype(current.dtype), current], axis=1)
        # token j of the [previous; current] sequence is frame (C - 2S + j) of the speaker context
        positions = jnp.arange(2 * cfg.segment) + (cfg.context - 2 * cfg.segment)
        h = h + sinusoidal(positions, cfg.dim).astype(h.dtype)
        h = jnp.where(c["mask"][..., None], h, 0)
        h = dropout(constrain(h, ACT), cfg.dropout, k_in)
        c = dict(c, time=self.time_embed(t) + c["flag"])
        h = run_layers(self.layers, h, k_layers, cfg.num_layers, cfg.scan_layers, self.remat,
                       lambda layer, y, k: layer(y, c, k, train), train)
        return self.output(h[:, cfg.segment:])

    def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict, key: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        k_cond, k_denoise = split_key(key, 2)
        return self.denoise(x_t, t, self.encode_conditions(cond, k_cond, train), k_denoise, train)


def reaction_generator_flops(cfg: ReactionGeneratorConfig) -> float:
    """Forward FLOPs of one example (matmuls, attention, depthwise conv; norms and the STFT left out)."""
    d, f, s, c = cfg.dim, cfg.ffn_dim, cfg.segment, cfg.context
    L = 2 * s
    per_token = (2 * 2 * d * f  # two half FFNs
                 + 2 * 4 * d * d + 2 * 2 * L * d  # self-attention projections + scores/values
                 + 2 * 2 * d * d + 2 * 2 * c * d  # cross-attention q/o projections + scores/values
                 + 2 * 3 * d * d + 2 * cfg.kernel_size * d)  # conv module
    cross_kv = 2 * 2 * c * d * d  # k/v projections of the context, per layer
    e = cfg.speaker_encoder
    enc_per_frame = (2 * (cfg.coeff_dim + MELS_PER_FRAME * cfg.n_mels) * e.dim + 2 * e.dim * e.dim
                     + e.num_layers * (2 * 2 * e.dim * e.ffn_dim + 2 * 4 * e.dim * e.dim + 2 * 2 * c * e.dim
                                       + 2 * 3 * e.dim * e.dim + 2 * e.kernel_size * e.dim)
                     + 2 * e.dim * d)
    io = 2 * 2 * cfg.coeff_dim * d * s + 2 * d * cfg.coeff_dim * s
    return float(cfg.num_layers * (L * per_token + cross_kv) + c * enc_per_frame + io)
