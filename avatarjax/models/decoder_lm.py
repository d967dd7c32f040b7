"""A Qwen2-style decoder-only language model (the backbone of the Body of Her speech-video LM).

RMSNorm pre-norm blocks, grouped-query attention with RoPE (bias on q/k/v only, optional per-head QK-norm),
SwiGLU MLP without bias, scanned layers with a configurable remat policy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.attention import Attention
from avatarjax.nn.embeddings import Embed
from avatarjax.nn.linear import Dense
from avatarjax.nn.mlp import GatedMLP
from avatarjax.nn.norms import RMSNorm
from avatarjax.nn.rope import rope_frequencies
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain


@dataclasses.dataclass(frozen=True)
class DecoderLMConfig:
    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0  # 0 means dim // num_heads
    mlp_dim: int = 384
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    qk_norm: bool = False
    tie_embeddings: bool = False
    attention: str = "xla"  # xla | cudnn | auto

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: DecoderLMConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg.dim, cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
                              qkv_bias=cfg.qkv_bias, qk_norm="per_head" if cfg.qk_norm else None,
                              norm_eps=cfg.norm_eps, implementation=None if cfg.attention == "auto" else cfg.attention,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.mlp = GatedMLP(cfg.dim, cfg.mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), rope=rope, causal=True)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))


class DecoderLM(nnx.Module):
    """tokens ``[batch, length]`` int32 -> logits ``[batch, length, vocab]`` float32."""

    def __init__(self, cfg: DecoderLMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.remat = remat
        self.embed = Embed(cfg.vocab_size, cfg.dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = create_stacked(
            lambda r: DecoderBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.lm_head = None if cfg.tie_embeddings else Dense(
            cfg.dim, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False, dtype=dtype, param_dtype=param_dtype,
            rngs=rngs)

    def hidden_states(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """tokens ``[batch, length]`` -> final-normed hidden states ``[batch, length, dim]``."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        rope = rope_frequencies(positions, self.cfg.resolved_head_dim, self.cfg.rope_theta)
        x = constrain(self.embed(tokens), ("batch", "length", "act_embed"))
        x = run_stacked(self.layers, lambda layer, h, _: layer(h, rope), x, remat=self.remat)
        return self.final_norm(x)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        h = self.hidden_states(tokens, positions)
        logits = self.embed.attend(h) if self.lm_head is None else self.lm_head(h)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))


def decoder_lm_flops_per_sequence(cfg: DecoderLMConfig, length: int) -> float:
    """Forward FLOPs of one sequence: matmuls (2 per multiply-add) plus causal attention scores."""
    hd = cfg.resolved_head_dim
    per_token_layer = 2 * (cfg.dim * hd * (cfg.num_heads + 2 * cfg.num_kv_heads)  # q, k, v
                           + cfg.num_heads * hd * cfg.dim  # o
                           + 3 * cfg.dim * cfg.mlp_dim)  # gate, up, down
    attention = 2 * 2 * cfg.num_heads * hd * length * length / 2  # QK^T and PV, causal half
    head = 2 * cfg.dim * cfg.vocab_size
    return float(cfg.num_layers * (per_token_layer * length + attention) + head * length)
