"""The CLIP text tower with its projection (defaults: ViT-L/14), matching transformers' ``CLIPTextModel`` /
``CLIPTextModelWithProjection``, plus its converter.

Token + learned position embeddings, pre-LN blocks (causal self-attention under the padding mask, quick-GELU MLP),
a final LayerNorm, EOS pooling and a bias-free ``text_projection``::

    ids [B, T] int32, mask [B, T] (1 = token)  ->  last_hidden_state [B, T, dim], pooled [B, dim], projected [B, proj]

EOS pooling follows transformers exactly: with the legacy ``eos_token_id == 2`` (the original OpenAI configs) the
position of the highest token id (the tokenizer's ``<|endoftext|>``), otherwise the first position of
``eos_token_id``. The residual stream stays float32; matmuls run in the compute ``dtype``.

Conversion: ``avatarjax convert clip_text --from DIR --to OUT`` where DIR holds a ``CLIPTextModelWithProjection``,
``CLIPTextModel`` or full ``CLIPModel`` saved with ``save_pretrained`` (the vision tower of a CLIPModel is ignored).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter
from avatarjax.encoders import text
from avatarjax.errors import ConfigError
from avatarjax.nn.attention import Attention
from avatarjax.nn.embeddings import Embed
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

SOURCE = "openai/clip-vit-large-patch14 on the Hugging Face Hub: a CLIPModel or CLIPTextModelWithProjection"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
LEGACY_EOS_TOKEN_ID = 2  # transformers: pool at argmax(input_ids) when config.eos_token_id == 2


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    """CLIP text tower; the defaults are ViT-L/14's (openai/clip-vit-large-patch14)."""

    vocab_size: int = 49408
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_length: int = 77  # max_position_embeddings
    projection_dim: int = 768  # 0: no text_projection (CLIPTextModel)
    activation: str = "quick_gelu"  # Hugging Face hidden_act
    norm_eps: float = 1e-5
    eos_token_id: int = LEGACY_EOS_TOKEN_ID  # as in the OpenAI config.json: legacy argmax pooling
    attention: str = "xla"  # xla | cudnn | auto

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_hf(cls, config: dict) -> ClipTextConfig:
        """From a Hugging Face ``config.json`` dict: a ``CLIPTextConfig`` (``clip_text_model``) or a full
        ``CLIPConfig`` (``clip``, with ``text_config``). Keys left out take transformers' defaults, as in
        transformers."""
        from transformers import CLIPConfig, CLIPTextConfig

        config = dict(config)
        if "text_config" in config or config.get("model_type") == "clip":
            full = text.hf_config(lambda: CLIPConfig.from_dict(config), "CLIP")
            hf, projection_dim = full.text_config, full.projection_dim
        else:
            hf = text.hf_config(lambda: CLIPTextConfig.from_dict(config), "CLIP text")
            projection_dim = hf.projection_dim
        if "CLIPTextModel" in (config.get("architectures") or ()):
            projection_dim = 0  # a bare text model has no text_projection
        eos = hf.eos_token_id
        if not isinstance(eos, int):
            raise ConfigError(f"CLIP text config: eos_token_id must be one integer for EOS pooling, got {eos!r}")
        text.activation(hf.hidden_act)  # fail early on an unsupported activation
        if hf.hidden_size % hf.num_attention_heads:
            raise ConfigError(f"CLIP text config: hidden_size {hf.hidden_size} is not a multiple of "
                              f"num_attention_heads {hf.num_attention_heads}")
        return cls(vocab_size=hf.vocab_size, dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
                   num_heads=hf.num_attention_heads, mlp_dim=hf.intermediate_size,
                   max_length=hf.max_position_embeddings, projection_dim=int(projection_dim or 0),
                   activation=hf.hidden_act, norm_eps=float(hf.layer_norm_eps), eos_token_id=eos)


class ClipTextOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, T, dim] float32 (after the final LayerNorm)
    pooled: jax.Array  # [B, dim] float32 (EOS position)
    projected: jax.Array | None  # [B, projection_dim] float32, None without a projection


class ClipTextLayer(nnx.Module):
    """Pre-LN block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: ClipTextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg.dim, cfg.num_heads, qkv_bias=True, out_bias=True,
                              implementation=None if cfg.attention == "auto" else cfg.attention,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.mlp = text.TextMLP(cfg.dim, cfg.mlp_dim, activation_name=cfg.activation, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = x + text.attend_masked(self.attn, self.norm1(x), mask=mask, causal=True).astype(x.dtype)
        x = x + self.mlp(self.norm2(x)).astype(x.dtype)
        return constrain(x, ("batch", "length", "act_embed"))


class ClipTextModel(nnx.Module):
    """ids ``[B, T]`` (T <= max_length), mask ``[B, T]`` -> :class:`ClipTextOutput`."""

    def __init__(self, cfg: ClipTextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.remat = remat
        self.token_embed = Embed(cfg.vocab_size, cfg.dim, param_dtype=param_dtype, rngs=rngs)
        self.position_embed = text.table(cfg.max_length, cfg.dim, param_dtype=param_dtype, rngs=rngs)
        self.layers = create_stacked(
            lambda r: ClipTextLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)
        self.final_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.projection = Dense(cfg.dim, cfg.projection_dim, axes=("embed", None), use_bias=False, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs) if cfg.projection_dim else None

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> ClipTextOutput:
        length = input_ids.shape[1]
        if length > self.cfg.max_length:
            raise ValueError(f"CLIP text input of length {length} exceeds max_length {self.cfg.max_length}")
        x = self.token_embed(input_ids).astype(jnp.float32)
        x = x + self.position_embed[...][:length].astype(jnp.float32)
        x = constrain(x, ("batch", "length", "act_embed"))
        x = run_stacked(self.layers, lambda layer, h, _: layer(h, attention_mask), x, remat=self.remat)
        hidden = self.final_norm(x)
        pooled = jnp.take_along_axis(hidden, eos_positions(input_ids, self.cfg.eos_token_id)[:, None, None],
                                     axis=1)[:, 0]
        projected = None if self.projection is None else self.projection(pooled).astype(jnp.float32)
        return ClipTextOutput(hidden, pooled, projected)


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """The pooled position of each row, as transformers' CLIPTextModel picks it (first occurrence)."""
    ids = input_ids.astype(jnp.int32)
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


def build(cfg: ClipTextConfig, rngs: nnx.Rngs, *, dtype=jnp.float32, param_dtype=jnp.float32) -> ClipTextModel:
    """Our model; its parameters are created sharded when built under ``jax.set_mesh`` + logical axis rules."""
    return text.build_module(lambda: ClipTextModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs))


# ------------------------------------------------------------------------------------------------- conversion

def map_weights(hf: dict[str, np.ndarray], cfg: ClipTextConfig) -> dict[str, np.ndarray]:
    """Hugging Face CLIP text tensors -> our parameter paths.

    ``text_model.`` prefixes are stripped (vision tensors of a full CLIPModel are ignored); per-layer tensors are
    stacked on the leading layers axis; Linear weights ``[out, in]`` are transposed, q/k/v to
    ``[dim, heads, head_dim]`` and out_proj to ``[heads, head_dim, dim]``.
    """
    what = "CLIP text"
    t = text.strip_prefix(hf, "embeddings.token_embedding.weight", ("text_model.", ""), what)
    h, d = cfg.num_heads, cfg.head_dim
    layer = "encoder.layers.{i}."
    out = {
        "token_embed/embedding": text.take(t, "embeddings.token_embedding.weight", what),
        "position_embed": text.take(t, "embeddings.position_embedding.weight", what),
        "final_norm/scale": text.take(t, "final_layer_norm.weight", what),
        "final_norm/bias": text.take(t, "final_layer_norm.bias", what),
    }
    for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
        out[f"layers/{ours}/scale"] = text.stacked(t, layer + theirs + ".weight", cfg.num_layers, what)
        out[f"layers/{ours}/bias"] = text.stacked(t, layer + theirs + ".bias", cfg.num_layers, what)
    for proj in ("q_proj", "k_proj", "v_proj"):
        out[f"layers/attn/{proj}/kernel"] = text.stacked(
            t, layer + f"self_attn.{proj}.weight", cfg.num_layers, what, lambda w: text.linear(w, None, (h, d)))
        out[f"layers/attn/{proj}/bias"] = text.stacked(
            t, layer + f"self_attn.{proj}.bias", cfg.num_layers, what, lambda b: b.reshape(h, d))
    out["layers/attn/o_proj/kernel"] = text.stacked(
        t, layer + "self_attn.out_proj.weight", cfg.num_layers, what, lambda w: text.linear(w, (h, d), None))
    out["layers/attn/o_proj/bias"] = text.stacked(t, layer + "self_attn.out_proj.bias", cfg.num_layers, what)
    for fc in ("fc1", "fc2"):
        out[f"layers/mlp/{fc}/kernel"] = text.stacked(t, layer + f"mlp.{fc}.weight", cfg.num_layers, what, text.linear)
        out[f"layers/mlp/{fc}/bias"] = text.stacked(t, layer + f"mlp.{fc}.bias", cfg.num_layers, what)
    if cfg.projection_dim:
        # CLIPTextModelWithProjection / CLIPModel keep text_projection outside text_model.
        out["projection/kernel"] = text.linear(text.take(hf, "text_projection.weight", what))
    return out


CONVERTER = Converter(
    name="clip_text",
    config_type=ClipTextConfig,
    source=SOURCE,
    config_from_hf=ClipTextConfig.from_hf,
    build=build,
    map_weights=map_weights,
)


# ------------------------------------------------------------------------------------------------- tokenizer

def load_tokenizer(directory: str | Path):
    """A transformers ``CLIPTokenizer`` from a local directory holding vocab.json and merges.txt (or a
    tokenizer.json); nothing is downloaded."""
    from transformers import CLIPTokenizer

    return text.load_tokenizer(directory, loader=lambda d: CLIPTokenizer.from_pretrained(d, local_files_only=True),
                               required=TOKENIZER_FILES, alternatives=("tokenizer.json",), what="CLIP",
                               source=SOURCE)


def tokenize(tokenizer, texts, max_length: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 ``[N, max_length]``, mask int32 ``[N, max_length]``): BOS ... EOS, right-padded with the
    tokenizer's pad token (``<|endoftext|>`` for OpenAI CLIP), truncated to ``max_length``."""
    return text.tokenize(tokenizer, texts, max_length)


# ------------------------------------------------------------------------------------------------- benchmark

def benchmark_cases():
    """Ours (jitted) vs transformers' CLIPTextModelWithProjection: dim 256, 4 layers, batch 8 x 77, padded."""
    import tempfile

    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from avatarjax.checkpoint.convert import from_pretrained
    from avatarjax.encoders.bench import BenchCase

    torch.manual_seed(0)
    hf_cfg = CLIPTextConfig(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=256,
                            bos_token_id=998, eos_token_id=999, pad_token_id=999)
    ref = CLIPTextModelWithProjection(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        model, _ = from_pretrained(CONVERTER, tmp)
    ids, mask = text.random_padded_batch(8, 77, bos=998, eos=999, low=1, high=998, pad=999)
    forward = text.jit_forward(model)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    return [BenchCase(
        name="clip_text",
        ours=lambda: forward(ids_j, mask_j),
        reference=lambda: ref(input_ids=ids_t, attention_mask=mask_t).text_embeds,
        note="CLIPTextModelWithProjection dim 256, 4 layers, 4 heads, batch 8 x 77 (padded), fp32",
    )]
