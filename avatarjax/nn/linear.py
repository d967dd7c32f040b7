"""Dense layers with logical axis names on their kernels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Shape = int | Sequence[int]


def _tuple(x: Shape) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def default_kernel_init(fan_in: int):
    """Variance-scaling (fan-in, truncated normal) init for a kernel whose contracted size is ``fan_in``."""
    std = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * (std / 0.87962566)).astype(dtype)

    return init


class Dense(nnx.Module):
    """``y = x @ W + b`` contracting the trailing ``in_shape`` dims of x into ``out_shape``.

    x: ``[..., *in_shape]`` -> y: ``[..., *out_shape]``. ``axes`` names every kernel dim (in dims, then out dims).
    Params are kept in ``param_dtype``; the matmul runs in ``dtype`` (the compute dtype) when given.
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, *, axes: Sequence[str | None], use_bias: bool = True,
                 dtype=None, param_dtype=jnp.float32, kernel_init=None, bias_init=nnx.initializers.zeros,
                 rngs: nnx.Rngs):
        self.in_shape = _tuple(in_shape)
        self.out_shape = _tuple(out_shape)
        if len(axes) != len(self.in_shape) + len(self.out_shape):
            raise ValueError(f"Dense needs {len(self.in_shape) + len(self.out_shape)} axis names, got {axes}")
        self.dtype = dtype
        kernel_init = kernel_init or default_kernel_init(math.prod(self.in_shape))
        self.kernel = nnx.Param(kernel_init(rngs.params(), self.in_shape + self.out_shape, param_dtype),
                                out_sharding=tuple(axes))
        if use_bias:
            out_axes = tuple(axes[len(self.in_shape):])
            self.bias = nnx.Param(bias_init(rngs.params(), self.out_shape, param_dtype), out_sharding=out_axes)
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        kernel = self.kernel[...].astype(dtype)
        n_in = len(self.in_shape)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(dtype), kernel, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
