"""The causal 3D VAE of Wan2.1 (4x8x8, z 16) and Wan2.2 (4x16x16, z 48), channels-last, Flax NNX, matching
diffusers' ``AutoencoderKLWan``, with the ``wan-vae`` converter from a local diffusers directory.

Video layout: ``[batch, frames, height, width, channels]`` with ``frames = 1 + 4k`` and pixels in [-1, 1];
latents ``[batch, 1 + k, height / s, width / s, z_dim]`` (``s`` = 8 for Wan2.1, 16 for Wan2.2).

Architecture (diffusers names, which are also our parameter paths):

- ``CausalConv3d``: a 3-D conv padded symmetrically in space and on the left only in time (``2 * pad_t``
  frames), so output frame t sees input frames <= t;
- ``RMSNorm`` over channels (``x / |x| * sqrt(C) * gamma``, F.normalize's form), SiLU;
- ``ResidualBlock``: norm, SiLU, causal conv 3x3x3, norm, SiLU, causal conv 3x3x3, plus a (1x1x1-projected) skip;
- ``AttentionBlock``: one-head self-attention over the positions of each frame (1x1 convs for qkv and out);
- ``Resample``: 2-D down (pad right/bottom by one, 3x3 stride 2) / up (nearest x2, 3x3 conv) per frame; the 3-D
  variants add a time conv: down, a stride-2 kernel-3 conv that lets frame 0 through; up, a causal kernel-3 conv
  to twice the channels, interleaved into two frames per input frame, except frame 0 which stays one frame;
- encoder: conv_in, per level ``num_res_blocks`` ResidualBlocks then a Resample (not after the last), mid block
  (res, attention, res), norm, SiLU, conv_out to ``2 z``; quant_conv (1x1x1) -> (mean, logvar);
- decoder: post_quant_conv, conv_in, mid block, per level ``num_res_blocks + 1`` ResidualBlocks then a Resample,
  norm, SiLU, conv_out; output clipped to [-1, 1] as diffusers does;
- Wan2.2 (``is_residual``): input patchified 2x2 into channels (``patch_size``), levels are residual blocks whose
  shortcut is a parameter-free space/time-to-channel average (``avg_down``) or channel-to-space/time
  duplication (``dup_up``), and the decoder has its own base width.

Chunked causal processing with a feature cache (diffusers' ``feat_cache``): the encoder runs frame 0, then chunks
of 4 frames; the decoder runs one latent frame at a time. Each cached layer takes ``(x, cache, first)`` and
returns ``(y, cache)``: the cache holds the last input frames a causal conv needs (2 for kernel 3, zeros at the
start of the stream), ``first`` marks the chunk holding frame 0. Because every cached op is exactly a causal
op on the whole stream, running the whole video as one ``first`` chunk (``chunking="none"``) gives the same
numbers with more activation memory; ``"scan"`` runs the chunks in a ``lax.scan`` with the cache as carry and
``"unroll"`` as a static Python loop inside the caller's jit.

Measured on the shared 2-core CPU (base 12, 64 px, encode + decode in one jit): at 33 frames ``scan`` compiles
in 8.3 s and runs in 0.50 s, ``unroll`` 22.3 s and 0.55 s (its compile grows with the chunk count), ``none``
8.8 s and 0.90 s (whole-clip activations); at 17 frames 14.4 s / 0.22 s, 18.5 s / 0.36 s, 8.5 s / 0.34 s. So
``scan`` is the default for inference. For training the opposite holds: a gradient step on 9-frame clips
(batch 2) took 2.0 s with ``none`` against 26 s with ``scan`` (compile 15 s against 74 s), so the training task
runs ``none``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter
from avatarjax.errors import CheckpointError, ConfigError, DataError
from avatarjax.nn.attention import attend
from avatarjax.nn.conv import Conv
from avatarjax.nn.norms import RMSNorm
from avatarjax.parallel.mesh import constrain

ACT = ("batch", "frames", "height", "width", "act_channels")
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp
CHUNKINGS = ("scan", "unroll", "none")
# F.normalize divides by max(|x|, 1e-12); our RMS form x * rsqrt(mean(x^2) + eps) equals it to ~eps / mean(x^2).
NORM_EPS = 1e-12

WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                      0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                     1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """diffusers ``AutoencoderKLWan`` config (``temperal_downsample`` spelled ``temporal_downsample``).

    ``in_channels`` / ``out_channels`` count the patchified channels (12 = 3 x 2 x 2 for Wan2.2);
    ``latents_mean`` / ``latents_std`` (``z_dim`` each, or empty) normalise latents for the DiT.
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int = 1  # 1: no patchify (diffusers' None)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(f"temporal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries, "
                              f"got {self.temporal_downsample}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.patch_size ** 2:
                raise ConfigError(f"{name}={getattr(self, name)} must divide by patch_size**2 = "
                                  f"{self.patch_size ** 2} (it counts patchified channels)")
        if len(self.latents_mean) != len(self.latents_std) or len(self.latents_mean) not in (0, self.z_dim):
            raise ConfigError(f"latents_mean and latents_std need z_dim={self.z_dim} values each (or none), got "
                              f"{len(self.latents_mean)} and {len(self.latents_std)}")

    @property
    def decoder_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temporal_downsample))

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def video_channels(self) -> int:
        return self.in_channels // self.patch_size ** 2

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(latent frames, h, w, z_dim)`` of a video ``[frames, height, width, C]``."""
        return 1 + (frames - 1) // self.temporal_factor, height // self.spatial_factor, \
            width // self.spatial_factor, self.z_dim


WAN21 = WanVAEConfig()
WAN22 = WanVAEConfig(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                     out_channels=12, patch_size=2, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)


def _triple(x: int | Sequence[int]) -> tuple[int, int, int]:
    return (x,) * 3 if isinstance(x, int) else tuple(x)


def _sub(cache, key):
    return None if cache is None else cache[key]


# ------------------------------------------------------------------------------------------------- layers
class CausalConv3d(Conv):
    """x ``[B, T, H, W, cin]`` -> ``[B, T', H', W', cout]``: symmetric padding in space, ``2 * pad_t`` frames of
    left context in time. The context is ``cache`` (the last ``2 * pad_t`` frames of the input stream before
    ``x``; zeros at the start of the stream); returns ``(y, new cache)`` (``None`` without time padding).

    The kernel is ``[kt, kh, kw, cin, cout]``, but the conv runs as one 2-D conv over frames whose channels hold
    the ``kt`` time taps side by side: XLA:CPU has no fast 3-D conv (4x slower forward+backward, 7x forward at
    [4, 11, 32, 32, 16]), while the 2-D form is one library call on every backend.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size, *, stride=1, padding=0, **kw):
        pt, ph, pw = _triple(padding)
        super().__init__(in_ch, out_ch, _triple(kernel_size), ndim=3, strides=_triple(stride),
                         padding=((0, 0), (ph, ph), (pw, pw)), **kw)
        self.context = 2 * pt

    def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        new = None
        if self.context:
            if cache is None:
                cache = jnp.zeros(x.shape[:1] + (self.context,) + x.shape[2:], x.dtype)
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            new = x[:, -self.context:]
        dtype = self.dtype or x.dtype
        kt, kh, kw, cin, cout = self.kernel.shape
        st = self.strides[0]
        b, t = x.shape[:2]
        t_out = (t - kt) // st + 1
        taps = [x[:, i:i + st * (t_out - 1) + 1:st] for i in range(kt)]
        frames = (jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]).astype(dtype)
        kernel = self.kernel[...].astype(dtype).transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * cin, cout)
        y = jax.lax.conv_general_dilated(frames.reshape((b * t_out,) + frames.shape[2:]), kernel, self.strides[1:],
                                         self.padding[1:], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y.reshape((b, t_out) + y.shape[1:]), new


def _norm(dim: int, param_dtype) -> RMSNorm:
    return RMSNorm(dim, eps=NORM_EPS, param_dtype=param_dtype)


class ResidualBlock(nnx.Module):
    """norm, SiLU, conv3, norm, SiLU, conv3 plus a (1x1x1) skip: ``[B, T, H, W, cin]`` -> ``[..., cout]``."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _norm(in_dim, param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
        self.norm2 = _norm(out_dim, param_dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, **kw) if in_dim != out_dim else None

    def __call__(self, x, cache=None, first=False):
        skip = self.conv_shortcut(x)[0] if self.conv_shortcut is not None else x
        h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), _sub(cache, "conv1"))
        h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), _sub(cache, "conv2"))
        return constrain(h + skip, ACT), {"conv1": c1, "conv2": c2}


class AttentionBlock(nnx.Module):
    """One-head self-attention over each frame's positions, plus the input: ``[B, T, H, W, C]`` -> same."""

    def __init__(self, dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = _norm(dim, param_dtype)
        self.to_qkv = Conv(dim, 3 * dim, 1, **kw)
        self.proj = Conv(dim, dim, 1, **kw)

    def __call__(self, x, cache=None, first=False):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x.reshape(b * t, h, w, c)))
        q, k, v = jnp.split(qkv.reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)
        out = self.proj(attend(q, k, v).reshape(b * t, h, w, c))
        return constrain(x + out.reshape(x.shape).astype(x.dtype), ACT), None


def _frames_2d(fn, x: jax.Array) -> jax.Array:
    """Apply a per-frame 2-D op to ``[B, T, H, W, C]``."""
    b, t = x.shape[:2]
    y = fn(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape((b, t) + y.shape[1:])


class Resample(nnx.Module):
    """``mode``: ``upsample2d`` / ``upsample3d`` (``[B, T, H, W, C]`` -> ``[B, 1 + 2 (T - 1) or T, 2H, 2W, out]``
    with ``out`` = ``upsample_out_dim``) or ``downsample2d`` / ``downsample3d`` (-> ``[B, T or 1 + (T - 1) / 2,
    H / 2, W / 2, C]``; 3-D counts are for the chunk holding frame 0, later chunks give 2T or T / 2 frames)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        if mode.startswith("up"):
            self.conv = Conv(dim, upsample_out_dim or dim // 2, 3, padding=((1, 1), (1, 1)), **kw)
        else:
            self.conv = Conv(dim, dim, 3, strides=2, padding=((0, 1), (0, 1)), **kw)
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)
        else:
            self.time_conv = None

    @staticmethod
    def _interleave(y: jax.Array) -> jax.Array:
        """``[B, T, H, W, 2C]`` -> ``[B, 2T, H, W, C]``: channel half j becomes frame ``2t + j``."""
        b, t, h, w, c2 = y.shape
        y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
        return y.reshape(b, 2 * t, h, w, c2 // 2)

    def _time_up(self, x, cache, first):
        if not first:
            y, cache = self.time_conv(x, cache)
            return self._interleave(y), cache
        # Frame 0 stays one frame (diffusers' "Rep"); frames 1.. start the time conv's stream from zeros.
        if x.shape[1] == 1:
            return x, jnp.zeros(x.shape[:1] + (self.time_conv.context,) + x.shape[2:], x.dtype)
        y, cache = self.time_conv(x[:, 1:], None)
        return jnp.concatenate([x[:, :1], self._interleave(y)], axis=1), cache

    def _time_down(self, x, cache, first):
        # A stride-2 kernel-3 conv over the stream that starts at frame 0, which itself passes through; the
        # cache is the last frame seen (the first tap of the next window).
        if first:
            y = x[:, :1]
            if x.shape[1] >= 3:
                y = jnp.concatenate([y, self.time_conv(x)[0]], axis=1)
        else:
            y = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))[0]
        return y, x[:, -1:]

    def __call__(self, x, cache=None, first=False):
        new = None
        if self.mode == "upsample3d":
            x, new = self._time_up(x, cache, first)
        if self.mode.startswith("up"):
            x = _frames_2d(lambda f: self.conv(jnp.repeat(jnp.repeat(f, 2, axis=1), 2, axis=2)), x)
        else:
            x = _frames_2d(self.conv, x)
        if self.mode == "downsample3d":
            x, new = self._time_down(x, cache, first)
        return constrain(x, ACT), new


def avg_down(x: jax.Array, out_channels: int, factor_t: int, factor_s: int) -> jax.Array:
    """Wan2.2's down shortcut (``AvgDown3D``): ``[B, T, H, W, C]`` -> ``[B, ceil(T / ft), H / fs, W / fs, out]``.
    Zero frames are prepended to a multiple of ``factor_t``; each (t, h, w) block is folded into channels
    (``c * ft * fs * fs + ...``) and groups of consecutive channels are averaged down to ``out_channels``."""
    pad = -x.shape[1] % factor_t
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, t // factor_t, h // factor_s, w // factor_s, out_channels, -1)
    return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, out_channels: int, factor_t: int, factor_s: int, first: bool) -> jax.Array:
    """Wan2.2's up shortcut (``DupUp3D``): ``[B, T, H, W, C]`` -> ``[B, T ft, H fs, W fs, out]`` (the chunk with
    frame 0 loses its first ``ft - 1`` frames): channels repeated, then unfolded into time and space."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_channels * factor_t * factor_s ** 2 // c, axis=-1)
    x = x.reshape(b, t, h, w, out_channels, factor_t, factor_s, factor_s).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_channels)
    return x[:, factor_t - 1:] if first else x


class MidBlock(nnx.Module):
    """ResidualBlock, AttentionBlock, ResidualBlock at the lowest resolution."""

    def __init__(self, dim: int, **kw):
        self.resnets = nnx.List([ResidualBlock(dim, dim, **kw), ResidualBlock(dim, dim, **kw)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw)])

    def __call__(self, x, cache=None, first=False):
        x, c0 = self.resnets[0](x, _sub(cache, 0))
        x, _ = self.attentions[0](x)
        x, c1 = self.resnets[1](x, _sub(cache, 1))
        return x, [c0, c1]


class ResidualDownBlock(nnx.Module):
    """Wan2.2 encoder level: ResidualBlocks, optional Resample, plus the ``avg_down`` shortcut of the input."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool, **kw):
        factor = (2 if temporal else 1) * (4 if down else 1)
        if in_dim * factor % out_dim:
            raise ConfigError(f"a Wan2.2 down level maps {in_dim} -> {out_dim} channels with a x{factor} fold: "
                              f"{in_dim} * {factor} must divide by {out_dim}")
        self.shortcut = (out_dim, 2 if temporal else 1, 2 if down else 1)
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks)])
        self.downsampler = Resample(out_dim, "downsample3d" if temporal else "downsample2d", **kw) if down else None

    def __call__(self, x, cache=None, first=False):
        skip = avg_down(x, *self.shortcut)
        caches = []
        for i, block in enumerate(self.resnets):
            x, c = block(x, _sub(cache, "resnets")[i] if cache is not None else None)
            caches.append(c)
        down = None
        if self.downsampler is not None:
            x, down = self.downsampler(x, _sub(cache, "downsampler"), first)
        return constrain(x + skip.astype(x.dtype), ACT), {"resnets": caches, "downsampler": down}


class UpBlock(nnx.Module):
    """Wan2.1 decoder level: ``num_res_blocks + 1`` ResidualBlocks then an optional Resample (to half width)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample_mode: str | None, **kw):
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks + 1)])
        self.upsamplers = nnx.List([Resample(out_dim, upsample_mode, **kw)] if upsample_mode else [])

    def __call__(self, x, cache=None, first=False):
        caches = []
        for i, block in enumerate(self.resnets):
            x, c = block(x, None if cache is None else cache["resnets"][i])
            caches.append(c)
        up = None
        if len(self.upsamplers):
            x, up = self.upsamplers[0](x, _sub(cache, "upsampler"), first)
        return x, {"resnets": caches, "upsampler": up}


class ResidualUpBlock(nnx.Module):
    """Wan2.2 decoder level: ResidualBlocks, optional Resample (same width), plus the ``dup_up`` shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool, **kw):
        factor = (2 if temporal else 1) * 4
        if up and out_dim * factor % in_dim:
            raise ConfigError(f"a Wan2.2 up level maps {in_dim} -> {out_dim} channels with a x{factor} unfold: "
                              f"{out_dim} * {factor} must divide by {in_dim}")
        self.shortcut = (out_dim, 2 if temporal else 1, 2) if up else None
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks + 1)])
        self.upsampler = (Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_out_dim=out_dim, **kw)
                          if up else None)

    def __call__(self, x, cache=None, first=False):
        skip = dup_up(x, *self.shortcut, first) if self.shortcut is not None else None
        caches = []
        for i, block in enumerate(self.resnets):
            x, c = block(x, None if cache is None else cache["resnets"][i])
            caches.append(c)
        up = None
        if self.upsampler is not None:
            x, up = self.upsampler(x, _sub(cache, "upsampler"), first)
        if skip is not None:
            x = constrain(x + skip.astype(x.dtype), ACT)
        return x, {"resnets": caches, "upsampler": up}


# ------------------------------------------------------------------------------------------------- encoder, decoder
class Encoder3d(nnx.Module):
    """patchified video ``[B, T, H, W, in_channels]`` -> ``[B, 1 + (T - 1) / 4, H / 8, W / 8, 2 z]`` (for the
    chunk holding frame 0; a later chunk of 4 frames gives one latent frame)."""

    def __init__(self, cfg: WanVAEConfig, **kw):
        dims = [cfg.base_dim * m for m in (1,) + tuple(cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, **kw)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = cfg.temporal_downsample[i] if i != last else False
            if cfg.is_residual:
                blocks.append(ResidualDownBlock(in_dim, out_dim, cfg.num_res_blocks, temporal, i != last, **kw))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, **kw))
                in_dim = out_dim
            if i != last:
                blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d", **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = _norm(dims[-1], kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, **kw)

    def __call__(self, x, cache=None, first=False):
        x, c_in = self.conv_in(x, _sub(cache, "conv_in"))
        x = constrain(x, ACT)
        down = []
        for i, block in enumerate(self.down_blocks):
            x, c = block(x, None if cache is None else cache["down_blocks"][i], first)
            down.append(c)
        x, mid = self.mid_block(x, _sub(cache, "mid_block"))
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _sub(cache, "conv_out"))
        return x, {"conv_in": c_in, "down_blocks": down, "mid_block": mid, "conv_out": c_out}


class Decoder3d(nnx.Module):
    """latents ``[B, T, h, w, z]`` -> patchified video ``[B, 1 + 4 (T - 1), 8h, 8w, out_channels]`` (for the
    chunk holding frame 0; each later latent frame gives 4 frames)."""

    def __init__(self, cfg: WanVAEConfig, **kw):
        mult = tuple(cfg.dim_mult)
        dims = [cfg.decoder_dim * m for m in (mult[-1],) + mult[::-1]]
        last = len(mult) - 1
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            up = i != last
            temporal = cfg.temporal_upsample[i] if up else False
            if cfg.is_residual:
                blocks.append(ResidualUpBlock(in_dim, out_dim, cfg.num_res_blocks, temporal, up, **kw))
            else:
                in_dim = in_dim // 2 if i > 0 else in_dim  # the previous level's upsampler halved the width
                mode = ("upsample3d" if temporal else "upsample2d") if up else None
                blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = _norm(dims[-1], kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, **kw)

    def __call__(self, x, cache=None, first=False):
        x, c_in = self.conv_in(x, _sub(cache, "conv_in"))
        x, mid = self.mid_block(constrain(x, ACT), _sub(cache, "mid_block"))
        ups = []
        for i, block in enumerate(self.up_blocks):
            x, c = block(x, None if cache is None else cache["up_blocks"][i], first)
            ups.append(c)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _sub(cache, "conv_out"))
        return x, {"conv_in": c_in, "mid_block": mid, "up_blocks": ups, "conv_out": c_out}


# ------------------------------------------------------------------------------------------------- patchify
def patchify(x: jax.Array, p: int) -> jax.Array:
    """``[B, T, H, W, C]`` -> ``[B, T, H/p, W/p, C p p]`` with channel order ``(c, pw, ph)`` (diffusers')."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of ``patchify``: ``[B, T, h, w, C p p]`` -> ``[B, T, h p, w p, C]``."""
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


# ------------------------------------------------------------------------------------------------- the VAE
def _run_chunks(step, first_chunk, chunks, chunking: str):
    """``step(x, cache, first) -> (y, cache)`` over ``first_chunk`` ``[B, t0, ...]`` then ``chunks``
    ``[B, n, t, ...]`` (n may be 0), threading the cache; -> ``[B, T', ...]``."""
    out, cache = step(first_chunk, None, True)
    n = chunks.shape[1]
    if n == 0:
        return out
    if chunking == "scan":
        def body(carry, chunk):
            y, carry = step(chunk, carry, False)
            return carry, y

        _, ys = jax.lax.scan(body, cache, jnp.moveaxis(chunks, 1, 0))
        ys = jnp.moveaxis(ys, 0, 1)
        rest = ys.reshape((ys.shape[0], -1) + ys.shape[3:])
    else:
        outs = []
        for i in range(n):
            y, cache = step(chunks[:, i], cache, False)
            outs.append(y)
        rest = jnp.concatenate(outs, axis=1)
    return jnp.concatenate([out, rest], axis=1)


class WanVAE(nnx.Module):
    """Encoder, quant convs and decoder of ``AutoencoderKLWan``. Videos are float in [-1, 1], channels last."""

    def __init__(self, cfg: WanVAEConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder3d(cfg, **kw)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, **kw)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, **kw)
        self.decoder = Decoder3d(cfg, **kw)

    def _check(self, shape, what: str, channels: int, factor: int):
        if len(shape) != 5 or shape[-1] != channels:
            raise DataError(f"{what} must be [batch, frames, height, width, {channels}], got {tuple(shape)}")
        if shape[2] % factor or shape[3] % factor:
            raise DataError(f"{what} height and width must divide by {factor}, got {shape[2]}x{shape[3]}: crop "
                            "or resize it")

    def encode(self, video: jax.Array, *, chunking: str = "scan") -> tuple[jax.Array, jax.Array]:
        """video ``[B, 1 + 4k, H, W, C]`` -> posterior (mean, logvar), each ``[B, 1 + k, H/s, W/s, z]`` float32.

        ``chunking``: ``"scan"`` (frame 0, then chunks of 4 frames in a ``lax.scan``), ``"unroll"`` (the same as a
        static loop) or ``"none"`` (one pass; same numbers)."""
        cfg = self.cfg
        self._check(video.shape, "video", cfg.video_channels, cfg.spatial_factor)
        frames = video.shape[1]
        factor = cfg.temporal_factor
        if (frames - 1) % factor:
            raise DataError(f"video has {frames} frames: the Wan VAE needs 1 + {factor}k frames (1, 5, 9, ...): "
                            f"trim it to {1 + (frames - 1) // factor * factor}")
        _check_chunking(chunking)
        x = patchify(video, cfg.patch_size)
        step = lambda chunk, cache, first: self.encoder(chunk, cache, first)
        if chunking == "none":
            h = step(x, None, True)[0]
        else:
            b, t = x.shape[:2]
            rest = x[:, 1:].reshape((b, (t - 1) // cfg.temporal_factor, cfg.temporal_factor) + x.shape[2:])
            h = _run_chunks(step, x[:, :1], rest, chunking)
        h = self.quant_conv(h)[0].astype(jnp.float32)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array, *, chunking: str = "scan", clip: bool = True) -> jax.Array:
        """latents ``[B, 1 + k, h, w, z]`` -> video ``[B, 1 + 4k, h s, w s, C]`` float32 (clipped to [-1, 1]
        unless ``clip=False``). ``chunking``: ``"scan"`` / ``"unroll"`` (one latent frame at a time, as
        diffusers) or ``"none"`` (one pass; same numbers)."""
        cfg = self.cfg
        self._check(z.shape, "latents", cfg.z_dim, 1)
        _check_chunking(chunking)
        x = self.post_quant_conv(z)[0]
        step = lambda chunk, cache, first: self.decoder(chunk, cache, first)
        if chunking == "none":
            out = step(x, None, True)[0]
        else:
            out = _run_chunks(step, x[:, :1], x[:, 1:, None], chunking)
        out = unpatchify(out.astype(jnp.float32), cfg.patch_size)
        return jnp.clip(out, -1.0, 1.0) if clip else out


    def decode_start(self, z0: jax.Array) -> tuple[jax.Array, Any]:
        """Begin a streaming decode: the first latent ``[B, 1, h, w, z]`` -> (its frame ``[B, 1, H, W, C]`` in
        [-1, 1], the decoder's causal cache). Continue with ``decode_continue``."""
        self._check(z0.shape, "latents", self.cfg.z_dim, 1)
        y, cache = self.decoder(self.post_quant_conv(z0)[0], None, True)
        return jnp.clip(unpatchify(y.astype(jnp.float32), self.cfg.patch_size), -1.0, 1.0), cache

    def decode_continue(self, z: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        """The next latents ``[B, n, h, w, z]`` of a streaming decode -> (their ``4n`` frames ``[B, 4n, H, W, C]``,
        the updated cache): segment by segment, the same frames as one ``decode`` of the whole sequence (the causal
        cache carries every earlier latent's context), at fixed memory per segment."""
        self._check(z.shape, "latents", self.cfg.z_dim, 1)
        x = self.post_quant_conv(z)[0]

        def body(carry, chunk):
            y, carry = self.decoder(chunk, carry, False)
            return carry, y

        cache, ys = jax.lax.scan(body, cache, jnp.moveaxis(x[:, :, None], 1, 0))
        ys = jnp.moveaxis(ys, 0, 1)
        out = unpatchify(ys.reshape((ys.shape[0], -1) + ys.shape[3:]).astype(jnp.float32), self.cfg.patch_size)
        return jnp.clip(out, -1.0, 1.0), cache


def _check_chunking(chunking: str) -> None:
    if chunking not in CHUNKINGS:
        raise ConfigError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {chunking!r}")


# ---------------------------------------------------------------------------------------------- latent helpers
def _stats(cfg: WanVAEConfig, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    if not cfg.latents_mean:
        raise ConfigError("this Wan VAE config has no latents_mean / latents_std: set them (from the checkpoint's "
                          "config.json or measured on encoded data) before normalising latents")
    return jnp.asarray(cfg.latents_mean, z.dtype), jnp.asarray(cfg.latents_std, z.dtype)


def normalize(z: jax.Array, cfg: WanVAEConfig) -> jax.Array:
    """Posterior latents ``[..., z]`` -> the DiT's scale: ``(z - latents_mean) / latents_std``."""
    mean, std = _stats(cfg, z)
    return (z - mean) / std


def denormalize(z: jax.Array, cfg: WanVAEConfig) -> jax.Array:
    """Inverse of ``normalize``: ``z * latents_std + latents_mean``."""
    mean, std = _stats(cfg, z)
    return z * std + mean


# ------------------------------------------------------------------------------------------ analytic FLOPs
def _conv(kvol: int, cin: int, cout: int, t: int, h: int, w: int) -> float:
    return 2.0 * kvol * cin * cout * t * h * w


def _res(cin: int, cout: int, t, h, w) -> float:
    return (_conv(27, cin, cout, t, h, w) + _conv(27, cout, cout, t, h, w)
            + (_conv(1, cin, cout, t, h, w) if cin != cout else 0.0))


def _attn(c: int, t, h, w) -> float:
    return _conv(1, c, 4 * c, t, h, w) + 4.0 * t * (h * w) ** 2 * c


def _resample(mode: str, c: int, out: int, t, h, w) -> tuple[float, int, int, int]:
    """FLOPs and the output (t, h, w) of a Resample on the whole stream."""
    flops = 0.0
    if mode == "upsample3d":
        flops += _conv(3, c, 2 * c, t - 1, h, w)
        t = 1 + 2 * (t - 1)
    if mode.startswith("up"):
        h, w = 2 * h, 2 * w
        flops += _conv(9, c, out, t, h, w)
    else:
        h, w = (h + 1 - 3) // 2 + 1, (w + 1 - 3) // 2 + 1
        flops += _conv(9, c, c, t, h, w)
        if mode == "downsample3d":
            flops += _conv(3, c, c, (t - 1) // 2, h, w)
            t = 1 + (t - 1) // 2
    return flops, t, h, w


def encoder_flops(cfg: WanVAEConfig, frames: int, height: int, width: int) -> float:
    """Forward FLOPs (convolutions and attention) of ``encode`` for one video."""
    t, h, w = frames, height // cfg.patch_size, width // cfg.patch_size
    dims = [cfg.base_dim * m for m in (1,) + tuple(cfg.dim_mult)]
    last = len(cfg.dim_mult) - 1
    total = _conv(27, cfg.in_channels, dims[0], t, h, w)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(cfg.num_res_blocks):
            total += _res(cin, cout, t, h, w)
            cin = cout
        if i != last:
            temporal = cfg.temporal_downsample[i]
            flops, t, h, w = _resample("downsample3d" if temporal else "downsample2d", cout, cout, t, h, w)
            total += flops
    c = dims[-1]
    total += 2 * _res(c, c, t, h, w) + _attn(c, t, h, w) + _conv(27, c, 2 * cfg.z_dim, t, h, w)
    return total + _conv(1, 2 * cfg.z_dim, 2 * cfg.z_dim, t, h, w)


def decoder_flops(cfg: WanVAEConfig, frames: int, height: int, width: int) -> float:
    """Forward FLOPs of ``decode`` producing one video of ``frames`` x ``height`` x ``width``."""
    t, h, w, z = cfg.latent_shape(frames, height, width)
    mult = tuple(cfg.dim_mult)
    dims = [cfg.decoder_dim * m for m in (mult[-1],) + mult[::-1]]
    last = len(mult) - 1
    total = _conv(1, z, z, t, h, w) + _conv(27, z, dims[0], t, h, w)
    total += 2 * _res(dims[0], dims[0], t, h, w) + _attn(dims[0], t, h, w)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0 and not cfg.is_residual:
            cin //= 2
        for _ in range(cfg.num_res_blocks + 1):
            total += _res(cin, cout, t, h, w)
            cin = cout
        if i != last:
            mode = "upsample3d" if cfg.temporal_upsample[i] else "upsample2d"
            flops, t, h, w = _resample(mode, cout, cout if cfg.is_residual else cout // 2, t, h, w)
            total += flops
    return total + _conv(27, dims[-1], cfg.out_channels, t, h, w)


def flops_per_video(cfg: WanVAEConfig, frames: int, height: int, width: int) -> float:
    """Forward FLOPs of encode + decode of one ``frames`` x ``height`` x ``width`` video."""
    return encoder_flops(cfg, frames, height, width) + decoder_flops(cfg, frames, height, width)


# ---------------------------------------------------------------------------------------------- converter
def config_from_hf(config: dict) -> WanVAEConfig:
    """Our config from a diffusers ``AutoencoderKLWan`` ``config.json`` dict."""
    name = config.get("_class_name", "AutoencoderKLWan")
    if name != "AutoencoderKLWan":
        raise CheckpointError(f"config.json describes a {name}, expected AutoencoderKLWan: pass the vae/ folder of a "
                              "Wan2.1 / Wan2.2 diffusers checkpoint")
    if config.get("attn_scales"):
        raise CheckpointError(f"attn_scales={config['attn_scales']}: diffusers' Wan encoder cannot run attention in "
                              "its down blocks (no Wan checkpoint has any); this converter reads attn_scales=[] only")
    base = WanVAEConfig()
    try:
        z_dim = int(config.get("z_dim", base.z_dim))
        mean = config.get("latents_mean", base.latents_mean if z_dim == base.z_dim else ())
        std = config.get("latents_std", base.latents_std if z_dim == base.z_dim else ())
        return WanVAEConfig(
            base_dim=int(config.get("base_dim", base.base_dim)), decoder_base_dim=config.get("decoder_base_dim"),
            z_dim=z_dim, dim_mult=tuple(int(m) for m in config.get("dim_mult", base.dim_mult)),
            num_res_blocks=int(config.get("num_res_blocks", base.num_res_blocks)),
            temporal_downsample=tuple(bool(b) for b in config.get("temperal_downsample", base.temporal_downsample)),
            is_residual=bool(config.get("is_residual", False)), in_channels=int(config.get("in_channels", 3)),
            out_channels=int(config.get("out_channels", 3)), patch_size=int(config.get("patch_size") or 1),
            latents_mean=tuple(float(v) for v in mean or ()), latents_std=tuple(float(v) for v in std or ()))
    except ConfigError as err:
        raise CheckpointError(f"config.json is not a usable AutoencoderKLWan config: {err}") from err


def build(cfg: WanVAEConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32) -> WanVAE:
    return WanVAE(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def map_weights(tensors: dict[str, np.ndarray], cfg: WanVAEConfig) -> dict[str, np.ndarray]:
    """diffusers names -> our paths: dots become slashes, ``resample.1`` (the Sequential's conv) -> ``conv``,
    conv ``weight`` ``[out, in, *k]`` -> ``kernel`` ``[*k, in, out]``, RMS ``gamma`` ``[C, 1, ...]`` -> ``scale``."""
    out = {}
    for name, value in tensors.items():
        parts = name.replace(".resample.1.", ".conv.").split(".")
        value = np.asarray(value)
        if parts[-1] == "gamma":
            parts[-1], value = "scale", value.reshape(-1)
        elif parts[-1] == "weight":
            if value.ndim not in (4, 5):
                raise CheckpointError(f"tensor {name} has shape {value.shape}: expected a 2-D or 3-D conv weight")
            parts[-1], value = "kernel", np.moveaxis(value, (0, 1), (-1, -2))
        out["/".join(parts)] = value
    return out


CONVERTER = Converter(name="wan-vae", config_type=WanVAEConfig,
                      source="the vae/ folder of Wan-AI/Wan2.1-*-Diffusers or Wan-AI/Wan2.2-TI2V-5B-Diffusers",
                      config_from_hf=config_from_hf, build=build, map_weights=map_weights,
                      weights_name="diffusion_pytorch_model")
