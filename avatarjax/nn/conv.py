"""Convolutions and the blocks built from them, channels-last, with logical axis names on every parameter.

- ``Conv``: N-d convolution (``[batch, *spatial, channels]``), kernel ``[*kernel, in, out]`` named
  ``kernel.., conv_in, conv_out``.
- ``DepthwiseConv1d``: per-channel 1-D convolution written as a sum of K shifted multiplies: on XLA:CPU this is
  ~5x faster forward+backward than a grouped ``lax.conv`` (DESIGN.md calibration), and on GPU/TPU XLA fuses it.
- ``conv_transpose_1d``: torch ``ConvTranspose1d`` semantics; on CPU one matmul per input frame plus an
  overlap-add (``"gemm"``, as torch's col2im) instead of a conv over the zero-stuffed input (``"conv"``), which
  XLA:CPU computes at stride x the useful work.
- ``GroupNorm``, ``BatchNorm`` (masked: padded frames do not enter the statistics), ``ResBlock2d``,
  ``Downsample2d`` (stride-2 conv, SD-style asymmetric padding), ``Upsample2d`` (nearest x2 then conv).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.linear import default_kernel_init


def _ntuple(x: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (x,) * n if isinstance(x, int) else tuple(x)


TRANSPOSED_CONV_FORMS = ("auto", "gemm", "conv")
_TRANSPOSED_CONV_FORM: contextvars.ContextVar[str] = contextvars.ContextVar("transposed_conv_form", default="auto")


@contextlib.contextmanager
def use_transposed_conv(impl: str) -> Iterator[None]:
    """Every ``conv_transpose_1d(..., impl="auto")`` traced inside uses ``impl`` (e.g. a benchmark timing both forms
    of one model in one run)."""
    if impl not in TRANSPOSED_CONV_FORMS:
        raise ValueError(f"conv_transpose_1d impl must be one of {', '.join(TRANSPOSED_CONV_FORMS)}, got {impl!r}")
    token = _TRANSPOSED_CONV_FORM.set(impl)
    try:
        yield
    finally:
        _TRANSPOSED_CONV_FORM.reset(token)


def conv_transpose_1d(x: jax.Array, kernel: jax.Array, stride: int, padding: int = 0,
                      impl: str = "auto") -> jax.Array:
    """torch ``ConvTranspose1d`` (no output padding, no bias): ``x [b, t, in]``, ``kernel [k, in, out]`` (tap ``j``
    adds ``x[i] @ kernel[j]`` to output ``i * stride + j - padding``) -> ``[b, (t - 1) * stride - 2 * padding + k,
    out]``.

    ``impl``: ``"gemm"``: ``x @ kernel`` for all taps at once (``[b, t, k, out]``), then the ``ceil(k / stride)``
    groups of ``stride`` taps are shifted by one input frame each and added (the overlap-add), then the padding is
    cropped; every multiply is useful and the backward is matmuls too (measured 5-17x faster forward+backward
    than ``"conv"`` on XLA:CPU at DAC's decoder shapes; whole model: ``avatarjax bench dac``). ``"conv"``: a stride-1
    conv of the ``stride``-dilated input with the flipped kernel (XLA lowers it to the backend's transposed conv,
    cuDNN on GPU). ``"auto"``: the :func:`use_transposed_conv` scope's form, else gemm on CPU and conv elsewhere
    (the gemm form is unmeasured on GPU/TPU here).
    """
    if impl == "auto":
        impl = _TRANSPOSED_CONV_FORM.get()  # the scope's form; still "auto" outside a scope
    if impl == "auto":
        impl = "gemm" if jax.default_backend() == "cpu" else "conv"
    k, _, cout = kernel.shape
    b, t, _ = x.shape
    if impl == "conv":
        edge = k - 1 - padding
        return jax.lax.conv_general_dilated(x, kernel[::-1], (1,), [(edge, edge)], lhs_dilation=(stride,),
                                            dimension_numbers=("NWC", "WIO", "NWC"))
    if impl != "gemm":
        raise ValueError(f"conv_transpose_1d impl must be auto, gemm or conv, got {impl!r}")
    groups = -(-k // stride)
    kernel = jnp.pad(kernel, ((0, groups * stride - k), (0, 0), (0, 0)))
    taps = jnp.einsum("btc,kcd->btkd", x, kernel).reshape(b, t, groups, stride, cout)
    full = sum(jnp.pad(taps[:, :, g], ((0, 0), (g, groups - 1 - g), (0, 0), (0, 0))) for g in range(groups))
    length = (t - 1) * stride - 2 * padding + k
    return full.reshape(b, (t + groups - 1) * stride, cout)[:, padding:padding + length]


class Conv(nnx.Module):
    """x ``[batch, *spatial, in_ch]`` -> ``[batch, *spatial', out_ch]``.

    ``padding``: ``"SAME"``, ``"VALID"`` or explicit ``[(lo, hi), ...]`` per spatial dim.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | Sequence[int], *, ndim: int = 2,
                 strides: int | Sequence[int] = 1, padding: str | Sequence[tuple[int, int]] = "SAME",
                 use_bias: bool = True, dtype=None, param_dtype=jnp.float32, kernel_init=None, rngs: nnx.Rngs):
        self.kernel_size = _ntuple(kernel_size, ndim)
        self.strides = _ntuple(strides, ndim)
        self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
        self.dtype = dtype
        shape = self.kernel_size + (in_ch, out_ch)
        kernel_init = kernel_init or default_kernel_init(math.prod(self.kernel_size) * in_ch)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype),
                                out_sharding=("kernel",) * ndim + ("conv_in", "conv_out"))
        self.bias = (nnx.Param(jnp.zeros((out_ch,), param_dtype), out_sharding=("conv_out",)) if use_bias
                     else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        nd = len(self.kernel_size)
        spatial = "DHW"[-nd:] if nd <= 3 else None
        dims = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        y = jax.lax.conv_general_dilated(x.astype(dtype), self.kernel[...].astype(dtype), self.strides,
                                         self.padding, dimension_numbers=dims)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class DepthwiseConv1d(nnx.Module):
    """Per-channel 1-D convolution with 'same' padding: x ``[batch, length, channels]`` -> same shape.

    Implemented as ``sum_k w[k] * shift(x, k)``. ``mask`` ``[batch, length]`` (True = valid) zeroes padded
    positions first so they cannot leak into valid ones.
    """

    def __init__(self, channels: int, kernel_size: int, *, use_bias: bool = True, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if kernel_size % 2 == 0:
            raise ValueError(f"DepthwiseConv1d needs an odd kernel for 'same' padding, got {kernel_size}")
        self.kernel_size = kernel_size
        self.dtype = dtype
        self.kernel = nnx.Param(default_kernel_init(kernel_size)(rngs.params(), (kernel_size, channels),
                                                                  param_dtype), out_sharding=("kernel", "channels"))
        self.bias = (nnx.Param(jnp.zeros((channels,), param_dtype), out_sharding=("channels",)) if use_bias
                     else None)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        half = self.kernel_size // 2
        length = x.shape[1]
        padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
        w = self.kernel[...].astype(dtype)
        y = sum(padded[:, k:k + length] * w[k] for k in range(self.kernel_size))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class GroupNorm(nnx.Module):
    """GroupNorm over channels-last x ``[batch, ..., channels]`` (statistics in float32)."""

    def __init__(self, channels: int, groups: int = 32, *, eps: float = 1e-6, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.groups = math.gcd(groups, channels)
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        xf = x.astype(jnp.float32).reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
        mean = jnp.mean(xf, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(1, 3), keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class BatchNorm(nnx.Module):
    """BatchNorm over the last dim of x ``[batch, ..., channels]`` with running statistics.

    Training (``use_running_average=False``) normalises with the statistics of the valid positions (``mask``
    ``[batch, ...]``, True = valid) and updates the running averages (torch convention: ``momentum`` weights the
    new batch, the running variance is unbiased). Under a data-sharded mesh the means are global (XLA reduces
    across devices), i.e. synchronised BatchNorm.
    """

    def __init__(self, channels: int, *, momentum: float = 0.1, eps: float = 1e-5, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.momentum = momentum
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype), out_sharding=("norm",))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32), out_sharding=("norm",))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32), out_sharding=("norm",))

    def __call__(self, x: jax.Array, *, use_running_average: bool, mask: jax.Array | None = None) -> jax.Array:
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            weight = (jnp.ones(x.shape[:-1], jnp.float32) if mask is None else mask.astype(jnp.float32))[..., None]
            count = jnp.maximum(jnp.sum(weight), 1.0)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.sum(xf * weight, axes) / count
            var = jnp.sum(jnp.square(xf - mean) * weight, axes) / count
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class ResBlock2d(nnx.Module):
    """GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3 plus a (1x1-projected) skip.

    x ``[batch, h, w, in_ch]`` -> ``[batch, h, w, out_ch]``.
    """

    def __init__(self, in_ch: int, out_ch: int, *, groups: int = 32, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = GroupNorm(in_ch, groups, param_dtype=param_dtype)
        self.conv1 = Conv(in_ch, out_ch, 3, **kw)
        self.norm2 = GroupNorm(out_ch, groups, param_dtype=param_dtype)
        self.conv2 = Conv(out_ch, out_ch, 3, **kw)
        self.skip = Conv(in_ch, out_ch, 1, **kw) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class Downsample2d(nnx.Module):
    """Stride-2 3x3 conv with (0, 1) padding (SD / taming style): ``[b, h, w, c]`` -> ``[b, h/2, w/2, c]``."""

    def __init__(self, channels: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, strides=2, padding=((0, 1), (0, 1)), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample2d(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``[b, h, w, c]`` -> ``[b, 2h, 2w, c]``."""

    def __init__(self, channels: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)
