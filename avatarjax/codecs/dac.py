"""The Descript Audio Codec (DAC): a residual-vector-quantised waveform codec, channels-last, Flax NNX.

Layout (as the official ``dac/model/dac.py``, arrays here ``[batch, time, channels]``):

- encoder: WN-conv(1 -> d, k7); per rate ``s`` an ``EncoderBlock`` (three ``ResidualUnit`` of dilation 1/3/9,
  Snake, WN-conv(k = 2s, stride s) doubling the width); Snake; WN-conv(k3) to the latent width
  (``encoder_dim * 2**len(rates)`` = 1024 at 44.1 kHz). Hop = prod(rates) = 512 samples, 86.13 frames/s.
- ``ResidualUnit``: x + WN-conv(k1)(Snake(WN-conv(k7, dilation)(Snake(x)))).
- Snake: ``x + sin(alpha x)**2 / (alpha + 1e-9)``, one alpha per channel.
- factorised RVQ: per codebook a WN-conv(k1) projection down to ``codebook_dim`` (8), nearest entry by cosine
  (both sides L2-normalised), the raw entry projected back up and subtracted from the residual; straight-through
  gradients; commitment and codebook losses; quantizer dropout (a random number of codebooks for a fraction of
  the batch in training).
- decoder: WN-conv(latent -> decoder_dim, k7); per rate a ``DecoderBlock`` (Snake, WN-transposed-conv(k = 2s,
  stride s) halving the width, three residual units); Snake; WN-conv(-> 1, k7); tanh.

Weight-normalised convs keep DAC's two parameters, the direction ``v`` (``[kernel, in, out]``) and the per-filter
gain ``g`` (``[out]``; ``[in]`` for transposed convs, whose torch weight norm runs over dim 0 = input channels), so
the official weights load unchanged and training follows the original parameterisation; the kernel
``g * v / ||v||`` is formed on the fly (a negligible cost next to the convolution).

Codes are ``[batch, n_codebooks, frames]`` int32 (DAC's order); audio is ``[batch, samples]`` float in [-1, 1].
``encode`` right-pads the input to a multiple of the hop as DAC's ``preprocess`` does; ``decode`` gives
``decoder_samples(frames)`` samples (``frames * hop`` for even rates). ``decode_chunked`` / ``StreamingDecoder``
decode long code sequences in fixed-size windows with ``context`` frames on each side; with the default context
(the decoder's receptive field) the joined audio equals the full decode up to float rounding.

Converting the official checkpoint (``weights.pth`` of descript-audio-codec: a ``torch.save``'d dict with
``state_dict`` and ``metadata['kwargs']``): ``avatarjax convert dac --from weights.pth --to DIR``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter
from avatarjax.errors import CheckpointError, DataError
from avatarjax.nn.conv import Conv, conv_transpose_1d, use_transposed_conv
from avatarjax.parallel.mesh import constrain

ACT = ("batch", "length", "act_channels")
RESIDUAL_DILATIONS = (1, 3, 9)
RESIDUAL_KERNEL = 7


@dataclasses.dataclass(frozen=True)
class DACConfig:
    """The codec (fields named as DAC's constructor) and its training objective."""

    sample_rate: int = 44_100
    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int = 0  # 0: encoder_dim * 2**len(encoder_rates) (DAC's default: 1024)
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.0  # fraction of each training batch that uses a random number of codebooks
    # objective (DAC's conf/base.yml weights; the waveform L1 is ours)
    mel_weight: float = 15.0
    waveform_weight: float = 1.0
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)  # hop = window / 4
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    mel_floor: float = 1e-5  # on the mel magnitude (power floor 1e-10), as DAC's clamp_eps
    # adversarial terms (multi-period discriminator, LSGAN + feature matching as DAC); off by default
    adversarial: bool = False
    adversarial_weight: float = 1.0
    feature_weight: float = 2.0
    disc_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    disc_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    disc_start: int = 0  # step from which the adversarial terms are on

    def __post_init__(self):
        if self.hop_length != math.prod(self.decoder_rates):
            raise ValueError(f"prod(encoder_rates) = {self.hop_length} must equal prod(decoder_rates) = "
                             f"{math.prod(self.decoder_rates)}: the decoder must undo the encoder's hop")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(f"decoder_dim={self.decoder_dim} must divide by 2**len(decoder_rates)")
        if len(self.mel_windows) != len(self.mel_bins):
            raise ValueError("mel_windows and mel_bins must have the same length (one mel scale per window)")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_rates)

    @property
    def latent(self) -> int:
        return self.latent_dim or self.encoder_dim * 2 ** len(self.encoder_rates)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


# --------------------------------------------------------------------------------------- length bookkeeping
def conv_output_length(length: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """torch ``Conv1d`` output length."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_length(length: int, kernel: int, stride: int = 1, padding: int = 0,
                                 dilation: int = 1) -> int:
    """torch ``ConvTranspose1d`` output length (no output padding)."""
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1


def padded_length(cfg: DACConfig, samples: int) -> int:
    """Samples after DAC's ``preprocess``: right-padded to a multiple of the hop."""
    return -(-samples // cfg.hop_length) * cfg.hop_length


def encoder_frames(cfg: DACConfig, samples: int) -> int:
    """Code frames for ``samples`` input samples (after the hop padding); ``ceil(samples / hop)`` for even rates."""
    length = padded_length(cfg, samples)
    for s in cfg.encoder_rates:
        length = conv_output_length(length, 2 * s, s, math.ceil(s / 2))
    return length


def decoder_samples(cfg: DACConfig, frames: int) -> int:
    """Output samples for ``frames`` code frames (``frames * hop`` for even rates; odd rates lose samples)."""
    length = frames
    for s in cfg.decoder_rates:
        length = conv_transpose_output_length(length, 2 * s, s, math.ceil(s / 2))
    return length


def decoder_context_frames(cfg: DACConfig) -> int:
    """Frames of code context on each side after which one more frame cannot change the decoded samples of a
    window's centre: the decoder's receptive-field radius in frames (rounded up), plus one."""
    radius, rate = (RESIDUAL_KERNEL - 1) // 2, 1  # conv_in, at the frame rate
    per_unit = sum((RESIDUAL_KERNEL - 1) // 2 * d for d in RESIDUAL_DILATIONS)
    for s in cfg.decoder_rates:
        radius += 2.0 / rate  # a transposed conv of kernel 2s reaches at most 1.5 input samples back
        rate *= s
        radius += per_unit / rate
    radius += (RESIDUAL_KERNEL - 1) // 2 / rate  # conv_out
    return math.ceil(radius) + 1


# ------------------------------------------------------------------------------------------------- layers
def _uniform_fan_in(fan_in: int):
    """torch's default conv init (kaiming-uniform with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)). DAC's
    ``init_weights`` does not reach weight-normed kernels, so this is what the original trains from."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


class WNConv1d(nnx.Module):
    """Weight-normalised 1-D conv (torch ``weight_norm(nn.Conv1d)``): ``[b, t, in]`` -> ``[b, t', out]``.

    ``v`` ``[kernel, in, out]``, ``g`` ``[out]``: kernel = ``g * v / ||v||`` with the norm over (kernel, in).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 padding: int = 0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel_size, self.stride, self.dilation, self.padding = kernel_size, stride, dilation, padding
        self.dtype = dtype
        v = _uniform_fan_in(in_ch * kernel_size)(rngs.params(), (kernel_size, in_ch, out_ch), param_dtype)
        self.v = nnx.Param(v, out_sharding=("kernel", "conv_in", "conv_out"))
        self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=(0, 1))).astype(param_dtype),
                           out_sharding=("conv_out",))
        self.bias = nnx.Param(jnp.zeros((out_ch,), param_dtype), out_sharding=("conv_out",))

    def kernel(self) -> jax.Array:
        v = self.v[...].astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)))
        return v * (self.g[...].astype(jnp.float32) / norm)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), self.kernel().astype(dtype), (self.stride,), [(self.padding, self.padding)],
            rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"))
        return y + self.bias[...].astype(dtype)


class WNConvTranspose1d(nnx.Module):
    """Weight-normalised transposed 1-D conv (torch ``weight_norm(nn.ConvTranspose1d)``):
    ``[b, t, in]`` -> ``[b, (t - 1) * stride - 2 * padding + kernel, out]``.

    ``v`` ``[kernel, in, out]``, ``g`` ``[in]`` (torch normalises the ``[in, out, k]`` weight over dim 0). Computed
    by ``nn.conv.conv_transpose_1d`` (matmul + overlap-add on CPU).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, padding: int = 0, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dtype = dtype
        # torch's fan_in for ConvTranspose1d weights [in, out, k] is out * k
        v = _uniform_fan_in(out_ch * kernel_size)(rngs.params(), (kernel_size, in_ch, out_ch), param_dtype)
        self.v = nnx.Param(v, out_sharding=("kernel", "conv_in", "conv_out"))
        self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=(0, 2))).astype(param_dtype),
                           out_sharding=("conv_in",))
        self.bias = nnx.Param(jnp.zeros((out_ch,), param_dtype), out_sharding=("conv_out",))

    def kernel(self) -> jax.Array:
        v = self.v[...].astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 2)))
        return v * (self.g[...].astype(jnp.float32) / norm)[None, :, None]

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = conv_transpose_1d(x.astype(dtype), self.kernel().astype(dtype), self.stride, self.padding)
        return y + self.bias[...].astype(dtype)


def snake(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """``x + sin(alpha x)**2 / (alpha + 1e-9)`` with ``alpha`` ``[channels]`` broadcast over the last dim."""
    alpha = alpha.astype(x.dtype)
    return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(jnp.sin(alpha * x))


class Snake(nnx.Module):
    """Snake activation with one learned frequency per channel (initialised to 1): ``[..., c]`` -> same."""

    def __init__(self, channels: int, *, param_dtype=jnp.float32):
        self.alpha = nnx.Param(jnp.ones((channels,), param_dtype), out_sharding=("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return snake(x, self.alpha[...])


class ResidualUnit(nnx.Module):
    """Snake, WN-conv(k7, dilation), Snake, WN-conv(k1), plus the input: ``[b, t, c]`` -> ``[b, t, c]`` (the input
    is centre-cropped when the convs shorten the sequence, as DAC does with padding switched off)."""

    def __init__(self, dim: int, dilation: int, **kw):
        self.snake1 = Snake(dim, param_dtype=kw["param_dtype"])
        self.conv1 = WNConv1d(dim, dim, RESIDUAL_KERNEL, dilation=dilation,
                              padding=(RESIDUAL_KERNEL - 1) * dilation // 2, **kw)
        self.snake2 = Snake(dim, param_dtype=kw["param_dtype"])
        self.conv2 = WNConv1d(dim, dim, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        crop = (x.shape[1] - y.shape[1]) // 2
        if crop > 0:
            x = x[:, crop:-crop]
        return constrain(x.astype(y.dtype) + y, ACT)


class EncoderBlock(nnx.Module):
    """Three residual units at ``dim // 2``, Snake, WN-conv(k = 2 stride, stride) to ``dim``:
    ``[b, t, dim / 2]`` -> ``[b, t / stride, dim]``."""

    def __init__(self, dim: int, stride: int, **kw):
        self.res = nnx.List([ResidualUnit(dim // 2, d, **kw) for d in RESIDUAL_DILATIONS])
        self.snake = Snake(dim // 2, param_dtype=kw["param_dtype"])
        self.conv = WNConv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        for unit in self.res:
            x = unit(x)
        return constrain(self.conv(self.snake(x)), ACT)


class Encoder(nnx.Module):
    """audio ``[b, samples, 1]`` -> latents ``[b, samples / hop, latent]``."""

    def __init__(self, cfg: DACConfig, **kw):
        d = cfg.encoder_dim
        self.conv_in = WNConv1d(1, d, 7, padding=3, **kw)
        blocks = []
        for stride in cfg.encoder_rates:
            d *= 2
            blocks.append(EncoderBlock(d, stride, **kw))
        self.blocks = nnx.List(blocks)
        self.snake_out = Snake(d, param_dtype=kw["param_dtype"])
        self.conv_out = WNConv1d(d, cfg.latent, 3, padding=1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = constrain(self.conv_in(x), ACT)
        for block in self.blocks:
            x = block(x)
        return constrain(self.conv_out(self.snake_out(x)), ACT)


class DecoderBlock(nnx.Module):
    """Snake, WN-transposed-conv(k = 2 stride, stride), three residual units:
    ``[b, t, in]`` -> ``[b, t * stride, out]`` (even strides)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, **kw):
        self.snake = Snake(in_dim, param_dtype=kw["param_dtype"])
        self.conv = WNConvTranspose1d(in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                                      **kw)
        self.res = nnx.List([ResidualUnit(out_dim, d, **kw) for d in RESIDUAL_DILATIONS])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = constrain(self.conv(self.snake(x)), ACT)
        for unit in self.res:
            x = unit(x)
        return x


class Decoder(nnx.Module):
    """latents ``[b, frames, latent]`` -> audio ``[b, decoder_samples(frames), 1]`` in (-1, 1)."""

    def __init__(self, cfg: DACConfig, **kw):
        c = cfg.decoder_dim
        self.conv_in = WNConv1d(cfg.latent, c, 7, padding=3, **kw)
        self.blocks = nnx.List([DecoderBlock(c // 2 ** i, c // 2 ** (i + 1), s, **kw)
                                for i, s in enumerate(cfg.decoder_rates)])
        out = c // 2 ** len(cfg.decoder_rates)
        self.snake_out = Snake(out, param_dtype=kw["param_dtype"])
        self.conv_out = WNConv1d(out, 1, 7, padding=3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = constrain(self.conv_in(z), ACT)
        for block in self.blocks:
            x = block(x)
        return jnp.tanh(self.conv_out(self.snake_out(x)).astype(jnp.float32))


# ------------------------------------------------------------------------------------------------- quantiser
def _l2_normalize(x: jax.Array) -> jax.Array:
    """``F.normalize``: ``x / max(||x||, 1e-12)`` over the last dim."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class VectorQuantize(nnx.Module):
    """One factorised, L2-normalised codebook: project ``[b, t, latent]`` to ``codebook_dim``, pick the nearest
    entry by cosine, project the (raw) entry back."""

    def __init__(self, cfg: DACConfig, **kw):
        self.in_proj = WNConv1d(cfg.latent, cfg.codebook_dim, 1, **kw)
        self.out_proj = WNConv1d(cfg.codebook_dim, cfg.latent, 1, **kw)
        init = jax.random.normal(kw["rngs"].params(), (cfg.codebook_size, cfg.codebook_dim), jnp.float32)
        self.codebook = nnx.Param(init.astype(kw["param_dtype"]), out_sharding=("vocab", "latent"))

    def lookup(self, z_e: jax.Array) -> tuple[jax.Array, jax.Array]:
        """projected latents ``[b, t, d]`` -> (raw entries ``[b, t, d]``, indices ``[b, t]`` int32)."""
        codebook = self.codebook[...].astype(jnp.float32)
        e, c = _l2_normalize(z_e.astype(jnp.float32)), _l2_normalize(codebook)
        dist = (jnp.sum(jnp.square(e), -1, keepdims=True)
                - 2.0 * jnp.einsum("btd,kd->btk", e, c, precision=jax.lax.Precision.HIGHEST)
                + jnp.sum(jnp.square(c), -1))
        indices = jnp.argmax(-dist, axis=-1).astype(jnp.int32)
        return jnp.take(codebook, indices, axis=0), indices

    def embed(self, indices: jax.Array) -> jax.Array:
        """codes ``[b, t]`` -> raw entries ``[b, t, d]``."""
        return jnp.take(self.codebook[...], indices, axis=0)

    def __call__(self, z: jax.Array):
        """z ``[b, t, latent]`` -> (quantised ``[b, t, latent]``, commitment ``[b]``, codebook loss ``[b]``,
        indices ``[b, t]``, projected latents ``[b, t, d]``)."""
        z_e = self.in_proj(z).astype(jnp.float32)
        z_q, indices = self.lookup(z_e)
        commitment = jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(z_q)), axis=(1, 2))
        codebook = jnp.mean(jnp.square(z_q - jax.lax.stop_gradient(z_e)), axis=(1, 2))
        z_q = z_e + jax.lax.stop_gradient(z_q - z_e)  # straight-through
        return self.out_proj(z_q.astype(z.dtype)), commitment, codebook, indices, z_e


class ResidualVectorQuantize(nnx.Module):
    """``n_codebooks`` vector quantisers applied to successive residuals."""

    def __init__(self, cfg: DACConfig, **kw):
        self.cfg = cfg
        self.quantizers = nnx.List([VectorQuantize(cfg, **kw) for _ in range(cfg.n_codebooks)])

    def __call__(self, z: jax.Array, n_quantizers: int | None = None, key: jax.Array | None = None) -> dict:
        """z ``[b, t, latent]`` -> dict with ``z`` (quantised, ``[b, t, latent]``), ``codes`` ``[b, n, t]``,
        ``latents`` ``[b, t, n * d]`` (projected, before quantisation), ``commitment`` and ``codebook`` (scalars).

        Without ``key`` (inference) the first ``n_quantizers`` codebooks run (all by default). With ``key``
        (training) every codebook runs and, for the first ``int(batch * quantizer_dropout)`` rows, only a random
        number in [1, n_codebooks] of them contributes (DAC's quantizer dropout)."""
        n = self.cfg.n_codebooks
        batch = z.shape[0]
        if key is None:
            active = jnp.full((batch,), n if n_quantizers is None else min(n_quantizers, n))
            steps = n if n_quantizers is None else min(n_quantizers, n)
        else:
            dropped = int(batch * self.cfg.quantizer_dropout)
            active = jnp.where(jnp.arange(batch) < dropped, jax.random.randint(key, (batch,), 1, n + 1), n + 1)
            steps = n
        z_q = jnp.zeros_like(z)
        residual = z
        commitment = codebook = jnp.zeros((), jnp.float32)
        codes, latents = [], []
        for i in range(steps):
            z_q_i, commit_i, codebook_i, indices, z_e = self.quantizers[i](residual)
            mask = (i < active).astype(z.dtype)
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commitment += jnp.mean(commit_i * mask)
            codebook += jnp.mean(codebook_i * mask)
            codes.append(indices)
            latents.append(z_e)
        return {"z": z_q, "codes": jnp.stack(codes, axis=1), "latents": jnp.concatenate(latents, axis=-1),
                "commitment": commitment, "codebook": codebook}

    def from_codes(self, codes: jax.Array) -> jax.Array:
        """codes ``[b, n, t]`` (n <= n_codebooks: the first n codebooks) -> quantised latents ``[b, t, latent]``."""
        if codes.shape[1] > self.cfg.n_codebooks:
            raise DataError(f"codes have {codes.shape[1]} codebooks but the codec has {self.cfg.n_codebooks}: pass "
                            "codes [batch, n_codebooks, frames] from this codec")
        z = None
        for i in range(codes.shape[1]):
            z_i = self.quantizers[i].out_proj(self.quantizers[i].embed(codes[:, i]))
            z = z_i if z is None else z + z_i
        return z


# ------------------------------------------------------------------------------------------- discriminator
class PeriodDiscriminator(nnx.Module):
    """HiFi-GAN / DAC period discriminator: audio ``[b, samples]`` folded into ``[b, samples / p, p, 1]``, (5, 1)
    convs of stride (3, 1) with LeakyReLU(0.1), a (3, 1) conv to one logit per cell. Returns (logits, features)."""

    def __init__(self, period: int, channels: tuple[int, ...], **kw):
        self.period = period
        convs, c = [], 1
        for n, width in enumerate(channels):
            convs.append(Conv(c, width, (5, 1), strides=(3, 1) if n < len(channels) - 1 else (1, 1),
                              padding=((2, 2), (0, 0)), **kw))
            c = width
        self.convs = nnx.List(convs)
        self.post = Conv(c, 1, (3, 1), padding=((1, 1), (0, 0)), **kw)

    def __call__(self, audio: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        pad = -audio.shape[1] % self.period
        x = jnp.pad(audio, ((0, 0), (0, pad)), mode="reflect") if pad else audio
        x = x.reshape(x.shape[0], -1, self.period, 1)
        features = []
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.post(x).astype(jnp.float32), features


class MultiPeriodDiscriminator(nnx.Module):
    def __init__(self, cfg: DACConfig, **kw):
        self.discs = nnx.List([PeriodDiscriminator(p, cfg.disc_channels, **kw) for p in cfg.disc_periods])

    def __call__(self, audio: jax.Array) -> list[tuple[jax.Array, list[jax.Array]]]:
        return [d(audio) for d in self.discs]


# ------------------------------------------------------------------------------------------------- the codec
class DAC(nnx.Module):
    """The codec (and, with ``cfg.adversarial``, its discriminator, trained by the same optimizer)."""

    def __init__(self, cfg: DACConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder(cfg, **kw)
        self.quantizer = ResidualVectorQuantize(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        self.discriminator = MultiPeriodDiscriminator(cfg, **kw) if cfg.adversarial else None

    def preprocess(self, audio: jax.Array) -> jax.Array:
        """``[b, samples]`` -> ``[b, padded_length(samples)]`` (zeros on the right)."""
        if audio.ndim != 2:
            raise DataError(f"audio must be [batch, samples] (mono), got shape {audio.shape}")
        return jnp.pad(audio, ((0, 0), (0, padded_length(self.cfg, audio.shape[1]) - audio.shape[1])))

    def encode_latents(self, audio: jax.Array) -> jax.Array:
        """audio ``[b, samples]`` -> continuous encoder output ``[b, frames, latent]``."""
        return self.encoder(self.preprocess(audio)[..., None])

    def encode(self, audio: jax.Array, n_quantizers: int | None = None) -> jax.Array:
        """audio ``[b, samples]`` -> codes ``[b, n_quantizers or n_codebooks, ceil(samples / hop)]`` int32."""
        return self.quantizer(self.encode_latents(audio), n_quantizers)["codes"]

    def decode_latents(self, z: jax.Array) -> jax.Array:
        """quantised latents ``[b, frames, latent]`` -> audio ``[b, decoder_samples(frames)]``."""
        return self.decoder(z)[..., 0]

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes ``[b, n, frames]`` -> audio ``[b, decoder_samples(frames)]`` float32."""
        return self.decode_latents(self.quantizer.from_codes(codes))

    def __call__(self, audio: jax.Array, *, n_quantizers: int | None = None, key: jax.Array | None = None) -> dict:
        """DAC's forward: audio ``[b, samples]`` -> the quantiser's dict plus ``audio`` (the reconstruction cut to
        ``samples``). ``key`` switches on training-mode quantizer dropout."""
        out = self.quantizer(self.encode_latents(audio), n_quantizers, key)
        out["audio"] = self.decode_latents(out["z"])[:, :audio.shape[1]]
        return out


# ------------------------------------------------------------------------------------- jitted entry points
@functools.partial(jax.jit, static_argnames=("graphdef", "n_quantizers"))
def _encode(state, audio, *, graphdef, n_quantizers):
    return nnx.merge(graphdef, state).encode(constrain(audio, ("batch", "length")), n_quantizers)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode(state, codes, *, graphdef):
    return constrain(nnx.merge(graphdef, state).decode(codes), ("batch", "length"))


def jit_encode(model: DAC, n_quantizers: int | None = None):
    """A jitted ``audio [b, samples] -> codes [b, n, frames]`` over the model's current parameters."""
    graphdef, state = nnx.split(model)
    return lambda audio: _encode(state, jnp.asarray(audio, jnp.float32), graphdef=graphdef,
                                 n_quantizers=n_quantizers)


def jit_decode(model: DAC):
    """A jitted ``codes [b, n, frames] -> audio [b, decoder_samples(frames)]``."""
    graphdef, state = nnx.split(model)
    return lambda codes: _decode(state, jnp.asarray(codes, jnp.int32), graphdef=graphdef)


# ---------------------------------------------------------------------------------------- chunked decoding
def chunk_plan(frames: int, chunk: int, context: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(window, starts, offsets) for decoding ``frames`` code frames ``chunk`` at a time.

    Every window has the same length ``window = min(frames, chunk + 2 context)`` (one compiled shape); chunk i
    (frames ``[i chunk, (i + 1) chunk)``) is decoded in the window starting at ``starts[i]``, shifted inside
    ``[0, frames)`` so that it keeps ``context`` frames on each side except at the ends of the sequence, where
    the window is flush with the end and sees the same zero padding as the full decode. The chunk's frames start
    ``offsets[i]`` frames into its window.
    """
    if chunk <= 0 or context < 0:
        raise DataError(f"chunk ({chunk}) must be positive and context ({context}) non-negative")
    window = min(frames, chunk + 2 * context)
    firsts = np.arange(0, frames, chunk)
    starts = np.clip(firsts - context, 0, frames - window)
    return window, starts, firsts - starts


def _check_even(cfg: DACConfig) -> None:
    if decoder_samples(cfg, 7) != 7 * cfg.hop_length:
        raise DataError(f"chunked decoding needs a decoder that gives exactly hop samples per frame; rates "
                        f"{cfg.decoder_rates} do not (odd rates lose samples): decode in one piece")


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk", "context"))
def _decode_chunked(state, codes, *, graphdef, chunk, context):
    model = nnx.merge(graphdef, state)
    hop = model.cfg.hop_length
    frames = codes.shape[2]
    window, starts, offsets = chunk_plan(frames, chunk, context)

    def one(args):
        start, offset = args
        piece = jax.lax.dynamic_slice_in_dim(codes, start, window, axis=2)
        audio = jnp.pad(model.decode(piece), ((0, 0), (0, chunk * hop)))
        return jax.lax.dynamic_slice_in_dim(audio, offset * hop, chunk * hop, axis=1)

    pieces = jax.lax.map(one, (jnp.asarray(starts, jnp.int32), jnp.asarray(offsets, jnp.int32)))  # [n, b, chunk hop]
    return jnp.moveaxis(pieces, 0, 1).reshape(codes.shape[0], -1)[:, :frames * hop]


def decode_chunked(model: DAC, codes, chunk: int, context: int | None = None) -> jax.Array:
    """codes ``[b, n, frames]`` -> audio ``[b, frames * hop]``, decoded in windows of ``chunk + 2 context`` frames
    (one jit, ``lax.map`` over windows: memory stays that of one window). ``context`` defaults to
    ``decoder_context_frames`` (about 11 frames at 44.1 kHz), with which the result equals the full decode up to
    float rounding (max abs diff ~1e-6 in float32); a smaller context trades accuracy near chunk seams for less
    compute and latency."""
    _check_even(model.cfg)
    context = decoder_context_frames(model.cfg) if context is None else context
    graphdef, state = nnx.split(model)
    return _decode_chunked(state, jnp.asarray(codes, jnp.int32), graphdef=graphdef, chunk=chunk, context=context)


class StreamingDecoder:
    """Incremental decoding: ``push`` code frames as they arrive, get back the audio that is final.

    Chunk i is emitted once frames up to ``(i + 1) chunk + context`` have arrived (``chunk + 2 context`` for the
    first); ``flush`` emits the rest at the end of the stream. The windows are those of ``chunk_plan``, so the
    joined output equals ``decode_chunked`` (and the full decode, with the default context).
    """

    def __init__(self, model: DAC, chunk: int, context: int | None = None):
        _check_even(model.cfg)
        self.chunk = chunk
        self.context = decoder_context_frames(model.cfg) if context is None else context
        self.hop = model.cfg.hop_length
        self._decode = jit_decode(model)
        self._codes: np.ndarray | None = None  # frames from self._base on
        self._base = 0  # absolute index of the first buffered frame
        self._emitted = 0  # frames whose audio has been returned

    @property
    def window(self) -> int:
        return self.chunk + 2 * self.context

    def _buffered_end(self) -> int:
        return self._base + (0 if self._codes is None else self._codes.shape[2])

    def _emit(self, start: int, window: int, first: int, count: int) -> np.ndarray:
        piece = self._codes[:, :, start - self._base:start - self._base + window]
        audio = np.asarray(self._decode(piece))
        offset = (first - start) * self.hop
        self._emitted = first + count
        # the next window starts no earlier than this (at the end of the stream it shifts left to stay flush)
        keep = max(self._emitted - self.window, 0)
        if keep > self._base:
            self._codes = self._codes[:, :, keep - self._base:]
            self._base = keep
        return audio[:, offset:offset + count * self.hop]

    def push(self, codes) -> np.ndarray:
        """codes ``[b, n, t]`` -> audio ``[b, k * chunk * hop]`` (k >= 0 chunks became final)."""
        codes = np.asarray(codes, np.int32)
        self._codes = codes if self._codes is None else np.concatenate([self._codes, codes], axis=2)
        out = [np.zeros((codes.shape[0], 0), np.float32)]
        while True:
            start = max(0, self._emitted - self.context)
            if start + self.window > self._buffered_end():
                break
            out.append(self._emit(start, self.window, self._emitted, self.chunk))
        return np.concatenate(out, axis=1)

    def flush(self) -> np.ndarray:
        """The audio of the frames not yet emitted (the end of the stream)."""
        if self._codes is None:
            return np.zeros((0, 0), np.float32)
        total = self._buffered_end()
        out = [np.zeros((self._codes.shape[0], 0), np.float32)]
        while self._emitted < total:
            window = min(total, self.window)
            start = int(np.clip(self._emitted - self.context, 0, total - window))
            out.append(self._emit(start, window, self._emitted, min(self.chunk, total - self._emitted)))
        return np.concatenate(out, axis=1)


# ---------------------------------------------------------------------------------------- codebook usage
def codebook_usage(codes, codebook_size: int) -> dict[str, np.ndarray]:
    """Per-codebook usage of codes ``[b, n, t]``: ``perplexity`` ``[n]`` (exp of the entropy of the code
    histogram: 1 = one code, ``codebook_size`` = uniform) and ``fraction_used`` ``[n]`` (share of entries seen)."""
    codes = np.asarray(codes)
    counts = np.stack([np.bincount(codes[:, q].reshape(-1), minlength=codebook_size)
                       for q in range(codes.shape[1])]).astype(np.float64)
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0), axis=1)
    return {"perplexity": np.exp(entropy), "fraction_used": (counts > 0).mean(axis=1)}


# ------------------------------------------------------------------------------------------ analytic FLOPs
def _conv_flops(k: int, cin: int, cout: int, length: int) -> float:
    return 2.0 * k * cin * cout * length


def _units_flops(dim: int, length: int) -> float:
    return len(RESIDUAL_DILATIONS) * (_conv_flops(RESIDUAL_KERNEL, dim, dim, length) + _conv_flops(1, dim, dim, length))


def encoder_flops(cfg: DACConfig, samples: int) -> float:
    length, d = padded_length(cfg, samples), cfg.encoder_dim
    total = _conv_flops(7, 1, d, length)
    for s in cfg.encoder_rates:
        total += _units_flops(d, length)
        length = conv_output_length(length, 2 * s, s, math.ceil(s / 2))
        total += _conv_flops(2 * s, d, 2 * d, length)
        d *= 2
    return total + _conv_flops(3, d, cfg.latent, length)


def quantizer_flops(cfg: DACConfig, frames: int) -> float:
    per = 2 * _conv_flops(1, cfg.latent, cfg.codebook_dim, frames) + 2.0 * frames * cfg.codebook_size * cfg.codebook_dim
    return cfg.n_codebooks * per


def decoder_flops(cfg: DACConfig, frames: int) -> float:
    c, length = cfg.decoder_dim, frames
    total = _conv_flops(7, cfg.latent, c, length)
    for s in cfg.decoder_rates:
        # the transposed conv's useful multiplies: every input frame times all 2s taps (nn.conv.conv_transpose_1d's
        # gemm form computes exactly these; its conv form also multiplies the stride-dilated input's zeros)
        out_len = conv_transpose_output_length(length, 2 * s, s, math.ceil(s / 2))
        total += _conv_flops(2 * s, c, c // 2, length)
        c, length = c // 2, out_len
        total += _units_flops(c, length)
    return total + _conv_flops(7, c, 1, length)


def flops_per_example(cfg: DACConfig, samples: int) -> float:
    """Forward FLOPs of encode + quantise + decode for one clip of ``samples`` samples."""
    frames = encoder_frames(cfg, samples)
    return encoder_flops(cfg, samples) + quantizer_flops(cfg, frames) + decoder_flops(cfg, frames)


# ------------------------------------------------------------------------------------------------ converter
OFFICIAL_DEFAULTS = dict(encoder_dim=64, encoder_rates=[2, 4, 8, 8], latent_dim=None, decoder_dim=1536,
                         decoder_rates=[8, 8, 4, 2], n_codebooks=9, codebook_size=1024, codebook_dim=8,
                         quantizer_dropout=False, sample_rate=44100)


def config_from_official(kwargs: dict) -> DACConfig:
    """DAC's constructor kwargs (``metadata['kwargs']`` of the checkpoint; DAC's defaults where absent)."""
    kw = {**OFFICIAL_DEFAULTS, **{k: v for k, v in kwargs.items() if k in OFFICIAL_DEFAULTS}}
    if not isinstance(kw["codebook_dim"], int):
        raise CheckpointError(f"codebook_dim {kw['codebook_dim']!r} is a per-codebook list: only one codebook_dim "
                              "for all codebooks is supported")
    try:
        return DACConfig(sample_rate=int(kw["sample_rate"]), encoder_dim=int(kw["encoder_dim"]),
                         encoder_rates=tuple(int(r) for r in kw["encoder_rates"]),
                         latent_dim=int(kw["latent_dim"] or 0), decoder_dim=int(kw["decoder_dim"]),
                         decoder_rates=tuple(int(r) for r in kw["decoder_rates"]),
                         n_codebooks=int(kw["n_codebooks"]), codebook_size=int(kw["codebook_size"]),
                         codebook_dim=int(kw["codebook_dim"]), quantizer_dropout=float(kw["quantizer_dropout"]))
    except ValueError as err:
        raise CheckpointError(f"the checkpoint's DAC config is not supported: {err}") from err


def read_official_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(DAC kwargs, float32 tensors) from the official ``weights.pth`` (torch is imported here only).

    Read with ``torch.load(weights_only=True)``; a file holding other pickled objects is refused unless
    ``AVATARJAX_TRUST_PICKLE=1`` (full unpickling runs code from the file: only for files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"DAC checkpoint '{path}' is not a file: pass the official weights.pth "
                              "(descript-audio-codec release 0.0.1 for 44.1 kHz; dac.utils.download puts it in "
                              "~/.cache/descript/dac/)")
    import torch

    trust = os.environ.get("AVATARJAX_TRUST_PICKLE", "") == "1"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:
        hint = "" if trust else " (set AVATARJAX_TRUST_PICKLE=1 to unpickle it fully if you trust the file)"
        raise CheckpointError(f"'{path}' cannot be read by torch.load ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}){hint}") from err
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CheckpointError(f"'{path}' is not a DAC checkpoint (a dict with 'state_dict' and 'metadata'): pass "
                              "the official weights.pth")
    kwargs = dict((raw.get("metadata") or {}).get("kwargs") or {})
    tensors = {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
               for k, v in raw["state_dict"].items()}
    return kwargs, tensors


def _wn_names(hf: dict, prefix: str) -> tuple[str, str]:
    """The (g, v) names of a weight-normed conv: ``weight_g``/``weight_v`` (torch.nn.utils.weight_norm) or
    ``parametrizations.weight.original0/1`` (torch.nn.utils.parametrizations.weight_norm)."""
    old = (f"{prefix}.weight_g", f"{prefix}.weight_v")
    new = (f"{prefix}.parametrizations.weight.original0", f"{prefix}.parametrizations.weight.original1")
    if old[1] in hf:
        return old
    if new[1] in hf:
        return new
    raise CheckpointError(f"the checkpoint lacks '{old[1]}' (or '{new[1]}'): is it a DAC checkpoint of this config?")


def map_weights(hf: dict[str, np.ndarray], cfg: DACConfig) -> dict[str, np.ndarray]:
    """Official DAC state dict -> our parameter paths."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in hf:
            raise CheckpointError(f"the checkpoint lacks '{name}': is it a DAC checkpoint of this config?")
        used.add(name)
        return np.asarray(hf[name])

    def conv(prefix: str, ours: str, transpose: bool = False):
        g_name, v_name = _wn_names(hf, prefix)
        v = take(v_name)  # conv [out, in, k]; transposed conv [in, out, k]
        out[f"{ours}/v"] = np.transpose(v, (2, 0, 1) if transpose else (2, 1, 0))
        out[f"{ours}/g"] = take(g_name).reshape(-1)
        out[f"{ours}/bias"] = take(f"{prefix}.bias")

    def snake_(prefix: str, ours: str):
        out[f"{ours}/alpha"] = take(f"{prefix}.alpha").reshape(-1)

    def unit(prefix: str, ours: str):
        snake_(f"{prefix}.block.0", f"{ours}/snake1")
        conv(f"{prefix}.block.1", f"{ours}/conv1")
        snake_(f"{prefix}.block.2", f"{ours}/snake2")
        conv(f"{prefix}.block.3", f"{ours}/conv2")

    conv("encoder.block.0", "encoder/conv_in")
    for i in range(len(cfg.encoder_rates)):
        p = f"encoder.block.{i + 1}.block"
        for j in range(3):
            unit(f"{p}.{j}", f"encoder/blocks/{i}/res/{j}")
        snake_(f"{p}.3", f"encoder/blocks/{i}/snake")
        conv(f"{p}.4", f"encoder/blocks/{i}/conv")
    n = len(cfg.encoder_rates)
    snake_(f"encoder.block.{n + 1}", "encoder/snake_out")
    conv(f"encoder.block.{n + 2}", "encoder/conv_out")
    for q in range(cfg.n_codebooks):
        p = f"quantizer.quantizers.{q}"
        conv(f"{p}.in_proj", f"quantizer/quantizers/{q}/in_proj")
        conv(f"{p}.out_proj", f"quantizer/quantizers/{q}/out_proj")
        out[f"quantizer/quantizers/{q}/codebook"] = take(f"{p}.codebook.weight")
    conv("decoder.model.0", "decoder/conv_in")
    for i in range(len(cfg.decoder_rates)):
        p = f"decoder.model.{i + 1}.block"
        snake_(f"{p}.0", f"decoder/blocks/{i}/snake")
        conv(f"{p}.1", f"decoder/blocks/{i}/conv", transpose=True)
        for j in range(3):
            unit(f"{p}.{j + 2}", f"decoder/blocks/{i}/res/{j}")
    m = len(cfg.decoder_rates)
    snake_(f"decoder.model.{m + 1}", "decoder/snake_out")
    conv(f"decoder.model.{m + 2}", "decoder/conv_out")
    extra = sorted(set(hf) - used)
    if extra:
        raise CheckpointError(f"the checkpoint has tensors this config does not use ({extra[:4]}): its config "
                              "(metadata['kwargs']) does not match the weights")
    return out


def build(cfg: DACConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32) -> DAC:
    return DAC(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


CONVERTER = Converter(
    name="dac",
    config_type=DACConfig,
    source="descript-audio-codec's release files (44.1 kHz: weights.pth of release 0.0.1; a torch.save'd dict "
           "with 'state_dict' and 'metadata'['kwargs'])",
    config_from_hf=config_from_official,
    build=build,
    map_weights=map_weights,
    read_checkpoint=read_official_checkpoint,
)


# ------------------------------------------------------------------------------------------------ benchmark
def _median_time(fn, repeats: int) -> float:
    import statistics
    import time

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


BENCH_CONFIGS = {
    # a small 16 kHz codec (synthface_small's model) and the paper size
    "small": dict(sample_rate=16000, encoder_dim=16, encoder_rates=(2, 4, 4, 8), decoder_dim=256,
                  decoder_rates=(8, 4, 4, 2), n_codebooks=4, codebook_size=256),
    "paper": {},
}


def bench_dac(argv: list[str]) -> dict:
    """``avatarjax bench dac [--config small|paper] [--seconds S] [--repeats N]``: encode and decode real-time
    factors (seconds of compute per second of audio; < 1 is faster than real time) of our jitted codec and of
    the plain-torch reference forward at the same config and weights, and their ratio, in one run; and one AdamW
    generator step (L1 reconstruction + commitment + codebook losses, no discriminator) ours against the reference
    on ``--train-seconds`` of audio, with TFLOP/s, MFU and memory of ours. ``--quick``: a smoke run."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="avatarjax bench dac")
    p.add_argument("--config", default="small", choices=sorted(BENCH_CONFIGS))
    p.add_argument("--seconds", type=float, default=2.0, help="audio length per call")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--train-seconds", type=float, default=0.5, help="audio per example of the training step")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--quick", action="store_true")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.seconds, ns.repeats, ns.train_seconds, ns.train_batch = 0.5, 2, 0.25, 2
    import torch

    from avatarjax.bench import harness

    from avatarjax.checkpoint.convert import from_pretrained
    from avatarjax.codecs import dac_torch_reference as ref

    if ns.threads:
        torch.set_num_threads(ns.threads)
    cfg = DACConfig(**BENCH_CONFIGS[ns.config])
    torch.manual_seed(0)
    reference = ref.build_reference(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = ref.save_checkpoint(reference, cfg, Path(tmp) / "weights.pth")
        with nnx.use_eager_sharding(False):
            model, _ = from_pretrained(CONVERTER, path)
    samples = int(ns.seconds * cfg.sample_rate)
    audio = (0.3 * np.random.default_rng(0).standard_normal((ns.batch, samples))).astype(np.float32)
    encode, decode = jit_encode(model), jit_decode(model)
    codes = np.asarray(encode(audio))
    audio_t, codes_t = torch.from_numpy(audio)[:, None], torch.from_numpy(codes.astype(np.int64))

    def torch_encode():
        with torch.inference_mode():
            return reference.encode(reference.preprocess(audio_t))[1]

    def torch_decode():
        with torch.inference_mode():
            return reference.decode(reference.quantizer.from_codes(codes_t)[0])

    audio_seconds = ns.batch * samples / cfg.sample_rate
    times = {"encode": _median_time(lambda: encode(audio), ns.repeats),
             "decode": _median_time(lambda: decode(codes), ns.repeats),
             "torch_encode": _median_time(torch_encode, ns.repeats),
             "torch_decode": _median_time(torch_decode, ns.repeats)}
    out = {"config": ns.config, "sample_rate": cfg.sample_rate, "audio_seconds": audio_seconds,
           "device": jax.devices()[0].device_kind, "torch_threads": torch.get_num_threads()}
    for name, t in times.items():
        out[f"{name}_s"] = round(t, 4)
        out[f"{name}_rtf"] = round(t / audio_seconds, 4)
    out["encode_speedup_vs_torch"] = round(times["torch_encode"] / times["encode"], 3)
    out["decode_speedup_vs_torch"] = round(times["torch_decode"] / times["decode"], 3)
    train_audio = (0.3 * np.random.default_rng(1).standard_normal(
        (ns.train_batch, int(ns.train_seconds * cfg.sample_rate)))).astype(np.float32)

    def loss(m, a):
        o = m(a)
        return jnp.mean(jnp.abs(o["audio"] - a)) + jnp.mean(o["commitment"]) + jnp.mean(o["codebook"])

    def ref_loss(m, a):
        o = m(a[:, None])
        return (torch.mean(torch.abs(o["audio"][:, 0] - a)) + o["vq/commitment_loss"].mean()
                + o["vq/codebook_loss"].mean())

    ours = harness.jax_train_step(model, loss, (train_audio,), ns.repeats)
    if jax.default_backend() == "cpu":  # the transposed convs' other form in the same run (auto = gemm on CPU)
        with use_transposed_conv("conv"):
            conv_form = harness.jax_train_step(model, loss, (train_audio,), ns.repeats)
        out["train_ms_transposed_conv_forms"] = {"gemm": round(ours.seconds * 1e3, 2),
                                                 "conv": round(conv_form.seconds * 1e3, 2),
                                                 "gemm_speedup": round(conv_form.seconds / ours.seconds, 3)}
    reference = harness.torch_train_step(_reference_train_mode(reference), ref_loss, (train_audio,), ns.repeats)
    side = harness.compare_train("dac", ours, reference, "torch DAC (released layout)",
                                 note=f"AdamW generator step, batch {ns.train_batch} x {ns.train_seconds} s")
    out["train_vs_torch"] = side["detail"]
    out["summary"] = [side["summary"]]
    return out


def _reference_train_mode(reference):
    """The reference in training mode with its quantizer dropout off (ours runs the step without a dropout key)."""
    reference.train()
    if hasattr(reference.quantizer, "quantizer_dropout"):
        reference.quantizer.quantizer_dropout = 0.0
    return reference


def iter_chunks(codes: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """codes ``[b, n, t]`` in pieces of ``size`` frames (the last may be shorter), e.g. to feed a StreamingDecoder."""
    for i in range(0, codes.shape[2], size):
        yield codes[:, :, i:i + size]
