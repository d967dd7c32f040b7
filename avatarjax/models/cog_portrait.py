"""CogPortrait Stage 2 backbone: the Wan2.2 DiT in Flax NNX, numerically equal to diffusers'
``WanTransformer3DModel``, plus CogPortrait's audio cross-attention and pose adapter, and a converter from a local
diffusers checkpoint directory.

Forward (REFERENCE.md section 3; all arrays channels-last):

- patch embedding: latents ``[batch, frames, height, width, in_ch]`` cut into ``patch_size`` = (1, 2, 2) volumes,
  flattened in (pt, ph, pw, channel) order and projected by one Dense (equal to Wan's strided Conv3d) to
  ``[batch, tokens, dim]``, tokens ordered frame-major then row then column;
- timestep: sinusoid(``freq_dim``, cos first) -> Linear, SiLU, Linear = ``temb``; SiLU, Linear(dim, 6 dim) =
  ``mod``. The timestep is ``[batch]`` (one per sample) or ``[batch, tokens]`` (Wan2.2 TI2V: the reference
  latent in the first temporal slot has t = 0 on its tokens and stays clean); ``temb`` is then per token too;
- text: Linear, GELU(tanh), Linear;
- each block: shift/scale/gate x 2 = its learned ``[6, dim]`` table + ``mod``;
  ``x += gate1 * SelfAttn(LN(x) (1 + scale1) + shift1)`` with 3D RoPE and RMSNorm QK-norm across heads;
  ``x += CrossAttn(LN_affine(x), text)``; [ours] ``x += AudioAttn(LN_affine(x), audio)``;
  ``x += gate2 * FFN(LN(x) (1 + scale2) + shift2)`` with FFN = Linear, GELU(tanh), Linear;
- head: ``LN(x) (1 + scale) + shift`` with (shift, scale) = learned ``[2, dim]`` + ``temb``, Linear to the patch
  volume x out channels (zero-initialised), unpatchified to ``[batch, frames, height, width, out_ch]``.

3D RoPE: head_dim is split as diffusers does (h = w = 2 (head_dim // 6), t = the rest; 128 -> 44/42/42, i.e.
22/21/21 rotation pairs), each part rotated by its axis' position with theta 10000. Wan rotates interleaved pairs
(channels 2i, 2i+1); we store q/k channels de-interleaved inside each head (``[even | odd]``) so that the rotation
is the rotate-half form of ``nn/rope.py``. The converter permutes to_q / to_k / norm_q / norm_k accordingly; the
attention logits are unchanged because q and k are permuted alike.

Our additions (off by default; zero-initialised so that a converted Wan model's output is unchanged):

- audio (``audio_dim`` > 0): wav2vec features ``[batch, audio_len, audio_dim]`` -> Linear, GELU(tanh), Linear ->
  ``dim``; in every block, after the text cross-attention, an affine LN + cross-attention to them (QK-norm as the
  text one) whose output projection starts at zero;
- pose (``pose_channels`` > 0): the VAE latents of the rendered keypoint video ``[batch, frames, height, width,
  pose_channels]`` (same grid as the video latents) -> Conv3d(3), SiLU, Conv3d(3), SiLU, then a patchifying
  projection (the last "conv", kernel = stride = patch) that starts at zero, added to the patch embeddings.

The residual stream is float32; matmuls run in ``dtype``; the timestep MLP runs in float32 (as diffusers keeps
``time_embedder`` in float32). The token axis of activations is named ``sequence`` (sequence parallelism).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter, build_abstract, load_into, read_hf_config, read_safetensors
from avatarjax.errors import CheckpointError, ConfigError, DataError
from avatarjax.nn.attention import Attention
from avatarjax.nn.conv import Conv
from avatarjax.nn.embeddings import sinusoidal
from avatarjax.nn.linear import Dense, default_kernel_init
from avatarjax.nn.mlp import MLP
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.scan import REMAT_POLICIES, create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

F32 = jnp.float32
TOKENS = ("batch", "sequence", "act_embed")  # logical axes of the [batch, tokens, dim] residual stream


@dataclasses.dataclass(frozen=True)
class CogPortraitDiTConfig:
    """Wan2.x DiT layout (diffusers ``WanTransformer3DModel`` names in comments) plus our conditioning."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_heads: int = 24  # num_attention_heads
    head_dim: int = 128  # attention_head_dim
    in_channels: int = 48
    out_channels: int = 48
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 14336
    num_layers: int = 30
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # ours (0 = off)
    audio_dim: int = 0  # wav2vec feature size (768 base, 1024 large)
    pose_channels: int = 0  # latent channels of the VAE-encoded keypoint video
    pose_hidden: int = 64  # pose adapter conv width
    # runtime
    attention: str = "xla"  # xla | cudnn | auto
    remat: str = "none"  # remat policy of the scanned blocks (nn/scan.py REMAT_POLICIES)

    def __post_init__(self):
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"patch_size {self.patch_size} must be three positive ints (t, h, w), e.g. (1, 2, 2)")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(f"head_dim={self.head_dim} must be even and >= 6 (3D RoPE splits it over t/h/w)")
        if self.attention not in ("xla", "cudnn", "auto"):
            raise ConfigError(f"attention '{self.attention}' must be xla, cudnn or auto")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat '{self.remat}' must be one of {', '.join(REMAT_POLICIES)}")

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    # ---- presets ----
    @classmethod
    def tiny(cls, **kw) -> CogPortraitDiTConfig:
        """Unit tests: 2 layers, 2 heads of 16, 4 latent channels."""
        base = dict(num_heads=2, head_dim=16, in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                    num_layers=2)
        return cls(**{**base, **kw})

    @classmethod
    def synthface_small(cls, **kw) -> CogPortraitDiTConfig:
        """CPU-trainable synthface model: 16-channel latents, dim 256 (4 heads of 64), 6 layers, audio + pose on."""
        base = dict(num_heads=4, head_dim=64, in_channels=16, out_channels=16, text_dim=384, freq_dim=256,
                    ffn_dim=1024, num_layers=6, audio_dim=768, pose_channels=16, pose_hidden=64)
        return cls(**{**base, **kw})

    @classmethod
    def ti2v_5b(cls, **kw) -> CogPortraitDiTConfig:
        """Wan2.2 TI2V-5B: dim 3072 (24 x 128), 30 layers, FFN 14336, 48-channel latents (VAE stride 4x16x16)."""
        return cls(**kw)

    @classmethod
    def a14b(cls, **kw) -> CogPortraitDiTConfig:
        """Wan2.2 T2V-A14B expert layout: dim 5120 (40 x 128), 40 layers, FFN 13824, 16-channel latents."""
        base = dict(num_heads=40, head_dim=128, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40)
        return cls(**{**base, **kw})

    @classmethod
    def from_hf(cls, config: dict) -> CogPortraitDiTConfig:
        """From a diffusers ``config.json`` of ``WanTransformer3DModel`` (the ``transformer`` folder of a Wan2.x
        Diffusers checkpoint). Wan2.1 I2V's CLIP image branch (``image_dim``, ``added_kv_proj_dim``) is refused."""
        name = config.get("_class_name", "WanTransformer3DModel")
        if name != "WanTransformer3DModel":
            raise CheckpointError(f"config.json describes '{name}', expected 'WanTransformer3DModel': point at the "
                                  "'transformer' folder of a Wan2.x Diffusers checkpoint")
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if config.get(key) is not None:
                raise CheckpointError(f"config.json sets {key}={config[key]}: the Wan2.1 I2V image cross-attention "
                                      "is not supported; use a Wan2.2 (TI2V-5B / A14B) or Wan2.1 T2V checkpoint")
        if config.get("qk_norm", "rms_norm_across_heads") not in ("rms_norm_across_heads", None):
            raise CheckpointError(f"qk_norm '{config['qk_norm']}' is not supported: Wan uses "
                                  "'rms_norm_across_heads'")
        try:
            in_ch = int(config["in_channels"])
            return cls(patch_size=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
                       num_heads=int(config["num_attention_heads"]), head_dim=int(config["attention_head_dim"]),
                       in_channels=in_ch, out_channels=int(config.get("out_channels") or in_ch),
                       text_dim=int(config["text_dim"]), freq_dim=int(config["freq_dim"]),
                       ffn_dim=int(config["ffn_dim"]), num_layers=int(config["num_layers"]),
                       cross_attn_norm=bool(config.get("cross_attn_norm", True)),
                       eps=float(config.get("eps", 1e-6)))
        except KeyError as err:
            raise CheckpointError(f"config.json lacks {err}: is it a WanTransformer3DModel config?") from err


TINY = CogPortraitDiTConfig.tiny()
SYNTHFACE_SMALL = CogPortraitDiTConfig.synthface_small()
TI2V_5B = CogPortraitDiTConfig.ti2v_5b()
A14B = CogPortraitDiTConfig.a14b()


# ----------------------------------------------------------------------------------------------------------------
# Patches, RoPE, timesteps

def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """``[batch, frames, height, width, ch]`` -> ``[batch, tokens, pt * ph * pw * ch]`` (tokens frame-major,
    each patch flattened in (pt, ph, pw, ch) order)."""
    b, f, h, w, c = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(x: jax.Array, grid: Sequence[int], patch: Sequence[int]) -> jax.Array:
    """Inverse of :func:`patchify`: ``[batch, tokens, pt * ph * pw * ch]`` -> ``[batch, frames, height, width,
    ch]`` for the token ``grid`` (frames / pt, height / ph, width / pw)."""
    b = x.shape[0]
    gf, gh, gw = grid
    pt, ph, pw = patch
    x = x.reshape(b, gf, gh, gw, pt, ph, pw, -1)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, gf * pt, gh * ph, gw * pw, x.shape[-1])


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of head_dim rotated by the (t, h, w) positions, as diffusers splits them (128 -> 44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def deinterleave(head_dim: int) -> np.ndarray:
    """Channel order ``[0, 2, 4, ..., 1, 3, 5, ...]``: Wan's interleaved RoPE pairs -> rotate-half layout."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def rope_3d(grid: Sequence[int], head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each ``[1, tokens, head_dim]`` float32, for the rotate-half rotation of de-interleaved q/k.

    Token (f, h, w) rotates its pair i by ``pos * theta^(-2j/d)`` where (pos, j, d) come from the part of pair i
    (t: the first ``t/2`` pairs, then h, then w). Per-axis tables are computed in float64 as diffusers does."""
    dims = rope_split(head_dim)
    tables_cos, tables_sin = [], []
    for axis, (size, d) in enumerate(zip(grid, dims)):
        inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.arange(size, dtype=np.float64)[:, None] * inv  # [size, d / 2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = size
        tables_cos.append(jnp.broadcast_to(np.cos(ang).astype(np.float32).reshape(shape), (*grid, d // 2)))
        tables_sin.append(jnp.broadcast_to(np.sin(ang).astype(np.float32).reshape(shape), (*grid, d // 2)))
    n = math.prod(grid)
    cos = jnp.concatenate(tables_cos, axis=-1).reshape(1, n, head_dim // 2)
    sin = jnp.concatenate(tables_sin, axis=-1).reshape(1, n, head_dim // 2)
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def token_timesteps(t: jax.Array, grid: Sequence[int], clean_frames: int = 1) -> jax.Array:
    """Per-token timesteps ``[batch, tokens]`` for Wan2.2 TI2V conditioning: tokens of the first
    ``clean_frames`` latent frames (the reference portrait) get 0, the others ``t`` ``[batch]`` (diffusers'
    ``expand_timesteps``: ``(first_frame_mask[:, ::2, ::2] * t).flatten()``)."""
    t = jnp.asarray(t, F32).reshape(-1)
    gf, gh, gw = grid
    noisy = (jnp.arange(gf) >= clean_frames).astype(F32)  # [frames]
    per_token = jnp.repeat(noisy, gh * gw)  # [tokens]
    return t[:, None] * per_token[None, :]


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: ``x (1 + scale) + shift`` (float32)."""
    return x * (1.0 + scale) + shift


# ----------------------------------------------------------------------------------------------------------------
# Modules

class TimeEmbedding(nnx.Module):
    """t ``[batch, T]`` (T = 1 or tokens) -> (temb ``[batch, T, dim]``, mod ``[batch, T, 6, dim]``), float32 MLP
    for temb, ``dtype`` for the 6-way projection."""

    def __init__(self, freq_dim: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.freq_dim = freq_dim
        self.fc1 = Dense(freq_dim, dim, axes=(None, "embed"), dtype=F32, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Dense(dim, dim, axes=("mlp", "embed"), dtype=F32, param_dtype=param_dtype, rngs=rngs)
        self.proj = Dense(dim, (6, dim), axes=("embed", None, "mlp"), dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)

    def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        freqs = sinusoidal(t.astype(F32), self.freq_dim, flip_sin_to_cos=True)
        temb = self.fc2(jax.nn.silu(self.fc1(freqs)))
        return temb, self.proj(jax.nn.silu(temb)).astype(F32)


def _flat_init(fan_in: int):
    """``default_kernel_init`` drawn flat and reshaped: XLA:CPU takes ~10 s to compile random draws of a 5-D
    shape (a Conv3d kernel) but ~1 s for the same numbers drawn 1-D."""
    base = default_kernel_init(fan_in)
    return lambda key, shape, dtype=F32: base(key, (math.prod(shape),), dtype).reshape(shape)


class PoseAdapter(nnx.Module):
    """Keypoint-video latents ``[batch, frames, height, width, pose_channels]`` -> ``[batch, tokens, dim]``:
    Conv3d(3), SiLU, Conv3d(3), SiLU, then the patchifying projection (kernel = stride = patch), zero-initialised."""

    def __init__(self, channels: int, hidden: int, patch: Sequence[int], dim: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(ndim=3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch = tuple(patch)
        self.conv1 = Conv(channels, hidden, 3, kernel_init=_flat_init(27 * channels), **kw)
        self.conv2 = Conv(hidden, hidden, 3, kernel_init=_flat_init(27 * hidden), **kw)
        self.proj = Dense(math.prod(patch) * hidden, dim, axes=("conv_in", "embed"),
                          kernel_init=nnx.initializers.zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pose: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.conv1(pose))
        h = jax.nn.silu(self.conv2(h))
        return self.proj(patchify(h, self.patch))


def _cross_attention(cfg: CogPortraitDiTConfig, *, dtype, param_dtype, rngs: nnx.Rngs) -> Attention:
    return Attention(cfg.dim, cfg.num_heads, head_dim=cfg.head_dim, qkv_bias=True, out_bias=True,
                     qk_norm="across_heads", norm_eps=cfg.eps,
                     implementation=None if cfg.attention == "auto" else cfg.attention, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)


class DiTBlock(nnx.Module):
    """One Wan block (+ our audio cross-attention): x ``[batch, tokens, dim]`` float32 -> same."""

    def __init__(self, cfg: CogPortraitDiTConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, use_scale=False, use_bias=False)
        self.attn1 = _cross_attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=cfg.eps, param_dtype=param_dtype) if cfg.cross_attn_norm else None
        self.attn2 = _cross_attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.audio_dim:
            self.audio_norm = LayerNorm(d, eps=cfg.eps, param_dtype=param_dtype)
            self.audio_attn = _cross_attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            self.audio_attn.o_proj = Dense((cfg.num_heads, cfg.head_dim), d, axes=("heads", "head_dim", "embed"),
                                           kernel_init=nnx.initializers.zeros, dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs)
        else:
            self.audio_norm = self.audio_attn = None
        self.norm3 = LayerNorm(d, eps=cfg.eps, use_scale=False, use_bias=False)
        self.ffn = MLP(d, cfg.ffn_dim, activation="gelu_tanh", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        table = jax.random.normal(rngs.params(), (6, d), F32) / math.sqrt(d)
        self.modulation = nnx.Param(table.astype(param_dtype), out_sharding=(None, "embed"))

    def __call__(self, x: jax.Array, mod: jax.Array, rope: tuple[jax.Array, jax.Array], text: jax.Array,
                 text_mask: jax.Array | None = None, audio: jax.Array | None = None,
                 audio_mask: jax.Array | None = None) -> jax.Array:
        """mod ``[batch, T, 6, dim]`` float32 (T = 1 or tokens); rope (cos, sin) ``[1, tokens, head_dim]``;
        text ``[batch, text_len, dim]``; audio ``[batch, audio_len, dim]`` or None; masks ``[batch, len]``."""
        dtype = self.dtype or x.dtype
        m = self.modulation[...].astype(F32) + mod
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, :, i] for i in range(6))
        h = modulate(self.norm1(x), shift1, scale1).astype(dtype)
        x = x + self.attn1(h, rope=rope).astype(F32) * gate1
        h = (self.norm2(x) if self.norm2 is not None else x).astype(dtype)
        x = x + self.attn2(h, text, mask=text_mask).astype(F32)
        if self.audio_attn is not None and audio is not None:
            h = self.audio_norm(x).astype(dtype)
            x = x + self.audio_attn(h, audio, mask=audio_mask).astype(F32)
        h = modulate(self.norm3(x), shift2, scale2).astype(dtype)
        x = x + self.ffn(h).astype(F32) * gate2
        return constrain(x, TOKENS)


def _key_mask(mask: jax.Array | None) -> jax.Array | None:
    """``[batch, len]`` (1 = token) -> attention mask ``[batch, 1, 1, len]``."""
    return None if mask is None else jnp.asarray(mask).astype(bool)[:, None, None, :]


class CogPortraitDiT(nnx.Module):
    """``model(latents, timestep, text, audio=, pose=)`` -> velocity ``[batch, frames, height, width, out_ch]``.

    latents ``[batch, frames, height, width, in_ch]`` (frames / height / width multiples of the patch);
    timestep ``[batch]`` / scalar, or ``[batch, tokens]`` per token (see :func:`token_timesteps`); text
    ``[batch, text_len, text_dim]`` (umT5 states, zero-padded to 512 as Wan does; ``text_mask`` optional: Wan
    attends to the padding too); audio ``[batch, audio_len, audio_dim]`` and pose ``[batch, frames, height,
    width, pose_channels]`` when the model has them (None skips the branch, e.g. for unconditional CFG passes).
    """

    def __init__(self, cfg: CogPortraitDiTConfig, *, dtype=F32, param_dtype=F32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        d = cfg.dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = Dense(cfg.patch_volume * cfg.in_channels, d, axes=("conv_in", "embed"), **kw)
        self.time_embed = TimeEmbedding(cfg.freq_dim, d, **kw)
        self.text_embed = MLP(cfg.text_dim, d, d, activation="gelu_tanh", **kw)
        self.audio_embed = MLP(cfg.audio_dim, d, d, activation="gelu_tanh", **kw) if cfg.audio_dim else None
        self.pose_adapter = (PoseAdapter(cfg.pose_channels, cfg.pose_hidden, cfg.patch_size, d, **kw)
                             if cfg.pose_channels else None)
        self.blocks = create_stacked(lambda r: DiTBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                     cfg.num_layers, rngs)
        self.norm_out = LayerNorm(d, eps=cfg.eps, use_scale=False, use_bias=False)
        table = jax.random.normal(rngs.params(), (2, d), F32) / math.sqrt(d)
        self.head_modulation = nnx.Param(table.astype(param_dtype), out_sharding=(None, "embed"))
        self.proj_out = Dense(d, cfg.patch_volume * cfg.out_channels, axes=("embed", "features"),
                              kernel_init=nnx.initializers.zeros, **kw)

    def grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (frames / pt, height / ph, width / pw) of latents ``[batch, frames, height, width, ch]``."""
        pt, ph, pw = self.cfg.patch_size
        _, f, h, w, _ = shape
        for name, size, p in (("frames", f, pt), ("height", h, ph), ("width", w, pw)):
            if size % p:
                raise DataError(f"latent {name} {size} is not a multiple of the patch size {p}: pad or crop the "
                                f"video so that its latent {name} divides by {p}")
        return f // pt, h // ph, w // pw

    def embed_timesteps(self, timestep: jax.Array, batch: int, tokens: int) -> tuple[jax.Array, jax.Array]:
        """(temb ``[batch, T, dim]``, mod ``[batch, T, 6, dim]``), T = 1 for per-sample timesteps, tokens for
        per-token ones."""
        t = jnp.asarray(timestep)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.ndim == 1 and t.shape[0] == batch:
            t = t[:, None]
        elif t.ndim != 2 or t.shape != (batch, tokens):
            raise DataError(f"timestep has shape {tuple(t.shape)}: expected [batch]=({batch},) or per token "
                            f"[batch, tokens]=({batch}, {tokens}) (see token_timesteps)")
        temb, mod = self.time_embed(t)
        per_token = "sequence" if t.shape[1] > 1 else None
        return constrain(temb, ("batch", per_token, "act_embed")), constrain(mod, ("batch", per_token, None,
                                                                                   "act_embed"))

    def __call__(self, latents: jax.Array, timestep: jax.Array, text: jax.Array, *, audio: jax.Array | None = None,
                 pose: jax.Array | None = None, text_mask: jax.Array | None = None,
                 audio_mask: jax.Array | None = None) -> jax.Array:
        cfg, dtype = self.cfg, self.dtype
        if latents.ndim != 5 or latents.shape[-1] != cfg.in_channels:
            raise DataError(f"latents have shape {tuple(latents.shape)}: expected [batch, frames, height, width, "
                            f"{cfg.in_channels}] (channels last)")
        if text.ndim != 3 or text.shape[-1] != cfg.text_dim:
            raise DataError(f"text has shape {tuple(text.shape)}: expected [batch, text_len, {cfg.text_dim}]")
        grid = self.grid(latents.shape)
        batch, tokens = latents.shape[0], math.prod(grid)

        x = self.patch_embed(patchify(latents, cfg.patch_size).astype(dtype)).astype(F32)
        if pose is not None and self.pose_adapter is not None:
            if pose.shape[:4] != latents.shape[:4] or pose.shape[-1] != cfg.pose_channels:
                raise DataError(f"pose latents have shape {tuple(pose.shape)}: expected "
                                f"{tuple(latents.shape[:4]) + (cfg.pose_channels,)} (the video latent grid)")
            x = x + self.pose_adapter(pose.astype(dtype)).astype(F32)
        x = constrain(x, TOKENS)

        temb, mod = self.embed_timesteps(timestep, batch, tokens)
        context = constrain(self.text_embed(text.astype(dtype)), ("batch", "kv_length", "act_embed"))
        audio_ctx = None
        if audio is not None and self.audio_embed is not None:
            if audio.ndim != 3 or audio.shape[-1] != cfg.audio_dim:
                raise DataError(f"audio has shape {tuple(audio.shape)}: expected [batch, audio_len, "
                                f"{cfg.audio_dim}] wav2vec features")
            audio_ctx = constrain(self.audio_embed(audio.astype(dtype)), ("batch", "kv_length", "act_embed"))
        rope = rope_3d(grid, cfg.head_dim, cfg.rope_theta)
        tmask, amask = _key_mask(text_mask), _key_mask(audio_mask)

        def body(block, h, _):
            return block(h, mod, rope, context, tmask, audio_ctx, amask)

        x = run_stacked(self.blocks, body, x, remat=cfg.remat, write_back=False)

        table = self.head_modulation[...].astype(F32)
        shift, scale = table[0] + temb, table[1] + temb
        h = modulate(self.norm_out(x), shift, scale).astype(dtype)
        out = unpatchify(self.proj_out(h), grid, cfg.patch_size).astype(F32)
        return constrain(out, ("batch", "frames", "height", "width", None))


# ----------------------------------------------------------------------------------------------------------------
# FLOPs

def flops_per_step(cfg: CogPortraitDiTConfig, batch: int, frames: int, h: int, w: int, text_len: int, *,
                   audio_len: int = 0, per_token_timesteps: bool = False) -> float:
    """Forward FLOPs (2 per multiply-add) of one DiT call (one denoising step) on ``batch`` latents of
    ``frames x h x w`` (latent units, before patching). A training step costs about 3x this."""
    pt, ph, pw = cfg.patch_size
    tokens = (frames // pt) * (h // ph) * (w // pw)
    d, p = cfg.dim, cfg.patch_volume
    attn_proj = lambda q, kv: 2 * (2 * q * d * d + 2 * kv * d * d)  # q, o on queries; k, v on keys
    attn_mix = lambda q, kv: 2 * 2 * q * kv * d  # scores and weighted values
    block = attn_proj(tokens, tokens) + attn_mix(tokens, tokens)
    block += attn_proj(tokens, text_len) + attn_mix(tokens, text_len)
    block += 2 * 2 * tokens * d * cfg.ffn_dim
    per_sample = cfg.num_layers * block
    if cfg.audio_dim and audio_len:
        per_sample += cfg.num_layers * (attn_proj(tokens, audio_len) + attn_mix(tokens, audio_len))
        per_sample += 2 * audio_len * (cfg.audio_dim * d + d * d)
    if cfg.pose_channels:
        vox = frames * h * w
        per_sample += 2 * vox * 27 * cfg.pose_hidden * (cfg.pose_channels + cfg.pose_hidden)
        per_sample += 2 * tokens * p * cfg.pose_hidden * d
    per_sample += 2 * tokens * d * p * (cfg.in_channels + cfg.out_channels)  # patch embedding and head
    per_sample += 2 * text_len * (cfg.text_dim * d + d * d)
    per_sample += 2 * (tokens if per_token_timesteps else 1) * (cfg.freq_dim * d + d * d + 6 * d * d)
    return float(batch * per_sample)


# ----------------------------------------------------------------------------------------------------------------
# Building and conversion

def build(cfg: CogPortraitDiTConfig, rngs: nnx.Rngs, *, dtype=F32, param_dtype=F32) -> CogPortraitDiT:
    """Our DiT; under ``jax.set_mesh`` + ``nnx.logical_axis_rules`` its parameters are created sharded, outside
    any mesh they are plain single-device arrays (the logical axes stay as metadata)."""
    from flax.core import spmd as core_spmd

    rules = tuple(tuple(r) for r in core_spmd.get_logical_axis_rules() or ())
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        with nnx.use_eager_sharding(False):
            return _create(rngs, cfg=cfg, dtype=dtype, param_dtype=param_dtype, rules=rules, eager=False)
    return _create(rngs, cfg=cfg, dtype=dtype, param_dtype=param_dtype, rules=rules, eager=True)


@functools.partial(nnx.jit, static_argnames=("cfg", "dtype", "param_dtype", "rules", "eager"))
def _create(rngs, *, cfg, dtype, param_dtype, rules, eager):
    """One jitted initialisation (one compile per config, dtypes, rules and mesh). ``rules`` / ``eager`` only key
    the cache."""
    del rules, eager
    return CogPortraitDiT(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


ADDITION_PREFIXES = ("audio_embed/", "pose_adapter/", "blocks/audio_norm/", "blocks/audio_attn/")


def map_weights(hf: dict[str, np.ndarray], cfg: CogPortraitDiTConfig) -> dict[str, np.ndarray]:
    """diffusers ``WanTransformer3DModel`` tensors -> our parameter paths (Wan parts only; the audio / pose
    additions are not in a Wan checkpoint).

    Linear weights ``[out, in]`` are transposed (attention ones split into heads); self-attention q/k channels
    are de-interleaved per head (see the module docstring); per-block tensors are stacked on a leading layers
    axis; the Conv3d patch embedding ``[dim, ch, pt, ph, pw]`` becomes a Dense over (pt, ph, pw, ch)."""
    d, nh, hd, n = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers
    perm = deinterleave(hd)
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        if name not in hf:
            raise CheckpointError(f"the checkpoint lacks '{name}': is it a WanTransformer3DModel with {n} layers "
                                  "(check config.json against the weights)?")
        used.add(name)
        return np.asarray(hf[name], dtype=np.float32)

    def stack(fmt: str, fn=lambda w: w) -> np.ndarray:
        return np.stack([fn(get(fmt.format(i=i))) for i in range(n)])

    heads_in = lambda w: w.T.reshape(d, nh, hd)  # to_q/k/v weight [inner, dim] -> [dim, heads, head_dim]
    heads_in_rope = lambda w: heads_in(w)[..., perm]
    heads_bias = lambda b: b.reshape(nh, hd)
    heads_bias_rope = lambda b: b.reshape(nh, hd)[:, perm]
    norm_rope = lambda s: s.reshape(nh, hd)[:, perm].reshape(nh * hd)
    out: dict[str, np.ndarray] = {}

    def linear(ours: str, theirs: str, w_fn=np.transpose, b_fn=lambda b: b, per_block: bool = False):
        if per_block:
            out[f"{ours}/kernel"] = stack(theirs + ".weight", w_fn)
            out[f"{ours}/bias"] = stack(theirs + ".bias", b_fn)
        else:
            out[f"{ours}/kernel"] = w_fn(get(theirs + ".weight"))
            out[f"{ours}/bias"] = b_fn(get(theirs + ".bias"))

    p, c = cfg.patch_volume, cfg.in_channels
    linear("patch_embed", "patch_embedding", lambda w: w.transpose(2, 3, 4, 1, 0).reshape(p * c, d))
    ce = "condition_embedder."
    linear("time_embed/fc1", ce + "time_embedder.linear_1")
    linear("time_embed/fc2", ce + "time_embedder.linear_2")
    linear("time_embed/proj", ce + "time_proj", lambda w: w.T.reshape(d, 6, d), lambda b: b.reshape(6, d))
    linear("text_embed/fc1", ce + "text_embedder.linear_1")
    linear("text_embed/fc2", ce + "text_embedder.linear_2")
    for ours, theirs in (("attn1", "attn1"), ("attn2", "attn2")):
        rope = ours == "attn1"
        src = f"blocks.{{i}}.{theirs}."
        linear(f"blocks/{ours}/q_proj", src + "to_q", heads_in_rope if rope else heads_in,
               heads_bias_rope if rope else heads_bias, per_block=True)
        linear(f"blocks/{ours}/k_proj", src + "to_k", heads_in_rope if rope else heads_in,
               heads_bias_rope if rope else heads_bias, per_block=True)
        linear(f"blocks/{ours}/v_proj", src + "to_v", heads_in, heads_bias, per_block=True)
        linear(f"blocks/{ours}/o_proj", src + "to_out.0", lambda w: w.T.reshape(nh, hd, d), per_block=True)
        out[f"blocks/{ours}/q_norm/scale"] = stack(src + "norm_q.weight", norm_rope if rope else (lambda s: s))
        out[f"blocks/{ours}/k_norm/scale"] = stack(src + "norm_k.weight", norm_rope if rope else (lambda s: s))
    if cfg.cross_attn_norm:
        out["blocks/norm2/scale"] = stack("blocks.{i}.norm2.weight")
        out["blocks/norm2/bias"] = stack("blocks.{i}.norm2.bias")
    linear("blocks/ffn/fc1", "blocks.{i}.ffn.net.0.proj", per_block=True)
    linear("blocks/ffn/fc2", "blocks.{i}.ffn.net.2", per_block=True)
    out["blocks/modulation"] = stack("blocks.{i}.scale_shift_table", lambda t: t.reshape(6, d))
    out["head_modulation"] = get("scale_shift_table").reshape(2, d)
    linear("proj_out", "proj_out")

    ignorable = ("norm_added_q",)  # diffusers ignores it on load too
    extra = sorted(k for k in hf if k not in used and not any(s in k for s in ignorable))
    if extra:
        raise CheckpointError(f"the checkpoint has tensors this model does not use (e.g. {extra[:3]}): it has "
                              "more layers than config.json says, or an image branch (Wan2.1 I2V) that is not "
                              "supported")
    return out


CONVERTER = Converter(
    name="wan-dit",
    config_type=CogPortraitDiTConfig,
    source=("the 'transformer' folder of a Wan2.x Diffusers checkpoint (e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers) on "
            "the Hub"),
    config_from_hf=CogPortraitDiTConfig.from_hf,
    build=build,
    map_weights=map_weights,
    weights_name="diffusion_pytorch_model",
)


def from_wan(hf_dir, *, rngs: nnx.Rngs, dtype=F32, param_dtype=F32, **additions) -> tuple[CogPortraitDiT,
                                                                                          CogPortraitDiTConfig]:
    """A CogPortrait DiT initialised from a Wan checkpoint directory: the Wan weights loaded, our additions
    (``additions``: e.g. ``audio_dim=768, pose_channels=48, pose_hidden=64, remat="full"``) freshly initialised
    (their outputs start at zero, so the model computes exactly what the Wan model does). Sharded under
    ``jax.set_mesh`` + ``nnx.logical_axis_rules``. Only the additions are drawn at random (the Wan weights are
    never initialised), so the peak memory is one copy of the weights."""
    cfg = dataclasses.replace(CogPortraitDiTConfig.from_hf(read_hf_config(hf_dir, CONVERTER)), **additions)
    weights = map_weights(read_safetensors(hf_dir, CONVERTER), cfg)
    if cfg.audio_dim or cfg.pose_channels:
        with nnx.use_eager_sharding(False):
            fresh = _init_additions(rngs, cfg=cfg, param_dtype=param_dtype)
        weights.update({"/".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(fresh)})
    model = build_abstract(CONVERTER, cfg, dtype=dtype, param_dtype=param_dtype)
    load_into(model, weights, what=f"Wan checkpoint in '{hf_dir}' plus the fresh additions")
    return model, cfg


def _is_addition(path, _value) -> bool:
    return "/".join(map(str, path)).startswith(ADDITION_PREFIXES)


@functools.partial(nnx.jit, static_argnames=("cfg", "param_dtype"))
def _init_additions(rngs, *, cfg, param_dtype):
    """The freshly initialised parameters of our additions only (XLA drops the unused draws of the rest)."""
    return nnx.state(CogPortraitDiT(cfg, param_dtype=param_dtype, rngs=rngs), _is_addition)


# ----------------------------------------------------------------------------------------------------------------
# Jitted forward

@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(state, latents, timestep, text, audio, pose, text_mask, audio_mask, *, graphdef):
    model = nnx.merge(graphdef, state)
    return model(latents, timestep, text, audio=audio, pose=pose, text_mask=text_mask, audio_mask=audio_mask)


def jit_forward(model: CogPortraitDiT):
    """A jitted ``(latents, timestep, text, audio=None, pose=None, text_mask=None, audio_mask=None) ->
    velocity`` over the model's current parameters (split once; compiled per input shapes)."""
    graphdef, state = nnx.split(model)

    def run(latents, timestep, text, audio=None, pose=None, text_mask=None, audio_mask=None):
        return _forward(state, latents, timestep, text, audio, pose, text_mask, audio_mask, graphdef=graphdef)

    return run
