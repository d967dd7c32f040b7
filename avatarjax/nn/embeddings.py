"""Token embeddings and sinusoidal position / timestep embeddings."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class Embed(nnx.Module):
    """Token ids ``[...]`` -> ``[..., dim]``; ``attend`` gives tied output logits ``[..., vocab]``."""

    def __init__(self, vocab: int, dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        init = nnx.initializers.normal(stddev=1.0 / math.sqrt(dim))
        self.embedding = nnx.Param(init(rngs.params(), (vocab, dim), param_dtype), out_sharding=("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding[...]
        out = jnp.take(table, ids, axis=0)
        return out.astype(self.dtype or table.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = self.embedding[...].astype(x.dtype)
        return jnp.einsum("...d,vd->...v", x, table)


def sinusoidal(positions: jax.Array, dim: int, *, max_period: float = 10000.0,
               flip_sin_to_cos: bool = False) -> jax.Array:
    """Sinusoidal features of ``positions`` ``[...]`` -> ``[..., dim]`` (sin half first unless flipped)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = positions.astype(jnp.float32)[..., None] * freqs
    sin, cos = jnp.sin(args), jnp.cos(args)
    out = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        out = jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, 1)])
    return out
