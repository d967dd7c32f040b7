"""InstructAvatar motion generator: a conditioned Conformer that denoises per-frame motion latents.

Inputs per sample: noisy motion latents ``x_t`` ``[T, latent]``, the diffusion time ``t``, audio features at twice
the video rate ``[2T, F]`` (wav2vec2 CNN features in the release, log-mel for synthface), the instruction as
text-encoder features (pooled ``[Dt]`` for the emotion branch, all tokens ``[L, Dt]`` for the motion branch), a
key-frame motion latent ``[latent]``, an audio flag (1 = emotional talking, 0 = text-only motion control) and,
while training, the ground-truth head pose ``[T, 3]``.

Layer order as released (REFERENCE.md section 1): add Linear(t_emb); FFN/2; add Linear(audio); MHSA; conv
module; key-frame cross-attention applied as FiLM; two-branch text cross-attention (per-branch LN, attention,
zero-initialised 1x1 gate; each sample takes the branch its audio flag selects); FFN/2; LayerNorm.

The model predicts x0 (both diffusion formulations; the objective may also have it predict v and convert, see
``denoise``'s ``to_x0``). Heads: pose from the detached audio features; AU logits
(multi-label) and intensity logits (3-way) from the mean-pooled predicted latents (the paper's auxiliary losses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.attention import Attention
from avatarjax.nn.conditioning import ClipAdapter, FeatureMLP, FiLM, TimestepEmbedding, ZeroGate
from avatarjax.nn.conformer import (ACT, Conformer, ConformerConfig, ConvModule, FeedForward, SelfAttentionBlock,
                                    conformer_layer_flops_per_token, dropout, make_layers, run_layers, split_key)
from avatarjax.nn.conv import Conv
from avatarjax.nn.embeddings import sinusoidal
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import LayerNorm
from avatarjax.parallel.mesh import constrain


@dataclasses.dataclass(frozen=True)
class InstructAvatarConfig:
    latent_dim: int = 768  # per-frame motion latent (16x16x3 at 256 px)
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 2048
    kernel_size: int = 13
    dropout: float = 0.1
    conv_norm: str = "batch"  # batch (released) | group
    scan_layers: bool = True
    time_scale: float = 1.0  # 1000 for the continuous VP-SDE time in (0, 1)
    # audio front-end: features at 2x the video rate -> Conv1d(k=3, stride 2) -> PosConformer -> dim
    audio_feature_dim: int = 512  # 512 wav2vec2 CNN features; 80 log-mel bins
    audio_encoder: ConformerConfig = ConformerConfig(dim=768, num_layers=4, num_heads=4, ffn_dim=1024,
                                                     kernel_size=13)
    # instruction features (CLIP ViT-L/14 text: 768; MiniLM: 384)
    text_dim: int = 768
    text_mlp_hidden: int = 1024
    text_mlp_layers: int = 4
    adapter_ratio: float = 0.6
    adapter_reduction: int = 4
    keyframe_mlp_hidden: int = 512
    pose_dim: int = 3
    pose_hidden: int = 384
    num_aus: int = 10
    num_intensities: int = 3
    head_hidden: int = 256
    # ablations (paper section 4): single text branch, ordinary-init gate instead of the zero convolution
    two_branch: bool = True
    zero_gate: bool = True


class AudioEncoder(nnx.Module):
    """``[batch, 2T, F]`` features -> Conv1d(F, F, 3, stride 2) -> PosConformer -> ``[batch, T, dim]``."""

    def __init__(self, cfg: InstructAvatarConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        f = cfg.audio_feature_dim
        self.downsample = Conv(f, f, 3, ndim=1, strides=2, padding=((1, 1),), dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
        self.conformer = Conformer(cfg.audio_encoder, f, remat=remat, dtype=dtype, param_dtype=param_dtype,
                                   rngs=rngs)
        self.out = (Dense(cfg.audio_encoder.dim, cfg.dim, axes=("mlp", "embed"), dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs) if cfg.audio_encoder.dim != cfg.dim else None)

    def __call__(self, features: jax.Array, mask: jax.Array, key: jax.Array | None, train: bool) -> jax.Array:
        h = self.downsample(features)[:, :mask.shape[1]]
        h = self.conformer(h, mask, key, train)
        return self.out(h) if self.out is not None else h


class PoseHead(nnx.Module):
    """2 x [Conv1d(k=3, hidden), ReLU, LayerNorm, dropout] -> Linear(hidden, 3): ``[b, T, dim]`` -> ``[b, T, 3]``."""

    def __init__(self, cfg: InstructAvatarConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = Conv(cfg.dim, cfg.pose_hidden, 3, ndim=1, **kw)
        self.norm1 = LayerNorm(cfg.pose_hidden, param_dtype=param_dtype)
        self.conv2 = Conv(cfg.pose_hidden, cfg.pose_hidden, 3, ndim=1, **kw)
        self.norm2 = LayerNorm(cfg.pose_hidden, param_dtype=param_dtype)
        self.out = Dense(cfg.pose_hidden, cfg.pose_dim, axes=("mlp", None), **kw)
        self.rate = cfg.dropout

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        k1, k2 = split_key(key, 2)
        h = dropout(self.norm1(jax.nn.relu(self.conv1(x))), self.rate, k1)
        h = dropout(self.norm2(jax.nn.relu(self.conv2(h))), self.rate, k2)
        return self.out(h)


class TextBranch(nnx.Module):
    """LN -> cross-attention to instruction features -> gate: ``[b, T, dim]`` x ``[b, L, dim]`` -> ``[b, T, dim]``."""

    def __init__(self, cfg: InstructAvatarConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = LayerNorm(cfg.dim, param_dtype=param_dtype)
        self.attn = Attention(cfg.dim, cfg.num_heads, qkv_bias=True, out_bias=True, **kw)
        self.gate = ZeroGate(cfg.dim, zero_init=cfg.zero_gate, **kw)
        self.rate = cfg.dropout

    def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array | None,
                 key: jax.Array | None) -> jax.Array:
        mask = None if context_mask is None else context_mask[:, None, None, :]
        return self.gate(dropout(self.attn(self.norm(x), context, mask=mask), self.rate, key))


class ConditionedLayer(nnx.Module):
    """One denoising block: ``[batch, T, dim]`` -> same (see the module docstring for the order)."""

    def __init__(self, cfg: InstructAvatarConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.time = Dense(cfg.dim, cfg.dim, axes=("mlp", "embed"), **kw)
        self.ffn1 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.audio = Dense(cfg.dim, cfg.dim, axes=("mlp", "embed"), **kw)
        self.attn = SelfAttentionBlock(cfg.dim, cfg.num_heads, rate=cfg.dropout, **kw)
        self.conv = ConvModule(cfg.dim, cfg.kernel_size, rate=cfg.dropout, norm=cfg.conv_norm, **kw)
        self.keyframe_norm = LayerNorm(cfg.dim, param_dtype=param_dtype)
        self.keyframe_attn = Attention(cfg.dim, cfg.num_heads, qkv_bias=True, out_bias=True, **kw)
        self.keyframe_film = FiLM(cfg.dim, **kw)
        self.emotion = TextBranch(cfg, **kw)
        self.motion = TextBranch(cfg, **kw) if cfg.two_branch else None
        self.ffn2 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.norm = LayerNorm(cfg.dim, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, c: dict, key: jax.Array | None, train: bool) -> jax.Array:
        k = split_key(key, 6)
        mask = c["mask"]
        x = x + self.time(c["time"])[:, None]
        x = x + 0.5 * self.ffn1(x, k[0])
        x = x + self.audio(c["audio"])
        x = x + self.attn(x, mask, k[1])
        x = x + self.conv(x, mask, k[2], train)
        keyframe = self.keyframe_attn(self.keyframe_norm(x), c["keyframe"])
        x = self.keyframe_film(x, keyframe)
        if self.motion is None:  # single-branch ablation: every sample reads all token states
            x = x + self.emotion(x, c["motion_text"], c["text_mask"], k[3])
        else:
            emotion = self.emotion(x, c["emotion_text"], None, k[3])
            motion = self.motion(x, c["motion_text"], c["text_mask"], k[4])
            x = x + jnp.where(c["talking"][:, None, None], emotion, motion)
        x = x + 0.5 * self.ffn2(x, k[5])
        return constrain(self.norm(x), ACT)


class InstructAvatar(nnx.Module):
    """The motion generator. ``__call__(x_t, t, cond, key=None, train=False)`` -> dict with

    - ``x0`` ``[batch, T, latent]``: the predicted clean latents
    - ``pose`` ``[batch, T, 3]``: the pose predicted from audio
    - ``au_logits`` ``[batch, num_aus]``, ``intensity_logits`` ``[batch, num_intensities]``

    ``cond``: ``audio_features`` ``[b, 2T, F]``, ``mask`` bool ``[b, T]``, ``audio_flag`` int ``[b]``,
    ``text_pooled`` ``[b, Dt]``, ``text_tokens`` ``[b, L, Dt]``, ``text_mask`` bool ``[b, L]``, ``keyframe``
    ``[b, latent]``, optional ``pose`` ``[b, T, 3]`` (ground truth while training; the predicted pose otherwise) and
    optional ``use_pose`` bool ``[b]`` (samples whose pose embedding is added; default: the talking samples).
    """

    def __init__(self, cfg: InstructAvatarConfig, *, remat: str = "none", dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cfg, self.remat = cfg, remat
        self.input = Dense(cfg.latent_dim, cfg.dim, axes=("mlp", "embed"), **kw)
        self.time = TimestepEmbedding(cfg.dim, scale=cfg.time_scale, **kw)
        self.audio = AudioEncoder(cfg, remat=remat, **kw)
        self.pose_head = PoseHead(cfg, **kw)
        self.pose_embed = Dense(cfg.pose_dim, cfg.dim, axes=(None, "embed"), **kw)
        self.emotion_text = FeatureMLP(cfg.text_dim, cfg.text_mlp_hidden, cfg.dim, cfg.text_mlp_layers,
                                       rate=cfg.dropout, **kw)
        self.emotion_adapter = ClipAdapter(cfg.dim, ratio=cfg.adapter_ratio, reduction=cfg.adapter_reduction, **kw)
        self.motion_text = FeatureMLP(cfg.text_dim, cfg.text_mlp_hidden, cfg.dim, cfg.text_mlp_layers,
                                      rate=cfg.dropout, **kw)
        self.motion_adapter = ClipAdapter(cfg.dim, ratio=cfg.adapter_ratio, reduction=cfg.adapter_reduction, **kw)
        self.keyframe = FeatureMLP(cfg.latent_dim, cfg.keyframe_mlp_hidden, cfg.dim, 1, rate=cfg.dropout, **kw)
        self.layers = make_layers(lambda r: ConditionedLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                  cfg.num_layers, cfg.scan_layers, rngs)
        self.output = Dense(cfg.dim, cfg.latent_dim, axes=("embed", "mlp"), **kw)
        self.au_head = FeatureMLP(cfg.latent_dim, cfg.head_hidden, cfg.num_aus, 1, rate=0.0, out_axis=None, **kw)
        self.intensity_head = FeatureMLP(cfg.latent_dim, cfg.head_hidden, cfg.num_intensities, 1, rate=0.0,
                                         out_axis=None, **kw)

    def encode_conditions(self, cond: dict, key: jax.Array | None, train: bool) -> dict:
        """The per-sample conditioning that does not depend on ``x_t`` or ``t`` (computed once per sampler run).

        Returns ``audio`` ``[b, T, dim]`` (audio features plus the pose embedding where used), ``pose_pred``,
        ``emotion_text`` ``[b, 1, dim]`` (the pooled embedding: one token attends exactly like the release's 77
        repeated copies), ``motion_text`` ``[b, L, dim]``, ``text_mask``, ``keyframe`` ``[b, 1, dim]``, ``mask``,
        ``talking`` bool ``[b]``.
        """
        k = split_key(key, 4)
        mask = cond["mask"]
        audio = self.audio(cond["audio_features"], mask, k[0], train)
        pose_pred = self.pose_head(jax.lax.stop_gradient(audio), k[1])
        talking = cond["audio_flag"] > 0
        pose = cond.get("pose")
        pose = pose_pred if pose is None else pose
        use_pose = cond.get("use_pose", talking)
        audio = audio + self.pose_embed(pose) * use_pose[:, None, None].astype(audio.dtype)
        emotion = self.emotion_adapter(self.emotion_text(cond["text_pooled"][:, None], k[2]))
        motion = self.motion_adapter(self.motion_text(cond["text_tokens"], k[3]))
        keyframe = self.keyframe(cond["keyframe"][:, None])
        return {"audio": constrain(audio, ACT), "pose_pred": pose_pred, "emotion_text": emotion,
                "motion_text": motion, "text_mask": cond["text_mask"], "keyframe": keyframe, "mask": mask,
                "talking": talking}

    def denoise(self, x_t: jax.Array, t: jax.Array, c: dict, key: jax.Array | None = None, train: bool = False,
                to_x0: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None) -> jax.Array:
        """``x_t`` ``[b, T, latent]``, ``t`` ``[b]``, ``c`` from ``encode_conditions`` -> x0 ``[b, T, latent]``.

        ``to_x0(output, x_t, t)`` turns the network's output into x0 when it predicts something else (e.g. v);
        None: the output is x0 (the paper and the release)."""
        out = self._network(x_t, t, c, key, train)
        return out if to_x0 is None else to_x0(out, x_t, t)

    def _network(self, x_t: jax.Array, t: jax.Array, c: dict, key: jax.Array | None, train: bool) -> jax.Array:
        k_in, k_layers = split_key(key, 2)
        h = jax.nn.relu(self.input(x_t))
        h = h + sinusoidal(jnp.arange(h.shape[1]), self.cfg.dim).astype(h.dtype)
        h = dropout(constrain(h, ACT), self.cfg.dropout, k_in)
        c = dict(c, time=self.time(t))
        h = run_layers(self.layers, h, k_layers, self.cfg.num_layers, self.cfg.scan_layers, self.remat,
                       lambda layer, y, k: layer(y, c, k, train), train)
        return self.output(h)

    def heads(self, x0: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """AU and intensity logits from the mean over valid frames of ``x0`` ``[b, T, latent]``."""
        weight = mask.astype(x0.dtype)[..., None]
        pooled = jnp.sum(x0 * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)
        return self.au_head(pooled), self.intensity_head(pooled)

    def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict, key: jax.Array | None = None,
                 train: bool = False, to_x0: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None
                 ) -> dict:
        k_cond, k_denoise = split_key(key, 2)
        c = self.encode_conditions(cond, k_cond, train)
        x0 = self.denoise(x_t, t, c, k_denoise, train, to_x0)
        au_logits, intensity_logits = self.heads(x0, cond["mask"])
        return {"x0": x0, "pose": c["pose_pred"], "au_logits": au_logits, "intensity_logits": intensity_logits}


def _mlp(dims: list[int]) -> float:
    return sum(2.0 * a * b for a, b in zip(dims[:-1], dims[1:]))


def instruct_avatar_flops(cfg: InstructAvatarConfig, frames: int, text_len: int) -> float:
    """Forward FLOPs of one InstructAvatar training example: audio encoder,
    pose head, instruction and key-frame MLPs, then the conditioned Conformer (attention to one key-frame
    token, the pooled emotion token and ``text_len`` motion tokens; keys and values of a context once per sample).
    """
    d, f, t, n = cfg.dim, cfg.ffn_dim, frames, text_len
    per_frame_layer = (2 * 2 * 2 * d * f  # ffn1 and ffn2
                       + 2 * d * d  # audio projection
                       + 2 * 4 * d * d + 2 * 2 * t * d  # self-attention
                       + 2 * 3 * d * d + 2 * cfg.kernel_size * d  # conv module
                       + 2 * 2 * d * d + 2 * 2 * 1 * d  # key-frame attention: q, o; one key
                       + 2 * 2 * d * d  # FiLM gain and bias
                       + 2 * 2 * d * d + 2 * 2 * 1 * d + 2 * d * d  # emotion branch: q, o, one key, zero gate
                       + (2 * 2 * d * d + 2 * 2 * n * d + 2 * d * d if cfg.two_branch else 0))  # motion branch
    per_sample_layer = (2 * d * d  # time projection
                        + 2 * 2 * d * d * (1 + 1 + (n if cfg.two_branch else 0)))  # context keys and values
    if not cfg.two_branch:  # the single branch attends to the motion tokens
        per_frame_layer += 2 * 2 * (n - 1) * d
        per_sample_layer += 2 * 2 * d * d * (n - 1)
    a, feat = cfg.audio_encoder, cfg.audio_feature_dim
    audio_per_frame = (2 * 3 * feat * feat + 2 * feat * a.dim
                       + a.num_layers * conformer_layer_flops_per_token(a.dim, a.ffn_dim, a.kernel_size, t)
                       + (2 * a.dim * d if a.dim != d else 0))
    pose_per_frame = 2 * 3 * d * cfg.pose_hidden + 2 * 3 * cfg.pose_hidden ** 2 + 2 * cfg.pose_hidden * cfg.pose_dim
    io_per_frame = 2 * cfg.pose_dim * d + 2 * 2 * cfg.latent_dim * d  # pose embedding, input and output
    text_mlp = _mlp([cfg.text_dim] + [cfg.text_mlp_hidden] * cfg.text_mlp_layers + [d])
    adapter = 2 * 2 * d * (d // cfg.adapter_reduction)
    per_sample = (2 * (d * 4 * d) * 2  # timestep embedding
                  + (1 + n) * (text_mlp + adapter)  # pooled emotion token, motion tokens
                  + _mlp([cfg.latent_dim, cfg.keyframe_mlp_hidden, d])
                  + _mlp([cfg.latent_dim, cfg.head_hidden, cfg.num_aus]) + _mlp([cfg.latent_dim, cfg.head_hidden,
                                                                                 cfg.num_intensities]))
    return float(t * (cfg.num_layers * per_frame_layer + audio_per_frame + pose_per_frame + io_per_frame)
                 + cfg.num_layers * per_sample_layer + per_sample)
