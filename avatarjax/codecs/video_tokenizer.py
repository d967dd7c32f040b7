"""The Body of Her continuous 1-D video tokenizer (TiTok / Q-Former style, no quantiser), Flax NNX.

Per frame, a ViT encoder reads the ``P = (S / p)**2`` patch tokens followed by ``K`` learned latent tokens and keeps
the last ``K`` outputs (TiTok). A causal temporal Transformer then runs over the latent tokens of all frames: a
block-causal mask over frames (a token of frame i sees every token of frames <= i, so the K tokens of one frame
see each other and a frame never depends on later frames) with RoPE over the frame index. A final projection
gives per-frame continuous latents ``[K, D]``: a Gaussian posterior (mean and log-variance, ``regularizer="kl"``)
or a mean with a fixed noise std (``regularizer="noise"``: the posterior N(mean, noise_std**2), whose KL against
N(0, 1) is a scaled L2 penalty on the mean). No temporal compression: one latent set per frame.

The decoder is per frame: ``P`` copies of a learned mask token (plus patch positions) followed by the ``K``
projected latents (plus latent positions) run through a ViT; the first ``P`` outputs become pixel patches
(unpatchify). Frames are float in [-1, 1] (``to_model_range``), channels last.

Shapes: ``encode(frames [B, T, S, S, 3]) -> latents [B, T, K, D]``; ``decode(latents) -> frames [B, T, S, S, 3]``.
``jitted_encode`` / ``jitted_decode`` give them as jitted functions of arrays alone.

Layout switches (all off by default) let the same modules hold TiTok checkpoints (``avatarjax convert titok``,
:mod:`avatarjax.codecs.titok_convert`): a class token before the patch tokens, a LayerNorm over the input
sequence (``ln_pre``), a decoder width of its own, a 3x3 conv after unpatchify, TiTok's legacy token layout
before the latent head, LayerNorm eps, and a temporal stack without its final norm (identity when its residual
outputs are zero).

Analytic FLOPs (``flops_per_frame``) count every matmul XLA executes, including the fully computed (masked)
temporal attention scores over the whole clip, so that MFU is measured against the work actually done.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.codecs.motion_vae import kl_divergence
from avatarjax.nn.attention import Attention
from avatarjax.nn.conv import Conv
from avatarjax.nn.linear import Dense
from avatarjax.nn.mlp import MLP
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.rope import rope_frequencies
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

TOKENS = ("batch", "length", "act_embed")  # [frames or clips, tokens, dim]
LATENTS = ("batch", "frames", "length", "act_embed")  # [B, T, K, D]
PIXELS = ("batch", "frames", "height", "width", "act_channels")  # [B, T, S, S, 3]
LOGVAR_RANGE = (-30.0, 20.0)
REGULARIZERS = ("kl", "noise")


@dataclasses.dataclass(frozen=True)
class VideoTokenizerConfig:
    frame_size: int = 64  # S: frames are [S, S, 3]
    patch_size: int = 8  # p: P = (S / p)**2 patch tokens per frame
    dim: int = 128  # width of the encoder, temporal and decoder Transformers
    num_heads: int = 4
    mlp_dim: int = 512
    encoder_layers: int = 4
    temporal_layers: int = 2
    decoder_layers: int = 4
    num_latent_tokens: int = 16  # K
    latent_dim: int = 16  # D: the continuous token width the LM's diffusion head models
    temporal_window: int = 0  # frames a token sees (itself and earlier); 0 = every earlier frame of the clip
    rope_theta: float = 10000.0  # RoPE over the frame index in the temporal Transformer
    qk_norm: bool = True  # per-head RMSNorm on q and k (stable attention logits at any width)
    attention: str = "xla"  # xla | cudnn | auto
    regularizer: str = "kl"  # kl: learned posterior variance; noise: fixed std noise_std
    noise_std: float = 0.1
    kl_weight: float = 1e-4  # on the KL summed over a frame's K * D latents, relative to the L1 summed over pixels
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0  # L1 feature matching on the PatchGAN discriminator's features
    adversarial_weight: float = 0.0  # hinge GAN generator loss
    disc_channels: int = 32
    disc_layers: int = 3
    disc_start: int = 0  # step from which the adversarial and perceptual terms are on
    groups: int = 4  # discriminator GroupNorm groups
    # layout switches (defaults: our layout; ``titok_convert`` sets them to load TiTok checkpoints exactly)
    decoder_dim: int = 0  # decoder width (0 = dim); TiTok may pair e.g. a ViT-B encoder with a ViT-L decoder
    decoder_heads: int = 0  # 0 = num_heads
    decoder_mlp_dim: int = 0  # 0 = mlp_dim
    norm_eps: float = 1e-6  # every LayerNorm of the Transformers (TiTok: torch's 1e-5)
    class_token: bool = False  # a learned class token before the patch tokens (encoder and decoder), as TiTok
    pre_norm: bool = False  # a LayerNorm over the whole input sequence before the blocks (TiTok's ln_pre)
    pixel_conv: bool = False  # a 3x3 conv over the unpatchified frame (TiTok's conv_out)
    legacy_token_layout: bool = False  # TiTok's is_legacy: the [K, dim] features reshaped (not transposed) to
    #   [dim, K] before the latent head, a fixed permutation of each frame's K * dim features
    temporal_final_norm: bool = True  # False: no LayerNorm after the temporal blocks (identity at zero init)

    def __post_init__(self):
        if self.frame_size % self.patch_size:
            raise ValueError(f"frame_size={self.frame_size} must divide by patch_size={self.patch_size}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim={self.dim} must divide by num_heads={self.num_heads} into an even head_dim (RoPE)")
        if self.dec_dim % self.dec_heads:
            raise ValueError(f"decoder_dim={self.dec_dim} must divide by decoder_heads={self.dec_heads}")
        if min(self.encoder_layers, self.temporal_layers, self.decoder_layers) < 1:
            raise ValueError("encoder_layers, temporal_layers and decoder_layers must each be >= 1")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {self.regularizer!r}")
        if self.regularizer == "noise" and self.noise_std <= 0:
            raise ValueError(f"noise_std must be > 0 with regularizer='noise', got {self.noise_std}")
        if self.temporal_window < 0:
            raise ValueError(f"temporal_window must be >= 0 (0 = unlimited), got {self.temporal_window}")

    @property
    def dec_dim(self) -> int:
        return self.decoder_dim or self.dim

    @property
    def dec_heads(self) -> int:
        return self.decoder_heads or self.num_heads

    @property
    def dec_mlp_dim(self) -> int:
        return self.decoder_mlp_dim or self.mlp_dim

    @property
    def grid(self) -> int:
        return self.frame_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * 3

    @property
    def use_discriminator(self) -> bool:
        return self.adversarial_weight > 0 or self.perceptual_weight > 0


# ---------------------------------------------------------------------------------------------- layout helpers
def patchify(frames: jax.Array, p: int) -> jax.Array:
    """``[N, S, S, C]`` -> ``[N, (S/p)**2, p*p*C]`` (row-major patches, each flattened (row, col, channel))."""
    n, s, _, c = frames.shape
    g = s // p
    x = frames.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, p * p * c)


def unpatchify(patches: jax.Array, p: int) -> jax.Array:
    """Inverse of ``patchify``: ``[N, g*g, p*p*C]`` -> ``[N, g*p, g*p, C]``."""
    n, gg, d = patches.shape
    g, c = math.isqrt(gg), d // (p * p)
    x = patches.reshape(n, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * p, g * p, c)


def block_causal_mask(frames: int, tokens: int, window: int = 0) -> jax.Array:
    """``[frames * tokens, frames * tokens]`` bool (True = attend): a query of frame i sees the keys of frames j
    with ``j <= i`` (and ``i - j < window`` when ``window > 0``); tokens of the same frame see each other."""
    f = jnp.arange(frames * tokens) // tokens
    mask = f[:, None] >= f[None, :]
    if window > 0:
        mask &= f[:, None] - f[None, :] < window
    return mask


def _table(rngs: nnx.Rngs, rows: int, dim: int, std: float, param_dtype) -> nnx.Param:
    """A learned ``[rows, dim]`` table (positions, latent queries); replicated over rows, ``embed`` over dim."""
    return nnx.Param((jax.random.normal(rngs.params(), (rows, dim)) * std).astype(param_dtype),
                     out_sharding=(None, "embed"))


# ---------------------------------------------------------------------------------------------- modules
class Block(nnx.Module):
    """Pre-LN Transformer block (attention, GELU MLP): ``[N, L, dim]`` -> same."""

    def __init__(self, cfg: VideoTokenizerConfig, dim: int, num_heads: int, mlp_dim: int, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = LayerNorm(dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.attn = Attention(dim, num_heads, qkv_bias=True, out_bias=True,
                              qk_norm="per_head" if cfg.qk_norm else None,
                              implementation=None if cfg.attention == "auto" else cfg.attention, **kw)
        self.norm2 = LayerNorm(dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(dim, mlp_dim, activation="gelu", **kw)

    def __call__(self, x: jax.Array, rope=None, mask: jax.Array | None = None) -> jax.Array:
        x = constrain(x + self.attn(self.norm1(x), rope=rope, mask=mask), TOKENS)
        return constrain(x + self.mlp(self.norm2(x)), TOKENS)


class Transformer(nnx.Module):
    """Optional input LayerNorm (``pre_norm``), ``num_layers`` scanned ``Block``s and an optional final LayerNorm
    (``final_norm``): ``[N, L, dim]`` -> same. ``dim``/``num_heads``/``mlp_dim`` default to the config's."""

    def __init__(self, cfg: VideoTokenizerConfig, num_layers: int, *, dim: int | None = None,
                 num_heads: int | None = None, mlp_dim: int | None = None, pre_norm: bool = False,
                 final_norm: bool = True, remat: str = "none", dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        dim, num_heads, mlp_dim = dim or cfg.dim, num_heads or cfg.num_heads, mlp_dim or cfg.mlp_dim
        self.remat = remat
        self.pre_norm = LayerNorm(dim, eps=cfg.norm_eps, param_dtype=param_dtype) if pre_norm else None
        self.layers = create_stacked(
            lambda r: Block(cfg, dim, num_heads, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=r),
            num_layers, rngs)
        self.norm = LayerNorm(dim, eps=cfg.norm_eps, param_dtype=param_dtype) if final_norm else None

    def __call__(self, x: jax.Array, rope=None, mask: jax.Array | None = None) -> jax.Array:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        x = run_stacked(self.layers, lambda layer, h, _: layer(h, rope, mask), x, remat=self.remat)
        return x if self.norm is None else self.norm(x)


def _with_class_token(x: jax.Array, class_token: nnx.Param | None) -> jax.Array:
    """Prepend the (learned, position-included) class token to ``[N, L, dim]`` when there is one."""
    if class_token is None:
        return x
    cls = jnp.broadcast_to(class_token[...].astype(x.dtype), (x.shape[0],) + class_token.shape)
    return jnp.concatenate([cls, x], axis=1)


class FrameEncoder(nnx.Module):
    """frames ``[N, S, S, 3]`` -> latent-token features ``[N, K, dim]`` (the last K outputs of the ViT).

    The sequence is ``[class token (cfg.class_token)] + P patch tokens + K latent tokens``."""

    def __init__(self, cfg: VideoTokenizerConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        self.patch_size = cfg.patch_size
        self.patch_embed = Dense(cfg.patch_dim, cfg.dim, axes=("conv_in", "embed"), dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        self.patch_pos = _table(rngs, cfg.num_patches, cfg.dim, 0.02, param_dtype)
        self.class_token = _table(rngs, 1, cfg.dim, cfg.dim ** -0.5, param_dtype) if cfg.class_token else None
        self.latent_tokens = _table(rngs, cfg.num_latent_tokens, cfg.dim, cfg.dim ** -0.5, param_dtype)
        self.transformer = Transformer(cfg, cfg.encoder_layers, pre_norm=cfg.pre_norm, remat=remat, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs)

    def __call__(self, frames: jax.Array) -> jax.Array:
        x = self.patch_embed(patchify(frames, self.patch_size))
        x = _with_class_token(x + self.patch_pos[...].astype(x.dtype), self.class_token)
        queries = jnp.broadcast_to(self.latent_tokens[...].astype(x.dtype), (x.shape[0],) + self.latent_tokens.shape)
        x = self.transformer(constrain(jnp.concatenate([x, queries], axis=1), TOKENS))
        return x[:, -queries.shape[1]:]


class FrameDecoder(nnx.Module):
    """latents ``[N, K, D]`` -> frames ``[N, S, S, 3]`` float32 (unbounded, ~[-1, 1]).

    The sequence is ``[class token (cfg.class_token)] + P mask tokens + K projected latents``; the P outputs
    become pixel patches (then, with ``cfg.pixel_conv``, a 3x3 conv over the frame)."""

    def __init__(self, cfg: VideoTokenizerConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dim = cfg.dec_dim
        self.patch_size = cfg.patch_size
        self.latent_proj = Dense(cfg.latent_dim, dim, axes=("latent", "embed"), **kw)
        self.latent_pos = _table(rngs, cfg.num_latent_tokens, dim, 0.02, param_dtype)
        self.mask_token = _table(rngs, 1, dim, dim ** -0.5, param_dtype)
        self.patch_pos = _table(rngs, cfg.num_patches, dim, 0.02, param_dtype)
        self.class_token = _table(rngs, 1, dim, dim ** -0.5, param_dtype) if cfg.class_token else None
        self.transformer = Transformer(cfg, cfg.decoder_layers, dim=dim, num_heads=cfg.dec_heads,
                                       mlp_dim=cfg.dec_mlp_dim, pre_norm=cfg.pre_norm, remat=remat, **kw)
        self.to_pixels = Dense(dim, cfg.patch_dim, axes=("embed", "features"), **kw)
        self.pixel_conv = Conv(3, 3, 3, **kw) if cfg.pixel_conv else None

    def features(self, latents: jax.Array) -> jax.Array:
        """latents ``[N, K, D]`` -> the final-normed patch-token outputs ``[N, P, dec_dim]``."""
        z = self.latent_proj(latents)
        z = z + self.latent_pos[...].astype(z.dtype)
        masks = (self.mask_token[...] + self.patch_pos[...]).astype(z.dtype)
        masks = _with_class_token(jnp.broadcast_to(masks, (z.shape[0],) + masks.shape), self.class_token)
        x = self.transformer(constrain(jnp.concatenate([masks, z], axis=1), TOKENS))
        first = 0 if self.class_token is None else 1
        return x[:, first:first + self.patch_pos.shape[0]]

    def __call__(self, latents: jax.Array) -> jax.Array:
        frames = unpatchify(self.to_pixels(self.features(latents)), self.patch_size)
        if self.pixel_conv is not None:
            frames = self.pixel_conv(frames)
        return frames.astype(jnp.float32)


class VideoTokenizer(nnx.Module):
    """Frame encoder, causal temporal Transformer, latent head, frame decoder (and the optional discriminator)."""

    def __init__(self, cfg: VideoTokenizerConfig, *, dtype=None, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = FrameEncoder(cfg, remat=remat, **kw)
        self.temporal = Transformer(cfg, cfg.temporal_layers, final_norm=cfg.temporal_final_norm, remat=remat, **kw)
        out = 2 * cfg.latent_dim if cfg.regularizer == "kl" else cfg.latent_dim
        self.to_latent = Dense(cfg.dim, out, axes=("embed", "latent"), **kw)
        self.decoder = FrameDecoder(cfg, remat=remat, **kw)
        if cfg.use_discriminator:
            from avatarjax.codecs.motion_vae import PatchDiscriminator  # reads disc_channels, disc_layers, groups

            self.discriminator = PatchDiscriminator(cfg, **kw)
        else:
            self.discriminator = None

    def posterior(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """frames ``[B, T, S, S, 3]`` in [-1, 1] -> (mean, logvar), each ``[B, T, K, D]`` float32. Latents of
        frame t depend only on frames ``<= t``. With ``regularizer="noise"`` logvar is ``2 log noise_std``."""
        cfg = self.cfg
        b, t = frames.shape[:2]
        k = cfg.num_latent_tokens
        feats = self.encoder(frames.reshape((b * t,) + frames.shape[2:]))  # [B*T, K, dim]
        x = constrain(feats.reshape(b, t * k, cfg.dim), TOKENS)
        positions = jnp.broadcast_to(jnp.arange(t * k) // k, (b, t * k))
        rope = rope_frequencies(positions, cfg.dim // cfg.num_heads, cfg.rope_theta)
        mask = block_causal_mask(t, k, cfg.temporal_window)[None, None]
        h = self.temporal(x, rope, mask)
        if cfg.legacy_token_layout:  # TiTok's is_legacy: each frame's [K, dim] memory read as [dim, K]
            h = h.reshape(b * t, cfg.dim, k).swapaxes(1, 2)
        out = self.to_latent(h).astype(jnp.float32).reshape(b, t, k, -1)
        if cfg.regularizer == "kl":
            mean, logvar = jnp.split(out, 2, axis=-1)
            logvar = jnp.clip(logvar, *LOGVAR_RANGE)
        else:
            mean, logvar = out, jnp.full_like(out, 2.0 * math.log(cfg.noise_std))
        return constrain(mean, LATENTS), logvar

    def encode(self, frames: jax.Array) -> jax.Array:
        """frames ``[B, T, S, S, 3]`` in [-1, 1] -> latents (posterior means) ``[B, T, K, D]`` float32."""
        return self.posterior(frames)[0]

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents ``[B, T, K, D]`` -> frames ``[B, T, S, S, 3]`` float32, each frame from its own latents."""
        b, t = latents.shape[:2]
        frames = self.decoder(latents.reshape((b * t,) + latents.shape[2:]))
        return constrain(frames.reshape((b, t) + frames.shape[1:]), PIXELS)

    def __call__(self, frames: jax.Array) -> jax.Array:
        """Deterministic reconstruction ``decode(encode(frames))``."""
        return self.decode(self.encode(frames))


# ---------------------------------------------------------------------------------------------- functional API
def jitted_encode(model: VideoTokenizer) -> Callable[[jax.Array], jax.Array]:
    """``encode`` as a jitted function of frames alone (the weights are bound; one compile per input shape)."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, frames: nnx.merge(graphdef, s).encode(frames))
    return lambda frames: run(state, frames)


def jitted_decode(model: VideoTokenizer) -> Callable[[jax.Array], jax.Array]:
    """``decode`` as a jitted function of latents alone."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, latents: nnx.merge(graphdef, s).decode(latents))
    return lambda latents: run(state, latents)


def kl_per_frame(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over each frame's ``K * D`` latents: ``[B, T, K, D]`` ->
    ``[B, T]``."""
    b, t = mean.shape[:2]
    return kl_divergence(mean.reshape((b * t,) + mean.shape[2:]), logvar.reshape((b * t,) + logvar.shape[2:])
                         ).reshape(b, t)


# ---------------------------------------------------------------------------------------------- analytic FLOPs
def _transformer_flops(cfg: VideoTokenizerConfig, layers: int, tokens: int, kv_tokens: int | None = None, *,
                       dim: int | None = None, mlp_dim: int | None = None) -> float:
    """Forward FLOPs of ``layers`` blocks over ``tokens`` queries attending to ``kv_tokens`` keys (default: all)."""
    kv = tokens if kv_tokens is None else kv_tokens
    d, m = dim or cfg.dim, mlp_dim or cfg.mlp_dim
    proj = 2.0 * tokens * d * d * 4  # q, k, v, o
    scores = 2.0 * 2.0 * tokens * kv * d  # q k^T and p v
    mlp = 2.0 * 2.0 * tokens * d * m
    return layers * (proj + scores + mlp)


def encode_flops_per_frame(cfg: VideoTokenizerConfig, clip_frames: int) -> float:
    """Forward FLOPs of ``encode`` per frame of a ``clip_frames``-frame clip (temporal attention scores are
    computed over the whole clip under the mask)."""
    k, p = cfg.num_latent_tokens, cfg.num_patches
    frame = 2.0 * p * cfg.patch_dim * cfg.dim + _transformer_flops(cfg, cfg.encoder_layers, p + k + cfg.class_token)
    temporal = _transformer_flops(cfg, cfg.temporal_layers, k, clip_frames * k)
    head = 2.0 * k * cfg.dim * cfg.latent_dim * (2 if cfg.regularizer == "kl" else 1)
    return frame + temporal + head


def decode_flops_per_frame(cfg: VideoTokenizerConfig) -> float:
    k, p, d = cfg.num_latent_tokens, cfg.num_patches, cfg.dec_dim
    conv = 2.0 * cfg.frame_size ** 2 * 9 * 3 * 3 if cfg.pixel_conv else 0.0
    return (2.0 * k * cfg.latent_dim * d
            + _transformer_flops(cfg, cfg.decoder_layers, p + k + cfg.class_token, dim=d, mlp_dim=cfg.dec_mlp_dim)
            + 2.0 * p * d * cfg.patch_dim + conv)


def flops_per_frame(cfg: VideoTokenizerConfig, clip_frames: int) -> float:
    """Forward FLOPs of encode + decode per frame of a ``clip_frames``-frame clip."""
    return encode_flops_per_frame(cfg, clip_frames) + decode_flops_per_frame(cfg)
