"""The GAIA-style motion/appearance VAE of InstructAvatar (as released), channels-last, Flax NNX.

Two encoders of the Stable Diffusion KL-autoencoder design read RGB frames in [-1, 1]:

- the appearance encoder (SD kl-f4 style: ``len(channel_mult) - 1`` stride-2 downsamples) gives a Gaussian
  posterior over an appearance latent ``[N, S/4, S/4, C]`` (64x64x3 at 256 px);
- the motion encoder, of the same design with ``motion_extra_down`` more stride-2 downsamples, gives a motion
  latent ``[N, S/16, S/16, C]`` (16x16x3 = 768-d at 256 px, 4x4x3 = 48-d at 64 px).

The decoder upsamples the motion latent (nearest neighbour) to the appearance grid, concatenates the two and
decodes SD-style back to ``[N, S, S, 3]``. Trained to rebuild frame i from the appearance latent of frame j and
the motion latent of frame i (of another identity, see the ``motion_vae`` task), the motion latent carries
expression and pose and the appearance latent the face.

An optional PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator`` layout, GroupNorm instead of
BatchNorm so it has no batch statistics) lives in the same module, so one optimizer trains both; the task keeps
their gradients apart (see :mod:`avatarjax.train.objectives.motion_vae`). It exists only when
``adversarial_weight`` or ``perceptual_weight`` is non-zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.nn.attention import attend
from avatarjax.nn.conv import Conv, Downsample2d, GroupNorm, ResBlock2d, Upsample2d
from avatarjax.parallel.mesh import constrain

ACT = ("batch", "height", "width", "act_channels")
LOGVAR_RANGE = (-30.0, 20.0)  # SD's clamp of the posterior log-variance


@dataclasses.dataclass(frozen=True)
class MotionVAEConfig:
    frame_size: int = 64  # S: frames are [S, S, 3]
    channels: int = 32  # base width; level i has channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4)  # len - 1 downsamples for the appearance latent (S/4 here)
    num_res_blocks: int = 1  # per encoder level (the decoder has one more, as in SD)
    latent_channels: int = 3
    motion_extra_down: int = 2  # extra stride-2 downsamples of the motion encoder (motion latent S/16)
    mid_attention: bool = True  # SD's single-head self-attention between the two mid ResBlocks
    groups: int = 32  # GroupNorm groups (gcd with the channel count)
    kl_weight: float = 1e-6  # on the KL summed over latent dims, relative to the L1 summed over pixels (SD)
    l1_weight: float = 1.0
    # extra L1 weight on the "moving" pixels (those where source and target differ by more than
    # MOVING_THRESHOLD): without it copying the source frame is a deep local optimum that leaves the motion latent
    # unused (see the motion_vae objective's docstring); 0 = the released objective
    moving_weight: float = 0.0
    perceptual_weight: float = 0.0  # feature matching on discriminator features (no LPIPS weights offline)
    adversarial_weight: float = 0.0  # hinge GAN generator loss
    disc_channels: int = 64
    disc_layers: int = 3
    disc_start: int = 0  # step from which the adversarial and perceptual terms are on

    def __post_init__(self):
        factor = 2 ** (len(self.channel_mult) - 1 + self.motion_extra_down)
        if self.frame_size % factor:
            raise ValueError(f"frame_size={self.frame_size} must divide by 2**(len(channel_mult) - 1 + "
                             f"motion_extra_down) = {factor}")

    @property
    def appearance_size(self) -> int:
        return self.frame_size // 2 ** (len(self.channel_mult) - 1)

    @property
    def motion_size(self) -> int:
        return self.appearance_size // 2 ** self.motion_extra_down

    @property
    def motion_dim(self) -> int:
        return self.motion_size ** 2 * self.latent_channels

    @property
    def use_discriminator(self) -> bool:
        return self.adversarial_weight > 0 or self.perceptual_weight > 0


class AttentionBlock(nnx.Module):
    """SD's spatial self-attention (one head over all positions) with a residual: ``[b, h, w, c]`` -> same."""

    def __init__(self, channels: int, groups: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = GroupNorm(channels, groups, param_dtype=param_dtype)
        self.qkv = Conv(channels, 3 * channels, 1, **kw)
        self.proj = Conv(channels, channels, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 1, 3 * c), 3, axis=-1)
        return x + self.proj(attend(q, k, v).reshape(b, h, w, c))


class MidBlock(nnx.Module):
    """ResBlock, (attention), ResBlock at the lowest resolution."""

    def __init__(self, channels: int, cfg: MotionVAEConfig, **kw):
        self.res1 = ResBlock2d(channels, channels, groups=cfg.groups, **kw)
        self.attn = AttentionBlock(channels, cfg.groups, **kw) if cfg.mid_attention else None
        self.res2 = ResBlock2d(channels, channels, groups=cfg.groups, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return constrain(self.res2(x), ACT)


class Encoder(nnx.Module):
    """frames ``[N, S, S, 3]`` -> (mean, logvar) ``[N, S / 2**(len(mult) - 1), ..., C]``.

    conv_in; per level ``num_res_blocks`` ResBlocks then a stride-2 Downsample (not after the last level); mid
    block; GroupNorm, SiLU, conv_out to ``2 C`` (mean and log-variance, clamped to ``LOGVAR_RANGE``).
    """

    def __init__(self, cfg: MotionVAEConfig, channel_mult: tuple[int, ...], **kw):
        widths = [cfg.channels * m for m in channel_mult]
        self.conv_in = Conv(3, widths[0], 3, **kw)
        blocks, downs, c = [], [], widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock2d(c, width, groups=cfg.groups, **kw))
                c = width
            if level < len(widths) - 1:
                downs.append(Downsample2d(c, **kw))
        self.blocks, self.downs = nnx.List(blocks), nnx.List(downs)
        self.num_res_blocks = cfg.num_res_blocks
        self.mid = MidBlock(c, cfg, **kw)
        self.norm_out = GroupNorm(c, cfg.groups, param_dtype=kw["param_dtype"])
        self.conv_out = Conv(c, 2 * cfg.latent_channels, 3, **kw)

    def __call__(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = constrain(self.conv_in(frames), ACT)
        for level in range(len(self.downs) + 1):
            for block in self.blocks[level * self.num_res_blocks:(level + 1) * self.num_res_blocks]:
                x = constrain(block(x), ACT)
            if level < len(self.downs):
                x = constrain(self.downs[level](x), ACT)
        x = self.conv_out(jax.nn.silu(self.norm_out(self.mid(x)))).astype(jnp.float32)
        mean, logvar = jnp.split(x, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """z ``[N, a, a, 2 C]`` (appearance ++ upsampled motion) -> frames ``[N, S, S, 3]`` (unbounded, ~[-1, 1]).

    conv_in; mid block; per level from the deepest ``num_res_blocks + 1`` ResBlocks then a nearest x2 Upsample
    (not after level 0); GroupNorm, SiLU, conv_out to RGB.
    """

    def __init__(self, cfg: MotionVAEConfig, **kw):
        widths = [cfg.channels * m for m in cfg.channel_mult]
        c = widths[-1]
        self.conv_in = Conv(2 * cfg.latent_channels, c, 3, **kw)
        self.mid = MidBlock(c, cfg, **kw)
        blocks, ups = [], []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock2d(c, widths[level], groups=cfg.groups, **kw))
                c = widths[level]
            if level > 0:
                ups.append(Upsample2d(c, **kw))
        self.blocks, self.ups = nnx.List(blocks), nnx.List(ups)
        self.per_level = cfg.num_res_blocks + 1
        self.norm_out = GroupNorm(c, cfg.groups, param_dtype=kw["param_dtype"])
        self.conv_out = Conv(c, 3, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid(constrain(self.conv_in(z), ACT))
        for i in range(len(self.ups) + 1):
            for block in self.blocks[i * self.per_level:(i + 1) * self.per_level]:
                x = constrain(block(x), ACT)
            if i < len(self.ups):
                x = constrain(self.ups[i](x), ACT)
        return self.conv_out(jax.nn.silu(self.norm_out(x))).astype(jnp.float32)


class PatchDiscriminator(nnx.Module):
    """PatchGAN: frames ``[N, S, S, 3]`` -> (logits ``[N, s', s', 1]``, hidden feature maps).

    4x4 convs with padding 1: ``disc_layers`` stride-2 convs (widths ``disc_channels * min(2**n, 8)``), one
    stride-1 conv, a stride-1 conv to one logit per patch; GroupNorm after all but the first, LeakyReLU(0.2).
    """

    def __init__(self, cfg: MotionVAEConfig, **kw):
        widths = [cfg.disc_channels * min(2 ** n, 8) for n in range(cfg.disc_layers + 1)]
        pad = ((1, 1), (1, 1))
        convs, norms, c = [], [], 3
        for n, width in enumerate(widths):
            convs.append(Conv(c, width, 4, strides=2 if n < cfg.disc_layers else 1, padding=pad, **kw))
            norms.append(GroupNorm(width, cfg.groups, param_dtype=kw["param_dtype"]) if n else None)
            c = width
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.logits = Conv(c, 1, 4, padding=pad, **kw)

    def __call__(self, frames: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        x, features = frames, []
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            x = jax.nn.leaky_relu(norm(x) if norm is not None else x, 0.2)
            features.append(constrain(x, ACT))
        return self.logits(x).astype(jnp.float32), features


class MotionVAE(nnx.Module):
    """Appearance encoder, motion encoder, decoder (and the optional discriminator). Frames are float in [-1, 1]."""

    def __init__(self, cfg: MotionVAEConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        mult = tuple(cfg.channel_mult)
        self.appearance_encoder = Encoder(cfg, mult, **kw)
        self.motion_encoder = Encoder(cfg, mult + (mult[-1],) * cfg.motion_extra_down, **kw)
        self.decoder = Decoder(cfg, **kw)
        self.discriminator = PatchDiscriminator(cfg, **kw) if cfg.use_discriminator else None

    @property
    def motion_dim(self) -> int:
        return self.cfg.motion_dim

    def encode_appearance(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """frames ``[N, S, S, 3]`` -> posterior (mean, logvar), each ``[N, S/4, S/4, C]`` float32."""
        return self.appearance_encoder(frames)

    def encode_motion(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """frames ``[N, S, S, 3]`` -> posterior (mean, logvar), each ``[N, S/16, S/16, C]`` float32."""
        return self.motion_encoder(frames)

    def decode(self, appearance: jax.Array, motion: jax.Array) -> jax.Array:
        """appearance ``[N, a, a, C]``, motion ``[N, m, m, C]`` -> frames ``[N, S, S, 3]`` float32."""
        factor = appearance.shape[1] // motion.shape[1]
        motion = jnp.repeat(jnp.repeat(motion, factor, axis=1), factor, axis=2)
        return self.decoder(jnp.concatenate([appearance, motion.astype(appearance.dtype)], axis=-1))


# ---------------------------------------------------------------------------------------------- helpers
def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """The reparameterised sample ``mean + exp(logvar / 2) * eps``."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the leading dim: ``[N, ...]`` -> ``[N]``."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def to_model_range(frames) -> jax.Array:
    """uint8 frames ``[..., 3]`` -> float32 in [-1, 1]."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def to_uint8(frames) -> np.ndarray:
    """frames in [-1, 1] (clipped) -> uint8 numpy ``[..., 3]``."""
    return np.asarray(jnp.round((jnp.clip(frames, -1.0, 1.0) + 1.0) * 127.5), np.uint8)


def flatten_motion(motion: jax.Array) -> jax.Array:
    """motion latents ``[..., m, m, C]`` -> flat per-frame vectors ``[..., m * m * C]`` (the generator's view)."""
    return motion.reshape(motion.shape[:-3] + (-1,))


def unflatten_motion(motion: jax.Array, cfg: MotionVAEConfig) -> jax.Array:
    """flat vectors ``[..., motion_dim]`` -> ``[..., m, m, C]``."""
    return motion.reshape(motion.shape[:-1] + (cfg.motion_size, cfg.motion_size, cfg.latent_channels))


def psnr(reconstruction: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-image PSNR (dB) of frames ``[N, S, S, 3]`` in [-1, 1] (the reconstruction clipped), on the [0, 1]
    scale: ``[N]``. ``mask`` ``[N, S, S, 1]`` restricts it to some pixels."""
    err = jnp.square((jnp.clip(reconstruction, -1.0, 1.0) - target) / 2.0)
    weight = jnp.ones_like(err[..., :1]) if mask is None else mask.astype(err.dtype)
    mse = jnp.sum(err * weight, axis=(1, 2, 3)) / jnp.maximum(3.0 * jnp.sum(weight, axis=(1, 2, 3)), 1.0)
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


# ------------------------------------------------------------------------------------------ analytic FLOPs
def _conv(k: int, cin: int, cout: int, size: int) -> float:
    """Forward FLOPs of a k x k conv producing a ``size x size`` map."""
    return 2.0 * k * k * cin * cout * size * size


def _res(cin: int, cout: int, size: int) -> float:
    return _conv(3, cin, cout, size) + _conv(3, cout, cout, size) + (_conv(1, cin, cout, size) if cin != cout else 0)


def _mid(cfg: MotionVAEConfig, c: int, size: int) -> float:
    attn = _conv(1, c, 4 * c, size) + 4.0 * size ** 4 * c if cfg.mid_attention else 0.0
    return 2 * _res(c, c, size) + attn


def _encoder_flops(cfg: MotionVAEConfig, channel_mult: tuple[int, ...]) -> float:
    size, c = cfg.frame_size, cfg.channels * channel_mult[0]
    total = _conv(3, 3, c, size)
    for level, m in enumerate(channel_mult):
        for _ in range(cfg.num_res_blocks):
            total += _res(c, cfg.channels * m, size)
            c = cfg.channels * m
        if level < len(channel_mult) - 1:
            size //= 2
            total += _conv(3, c, c, size)
    return total + _mid(cfg, c, size) + _conv(3, c, 2 * cfg.latent_channels, size)


def _decoder_flops(cfg: MotionVAEConfig) -> float:
    size, c = cfg.appearance_size, cfg.channels * cfg.channel_mult[-1]
    total = _conv(3, 2 * cfg.latent_channels, c, size) + _mid(cfg, c, size)
    for level in reversed(range(len(cfg.channel_mult))):
        for _ in range(cfg.num_res_blocks + 1):
            total += _res(c, cfg.channels * cfg.channel_mult[level], size)
            c = cfg.channels * cfg.channel_mult[level]
        if level > 0:
            size *= 2
            total += _conv(3, c, c, size)
    return total + _conv(3, c, 3, size)


def discriminator_flops(cfg: MotionVAEConfig) -> float:
    """Forward FLOPs of one discriminator pass over one frame."""
    size, c, total = cfg.frame_size, 3, 0.0
    for n in range(cfg.disc_layers + 1):
        width = cfg.disc_channels * min(2 ** n, 8)
        size = size // 2 if n < cfg.disc_layers else size - 1
        total += _conv(4, c, width, size)
        c = width
    return total + _conv(4, c, 1, size - 1)


def flops_per_frame(cfg: MotionVAEConfig) -> float:
    """Forward FLOPs (convolutions and attention) of encode_appearance + encode_motion + decode for one frame."""
    mult = tuple(cfg.channel_mult)
    return (_encoder_flops(cfg, mult) + _encoder_flops(cfg, mult + (mult[-1],) * cfg.motion_extra_down)
            + _decoder_flops(cfg))
