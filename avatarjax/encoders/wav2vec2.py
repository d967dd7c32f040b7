"""wav2vec 2.0 / XLSR speech encoder in Flax NNX, matching transformers' ``Wav2Vec2Model`` (eval mode), plus
its converter and the wav2vec2 feature extractor's input normalisation.

    input_values [B, L] float32 (16 kHz, normalised), attention_mask [B, L] (1 = sample) or None
      -> feature encoder: 7 strided convs (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) + GELU  [B, T, 512]
         (``feat_extract_norm`` 'group': GroupNorm(C groups) after the first conv only; 'layer': LayerNorm after
         every conv); T = 50 frames per second (hop 320 samples, receptive field 400)
      -> feature projection: LayerNorm (= ``extract_features``) + Linear 512 -> hidden
      -> padded frames zeroed, + positional conv embedding (weight-normalised grouped conv, kernel 128, 16 groups,
         'same' padding with the even-kernel trim, GELU)
      -> post-LN Transformer (``do_stable_layer_norm=False``, base: LayerNorm after the positional add, post-LN
         blocks) or pre-LN "stable layer norm" Transformer (large / XLSR-53: pre-LN blocks, final LayerNorm)
      -> Wav2Vec2Output(last_hidden_state [B, T, hidden], extract_features [B, T, 512],
                        hidden_states [num_layers + 1, B, T, hidden] or None, frame_mask [B, T] bool)

``hidden_states[i]`` equals transformers 5's ``output_hidden_states=True`` tuple entry ``i``: the input of layer 0,
then every layer's output. As there (``tie_last_hidden_states=False``), for the stable-layer-norm variant the last
entry is the final layer's output *before* the final LayerNorm, which only ``last_hidden_state`` has.
``Wav2Vec2Model.feature_encoder`` gives the raw 512-d CNN features (before the projection's LayerNorm).

The frame-level mask is derived from the sample-level ``attention_mask`` exactly as transformers does: its row sums
pass through the conv output-length formula. Only keys are masked (padded query rows are computed too, as there).
Base (group-norm) checkpoints were trained without a mask; transformers advises zero-padding and passing none.

Conversion: ``avatarjax convert wav2vec2 --from DIR --to OUT`` where DIR holds a ``Wav2Vec2Model``,
``Wav2Vec2ForCTC`` or ``Wav2Vec2ForPreTraining`` checkpoint (e.g. facebook/wav2vec2-large-xlsr-53,
facebook/wav2vec2-base-960h) re-saved with ``save_pretrained(..., safe_serialization=True)``; heads (CTC,
quantizer) are ignored. The positional conv keeps weight norm's (g, v) as parameters (either storage: legacy
``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``), so fine-tuning follows the same
parametrisation; the effective weight ``g * v / ||v||`` is formed in float32 on every forward.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint import convert as convert_lib
from avatarjax.checkpoint.convert import Converter
from avatarjax.data.transforms import TARGET_SAMPLE_RATE, normalize_audio, resample_audio
from avatarjax.errors import CheckpointError, ConfigError, DataError
from avatarjax.nn.attention import Attention
from avatarjax.nn.linear import Dense
from avatarjax.nn.mlp import ACTIVATIONS, MLP
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.scan import REMAT_POLICIES, create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

SOURCE = ("facebook/wav2vec2-large-xlsr-53 or facebook/wav2vec2-base-960h on the Hugging Face Hub (Wav2Vec2Model, "
          "Wav2Vec2ForCTC or Wav2Vec2ForPreTraining)")
SAMPLE_RATE = TARGET_SAMPLE_RATE  # 16 kHz
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
CONV_NORM_EPS = 1e-5  # nn.LayerNorm / nn.GroupNorm defaults in the feature encoder (not config.layer_norm_eps)

# Hugging Face activation names -> avatarjax.nn.mlp.ACTIVATIONS keys.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                   "silu": "silu", "swish": "silu"}
POS_CONV_IMPLS = ("conv", "fft")


def _gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU as torch computes it, ``x/2 (1 + erf(x/sqrt 2))``: on XLA:CPU about 1.3x faster than
    ``jax.nn.gelu(approximate=False)`` (whose erfc evaluates two polynomials and an exp per element)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _act(name: str):
    """The feature encoder's / positional conv's activation (the Transformer FFN uses avatarjax.nn.mlp.MLP)."""
    return _gelu_erf if name == "gelu" else ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """wav2vec2 encoder; the defaults are wav2vec2-base's. Field names follow the Hugging Face config except
    ``num_layers``/``num_heads`` and the last three (ours).

    pos_conv_impl: 'conv' (default; ``lax.conv`` with ``feature_group_count``, native on GPU/TPU) or 'fft'
      (per-group FFT convolution). Measured on the 2-core CPU, XLA's grouped conv is not the slow path that
      depthwise convs are: at 16 groups it matches PyTorch's oneDNN conv (XLSR size [1, 499, 1024]: 60 vs 69 ms;
      [4, 499, 1024]: 222 vs 273 ms). 'fft' wins only for narrow groups and short clips ([8, 99, 256]: 9 vs
      27 ms) and is 4x slower at XLSR size.
    remat: avatarjax.nn.scan.REMAT_POLICIES key for the scanned Transformer layers.
    attention: ``avatarjax.nn.attention.attend`` implementation ('xla', 'cudnn' or None = let JAX pick).
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # an ACTIVATIONS key
    layer_norm_eps: float = 1e-5
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # group | layer
    feat_extract_activation: str = "gelu"  # an ACTIVATIONS key
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    pos_conv_impl: str = "conv"
    remat: str = "none"
    attention: str | None = "xla"

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0):
            problems.append(f"conv_dim, conv_kernel and conv_stride must have the same (non-zero) length, got "
                            f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}")
        if self.feat_extract_norm not in ("group", "layer"):
            problems.append(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            problems.append(f"hidden_size={self.hidden_size} is not a multiple of "
                            f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}")
        if self.pos_conv_impl not in POS_CONV_IMPLS:
            problems.append(f"pos_conv_impl must be one of {POS_CONV_IMPLS}, got {self.pos_conv_impl!r}")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
        if problems:
            raise ConfigError("invalid wav2vec2 config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def hop_length(self) -> int:
        """Samples per output frame (320: 50 frames per second at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400); shorter clips give no frame."""
        field = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * s + k
        return field

    def num_frames(self, num_samples):
        """Conv output length for ``num_samples`` (int or integer array), as transformers'
        ``_get_feat_extract_output_lengths`` (floor division, so it may go to 0 or below for tiny inputs)."""
        for k, s in zip(self.conv_kernel, self.conv_stride):
            num_samples = (num_samples - k) // s + 1
        return num_samples

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> Wav2Vec2Config:
        """Our config from a Hugging Face ``Wav2Vec2Config`` dict (``config.json``); ``overrides`` set our own
        fields (pos_conv_impl, remat, attention)."""
        model_type = hf.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ConfigError(f"config.json has model_type '{model_type}', the wav2vec2 converter reads "
                              "'wav2vec2' checkpoints only")
        if hf.get("add_adapter") or hf.get("adapter_attn_dim") is not None:
            raise ConfigError("wav2vec2 checkpoints with adapters (add_adapter / adapter_attn_dim, e.g. MMS "
                              "language adapters) are not supported: use the base checkpoint without adapters")

        def act(key: str) -> str:
            name = hf.get(key, "gelu")
            if name not in _HF_ACTIVATIONS:
                raise ConfigError(f"config.json {key}={name!r} is not supported: use one of {sorted(_HF_ACTIVATIONS)}")
            return _HF_ACTIVATIONS[name]

        d = cls()
        kw = dict(
            hidden_size=hf.get("hidden_size", d.hidden_size),
            num_layers=hf.get("num_hidden_layers", d.num_layers),
            num_heads=hf.get("num_attention_heads", d.num_heads),
            intermediate_size=hf.get("intermediate_size", d.intermediate_size),
            hidden_act=act("hidden_act"),
            layer_norm_eps=hf.get("layer_norm_eps", d.layer_norm_eps),
            conv_dim=tuple(hf.get("conv_dim", d.conv_dim)),
            conv_kernel=tuple(hf.get("conv_kernel", d.conv_kernel)),
            conv_stride=tuple(hf.get("conv_stride", d.conv_stride)),
            conv_bias=bool(hf.get("conv_bias", d.conv_bias)),
            feat_extract_norm=hf.get("feat_extract_norm", d.feat_extract_norm),
            feat_extract_activation=act("feat_extract_activation"),
            num_conv_pos_embeddings=hf.get("num_conv_pos_embeddings", d.num_conv_pos_embeddings),
            num_conv_pos_embedding_groups=hf.get("num_conv_pos_embedding_groups", d.num_conv_pos_embedding_groups),
            do_stable_layer_norm=bool(hf.get("do_stable_layer_norm", d.do_stable_layer_norm)),
        )
        kw.update(overrides)
        return cls(**kw)


PRESETS: dict[str, Wav2Vec2Config] = {
    # facebook/wav2vec2-base(-960h): group-norm feature encoder without conv bias, post-LN Transformer.
    "base": Wav2Vec2Config(),
    # facebook/wav2vec2-large-xlsr-53 (InstructAvatar's audio encoder) and the other large / XLS-R models.
    "xlsr53_large": Wav2Vec2Config(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                                   conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True),
}


@flax.struct.dataclass
class Wav2Vec2Output:
    """last_hidden_state [B, T, hidden]; extract_features [B, T, conv_dim[-1]] (the feature projection's
    LayerNorm of the CNN features, as transformers' ``extract_features``); hidden_states
    [num_layers + 1, B, T, hidden] (with ``output_hidden_states``) or None; frame_mask [B, T] bool."""

    last_hidden_state: jax.Array
    extract_features: jax.Array
    hidden_states: jax.Array | None
    frame_mask: jax.Array


# ---------------------------------------------------------------------------------------------------- layers

class GroupNormPerChannel(nnx.Module):
    """``nn.GroupNorm(num_groups=C, num_channels=C)``: every channel normalised over time. x: ``[B, T, C]``."""

    def __init__(self, channels: int, *, eps: float = CONV_NORM_EPS, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class ConvLayer(nnx.Module):
    """One feature-encoder layer: strided 'valid' Conv1d (+ bias) (+ GroupNorm / LayerNorm) + activation.
    x ``[B, L, C_in]`` -> ``[B, (L - kernel) // stride + 1, C_out]`` (channels last)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, *, use_bias: bool, norm: str | None,
                 activation: str, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride = stride
        self.dtype = dtype
        self.activation = activation
        std = math.sqrt(2.0 / (c_in * kernel))  # kaiming normal, as transformers initialises these convs
        self.kernel = nnx.Param((jax.random.normal(rngs.params(), (kernel, c_in, c_out)) * std).astype(param_dtype),
                                out_sharding=("kernel", "conv_in", "conv_out"))
        self.bias = nnx.Param(jnp.zeros((c_out,), param_dtype), out_sharding=("conv_out",)) if use_bias else None
        if norm == "layer":
            self.layer_norm = LayerNorm(c_out, eps=CONV_NORM_EPS, param_dtype=param_dtype)
        elif norm == "group":
            self.layer_norm = GroupNormPerChannel(c_out, param_dtype=param_dtype)
        else:
            self.layer_norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(x.astype(dtype), self.kernel[...].astype(dtype), (self.stride,), "VALID",
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        if self.layer_norm is not None:
            y = self.layer_norm(y)
        return _act(self.activation)(y)


class FeatureEncoder(nnx.Module):
    """Raw audio ``[B, L]`` -> CNN features ``[B, T, conv_dim[-1]]``."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        layers = []
        c_in = 1
        for i, (c_out, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = "layer" if cfg.feat_extract_norm == "layer" else ("group" if i == 0 else None)
            layers.append(ConvLayer(c_in, c_out, k, s, use_bias=cfg.conv_bias, norm=norm,
                                    activation=cfg.feat_extract_activation, dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs))
            c_in = c_out
        self.conv_layers = nnx.List(layers)

    def __call__(self, input_values: jax.Array) -> jax.Array:
        h = input_values[:, :, None]
        for layer in self.conv_layers:
            h = constrain(layer(h), ("batch", "length", None))
        return h


class FeatureProjection(nnx.Module):
    """CNN features ``[B, T, C]`` -> (LayerNorm + Linear ``[B, T, hidden]``, the LayerNorm'd features)."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.projection = Dense(cfg.conv_dim[-1], cfg.hidden_size, axes=("features", "embed"), dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        normed = self.layer_norm(features)
        return self.projection(normed), normed


class PositionalConvEmbedding(nnx.Module):
    """Weight-normalised grouped Conv1d hidden -> hidden ('same' padding ``kernel // 2``, the extra frame of an
    even kernel trimmed) + activation. x ``[B, T, hidden]`` -> ``[B, T, hidden]``.

    weight norm over every dim but the kernel one (``weight_norm(conv, dim=2)``): ``w[k] = g[k] v[k] / ||v[k]||``.
    ``weight_v`` is stored in the grouped ``lax.conv`` layout ``[kernel, hidden / groups, hidden]``.
    """

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        k, c, g = cfg.num_conv_pos_embeddings, cfg.hidden_size, cfg.num_conv_pos_embedding_groups
        self.kernel_size, self.groups, self.impl, self.dtype = k, g, cfg.pos_conv_impl, dtype
        self.activation = cfg.feat_extract_activation
        v = jax.random.normal(rngs.params(), (k, c // g, c)) * (2.0 * math.sqrt(1.0 / (k * c)))
        self.weight_v = nnx.Param(v.astype(param_dtype), out_sharding=("kernel", "conv_in", "conv_out"))
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(v * v, axis=(1, 2))).astype(param_dtype), out_sharding=("kernel",))
        self.bias = nnx.Param(jnp.zeros((c,), param_dtype), out_sharding=("conv_out",))

    def weight(self) -> jax.Array:
        """The effective kernel ``[kernel, hidden / groups, hidden]`` in float32."""
        v = self.weight_v[...].astype(jnp.float32)
        g = self.weight_g[...].astype(jnp.float32)
        return v * (g * jax.lax.rsqrt(jnp.sum(v * v, axis=(1, 2))))[:, None, None]

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        w = self.weight().astype(dtype)
        x = x.astype(dtype)
        if self.impl == "fft":
            y = _grouped_conv_same_fft(x, w, self.groups)
        else:
            pad = self.kernel_size // 2
            y = jax.lax.conv_general_dilated(x, w, (1,), [(pad, pad)], dimension_numbers=("NWC", "WIO", "NWC"),
                                             feature_group_count=self.groups)[:, :x.shape[1]]
        return _act(self.activation)(y + self.bias[...].astype(dtype))


def _grouped_conv_same_fft(x: jax.Array, w: jax.Array, groups: int) -> jax.Array:
    """The positional conv as per-group FFT convolution (float32 FFTs). x ``[B, T, C]``, w ``[K, C/G, C]``
    -> ``[B, T, C]``, equal to the 'same'-padded (pad K // 2, trimmed to T) grouped cross-correlation."""
    b, t, c = x.shape
    k, cg, _ = w.shape
    pad = k // 2
    n = 1 << (t + k - 2).bit_length()  # >= t + k - 1: no circular wrap
    wg = w.astype(jnp.float32).reshape(k, cg, groups, cg).transpose(0, 2, 1, 3)  # [K, G, C/G in, C/G out]
    xf = jnp.fft.rfft(x.astype(jnp.float32).reshape(b, t, groups, cg), n=n, axis=1)  # [B, F, G, Cg]
    wf = jnp.fft.rfft(wg[::-1], n=n, axis=0)  # correlation = convolution with the flipped kernel
    y = jnp.fft.irfft(jnp.einsum("bfgc,fgco->bfgo", xf, wf), n=n, axis=1)
    start = k - 1 - pad
    return y[:, start:start + t].reshape(b, t, c).astype(x.dtype)


class EncoderLayer(nnx.Module):
    """Self-attention + FFN block, post-LN (base) or pre-LN (stable layer norm). x ``[B, T, hidden]``."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stable = cfg.do_stable_layer_norm
        self.attention = Attention(cfg.hidden_size, cfg.num_heads, qkv_bias=True, out_bias=True,
                                   implementation=cfg.attention, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.feed_forward = MLP(cfg.hidden_size, cfg.intermediate_size, activation=cfg.hidden_act, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        if self.stable:
            h = x + self.attention(self.layer_norm(x), mask=mask).astype(x.dtype)
            h = h + self.feed_forward(self.final_layer_norm(h)).astype(h.dtype)
        else:
            h = self.layer_norm(x + self.attention(x, mask=mask).astype(x.dtype))
            h = self.final_layer_norm(h + self.feed_forward(h).astype(h.dtype))
        return constrain(h, ("batch", "length", "act_embed"))


class Encoder(nnx.Module):
    """Positional conv embedding + scanned Transformer layers (+ the variant's LayerNorm)."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stable, self.remat, self.num_layers = cfg.do_stable_layer_norm, cfg.remat, cfg.num_layers
        self.pos_conv_embed = PositionalConvEmbedding(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.layers = create_stacked(
            lambda r: EncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)

    def __call__(self, h: jax.Array, frame_mask: jax.Array | None, *, output_hidden_states: bool = False
                 ) -> tuple[jax.Array, jax.Array | None]:
        """h ``[B, T, hidden]``, frame_mask ``[B, T]`` bool or None -> (last hidden state, stacked hidden states
        ``[num_layers + 1, B, T, hidden]`` or None)."""
        attn_mask = None
        if frame_mask is not None:
            h = jnp.where(frame_mask[:, :, None], h, jnp.zeros((), h.dtype))
            attn_mask = frame_mask[:, None, None, :]  # keys only, [B, 1, 1, T]
        h = h + self.pos_conv_embed(h).astype(h.dtype)
        if not self.stable:
            h = self.layer_norm(h)
        h = constrain(h, ("batch", "length", "act_embed"))
        states = None
        if output_hidden_states:
            states = jnp.zeros((self.num_layers + 1, *h.shape), h.dtype).at[0].set(h)

        def body(layer: EncoderLayer, carry, index):
            x, buf = carry
            x = layer(x, attn_mask)
            if buf is not None:
                buf = jax.lax.dynamic_update_index_in_dim(buf, x, index + 1, axis=0)
            return x, buf

        h, states = run_stacked(self.layers, body, (h, states), jnp.arange(self.num_layers), remat=self.remat)
        if self.stable:
            h = self.layer_norm(h)
        return h, states


class Wav2Vec2Model(nnx.Module):
    """transformers' ``Wav2Vec2Model`` (inference: no SpecAugment, no dropout). See the module docstring."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.feature_extractor = FeatureEncoder(cfg, **kw)
        self.feature_projection = FeatureProjection(cfg, **kw)
        self.encoder = Encoder(cfg, **kw)

    def feature_encoder(self, input_values: jax.Array) -> jax.Array:
        """The raw CNN features: input_values ``[B, L]`` -> ``[B, T, conv_dim[-1]]`` (50 Hz at 16 kHz)."""
        return self.feature_extractor(constrain(input_values, ("batch", None)))

    def frame_mask(self, attention_mask: jax.Array, num_frames: int) -> jax.Array:
        """Sample mask ``[B, L]`` -> frame mask ``[B, num_frames]`` bool, as transformers'
        ``_get_feature_vector_attention_mask``: frames ``t <= (n - 1) mod T`` with ``n`` the conv output length
        of the row sum (so a row too short for one frame marks every frame, as there)."""
        lengths = jnp.sum(attention_mask.astype(jnp.int32), axis=-1)
        last = jnp.mod(self.config.num_frames(lengths) - 1, num_frames)
        return jnp.arange(num_frames)[None, :] <= last[:, None]

    def __call__(self, input_values: jax.Array, attention_mask: jax.Array | None = None, *,
                 output_hidden_states: bool = False) -> Wav2Vec2Output:
        """input_values ``[B, L]`` (normalised 16 kHz audio, see ``prepare_audio``), attention_mask ``[B, L]``
        (1 = sample, 0 = padding) or None -> Wav2Vec2Output."""
        features = self.feature_encoder(input_values)
        num_frames = features.shape[1]
        mask = None if attention_mask is None else self.frame_mask(attention_mask, num_frames)
        h, extract_features = self.feature_projection(features)
        h, states = self.encoder(h, mask, output_hidden_states=output_hidden_states)
        if mask is None:
            mask = jnp.ones(h.shape[:2], bool)
        return Wav2Vec2Output(last_hidden_state=h, extract_features=extract_features, hidden_states=states,
                              frame_mask=mask)


def build(cfg: Wav2Vec2Config, rngs: nnx.Rngs, *, dtype=jnp.float32, param_dtype=jnp.float32) -> Wav2Vec2Model:
    """Our model. Under ``jax.set_mesh`` + ``nnx.logical_axis_rules`` its parameters are created sharded by their
    logical axes; outside a mesh they are plain single-device arrays (the logical axes stay as metadata)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        with nnx.use_eager_sharding(False):
            return Wav2Vec2Model(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return Wav2Vec2Model(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def from_pretrained(hf_dir: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32
                    ) -> tuple[Wav2Vec2Model, Wav2Vec2Config]:
    """(model, config) from a local Hugging Face wav2vec2 directory (see the module docstring)."""
    return convert_lib.from_pretrained(CONVERTER, hf_dir, dtype=dtype, param_dtype=param_dtype)


def jit_forward(model: nnx.Module, method: str = "__call__", **static):
    """``jax.jit`` of ``model.method(*args, **static)`` closing over the split state once (no per-call graph
    traversal). ``static`` keyword arguments (e.g. ``output_hidden_states=True``) are fixed at trace time."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *args):
        return getattr(nnx.merge(graphdef, state), method)(*args, **static)

    return lambda *args: run(state, *args)


# ------------------------------------------------------------------------------------------ input preparation

def normalize(input_values: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``: every row ``[B, L]`` to zero mean and unit variance
    over its valid samples (``(x - mean) / sqrt(var + 1e-7)``), padding set to 0."""
    x = np.asarray(input_values, np.float32)
    if x.ndim == 1:
        x = x[None]
    lengths = np.full((x.shape[0],), x.shape[1]) if attention_mask is None else \
        np.asarray(attention_mask, np.int32).sum(-1)
    out = np.zeros_like(x)
    for i, n in enumerate(lengths):
        out[i, :n] = normalize_audio(x[i, :n], eps=NORM_EPS)
    return out


def prepare_audio(wav: np.ndarray | Sequence[np.ndarray], sample_rate: int, *, do_normalize: bool = True,
                  pad_to_multiple_of: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clips -> (input_values float32 ``[B, L]``, attention_mask int32 ``[B, L]``) for ``Wav2Vec2Model``.

    ``wav``: one clip (``[samples]`` or ``[samples, channels]``) or a list of clips, at ``sample_rate`` Hz. Each is
    made mono and resampled to 16 kHz (``avatarjax.data.transforms.resample_audio``), normalised over its own
    samples exactly as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` with ``padding=True``, then right-padded
    with zeros to the longest clip (rounded up to ``pad_to_multiple_of`` samples: fixed shapes for jit).
    """
    if isinstance(wav, np.ndarray) and wav.ndim == 2 and wav.shape[0] < wav.shape[1]:
        raise DataError(f"a 2-D audio array is read as one clip [samples, channels], but shape {wav.shape} has "
                        "fewer samples than channels: pass a batch as a list of 1-D clips")
    clips = [wav] if isinstance(wav, np.ndarray) and wav.ndim <= 2 else list(wav)
    if not clips:
        raise DataError("prepare_audio got no audio clips")
    clips = [resample_audio(np.asarray(c), sample_rate, SAMPLE_RATE) for c in clips]
    min_len = PRESETS["base"].receptive_field
    for i, c in enumerate(clips):
        if c.shape[0] < min_len:
            raise DataError(f"audio clip {i} has {c.shape[0]} samples at 16 kHz, fewer than the {min_len} "
                            f"({min_len / SAMPLE_RATE * 1000:.0f} ms) wav2vec2 needs for one frame: pad or drop it")
    length = max(c.shape[0] for c in clips)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    values = np.zeros((len(clips), length), np.float32)
    mask = np.zeros((len(clips), length), np.int32)
    for i, c in enumerate(clips):
        values[i, :c.shape[0]] = normalize_audio(c, eps=NORM_EPS) if do_normalize else c
        mask[i, :c.shape[0]] = 1
    return values, mask


# ------------------------------------------------------------------------------------------- weight conversion

def _take(tensors: dict[str, np.ndarray], *names: str) -> np.ndarray:
    for name in names:
        if name in tensors:
            return np.asarray(tensors[name], np.float32)
    leaf = names[0].rsplit(".", 1)[-1]
    near = sorted(k for k in tensors if k.endswith("." + leaf))[:3]
    raise CheckpointError(f"the wav2vec2 checkpoint has no tensor {' or '.join(map(repr, names))}"
                          + (f" (it has e.g. {near})" if near else "") + ": is it the right architecture and config?")


def _norm(tensors, prefix: str) -> dict[str, np.ndarray]:
    """A torch LayerNorm / GroupNorm (weight, bias; legacy gamma, beta) -> our (scale, bias)."""
    return {"scale": _take(tensors, f"{prefix}.weight", f"{prefix}.gamma"),
            "bias": _take(tensors, f"{prefix}.bias", f"{prefix}.beta")}


def _pos_conv(tensors, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(g ``[K]``, v ``[K, C/G, C]``) from either weight-norm storage, or a plain weight (g = ||w[k]||)."""
    new, legacy = f"{prefix}.parametrizations.weight.original", f"{prefix}.weight_"
    if new + "1" in tensors or legacy + "v" in tensors:
        g = _take(tensors, new + "0", legacy + "g")
        v = _take(tensors, new + "1", legacy + "v")
        if g.size != v.shape[2]:
            raise CheckpointError(f"the positional conv's weight norm has g of shape {g.shape} for v of shape "
                                  f"{v.shape}: expected weight_norm over dim 2 (g [1, 1, kernel])")
        g = g.reshape(-1)
    else:
        v = _take(tensors, f"{prefix}.weight")
        g = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=(0, 1))).astype(np.float32)
    return g, v.transpose(2, 1, 0)  # torch [C_out, C_in/G, K] -> [K, C_in/G, C_out]


def map_weights(hf_tensors: dict[str, np.ndarray], cfg: Wav2Vec2Config) -> dict[str, np.ndarray]:
    """Hugging Face wav2vec2 tensors -> our parameter paths (``"a/b/c"``, layers stacked on a leading axis)."""
    marker = "feature_projection.projection.weight"
    prefix = next((p for p in ("", "wav2vec2.") if p + marker in hf_tensors), None)
    if prefix is None:
        raise CheckpointError(f"the checkpoint holds no wav2vec2 weights: expected a tensor named '{marker}' or "
                              f"'wav2vec2.{marker}'; it has e.g. {sorted(hf_tensors)[:5]}")
    t = {k[len(prefix):]: v for k, v in hf_tensors.items() if k.startswith(prefix)}
    out: dict[str, np.ndarray] = {}

    def put(path: str, value: np.ndarray):
        out[path] = np.asarray(value, np.float32)

    for i in range(len(cfg.conv_dim)):
        src, dst = f"feature_extractor.conv_layers.{i}", f"feature_extractor/conv_layers/{i}"
        put(f"{dst}/kernel", _take(t, f"{src}.conv.weight").transpose(2, 1, 0))  # [O, I, K] -> [K, I, O]
        if cfg.conv_bias:
            put(f"{dst}/bias", _take(t, f"{src}.conv.bias"))
        if cfg.feat_extract_norm == "layer" or i == 0:
            for name, value in _norm(t, f"{src}.layer_norm").items():
                put(f"{dst}/layer_norm/{name}", value)
    for name, value in _norm(t, "feature_projection.layer_norm").items():
        put(f"feature_projection/layer_norm/{name}", value)
    put("feature_projection/projection/kernel", _take(t, "feature_projection.projection.weight").T)
    put("feature_projection/projection/bias", _take(t, "feature_projection.projection.bias"))
    g, v = _pos_conv(t, "encoder.pos_conv_embed.conv")
    put("encoder/pos_conv_embed/weight_g", g)
    put("encoder/pos_conv_embed/weight_v", v)
    put("encoder/pos_conv_embed/bias", _take(t, "encoder.pos_conv_embed.conv.bias"))
    for name, value in _norm(t, "encoder.layer_norm").items():
        put(f"encoder/layer_norm/{name}", value)

    d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim

    def stack(fn, pattern: str) -> np.ndarray:
        return np.stack([fn(_take(t, pattern.format(i=i))) for i in range(cfg.num_layers)])

    layer = "encoder.layers.{i}."
    for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")):
        put(f"encoder/layers/attention/{ours}/kernel",
            stack(lambda w: w.T.reshape(d, h, hd), layer + f"attention.{theirs}.weight"))
        put(f"encoder/layers/attention/{ours}/bias",
            stack(lambda b: b.reshape(h, hd), layer + f"attention.{theirs}.bias"))
    put("encoder/layers/attention/o_proj/kernel", stack(lambda w: w.T.reshape(h, hd, d),
                                                        layer + "attention.out_proj.weight"))
    put("encoder/layers/attention/o_proj/bias", stack(lambda b: b, layer + "attention.out_proj.bias"))
    for ours, theirs in (("fc1", "intermediate_dense"), ("fc2", "output_dense")):
        put(f"encoder/layers/feed_forward/{ours}/kernel", stack(lambda w: w.T, layer + f"feed_forward.{theirs}.weight"))
        put(f"encoder/layers/feed_forward/{ours}/bias", stack(lambda b: b, layer + f"feed_forward.{theirs}.bias"))
    for norm in ("layer_norm", "final_layer_norm"):
        put(f"encoder/layers/{norm}/scale", stack(lambda w: w, layer + norm + ".weight"))
        put(f"encoder/layers/{norm}/bias", stack(lambda b: b, layer + norm + ".bias"))
    return out


def _build(cfg: Wav2Vec2Config, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32) -> Wav2Vec2Model:
    return build(cfg, rngs, dtype=dtype, param_dtype=param_dtype)


CONVERTER = Converter(name="wav2vec2", config_type=Wav2Vec2Config, source=SOURCE, config_from_hf=Wav2Vec2Config.from_hf,
                      build=_build, map_weights=map_weights)


# ------------------------------------------------------------------------------------------------- benchmarks

BENCH_SECONDS = 2.0
BENCH_BATCH = 4


def _tiny_hf_config(**overrides):
    from transformers import Wav2Vec2Config as HFConfig

    kw = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
              feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    kw.update(overrides)
    return HFConfig(**kw)


def benchmark_cases():
    """Our jitted forward vs transformers' ``Wav2Vec2Model`` (eval) on the same tiny random checkpoint (hidden 256,
    4 layers, 4 heads, FFN 1024, 512-channel CNN, XLSR-style layer norms; 2 s of 16 kHz audio, batch 4):
    ``wav2vec2`` (whole model, no mask), ``wav2vec2_masked`` (padded batch with an attention mask),
    ``wav2vec2_cnn`` (the CNN feature encoder alone) and ``wav2vec2_base`` (group-norm, post-LN variant)."""
    import torch
    from transformers import Wav2Vec2Model as HFModel

    from avatarjax.encoders.bench import BenchCase

    rng = np.random.default_rng(0)
    num = int(BENCH_SECONDS * SAMPLE_RATE)
    lengths = [num, num * 3 // 4, num // 2, num // 4]
    wav = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]
    values, mask = prepare_audio(wav, SAMPLE_RATE)
    full, _ = prepare_audio([rng.standard_normal(num).astype(np.float32) for _ in range(BENCH_BATCH)], SAMPLE_RATE)

    cases = []
    for tag, hf_cfg in (("", _tiny_hf_config()),
                        ("_base", _tiny_hf_config(feat_extract_norm="group", do_stable_layer_norm=False,
                                                  conv_bias=False))):
        torch.manual_seed(0)
        ref = HFModel(hf_cfg).eval()
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(tmp, safe_serialization=True)
            model, _ = from_pretrained(tmp)
        forward = jit_forward(model)
        x, xt = jnp.asarray(full), torch.from_numpy(full)
        note = "hidden 256, 4 layers, 2 s x 4 clips"
        cases.append(BenchCase(f"wav2vec2{tag}", lambda f=forward, x=x: f(x).last_hidden_state,
                               lambda r=ref, xt=xt: r(input_values=xt).last_hidden_state, note))
        if tag:
            continue
        xm, mm = jnp.asarray(values), jnp.asarray(mask)
        xmt, mmt = torch.from_numpy(values), torch.from_numpy(mask)
        cases.append(BenchCase("wav2vec2_masked", lambda f=forward: f(xm, mm).last_hidden_state,
                               lambda r=ref: r(input_values=xmt, attention_mask=mmt).last_hidden_state,
                               note + ", padded (2, 1.5, 1, 0.5 s) with attention mask"))
        cnn = jit_forward(model, "feature_encoder")
        cases.append(BenchCase("wav2vec2_cnn", lambda f=cnn, x=x: f(x), lambda r=ref, xt=xt: r.feature_extractor(xt),
                               "CNN feature encoder alone (7 convs, 512 channels, layer norm), 2 s x 4 clips"))
    return cases
