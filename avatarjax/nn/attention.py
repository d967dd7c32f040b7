"""The one attention entry point, and a multi-head attention module (GQA, RoPE, QK-norm, self or cross).

``attend`` is the one place every model computes attention, so every model gets the same kernel choice (see
:mod:`avatarjax.nn.attention_kernels`): ``xla`` (the reference, any backend), ``cudnn`` (fused flash attention on
NVIDIA GPUs), ``splash`` (Pallas flash kernel on TPUs), ``chunked`` (blockwise online softmax, low memory),
``ring`` / ``ulysses`` (sequence parallel over the mesh's ``sequence`` axis) or ``auto`` / ``None`` (by platform).
A :func:`use_implementation` scope (the trainer's ``mesh.attention``) overrides the per-call choice at trace time.

``Attention`` is used as ``attn(x, context=None, *, rope=, causal=, mask=, bias=, scale=)``; its pieces ``qkv`` and
``output`` are public for callers that need the keys and values (a KV-cache prefill), and ``extend`` runs cached
self-attention for decoding (new tokens' k/v written into a preallocated cache at per-row slots).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn import attention_kernels as kernels
from avatarjax.nn.attention_kernels import use_implementation  # noqa: F401 (re-exported)
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import RMSNorm
from avatarjax.nn.rope import apply_rope
from avatarjax.parallel.mesh import constrain


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, mask: jax.Array | None = None,
           bias: jax.Array | None = None, scale: float | None = None, implementation: str | None = "xla") -> jax.Array:
    """Scaled dot-product attention.

    q ``[batch, q_len, heads, head_dim]``; k, v ``[batch, kv_len, kv_heads, head_dim]`` with ``heads`` a multiple
    of ``kv_heads`` (grouped-query attention); mask broadcastable to ``[batch, heads, q_len, kv_len]`` (True =
    attend); bias (added to the logits) broadcastable to the same; ``scale`` defaults to ``1/sqrt(head_dim)``
    (T5 uses 1.0); returns ``[batch, q_len, heads, head_dim]``. ``implementation`` (one of
    ``attention_kernels.IMPLEMENTATIONS``, None = ``auto``) applies unless a :func:`use_implementation` scope is
    active; one that cannot run this call falls back (one logged note), never silently wrong.
    """
    if q.dtype != k.dtype:
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    if bias is not None:
        bias = bias.astype(q.dtype)
    return kernels.attention(q, k, v, causal=causal, mask=mask, bias=bias, scale=scale,
                             implementation=implementation)


def write_slots(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """cache ``[batch, max_len, ...]`` with ``new`` ``[batch, n, ...]`` written at slots ``index[b] ..
    index[b] + n - 1`` of each row (``index`` ``[batch]``). The caller keeps them below ``max_len`` (past it, a
    single token is dropped and a block is shifted back to fit)."""
    if new.shape[1] == 1:
        return cache.at[jnp.arange(cache.shape[0]), index].set(new[:, 0])
    start = (0,) * (cache.ndim - 2)
    return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u, (i, *start)))(cache, new, index)


class Attention(nnx.Module):
    """Multi-head attention: x ``[batch, q_len, dim]`` (context ``[batch, kv_len, ctx_dim]`` for cross-attention)
    -> ``[batch, q_len, dim]``.

    ``qk_norm``: ``None``, ``"per_head"`` (RMSNorm over head_dim, Qwen3 style, before RoPE) or ``"across_heads"``
    (RMSNorm over heads * head_dim, Wan style).
    """

    def __init__(self, dim: int, num_heads: int, *, num_kv_heads: int | None = None, head_dim: int | None = None,
                 context_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = False,
                 qk_norm: str | None = None, norm_eps: float = 1e-6, implementation: str | None = "xla",
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        self.head_dim = head_dim or dim // num_heads
        self.implementation = implementation
        self.qk_norm = qk_norm
        ctx = context_dim or dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Dense(dim, (num_heads, self.head_dim), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.k_proj = Dense(ctx, (self.num_kv_heads, self.head_dim), axes=("embed", "kv_heads", "head_dim"),
                            use_bias=qkv_bias, **kw)
        self.v_proj = Dense(ctx, (self.num_kv_heads, self.head_dim), axes=("embed", "kv_heads", "head_dim"),
                            use_bias=qkv_bias, **kw)
        self.o_proj = Dense((num_heads, self.head_dim), dim, axes=("heads", "head_dim", "embed"), use_bias=out_bias, **kw)
        if qk_norm == "per_head":
            self.q_norm = RMSNorm(self.head_dim, eps=norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(self.head_dim, eps=norm_eps, param_dtype=param_dtype)
        elif qk_norm == "across_heads":
            self.q_norm = RMSNorm(num_heads * self.head_dim, eps=norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(self.num_kv_heads * self.head_dim, eps=norm_eps, param_dtype=param_dtype)
        elif qk_norm is None:
            self.q_norm = self.k_norm = None
        else:
            raise ValueError(f"qk_norm must be None, 'per_head' or 'across_heads', got {qk_norm!r}")

    def _norm(self, norm: RMSNorm | None, x: jax.Array) -> jax.Array:
        if norm is None:
            return x
        if self.qk_norm == "per_head":
            return norm(x)
        b, t, h, d = x.shape
        return norm(x.reshape(b, t, h * d)).reshape(b, t, h, d)

    def qkv(self, x: jax.Array, context: jax.Array | None = None, *,
            rope: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected (QK-normed, rotated) q ``[batch, q_len, heads, head_dim]`` and k, v
        ``[batch, kv_len, kv_heads, head_dim]``. RoPE rotates k only for self-attention (``context`` None)."""
        ctx = x if context is None else context
        q = self._norm(self.q_norm, self.q_proj(x))
        k = self._norm(self.k_norm, self.k_proj(ctx))
        v = self.v_proj(ctx)
        if rope is not None:
            q = apply_rope(q, *rope)
            if context is None:
                k = apply_rope(k, *rope)
        q = constrain(q, ("batch", "length", "act_heads", "act_head_dim"))
        # Sequence-parallel kernels take self-attention k/v sharded like q (no all-gather before the shard_map).
        choice = kernels.active()
        kv_len = "length" if context is None and choice and choice.name in ("ring", "ulysses") else "kv_length"
        k = constrain(k, ("batch", kv_len, "act_kv_heads", "act_head_dim"))
        v = constrain(v, ("batch", kv_len, "act_kv_heads", "act_head_dim"))
        return q, k, v

    def output(self, q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
               mask: jax.Array | None = None, bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
        """``o_proj(attend(q, k, v))`` -> ``[batch, q_len, dim]``."""
        out = attend(q, k, v, causal=causal, mask=mask, bias=bias, scale=scale, implementation=self.implementation)
        return self.o_proj(out)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, rope: tuple[jax.Array, jax.Array] | None = None,
                 causal: bool = False, mask: jax.Array | None = None, bias: jax.Array | None = None,
                 scale: float | None = None) -> jax.Array:
        q, k, v = self.qkv(x, context, rope=rope)
        return self.output(q, k, v, causal=causal, mask=mask, bias=bias, scale=scale)

    def extend(self, x: jax.Array, cache_k: jax.Array, cache_v: jax.Array, index: jax.Array, *,
               rope: tuple[jax.Array, jax.Array] | None = None, mask: jax.Array | None = None,
               scale: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Cached self-attention for ``new`` tokens x ``[batch, new, dim]`` (decoding: ``new`` = 1).

        Their k/v are written into cache_k / cache_v ``[batch, max_len, kv_heads, head_dim]`` at slots
        ``index[b] .. index[b] + new - 1`` of each row (``index`` ``[batch]`` int32), then the queries attend over
        the whole updated cache under ``mask`` (broadcastable to ``[batch, heads, new, max_len]``, True = attend;
        the caller masks unwritten / padding slots and later slots). ``rope`` holds the new tokens' angles.
        Returns (``[batch, new, dim]``, cache_k, cache_v).
        """
        q, k, v = self.qkv(x, rope=rope)
        cache_k = write_slots(cache_k, k.astype(cache_k.dtype), index)
        cache_v = write_slots(cache_v, v.astype(cache_v.dtype), index)
        return self.output(q, cache_k, cache_v, mask=mask, scale=scale), cache_k, cache_v

    def flops(self, batch: int, q_len: int, kv_len: int, dim: int, ctx_dim: int | None = None,
              causal: bool = False) -> float:
        """Forward FLOPs (2 per multiply-add) of projections and the attention matmuls."""
        ctx_dim = ctx_dim or dim
        hd = self.head_dim
        proj = 2 * batch * (q_len * dim * self.num_heads * hd * 2 + kv_len * ctx_dim * self.num_kv_heads * hd * 2)
        scores = 2 * 2 * batch * self.num_heads * q_len * kv_len * hd
        if causal:
            scores /= 2
        return float(proj + scores)
