"""The attention implementations behind :func:`avatarjax.nn.attention.attend`, and the scope that picks one.

Every implementation takes q ``[batch, q_len, heads, head_dim]``, k, v ``[batch, kv_len, kv_heads, head_dim]``
(``heads`` a multiple of ``kv_heads``), a boolean ``mask`` and an additive ``bias`` broadcastable to
``[batch, heads, q_len, kv_len]``, and returns ``[batch, q_len, heads, head_dim]``:

- ``xla``: the dot-product reference (``jax.nn.dot_product_attention``), any backend.
- ``cudnn``: cuDNN fused flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``), NVIDIA GPUs,
  bfloat16/float16.
- ``splash``: JAX's Pallas splash-attention kernel, TPUs; causal and key-padding masks, no bias (``pallas`` is an
  alias). ``interpret=True`` runs the same kernel through the Pallas interpreter on any backend (tests).
- ``chunked``: blockwise attention with an online softmax (``lax.map`` over query blocks, ``lax.scan`` over
  key/value blocks, each block rematerialised in the backward pass), so memory grows with ``q_len * block``
  instead of ``q_len * kv_len``; the same numbers as ``xla``.
- ``ring``: sequence parallel over the mesh's ``sequence`` axis: each device keeps its query block and the
  key/value blocks travel around the ring (``ppermute``), merged with the online softmax; under ``causal`` the
  blocks wholly in a query block's future are skipped.
- ``ulysses``: sequence parallel by all-to-all: sequence-sharded q/k/v become head-sharded with the full length,
  attention runs per device (cuDNN / splash / XLA by platform), and an all-to-all shards the output back.
- ``auto``: ``cudnn`` on GPU, ``splash`` on TPU, ``xla`` elsewhere.

An implementation that cannot run a call (wrong backend, dtype, mask kind, shape) falls back to ``xla`` (``ring``
without a ``sequence`` mesh axis to ``chunked``) and logs one note per distinct reason: never a wrong result.

The choice is read at trace time: :func:`use_implementation` (the trainer enters it from ``mesh.attention``)
overrides every ``attend`` call traced inside it; outside one, each call's own ``implementation`` argument (a
model's ``attention`` config key) decides. The scope is part of JAX's trace context, so a jitted function called
under another choice retraces instead of reusing the old kernel.

Rows of a mask that hide every key are implementation-defined (``xla``, ``chunked`` and masked ``ring`` average
all values; cuDNN and splash differ). Under ``ring`` / ``ulysses`` a mask or bias travels whole along its kv
axis, so prefer ``causal`` and key-padding masks at long lengths.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from avatarjax.errors import ConfigError, nearest

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "chunked", "ring", "ulysses")
ALIASES = {"pallas": "splash", None: "auto"}
# `mesh.attention` also takes "model": no override, each model's own `attention` key decides.
CONFIG_CHOICES = ("model",) + IMPLEMENTATIONS + ("pallas",)
SEQUENCE_AXIS = "sequence"
DEFAULT_BLOCK = 512
_NEG = -0.7 * float(np.finfo(np.float32).max)  # the fill value of jax.nn.dot_product_attention's masks


@dataclasses.dataclass(frozen=True)
class Choice:
    """An implementation and its options: ``block_q`` / ``block_k`` (chunked, ring; splash blocks use
    ``min(block_q, length)``), ``interpret`` (splash through the Pallas interpreter, for CPU tests)."""

    name: str
    block_q: int = DEFAULT_BLOCK
    block_k: int = DEFAULT_BLOCK
    interpret: bool = False


try:  # a JAX config state in the trace context: jitted functions retrace when the choice changes
    from jax._src.config import State as _State

    _ACTIVE = _State("avatarjax_attention", None, "attention implementation of avatarjax attend()",
                     include_in_trace_context=True)
    _get_active = lambda: _ACTIVE.value  # noqa: E731
    _scope = _ACTIVE
except (ImportError, TypeError):  # another JAX: a plain context variable (a jitted function keeps its first trace)
    _VAR: contextvars.ContextVar[Choice | None] = contextvars.ContextVar("avatarjax_attention", default=None)
    _get_active = _VAR.get

    @contextlib.contextmanager
    def _scope(choice):
        token = _VAR.set(choice)
        try:
            yield
        finally:
            _VAR.reset(token)


def canonical(name: str | None, *, allow_model: bool = False) -> str:
    """The implementation named by ``name`` (aliases resolved); a ConfigError naming the choices otherwise."""
    name = ALIASES.get(name, name)
    if name in IMPLEMENTATIONS or (allow_model and name == "model"):
        return name
    choices = CONFIG_CHOICES if allow_model else IMPLEMENTATIONS + ("pallas",)
    best = nearest(str(name), choices)
    raise ConfigError(f"unknown attention implementation {name!r}: "
                      + (f"did you mean '{best}'? " if best else "") + "choose one of " + ", ".join(choices))


@contextlib.contextmanager
def use_implementation(name: str | None, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                       interpret: bool = False):
    """Every ``attend`` traced inside uses ``name``; ``"model"`` (or None) leaves each call's own choice."""
    name = canonical("model" if name is None else name, allow_model=True)
    if block_q <= 0 or block_k <= 0:
        raise ConfigError(f"attention block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    with _scope(None if name == "model" else Choice(name, block_q, block_k, interpret)):
        yield


def active() -> Choice | None:
    """The scope's choice, or None outside :func:`use_implementation`."""
    return _get_active()


_NOTED: set[str] = set()


def _note(message: str, loud: bool) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        (log.warning if loud else log.debug)(message)


# ---------------------------------------------------------------------------------------------------------------
# Mesh layout: which mesh axes carry batch, heads and sequence inside the shard_map of ring / ulysses / splash.


@dataclasses.dataclass(frozen=True)
class Layout:
    batch: tuple[str, ...]  # mesh axes of the batch dimension (empty: replicated)
    heads: tuple[str, ...]  # mesh axes of the heads dimension
    sequence: int  # size of the `sequence` mesh axis (1: none)


def _entry(axes: tuple[str, ...]):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def mesh_layout(batch: int, heads: int, kv_heads: int) -> Layout | None:
    """The active mesh's layout for these sizes (axes that do not divide a size are left out), or None outside a
    mesh. Batch and heads follow the active logical rules (``batch``, ``act_heads``)."""
    from flax.core import spmd as core_spmd

    from avatarjax.parallel.rules import mesh_axes_of

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    shape = dict(mesh.shape)
    if any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
        return None  # already inside a shard_map: the caller owns the layout
    rules = core_spmd.get_logical_axis_rules() or ()

    def axes(logical: str, *sizes: int) -> tuple[str, ...]:
        found = tuple(a for a in mesh_axes_of(logical, rules)
                      if a in shape and a != SEQUENCE_AXIS and shape[a] > 1)
        n = math.prod(shape[a] for a in found)
        return found if all(s % n == 0 for s in sizes) else ()

    return Layout(axes("batch", batch), axes("act_heads", heads, kv_heads), shape.get(SEQUENCE_AXIS, 1))


# ---------------------------------------------------------------------------------------------------------------
# Reference and fused kernels


def xla_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, **_):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal, scale=scale,
                                        implementation="xla")


def cudnn_unsupported(q, k, mask, bias, backend: str, layout: Layout | None) -> str | None:
    """Why cuDNN flash attention cannot run this call (None: it can)."""
    if backend != "gpu":
        return f"cudnn needs an NVIDIA GPU (backend is {backend})"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"cudnn needs bfloat16/float16 inputs (got {q.dtype})"
    d = q.shape[-1]
    if d % 8 or d > 256:
        return f"cudnn needs head_dim a multiple of 8 and <= 256 (got {d})"
    if layout is not None and layout.sequence > 1:
        return "cudnn cannot shard the length over mesh.sequence: use ring or ulysses"
    return None


def cudnn_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, **_):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal, scale=scale,
                                        implementation="cudnn")


def splash_unsupported(q, k, mask, bias, backend: str, layout: Layout | None, interpret: bool) -> str | None:
    """Why the splash kernel cannot run this call (None: it can)."""
    if backend != "tpu" and not interpret:
        return f"splash needs a TPU (backend is {backend})"
    if bias is not None:
        return "splash takes no additive bias"
    if mask is not None and not (mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1):
        return f"splash takes only causal and key-padding masks [batch, 1, 1, kv_len] (got mask {mask.shape})"
    if q.shape[1] % 128 or k.shape[1] % 128:
        return f"splash needs q_len and kv_len multiples of 128 (got {q.shape[1]}, {k.shape[1]})"
    if layout is not None and layout.sequence > 1:
        return "splash cannot shard the length over mesh.sequence: use ring or ulysses"
    return None


def splash_attention(q, k, v, *, causal=False, mask=None, scale=None, choice: Choice, layout: Layout | None = None,
                     **_):
    """Pallas splash attention; under a mesh, a shard_map over the batch and head axes of ``layout``."""
    if layout is not None and (layout.batch or layout.heads):
        bat, hd = _entry(layout.batch), _entry(layout.heads)
        specs = (P(bat, None, hd, None),) * 3
        args = (q, k, v)
        if mask is not None:
            specs += (P(bat if mask.shape[0] > 1 else None, None, None, None),)
            args += (mask,)
        fn = lambda q, k, v, m=None: _splash_local(q, k, v, causal=causal, mask=m, scale=scale, choice=choice)
        # Pallas calls carry no varying-axes types: check_vma off (every input is sharded the same way)
        return jax.shard_map(fn, in_specs=specs, out_specs=P(bat, None, hd, None), check_vma=False)(*args)
    return _splash_local(q, k, v, causal=causal, mask=mask, scale=scale, choice=choice)


def _splash_local(q, k, v, *, causal, mask, scale, choice: Choice):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    g = h // kh
    bq, bk = min(choice.block_q, tq), min(choice.block_k, tk)
    if tq % bq or tk % bk:
        bq, bk = math.gcd(tq, bq), math.gcd(tk, bk)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                           block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    base = sa.CausalMask((tq, tk)) if causal else sa.FullMask((tq, tk))
    make = sa.make_splash_mha if g == 1 else sa.make_splash_mqa
    kernel = make(sa.MultiHeadMask([base] * (h if g == 1 else g)), head_shards=1, q_seq_shards=1,
                  block_sizes=blocks, interpret=choice.interpret)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qt = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)  # [b, h, tq, d]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    seg = None
    if mask is not None:  # key padding -> segment ids: padded keys get 0, every query 1
        kv_ids = jnp.broadcast_to(mask.reshape(mask.shape[0], tk), (b, tk)).astype(jnp.int32)
        seg = sa.SegmentIds(q=jnp.ones((b, tq), jnp.int32), kv=kv_ids)
    if g == 1:
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(qt, kt, vt, seg)
    else:  # one MQA kernel per kv head: q [g, tq, d] against k, v [tk, d]
        per_head = lambda q, k, v, s: kernel(q, k, v, segment_ids=s)
        per_batch = lambda q, k, v, s: jax.vmap(per_head, in_axes=(0, 0, 0, None))(q, k, v, s)
        out = jax.vmap(per_batch)(qt.reshape(b, kh, g, tq, d), kt, vt, seg).reshape(b, h, tq, d)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Blockwise attention with an online softmax (chunked, and the per-step work of ring)


def _group_heads(x, kv_heads: int):
    """q ``[b, t, heads, d]`` -> ``[b, t, kv_heads, group, d]``."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d)


def _group_modifier(x, heads: int, kv_heads: int):
    """A mask or bias broadcastable to ``[b, heads, q, k]`` -> ``[b|1, kv_heads|1, group|1, q|1, k|1]``."""
    if x is None:
        return None
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if x.shape[1] == heads and heads > 1:
        return x.reshape(x.shape[0], kv_heads, heads // kv_heads, *x.shape[2:])
    return x[:, :, None]


def _pad_to(x, axis: int, size: int, value=0):
    if x is None or x.shape[axis] in (1, size):
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _slice(x, axis: int, start, size: int):
    if x is None or x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _update(state, s, v):
    """One online-softmax step: state (m, l, acc) ``[b, kh, g, q]``, ``[b, kh, g, q]``, ``[b, kh, g, q, d]``;
    logits s ``[b, kh, g, q, k]``; v ``[b, k, kh, d]``. The running max is a constant for autodiff (the result
    does not depend on it)."""
    m, l, acc = state
    m_new = lax.stop_gradient(jnp.maximum(m, s.max(-1)))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv


def merge(a, b):
    """Combine two partial results (m, l, acc) over disjoint key sets."""
    m = lax.stop_gradient(jnp.maximum(a[0], b[0]))
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    wa, wb = jnp.exp(a[0] - m_safe), jnp.exp(b[0] - m_safe)
    return m, wa * a[1] + wb * b[1], wa[..., None] * a[2] + wb[..., None] * b[2]


def finalize(state, dtype):
    """(m, l, acc ``[b, kh, g, q, d]``) -> ``[b, q, kh * g, d]``."""
    _, l, acc = state
    out = acc / jnp.where(l == 0, 1.0, l)[..., None]
    b, kh, g, q, d = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, q, kh * g, d).astype(dtype)


def partial_attention(q, k, v, mask, bias, *, q_start, k_start, causal: bool, scale: float, block_q: int,
                      block_k: int, skip_future: bool):
    """Unnormalised attention of q ``[b, tq, kh, g, d]`` over k, v ``[b, tk, kh, d]`` whose tokens sit at global
    positions ``q_start + i`` and ``k_start + j`` (for ``causal``); mask / bias ``[b|1, kh|1, g|1, tq|1, tk|1]``.
    Returns (m, l, acc) for :func:`merge` / :func:`finalize`. ``skip_future`` skips key blocks wholly in the future
    of a query block (only valid when no row can be fully masked)."""
    b, tq, kh, g, d = q.shape
    tk = k.shape[1]
    bq, bk = min(block_q, tq), min(block_k, tk)
    nq, nk = -(-tq // bq), -(-tk // bk)
    q = _pad_to(q, 1, nq * bq)
    k, v = _pad_to(k, 1, nk * bk), _pad_to(v, 1, nk * bk)
    mask = _pad_to(_pad_to(mask, 3, nq * bq, True), 4, nk * bk, False)
    bias = _pad_to(_pad_to(bias, 3, nq * bq), 4, nk * bk)
    if bias is not None:
        bias = bias.astype(jnp.float32)

    def query_block(qi):
        q_blk = lax.dynamic_slice_in_dim(q, qi * bq, bq, axis=1)
        q_pos = q_start + qi * bq + jnp.arange(bq)
        mask_q, bias_q = _slice(mask, 3, qi * bq, bq), _slice(bias, 3, qi * bq, bq)
        zeros = jnp.zeros_like(q_blk[..., 0], jnp.float32).transpose(0, 2, 3, 1)  # [b, kh, g, bq]
        init = (jnp.full_like(zeros, -jnp.inf), zeros, jnp.zeros_like(q_blk, jnp.float32).transpose(0, 2, 3, 1, 4))

        def compute(state, ki):
            k_blk = lax.dynamic_slice_in_dim(k, ki * bk, bk, axis=1)
            v_blk = lax.dynamic_slice_in_dim(v, ki * bk, bk, axis=1)
            s = jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
            if bias_q is not None:
                s = s + _slice(bias_q, 4, ki * bk, bk)
            keep = None if mask_q is None else _slice(mask_q, 4, ki * bk, bk)
            if causal:
                k_pos = k_start + ki * bk + jnp.arange(bk)
                seen = q_pos[:, None] >= k_pos[None, :]
                keep = seen if keep is None else keep & seen
            if keep is not None:
                s = jnp.where(keep, s, _NEG)
            s = jnp.where(ki * bk + jnp.arange(bk) < tk, s, -jnp.inf)  # padding keys count for nothing
            return _update(state, s, v_blk)

        def step(state, ki):
            if causal and skip_future:
                future = k_start + ki * bk > q_start + qi * bq + bq - 1
                return lax.cond(future, lambda st: st, lambda st: compute(st, ki), state), None
            return compute(state, ki), None

        state, _ = lax.scan(jax.checkpoint(step), init, jnp.arange(nk))
        return state

    m, l, acc = lax.map(query_block, jnp.arange(nq))  # leading query-block axis
    m = jnp.moveaxis(m, 0, 3).reshape(b, kh, g, nq * bq)[..., :tq]
    l = jnp.moveaxis(l, 0, 3).reshape(b, kh, g, nq * bq)[..., :tq]
    acc = jnp.moveaxis(acc, 0, 3).reshape(b, kh, g, nq * bq, d)[..., :tq, :]
    return m, l, acc


def chunked_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, choice: Choice, **_):
    h, kh = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    state = partial_attention(_group_heads(q, kh), k, v, _group_modifier(mask, h, kh), _group_modifier(bias, h, kh),
                              q_start=0, k_start=0, causal=causal, scale=scale, block_q=choice.block_q,
                              block_k=choice.block_k, skip_future=mask is None)
    return finalize(state, q.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Sequence parallel: ring and Ulysses over the `sequence` mesh axis


def sequence_unsupported(name: str, q, k, layout: Layout | None) -> str | None:
    """Why ring / ulysses cannot run this call (None: they can)."""
    if layout is None or layout.sequence == 1:
        return f"{name} needs a mesh with a `sequence` axis > 1 (set mesh.sequence)"
    n = layout.sequence
    if q.shape[1] % n or k.shape[1] % n:
        return f"{name} needs q_len and kv_len divisible by mesh.sequence={n} (got {q.shape[1]}, {k.shape[1]})"
    if name == "ulysses":
        t = math.prod(dict(jax.sharding.get_abstract_mesh().shape)[a] for a in layout.heads)
        if (q.shape[2] // t) % n:
            return f"ulysses needs heads per device ({q.shape[2] // t}) divisible by mesh.sequence={n}"
    return None


def _modifier_spec(x, bat, hd, q_axis, k_axis=None):
    if x is None:
        return None
    x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
    return x4, P(bat if x4.shape[0] > 1 else None, hd if x4.shape[1] > 1 else None,
                 q_axis if x4.shape[2] > 1 else None, k_axis if x4.shape[3] > 1 else None)


def _shard_map(fn: Callable, q, k, v, mask, bias, q_spec, kv_spec, mod_spec: Callable, out_spec,
               check_vma: bool = True):
    """shard_map ``fn(q, k, v, mask, bias)`` with None mask / bias kept out of the mapped arguments."""
    args, specs, slots = [q, k, v], [q_spec, kv_spec, kv_spec], []
    for x in (mask, bias):
        if x is None:
            slots.append(False)
            continue
        x4, spec = mod_spec(x)
        args.append(x4)
        specs.append(spec)
        slots.append(True)

    def local(q, k, v, *mods):
        mods = list(mods)
        mask_l = mods.pop(0) if slots[0] else None
        bias_l = mods.pop(0) if slots[1] else None
        return fn(q, k, v, mask_l, bias_l)

    return jax.shard_map(local, in_specs=tuple(specs), out_specs=out_spec, check_vma=check_vma)(*args)


def ring_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, choice: Choice, layout: Layout, **_):
    """q, k, v sharded along their length over ``sequence``; a mask / bias is sharded along q and whole along kv."""
    n = layout.sequence
    h, kh = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    bat, hd = _entry(layout.batch), _entry(layout.heads)
    perm = [(i, (i + 1) % n) for i in range(n)]

    def local(q, k, v, mask, bias):
        r = lax.axis_index(SEQUENCE_AXIS)
        tq, tk = q.shape[1], k.shape[1]
        local_h, local_kh = q.shape[2], k.shape[2]
        qg = _group_heads(q, local_kh)
        mask5, bias5 = _group_modifier(mask, local_h, local_kh), _group_modifier(bias, local_h, local_kh)

        def part(k_blk, v_blk, src):
            return partial_attention(qg, k_blk, v_blk, _slice(mask5, 4, src * tk, tk), _slice(bias5, 4, src * tk, tk),
                                     q_start=r * tq, k_start=src * tk, causal=causal, scale=scale,
                                     block_q=choice.block_q, block_k=choice.block_k, skip_future=mask is None)

        def step(carry, s):
            k_blk, v_blk, state = carry
            state = merge(state, part(k_blk, v_blk, (r - s) % n))
            # The next block's transfer does not depend on this step's compute, so the two overlap; the last
            # step's transfer is spare (one block), the price of a single copy of the kernel in the program.
            k_blk = lax.ppermute(k_blk, SEQUENCE_AXIS, perm)
            v_blk = lax.ppermute(v_blk, SEQUENCE_AXIS, perm)
            return (k_blk, v_blk, state), None

        zeros = jnp.zeros_like(qg[..., 0], jnp.float32).transpose(0, 2, 3, 1)  # [b, kh, g, tq], varying like q
        init = (jnp.full_like(zeros, -jnp.inf), zeros, jnp.zeros_like(qg, jnp.float32).transpose(0, 2, 3, 1, 4))
        (_, _, state), _ = lax.scan(step, (k, v, init), jnp.arange(n))
        return finalize(state, q.dtype)

    spec = P(bat, SEQUENCE_AXIS, hd, None)
    return _shard_map(local, q, k, v, mask, bias, spec, spec,
                      lambda x: _modifier_spec(x, bat, hd, SEQUENCE_AXIS), spec)


def ulysses_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, choice: Choice, layout: Layout,
                      **_):
    """All-to-all from length-sharded to head-sharded, the platform's kernel on the full length, and back."""
    n = layout.sequence
    bat, hd = _entry(layout.batch), _entry(layout.heads)
    t = math.prod(dict(jax.sharding.get_abstract_mesh().shape)[a] for a in layout.heads)
    if (k.shape[2] // t) % n:  # too few kv heads to split: give every query head its own copy
        k, v = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2), jnp.repeat(v, q.shape[2] // k.shape[2], axis=2)
    head_axes = _entry(layout.heads + (SEQUENCE_AXIS,))
    # Per device the lengths, dtype and mask kind are the global ones: plan the inner kernel here. `interpret`
    # asks for the splash kernel through the Pallas interpreter on any backend (tests).
    inner, reason = plan("splash" if choice.interpret else "auto", q, k, mask, bias, interpret=choice.interpret)
    if reason is not None:
        _note(f"attention 'ulysses' runs 'xla' per device: {reason}", False)

    def local(q, k, v, mask, bias, inner):
        to_heads = lambda x: lax.all_to_all(x, SEQUENCE_AXIS, 2, 1, tiled=True)
        q, k, v = to_heads(q), to_heads(k), to_heads(v)
        kw = dict(causal=causal, mask=mask, bias=bias, scale=scale)
        if inner == "cudnn":
            out = cudnn_attention(q, k, v, **kw)
        elif inner == "splash":
            out = _splash_local(q, k, v, causal=causal, mask=mask, scale=scale, choice=choice)
        else:
            out = xla_attention(q, k, v, **kw)
        return lax.all_to_all(out, SEQUENCE_AXIS, 1, 2, tiled=True)

    spec = P(bat, SEQUENCE_AXIS, hd, None)
    run = lambda inner: _shard_map(  # noqa: E731
        lambda *a: local(*a, inner), q, k, v, mask, bias, spec, spec,
        lambda x: _modifier_spec(x, bat, head_axes, None), spec,
        # Pallas calls carry no varying-axes types; splash takes no bias, so only q, k, v (sharded) get cotangents.
        check_vma=inner != "splash")
    if inner == "xla":
        return run("xla")
    try:
        return run(inner)
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as err:  # rejected while tracing
        _note(f"attention 'ulysses' runs 'xla' per device: {inner} rejected it ({type(err).__name__}: {err})", True)
        return run("xla")


# ---------------------------------------------------------------------------------------------------------------
# Dispatch


def _pick_auto(backend: str) -> str:
    return {"gpu": "cudnn", "tpu": "splash"}.get(backend, "xla")


def plan(requested: str, q, k, mask=None, bias=None, *, backend: str | None = None, layout: Layout | None = None,
         interpret: bool = False) -> tuple[str, str | None]:
    """(the implementation that will run, why the requested one does not or None). Pure: no tracing, so the
    fallback rules are testable on any backend by passing ``backend``."""
    backend = backend or jax.default_backend()
    name = canonical(requested)
    if name == "auto":
        name = _pick_auto(backend)
    if name == "cudnn":
        reason = cudnn_unsupported(q, k, mask, bias, backend, layout)
    elif name == "splash":
        reason = splash_unsupported(q, k, mask, bias, backend, layout, interpret)
    elif name in ("ring", "ulysses"):
        reason = sequence_unsupported(name, q, k, layout)
        if reason is not None and name == "ring" and (layout is None or layout.sequence == 1):
            return "chunked", reason  # a ring of one device is the chunked kernel
    else:
        reason = None
    return (name, None) if reason is None else ("xla", reason)


def attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None, implementation: str | None = "xla"):
    """Run the implementation chosen by the active scope (else ``implementation``), with fallbacks."""
    choice = active() or Choice(canonical(implementation))
    requested = choice.name
    layout = mesh_layout(q.shape[0], q.shape[2], k.shape[2])
    name, reason = plan(requested, q, k, mask, bias, layout=layout, interpret=choice.interpret)
    loud = requested != "auto"
    if reason is not None:
        _note(f"attention '{requested}' falls back to '{name}': {reason}", loud)
    kw = dict(causal=causal, mask=mask, bias=bias, scale=scale, choice=choice, layout=layout)
    if name == "xla":
        return xla_attention(q, k, v, **kw)
    if name == "chunked":
        return chunked_attention(q, k, v, **kw)
    if name == "ring":
        return ring_attention(q, k, v, **kw)
    if name == "ulysses":
        return ulysses_attention(q, k, v, **kw)
    try:
        if name == "cudnn":
            return cudnn_attention(q, k, v, **kw)
        return splash_attention(q, k, v, **kw)
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as err:  # rejected while tracing
        _note(f"attention '{requested}' falls back to 'xla': {name} rejected shapes q {q.shape}, k {k.shape} "
              f"({type(err).__name__}: {err})", loud)
        return xla_attention(q, k, v, **kw)
