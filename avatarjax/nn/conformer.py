"""Conformer pieces (Gulati et al. 2020, torchaudio layer order) shared by every Conformer in the project.

- ``FeedForward``: LN, Linear, SiLU, dropout, Linear, dropout (callers add it with a 0.5 residual weight).
- ``ConvModule``: LN, pointwise conv to 2C, GLU, depthwise conv (kernel k, 'same'), BatchNorm or GroupNorm,
  SiLU, pointwise conv, dropout (callers add the residual).
- ``SelfAttentionBlock``: pre-LN multi-head self-attention with a key mask and dropout.
- ``ConformerLayer``: FFN/2 -> MHSA -> conv module -> FFN/2 -> final LN, all residual.
- ``Conformer``: input projection, absolute sinusoidal positions added once, a scanned stack of layers.

Dropout takes an explicit key (``None`` = deterministic): the trainer hands a per-step key to the loss, and
scanned stacks receive one key per layer. Activations ``[batch, length, embed]`` carry logical names.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.attention import Attention
from avatarjax.nn.conv import BatchNorm, DepthwiseConv1d, GroupNorm
from avatarjax.nn.embeddings import sinusoidal
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

ACT = ("batch", "length", "act_embed")


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    dim: int = 768
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    kernel_size: int = 13
    dropout: float = 0.1
    conv_norm: str = "batch"  # batch | group (BatchNorm is the released choice; GroupNorm ignores batch size)
    scan_layers: bool = True


class FeedForward(nnx.Module):
    """``[batch, length, dim]`` -> same."""

    def __init__(self, dim: int, hidden: int, *, rate: float, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = LayerNorm(dim, param_dtype=param_dtype)
        self.fc1 = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(hidden, dim, axes=("mlp", "embed"), **kw)
        self.rate = rate

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        k1, k2 = split_key(key, 2)
        h = dropout(jax.nn.silu(self.fc1(self.norm(x))), self.rate, k1)
        h = constrain(h, ("batch", "length", "act_mlp"))
        return dropout(self.fc2(h), self.rate, k2)


class ConvModule(nnx.Module):
    """The Conformer convolution module (residual added by the caller): ``[batch, length, dim]`` -> same."""

    def __init__(self, dim: int, kernel_size: int, *, rate: float, norm: str = "batch", dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if norm not in ("batch", "group"):
            raise ValueError(f"conv_norm must be 'batch' or 'group', got '{norm}'")
        self.norm_in = LayerNorm(dim, param_dtype=param_dtype)
        self.pointwise_in = Dense(dim, 2 * dim, axes=("embed", "mlp"), **kw)
        self.depthwise = DepthwiseConv1d(dim, kernel_size, **kw)
        self.conv_norm = BatchNorm(dim, param_dtype=param_dtype) if norm == "batch" else GroupNorm(dim, 1, eps=1e-5,
                                                                                                   param_dtype=param_dtype)
        self.pointwise_out = Dense(dim, dim, axes=("mlp", "embed"), **kw)
        self.rate = rate

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        a, b = jnp.split(self.pointwise_in(self.norm_in(x)), 2, axis=-1)
        h = self.depthwise(a * jax.nn.sigmoid(b), mask)
        if isinstance(self.conv_norm, BatchNorm):
            h = self.conv_norm(h, use_running_average=not train, mask=mask)
        else:
            h = self.conv_norm(h)
        h = self.pointwise_out(jax.nn.silu(h))
        return dropout(h, self.rate, key)


class SelfAttentionBlock(nnx.Module):
    """Pre-LN multi-head self-attention over valid frames: ``[batch, length, dim]`` -> same (no residual)."""

    def __init__(self, dim: int, num_heads: int, *, rate: float, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, param_dtype=param_dtype)
        self.attn = Attention(dim, num_heads, qkv_bias=True, out_bias=True, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
        self.rate = rate

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
        attn_mask = None if mask is None else mask[:, None, None, :]
        return dropout(self.attn(self.norm(x), mask=attn_mask), self.rate, key)


class ConformerLayer(nnx.Module):
    """FFN/2 -> MHSA -> conv -> FFN/2 -> LN (torchaudio order): ``[batch, length, dim]`` -> same."""

    def __init__(self, cfg: ConformerConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ffn1 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.attn = SelfAttentionBlock(cfg.dim, cfg.num_heads, rate=cfg.dropout, **kw)
        self.conv = ConvModule(cfg.dim, cfg.kernel_size, rate=cfg.dropout, norm=cfg.conv_norm, **kw)
        self.ffn2 = FeedForward(cfg.dim, cfg.ffn_dim, rate=cfg.dropout, **kw)
        self.norm = LayerNorm(cfg.dim, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        k = split_key(key, 4)
        x = x + 0.5 * self.ffn1(x, k[0])
        x = x + self.attn(x, mask, k[1])
        x = x + self.conv(x, mask, k[2], train)
        x = x + 0.5 * self.ffn2(x, k[3])
        return constrain(self.norm(x), ACT)


def run_layers(layers, x: jax.Array, key: jax.Array | None, num_layers: int, scan: bool, remat: str,
               call, train: bool) -> jax.Array:
    """Apply ``call(layer, x, layer_key)`` over a stacked (``scan``) or listed layer set; only ``train`` runs
    write updated batch statistics back."""
    keys = None if key is None else jax.random.split(key, num_layers)
    if scan:
        return run_stacked(layers, lambda layer, h, k: call(layer, h, k), x, keys, remat=remat, write_back=train)
    for i, layer in enumerate(layers):
        x = call(layer, x, None if keys is None else keys[i])
    return x


def make_layers(make, num_layers: int, scan: bool, rngs: nnx.Rngs):
    """``num_layers`` layers from ``make(rngs)``: stacked for ``lax.scan`` or a plain list."""
    if scan:
        return create_stacked(make, num_layers, rngs)
    return nnx.List([make(rngs) for _ in range(num_layers)])


class Conformer(nnx.Module):
    """Input projection, sinusoidal positions, ``num_layers`` Conformer layers.

    x ``[batch, length, in_dim]``, mask ``[batch, length]`` (True = valid) -> ``[batch, length, dim]``.
    """

    def __init__(self, cfg: ConformerConfig, in_dim: int, *, remat: str = "none", dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.remat = remat
        self.proj = Dense(in_dim, cfg.dim, axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = make_layers(lambda r: ConformerLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                  cfg.num_layers, cfg.scan_layers, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        h = self.proj(x)
        h = h + sinusoidal(jnp.arange(h.shape[1]), self.cfg.dim).astype(h.dtype)
        h = constrain(h, ACT)
        return run_layers(self.layers, h, key, self.cfg.num_layers, self.cfg.scan_layers, self.remat,
                          lambda layer, y, k: layer(y, mask, k, train), train)


def conformer_layer_flops_per_token(dim: int, ffn: int, kernel: int, length: int) -> float:
    """One Conformer layer, per token: two FFNs, MHSA over ``length`` keys, the conv module."""
    return (2 * 2 * 2 * dim * ffn  # ffn1 and ffn2, each dim -> ffn -> dim
            + 2 * 4 * dim * dim + 2 * 2 * length * dim  # q, k, v, o projections; scores and values
            + 2 * 3 * dim * dim + 2 * kernel * dim)  # pointwise in (dim -> 2 dim, GLU) and out; depthwise
