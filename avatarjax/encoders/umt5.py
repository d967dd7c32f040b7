"""umT5 text encoder (the text conditioning of Wan2.x / CogPortrait) in Flax NNX, matching transformers'
``UMT5EncoderModel``, with a converter from a local Hugging Face checkpoint directory.

Architecture (T5 v1.1 style, umT5 flavour):

- shared token embedding (no scaling), dropout off (inference only);
- ``num_layers`` pre-norm blocks: ``x + SelfAttention(norm(x))`` then ``x + GatedFFN(norm(x))``;
- attention without the ``1/sqrt(d)`` scaling (scale 1.0) plus an additive relative-position bias that umT5
  learns in EVERY layer (T5 shares layer 0's); bidirectional, log-spaced buckets computed exactly as HF does;
- T5 layer norm: RMS without mean subtraction, no bias, statistics in float32;
- gated FFN ``wo(act(wi_0 x) * wi_1 x)`` with ``act`` from ``dense_act_fn`` (``gelu_new`` = tanh GELU);
- final layer norm.

The residual stream is kept in float32 whatever the compute dtype (HF keeps ``wo`` in float32, which makes its
residual stream float32 too when the model is loaded in bf16); matmuls run in ``dtype``.

Shapes: ids ``[batch, length]`` int, mask ``[batch, length]`` (1/True = token, 0 = padding) ->
hidden states ``[batch, length, d_model]``.

Wan conditioning (``encode_for_wan``): prompts tokenized to exactly 512 tokens (padded / truncated), encoded with
the padding mask, and every position at or beyond a prompt's length set to zero, as Wan does
(``[u[:len] for u in context]`` then zero-padded back to 512).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter
from avatarjax.errors import CheckpointError, ConfigError
from avatarjax.nn.attention import Attention
from avatarjax.nn.embeddings import Embed
from avatarjax.nn.mlp import MLP, GatedMLP
from avatarjax.nn.norms import RMSNorm
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

WAN_TEXT_LEN = 512

# Hugging Face activation names (ACT2FN) -> avatarjax.nn.mlp.ACTIVATIONS.
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


@dataclasses.dataclass(frozen=True)
class UMT5EncoderConfig:
    vocab_size: int = 256384
    d_model: int = 4096
    num_layers: int = 24
    num_heads: int = 64
    d_kv: int = 64
    d_ff: int = 10240
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"  # Hugging Face activation name
    is_gated_act: bool = True
    pad_token_id: int = 0
    attention: str = "xla"  # xla | cudnn | auto (cudnn falls back to XLA: T5 needs an additive bias)
    remat: str = "none"  # remat policy of the scanned layers (only matters when differentiating)

    @classmethod
    def umt5_xxl(cls, **overrides) -> UMT5EncoderConfig:
        """google/umt5-xxl encoder (Wan2.1 / Wan2.2 text encoder): 24 layers, 4096-d, 64 heads of 64."""
        return cls(**overrides)

    @classmethod
    def from_hf(cls, config: dict) -> UMT5EncoderConfig:
        """From a Hugging Face ``config.json`` dict (``UMT5Config``); ``feed_forward_proj`` decides the FFN the
        way HF does (``gated-gelu`` -> gated ``gelu_new``), overriding any stored ``dense_act_fn``."""
        model_type = config.get("model_type", "umt5")
        if model_type != "umt5":
            raise CheckpointError(
                f"config.json has model_type '{model_type}', expected 'umt5': this converter reads umT5 checkpoints "
                "(google/umt5-*, or the text_encoder folder of a Wan2.x Diffusers checkpoint)")
        try:
            proj = config.get("feed_forward_proj", "gated-gelu")
            parts = proj.split("-")
            if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
                raise ConfigError(f"feed_forward_proj '{proj}' must be 'ACT' or 'gated-ACT' (e.g. 'gated-gelu')")
            act = "gelu_new" if proj == "gated-gelu" else parts[-1]
            if act not in HF_ACTIVATIONS:
                raise ConfigError(f"activation '{act}' (feed_forward_proj '{proj}') is not supported: use one of "
                                  f"{', '.join(sorted(HF_ACTIVATIONS))}")
            return cls(vocab_size=int(config["vocab_size"]), d_model=int(config["d_model"]),
                       num_layers=int(config["num_layers"]), num_heads=int(config["num_heads"]),
                       d_kv=int(config["d_kv"]), d_ff=int(config["d_ff"]),
                       relative_attention_num_buckets=int(config.get("relative_attention_num_buckets", 32)),
                       relative_attention_max_distance=int(config.get("relative_attention_max_distance", 128)),
                       layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-6)), dense_act_fn=act,
                       is_gated_act=parts[0] == "gated" and len(parts) == 2,
                       pad_token_id=int(config.get("pad_token_id", 0) or 0))
        except KeyError as err:
            raise CheckpointError(f"config.json lacks {err}: is it a umT5 config?") from err

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


UMT5_XXL = UMT5EncoderConfig.umt5_xxl()


def relative_position_bucket(relative_position: np.ndarray, *, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """T5 relative-position buckets (``memory_position - query_position`` -> ``[0, num_buckets)``), computed
    with the same float32 operations as transformers' ``_relative_position_bucket`` so that bucket edges agree.

    Bidirectional: half the buckets for positive offsets; within each half, ``num_buckets // 2`` exact buckets
    for small distances, then log-spaced buckets up to ``max_distance`` (everything beyond shares the last)."""
    rel = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        ratio = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
        ratio = ratio * np.float32(num_buckets - max_exact)
    # float -> int truncates toward zero like torch's .to(long); the -inf of log(0) is masked by is_small.
    large = max_exact + np.where(np.isfinite(ratio), ratio, 0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


def relative_buckets(q_len: int, k_len: int, cfg: UMT5EncoderConfig) -> np.ndarray:
    """Bucket ids ``[q_len, k_len]`` (int32) of the encoder's bidirectional self-attention."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    return relative_position_bucket(rel, bidirectional=True, num_buckets=cfg.relative_attention_num_buckets,
                                    max_distance=cfg.relative_attention_max_distance).astype(np.int32)


class UMT5Block(nnx.Module):
    """One encoder block; ``rel_bias`` ``[num_buckets, heads]`` is this layer's relative-position table."""

    def __init__(self, cfg: UMT5EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.attn = Attention(cfg.d_model, cfg.num_heads, head_dim=cfg.d_kv, qkv_bias=False, out_bias=False,
                              implementation=None if cfg.attention == "auto" else cfg.attention, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
        init = nnx.initializers.normal(stddev=1.0 / math.sqrt(cfg.d_model))
        self.rel_bias = nnx.Param(init(rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads),
                                       param_dtype), out_sharding=(None, "heads"))
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)
        act = HF_ACTIVATIONS[cfg.dense_act_fn]
        if cfg.is_gated_act:
            self.mlp = GatedMLP(cfg.d_model, cfg.d_ff, activation=act, use_bias=False, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
        else:
            self.mlp = MLP(cfg.d_model, cfg.d_ff, activation=act, use_bias=False, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

    def position_bias(self, buckets: jax.Array) -> jax.Array:
        """buckets ``[q, k]`` -> additive logits bias ``[1, heads, q, k]``."""
        bias = jnp.take(self.rel_bias[...], buckets, axis=0)  # [q, k, heads]
        bias = jnp.transpose(bias, (2, 0, 1))[None]
        return constrain(bias, (None, "act_heads", None, None))

    def __call__(self, x: jax.Array, mask: jax.Array | None, buckets: jax.Array) -> jax.Array:
        """x ``[batch, length, d_model]`` float32 residual stream -> same."""
        dtype = self.dtype or x.dtype
        h = self.attn_norm(x).astype(dtype)
        x = x + self.attn(h, mask=mask, bias=self.position_bias(buckets), scale=1.0).astype(x.dtype)
        h = self.mlp_norm(x).astype(dtype)
        x = x + self.mlp(h).astype(x.dtype)
        return constrain(x, ("batch", "length", "act_embed"))


class UMT5Encoder(nnx.Module):
    """ids ``[batch, length]`` (+ mask ``[batch, length]``) -> last hidden state ``[batch, length, d_model]``
    in ``dtype`` (the compute dtype; float32 by default)."""

    def __init__(self, cfg: UMT5EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.attention not in ("xla", "cudnn", "auto"):
            raise ConfigError(f"attention '{cfg.attention}' must be xla, cudnn or auto")
        self.cfg = cfg
        self.dtype = dtype
        self.embed = Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        self.layers = create_stacked(
            lambda r: UMT5Block(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        _, length = ids.shape
        buckets = jnp.asarray(relative_buckets(length, length, self.cfg))
        attn_mask = None if mask is None else jnp.asarray(mask).astype(bool)[:, None, None, :]
        x = constrain(self.embed(ids), ("batch", "length", "act_embed"))  # float32 residual stream
        x = run_stacked(self.layers, lambda layer, h, _: layer(h, attn_mask, buckets), x, remat=self.cfg.remat)
        return self.final_norm(x).astype(self.dtype)

    def encode_for_wan(self, ids: jax.Array, mask: jax.Array, text_len: int = WAN_TEXT_LEN) -> jax.Array:
        """Wan text context ``[batch, text_len, d_model]``: ids / mask padded (pad id, mask 0) or truncated to
        ``text_len``, encoded, and positions ``>=`` each prompt's length (``mask.sum()``) zeroed, as Wan does."""
        ids, mask = pad_or_truncate(ids, mask, text_len, self.cfg.pad_token_id)
        out = self(ids, mask)
        lengths = jnp.sum(mask.astype(jnp.int32), axis=-1)
        keep = jnp.arange(text_len)[None, :] < lengths[:, None]
        return jnp.where(keep[..., None], out, jnp.zeros((), out.dtype))

    def flops(self, batch: int, length: int) -> float:
        """Forward FLOPs (2 per multiply-add) of the projections, attention matmuls and FFN."""
        c = self.cfg
        attn = 2 * batch * length * c.d_model * c.inner_dim * 4 + 2 * 2 * batch * c.num_heads * length ** 2 * c.d_kv
        ffn = 2 * batch * length * c.d_model * c.d_ff * (3 if c.is_gated_act else 2)
        return float(c.num_layers * (attn + ffn))


def pad_or_truncate(ids, mask, text_len: int, pad_id: int = 0):
    """``(ids, mask)`` ``[batch, length]`` -> ``[batch, text_len]``: right-padded with ``pad_id`` / 0, or cut."""
    ids = jnp.asarray(ids)
    mask = jnp.asarray(mask)
    length = ids.shape[1]
    if mask.shape != ids.shape:
        raise ValueError(f"mask shape {mask.shape} differs from ids shape {ids.shape}")
    if length >= text_len:
        return ids[:, :text_len], mask[:, :text_len]
    pad = [(0, 0), (0, text_len - length)]
    return jnp.pad(ids, pad, constant_values=pad_id), jnp.pad(mask, pad, constant_values=0)


def encode_for_wan(model: UMT5Encoder, ids, mask, text_len: int = WAN_TEXT_LEN) -> jax.Array:
    """Function form of :meth:`UMT5Encoder.encode_for_wan`."""
    return model.encode_for_wan(ids, mask, text_len)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer

TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


def load_tokenizer(path: str | Path):
    """The umT5 tokenizer from a local directory (``AutoTokenizer``, ``local_files_only``): google/umt5-xxl or the
    ``tokenizer`` folder of a Wan2.x Diffusers checkpoint. Nothing is downloaded."""
    path = Path(path)
    expected = (f"{' or '.join(TOKENIZER_FILES)} plus tokenizer_config.json (from google/umt5-xxl or the Wan2.x "
                "'tokenizer' folder, saved with save_pretrained)")
    if not path.is_dir():
        raise CheckpointError(f"tokenizer directory '{path}' does not exist: it must hold {expected}")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(f"'{path}' has neither {' nor '.join(TOKENIZER_FILES)}: it must hold {expected}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - report any loader failure as a checkpoint problem
        first_line = str(err).splitlines()[0][:200] if str(err) else ""
        raise CheckpointError(f"cannot load the tokenizer in '{path}' ({type(err).__name__}: {first_line}): "
                              f"it must hold {expected}") from err


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: HTML entities unescaped (twice), whitespace runs collapsed, stripped."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize_for_wan(tokenizer, prompts: str | Sequence[str], text_len: int = WAN_TEXT_LEN,
                     clean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int32 ``[batch, text_len]``: padded to ``max_length``, truncated, with special tokens
    (the closing ``</s>``), as Wan tokenizes its prompts."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if clean:
        prompts = [clean_prompt(p) for p in prompts]
    enc = tokenizer(prompts, padding="max_length", max_length=text_len, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Conversion

def build(cfg: UMT5EncoderConfig, rngs: nnx.Rngs, *, dtype=jnp.float32, param_dtype=jnp.float32) -> UMT5Encoder:
    """Our encoder; under ``jax.set_mesh`` + ``nnx.logical_axis_rules`` its parameters are created sharded,
    outside any mesh they are plain single-device arrays (the logical axes stay as metadata)."""
    from flax.core import spmd as core_spmd

    rules = tuple(tuple(r) for r in core_spmd.get_logical_axis_rules() or ())
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        with nnx.use_eager_sharding(False):
            return _create(rngs, cfg=cfg, dtype=dtype, param_dtype=param_dtype, rules=rules, eager=False)
    return _create(rngs, cfg=cfg, dtype=dtype, param_dtype=param_dtype, rules=rules, eager=True)


@functools.partial(nnx.jit, static_argnames=("cfg", "dtype", "param_dtype", "rules", "eager"))
def _create(rngs, *, cfg, dtype, param_dtype, rules, eager):
    """One jitted initialisation: one compile (cached per config, dtypes, rules and mesh) instead of one per
    parameter shape, and under a mesh the sharded arrays are created in place. ``rules`` / ``eager`` only key
    the cache (the active flax rules and eager-sharding mode decide the shardings)."""
    del rules, eager
    return UMT5Encoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def map_weights(hf: dict[str, np.ndarray], cfg: UMT5EncoderConfig) -> dict[str, np.ndarray]:
    """Hugging Face ``UMT5EncoderModel`` / ``UMT5ForConditionalGeneration`` tensors -> our parameter paths.

    Linear weights ``[out, in]`` are transposed (and q/k/v/o split into heads); per-layer tensors are stacked on
    a leading layers axis. The token table is ``shared.weight`` (or ``encoder.embed_tokens.weight``, its tied
    copy). Decoder and LM-head tensors of a full seq2seq checkpoint are ignored."""
    h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model

    def get(name: str) -> np.ndarray:
        if name not in hf:
            if "relative_attention_bias" in name and any(k.endswith("relative_attention_bias.weight") for k in hf):
                raise CheckpointError(
                    f"the checkpoint lacks '{name}': it has a relative_attention_bias only in some layers, as T5 "
                    "does; umT5 has one in every layer. Is this a T5 (not umT5) checkpoint?")
            raise CheckpointError(f"the checkpoint lacks '{name}': is it a umT5 encoder with {cfg.num_layers} "
                                  "layers (check config.json against the weights)?")
        return np.asarray(hf[name], dtype=np.float32)

    def stack(fmt: str, fn=lambda w: w) -> np.ndarray:
        return np.stack([fn(get(fmt.format(i=i))) for i in range(cfg.num_layers)])

    if "shared.weight" in hf:
        table = get("shared.weight")
    elif "encoder.embed_tokens.weight" in hf:
        table = get("encoder.embed_tokens.weight")
    else:
        raise CheckpointError("the checkpoint has neither 'shared.weight' nor 'encoder.embed_tokens.weight' "
                              "(the token embedding): is it a umT5 checkpoint?")
    attn = "encoder.block.{i}.layer.0.SelfAttention."
    ffn = "encoder.block.{i}.layer.1.DenseReluDense."
    out = {
        "embed/embedding": table,
        "layers/attn_norm/scale": stack("encoder.block.{i}.layer.0.layer_norm.weight"),
        "layers/attn/q_proj/kernel": stack(attn + "q.weight", lambda w: w.T.reshape(d, h, dk)),
        "layers/attn/k_proj/kernel": stack(attn + "k.weight", lambda w: w.T.reshape(d, h, dk)),
        "layers/attn/v_proj/kernel": stack(attn + "v.weight", lambda w: w.T.reshape(d, h, dk)),
        "layers/attn/o_proj/kernel": stack(attn + "o.weight", lambda w: w.T.reshape(h, dk, d)),
        "layers/rel_bias": stack(attn + "relative_attention_bias.weight"),
        "layers/mlp_norm/scale": stack("encoder.block.{i}.layer.1.layer_norm.weight"),
        "final_norm/scale": get("encoder.final_layer_norm.weight"),
    }
    if cfg.is_gated_act:
        out["layers/mlp/gate/kernel"] = stack(ffn + "wi_0.weight", np.transpose)
        out["layers/mlp/up/kernel"] = stack(ffn + "wi_1.weight", np.transpose)
        out["layers/mlp/down/kernel"] = stack(ffn + "wo.weight", np.transpose)
    else:
        out["layers/mlp/fc1/kernel"] = stack(ffn + "wi.weight", np.transpose)
        out["layers/mlp/fc2/kernel"] = stack(ffn + "wo.weight", np.transpose)
    extra = sorted(k for k in hf if k.startswith("encoder.block.") and int(k.split(".")[2]) >= cfg.num_layers)
    if extra:
        raise CheckpointError(f"the checkpoint has more layers than config.json's num_layers={cfg.num_layers} "
                              f"(e.g. '{extra[0]}'): the config does not match the weights")
    return out


CONVERTER = Converter(
    name="umt5",
    config_type=UMT5EncoderConfig,
    source="google/umt5-xxl on the Hub, or the text_encoder folder of a Wan2.x Diffusers checkpoint",
    config_from_hf=UMT5EncoderConfig.from_hf,
    build=build,
    map_weights=map_weights,
)


# ----------------------------------------------------------------------------------------------------------------
# Benchmark

@functools.partial(jax.jit, static_argnames=("graphdef", "wan_len"))
def _forward(state, ids, mask, *, graphdef, wan_len: int):
    model = nnx.merge(graphdef, state)
    return model.encode_for_wan(ids, mask, wan_len) if wan_len else model(ids, mask)


def jit_encoder(model: UMT5Encoder, *, wan: bool = False, text_len: int = WAN_TEXT_LEN):
    """A jitted ``(ids, mask) -> hidden states`` over the model's current parameters (split once: no NNX graph
    walk per call; compiled once per model structure and input shape). ``wan=True`` gives ``encode_for_wan``."""
    graphdef, state = nnx.split(model)
    wan_len = text_len if wan else 0
    return lambda ids, mask: _forward(state, ids, mask, graphdef=graphdef, wan_len=wan_len)


def benchmark_cases():
    """Our jitted encoder vs transformers' UMT5EncoderModel on a small random config (4 x 128 tokens, padded)."""
    import tempfile

    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from avatarjax.checkpoint.convert import from_pretrained

    hf_cfg = UMT5Config(vocab_size=1000, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
    # Eager attention: on CPU it is several times faster than transformers' default sdpa path for T5's
    # bias + mask (measured 160 ms vs 750 ms here), so the reference is the fastest PyTorch option.
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = UMT5EncoderModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        model, _ = from_pretrained(CONVERTER, tmp)
    rng = np.random.default_rng(0)
    batch, length = 4, 128
    ids = rng.integers(1, hf_cfg.vocab_size, size=(batch, length))
    lengths = np.array([128, 100, 64, 17])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask > 0, ids, 0)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    fwd = jit_encoder(model)

    def reference():
        return ref(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

    def ours():
        return fwd(ids_j, mask_j)

    from avatarjax.encoders.bench import BenchCase

    return [BenchCase("umt5", ours, reference,
                      note=f"d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 1000, batch {batch} x {length} padded, "
                           f"fp32, torch attn={ref.config._attn_implementation}")]
