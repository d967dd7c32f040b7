"""Conditioning layers: timestep embedding, MLP feature encoders, CLIP-Adapter, FiLM, the zero-initialised gate.

All map ``[..., dim]`` feature tensors; none knows which system uses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.conformer import dropout, split_key
from avatarjax.nn.embeddings import sinusoidal
from avatarjax.nn.linear import Dense
from avatarjax.nn.mlp import ACTIVATIONS


class TimestepEmbedding(nnx.Module):
    """``t`` ``[batch]`` -> ``[batch, dim]``: sinusoid(dim) of ``t * scale`` -> Linear(dim, 4 dim) -> Mish ->
    Linear(4 dim, dim). ``scale`` = 1000 puts continuous t in (0, 1) on the discrete-step scale (Grad-TTS)."""

    def __init__(self, dim: int, *, scale: float = 1.0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dim, self.scale = dim, scale
        self.fc1 = Dense(dim, 4 * dim, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(4 * dim, dim, axes=("mlp", "embed"), **kw)

    def __call__(self, t: jax.Array) -> jax.Array:
        h = sinusoidal(t.astype(jnp.float32) * self.scale, self.dim)
        return self.fc2(ACTIVATIONS["mish"](self.fc1(h)))


class FeatureMLP(nnx.Module):
    """``num_layers`` x [Linear, ReLU, dropout] then a Linear: ``[..., in_dim]`` -> ``[..., out_dim]``.

    The released InstructAvatar text encoder is (768 -> 1024) + 3 x (1024 -> 1024) + (1024 -> 768).
    ``out_axis``: the logical name of the output dim (None for small classifier heads that must not be sharded).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, *, rate: float,
                 out_axis: str | None = "embed", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = [in_dim] + [hidden] * num_layers
        self.hidden = nnx.List([Dense(a, b, axes=("embed", "mlp") if i % 2 == 0 else ("mlp", "embed"), **kw)
                                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        # hidden layers alternate (embed, mlp) / (mlp, embed) so that no kernel names one logical axis twice
        last = "mlp" if num_layers % 2 else "embed"
        self.out = Dense(dims[-1], out_dim, axes=(last if last != out_axis else None, out_axis), **kw)
        self.rate = rate

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        for layer, k in zip(self.hidden, split_key(key, len(self.hidden))):
            x = dropout(jax.nn.relu(layer(x)), self.rate, k)
        return self.out(x)


class ClipAdapter(nnx.Module):
    """CLIP-Adapter (Gao et al.): ``(1 - ratio) x + ratio * relu(W2 relu(W1 x))``, bottleneck dim // reduction,
    no biases. ``[..., dim]`` -> same."""

    def __init__(self, dim: int, *, ratio: float = 0.6, reduction: int = 4, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ratio = ratio
        self.down = Dense(dim, dim // reduction, axes=("embed", "mlp"), **kw)
        self.up = Dense(dim // reduction, dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        adapted = jax.nn.relu(self.up(jax.nn.relu(self.down(x))))
        return (1.0 - self.ratio) * x + self.ratio * adapted


class FiLM(nnx.Module):
    """``x * gain(c) + bias(c)`` with ``gain``'s bias initialised to 1: x ``[..., dim]``, c broadcastable."""

    def __init__(self, dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gain = Dense(dim, dim, axes=("embed", "mlp"), bias_init=nnx.initializers.ones, **kw)
        self.bias = Dense(dim, dim, axes=("embed", "mlp"), **kw)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        return x * self.gain(c) + self.bias(c)


class ZeroGate(nnx.Module):
    """A 1x1 Conv1d over the hidden dimension initialised to zero (ControlNet's zero convolution): at init the
    gated branch is an exact no-op. ``zero_init=False`` gives the ablation (ordinary init).
    ``[..., dim]`` -> same."""

    def __init__(self, dim: int, *, zero_init: bool = True, use_bias: bool = False, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        init = nnx.initializers.zeros if zero_init else None
        self.proj = Dense(dim, dim, axes=("mlp", "embed"), use_bias=use_bias, kernel_init=init, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)
