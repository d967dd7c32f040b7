"""Qwen2 / Qwen3 causal LMs from local Hugging Face checkpoints: config mapping, weight conversion into our
:class:`~avatarjax.models.decoder_lm.DecoderLM`, presets, a tokenizer helper and benchmarks.

Body of Her initialises its speech-video LM from Qwen2-7B-Instruct; CogPortrait's planning agents can run a local
Qwen2 / Qwen3 through :func:`avatarjax.models.decoder_lm.generate`.

Conversion: ``avatarjax convert qwen2 --from DIR --to OUT`` where DIR holds a ``Qwen2ForCausalLM`` (or
``Qwen3ForCausalLM``, or a bare ``Qwen2Model``/``Qwen3Model`` with tied embeddings) saved with ``save_pretrained``;
or in Python ``from_pretrained(CONVERTER, DIR)``. Supported: default RoPE (any ``rope_theta``), GQA, q/k/v bias
(Qwen2) or ``attention_bias`` (Qwen3, q/k/v/o), per-head QK-norm (Qwen3), tied or separate ``lm_head``. Not
supported (a ConfigError says so): sliding-window layers (``use_sliding_window``) and RoPE scaling (YaRN etc.).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter
from avatarjax.errors import CheckpointError, ConfigError
from avatarjax.models.decoder_lm import DecoderLM, DecoderLMConfig

SOURCE = "Qwen/Qwen2-7B-Instruct (or another Qwen2 / Qwen3 causal LM) on the Hugging Face Hub"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # or vocab.json + merges.txt for the slow tokenizer

# Qwen/Qwen2-7B(-Instruct). Both use the same architecture; only the weights differ.
QWEN2_7B = DecoderLMConfig(vocab_size=152064, dim=3584, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                           mlp_dim=18944, rope_theta=1_000_000.0, norm_eps=1e-6, qkv_bias=True, qk_norm=False,
                           tie_embeddings=False)
# Qwen/Qwen2-0.5B(-Instruct): a small local LLM for agents and tests on real weights.
QWEN2_0_5B = DecoderLMConfig(vocab_size=151936, dim=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                             mlp_dim=4864, rope_theta=1_000_000.0, norm_eps=1e-6, qkv_bias=True, qk_norm=False,
                             tie_embeddings=True)
PRESETS = {"qwen2-7b": QWEN2_7B, "qwen2-7b-instruct": QWEN2_7B, "qwen2-0.5b": QWEN2_0_5B,
           "qwen2-0.5b-instruct": QWEN2_0_5B}

# Hugging Face's defaults for keys a config.json may leave out (Qwen2Config / Qwen3Config).
_HF_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                    num_attention_heads=32, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")


# ----------------------------------------------------------------------------------------------------------------
# Config

def config_from_hf(hf: dict) -> DecoderLMConfig:
    """A Hugging Face ``Qwen2Config`` / ``Qwen3Config`` dict (``config.json``) -> our ``DecoderLMConfig``.

    Reads ``rope_theta`` from ``rope_parameters`` (transformers 5) or the top level (older files)."""
    model_type = hf.get("model_type", "qwen2")
    if model_type not in ("qwen2", "qwen3"):
        raise ConfigError(f"config.json has model_type '{model_type}': the qwen2 converter reads 'qwen2' and 'qwen3' "
                          "checkpoints (Qwen2ForCausalLM / Qwen3ForCausalLM)")
    get = lambda key: hf[key] if hf.get(key) is not None else _HF_DEFAULTS[key]  # noqa: E731
    if get("hidden_act") != "silu":
        raise ConfigError(f"config.json has hidden_act '{hf['hidden_act']}': DecoderLM's MLP is SwiGLU (silu)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"config.json asks for RoPE scaling '{rope_type}', which DecoderLM does not implement: "
                          "remove rope_scaling / set rope_parameters.rope_type to 'default' (contexts up to "
                          "max_position_embeddings)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    layer_types = hf.get("layer_types") or []
    if (hf.get("use_sliding_window") and hf.get("sliding_window")) or "sliding_attention" in layer_types:
        raise ConfigError("config.json enables sliding-window attention (use_sliding_window / layer_types), which "
                          "DecoderLM does not implement: set use_sliding_window to false (Qwen2 releases do)")
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    qwen3 = model_type == "qwen3"
    head_dim = hf.get("head_dim") or (128 if qwen3 else hidden // heads)
    attention_bias = bool(hf.get("attention_bias", False))
    return DecoderLMConfig(
        vocab_size=get("vocab_size"), dim=hidden, num_layers=get("num_hidden_layers"), num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim, mlp_dim=get("intermediate_size"),
        rope_theta=float(theta), norm_eps=float(get("rms_norm_eps")),
        qkv_bias=attention_bias if qwen3 else True, out_bias=attention_bias if qwen3 else False, qk_norm=qwen3,
        tie_embeddings=bool(get("tie_word_embeddings")))


# ----------------------------------------------------------------------------------------------------------------
# Conversion

def build(cfg: DecoderLMConfig, rngs: nnx.Rngs, *, dtype=jnp.float32, param_dtype=jnp.float32) -> DecoderLM:
    """Our model; under ``jax.set_mesh`` + ``nnx.logical_axis_rules`` its parameters are created sharded, outside
    any mesh they are plain single-device arrays (the logical axes stay as metadata)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        with nnx.use_eager_sharding(False):
            return DecoderLM(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return DecoderLM(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def map_weights(hf: dict[str, np.ndarray], cfg: DecoderLMConfig) -> dict[str, np.ndarray]:
    """Hugging Face ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` tensors -> our parameter paths.

    Linear weights ``[out, in]`` become our kernels ``[in, out]`` with q/k/v split into ``[dim, heads, head_dim]``
    and o into ``[heads, head_dim, dim]``; per-layer tensors are stacked on a leading layers axis. With tied
    embeddings ``lm_head.weight`` (if saved) is ignored. The tensors used are removed from ``hf`` as they are
    consumed, so that converting a 7B checkpoint needs about one copy of it in memory.
    """
    prefix = "model." if any(k.startswith("model.") for k in hf) else ""
    L, d = cfg.num_layers, cfg.dim
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim

    def take(name: str) -> np.ndarray:
        if name not in hf:
            raise CheckpointError(f"the checkpoint lacks '{name}': is it a {L}-layer Qwen2/Qwen3 causal LM matching "
                                  "its config.json (qkv bias, attention_bias, tie_word_embeddings)?")
        return np.asarray(hf.pop(name), np.float32)

    def stacked(name: str, fn=lambda w: w) -> np.ndarray:
        first = fn(take(f"{prefix}layers.0.{name}"))
        out = np.empty((L, *first.shape), np.float32)
        out[0] = first
        for i in range(1, L):
            out[i] = fn(take(f"{prefix}layers.{i}.{name}"))
        return out

    out: dict[str, np.ndarray] = {"embed/embedding": take(f"{prefix}embed_tokens.weight"),
                                  "final_norm/scale": take(f"{prefix}norm.weight")}
    for ours, theirs, heads in (("q", "q", h), ("k", "k", kv), ("v", "v", kv)):
        out[f"layers/attn/{ours}_proj/kernel"] = stacked(f"self_attn.{theirs}_proj.weight",
                                                         lambda w, n=heads: w.T.reshape(d, n, hd))
        if cfg.qkv_bias:
            out[f"layers/attn/{ours}_proj/bias"] = stacked(f"self_attn.{theirs}_proj.bias",
                                                           lambda b, n=heads: b.reshape(n, hd))
    out["layers/attn/o_proj/kernel"] = stacked("self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d))
    if cfg.out_bias:
        out["layers/attn/o_proj/bias"] = stacked("self_attn.o_proj.bias")
    if cfg.qk_norm:
        out["layers/attn/q_norm/scale"] = stacked("self_attn.q_norm.weight")
        out["layers/attn/k_norm/scale"] = stacked("self_attn.k_norm.weight")
    out["layers/attn_norm/scale"] = stacked("input_layernorm.weight")
    out["layers/mlp_norm/scale"] = stacked("post_attention_layernorm.weight")
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        out[f"layers/mlp/{ours}/kernel"] = stacked(f"mlp.{theirs}.weight", lambda w: w.T)
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight", None)
    else:
        if "lm_head.weight" not in hf:
            raise CheckpointError("the checkpoint has no 'lm_head.weight' but its config.json says "
                                  "tie_word_embeddings=false: was it saved from a bare Qwen2Model?")
        out["lm_head/kernel"] = take("lm_head.weight").T
    leftover = sorted(k for k in hf if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise CheckpointError(f"the checkpoint has tensors the config does not account for: {leftover[:6]}"
                              f"{'...' if len(leftover) > 6 else ''}: does config.json (num_hidden_layers, "
                              "attention_bias, model_type) match the weights?")
    return out


CONVERTER = Converter(name="qwen2", config_type=DecoderLMConfig, source=SOURCE, config_from_hf=config_from_hf,
                      build=build, map_weights=map_weights)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and generation settings

def load_tokenizer(path: str | Path):
    """The Hugging Face tokenizer saved in ``path`` (local files only, nothing is downloaded)."""
    path = Path(path)
    expected = (f"{' and '.join(TOKENIZER_FILES)} (or vocab.json + merges.txt + tokenizer_config.json), from "
                f"{SOURCE}, saved with tokenizer.save_pretrained")
    if not path.is_dir():
        raise CheckpointError(f"tokenizer directory '{path}' does not exist: it must hold {expected}")
    fast = (path / "tokenizer.json").exists()
    slow = (path / "vocab.json").exists() and (path / "merges.txt").exists()
    if not (fast or slow) or not (path / "tokenizer_config.json").exists():
        present = sorted(p.name for p in path.iterdir())[:12]
        raise CheckpointError(f"'{path}' holds no complete Qwen tokenizer (it has {present}): it must hold {expected}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # corrupt / incompatible files
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise CheckpointError(f"the tokenizer in '{path}' cannot be loaded ({type(err).__name__}: {first}): it must "
                              f"hold {expected}") from err


def encode_prompts(tokenizer, prompts: Sequence[str] | Sequence[list[dict]], *, chat: bool = True,
                   pad_to_multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(ids, mask)`` int32 ``[batch, length]`` for ``generate``. With ``chat`` each prompt is a
    user message (str) or a list of ``{"role", "content"}`` messages, run through the chat template with the
    assistant turn opened. ``length`` is rounded up to ``pad_to_multiple`` so that few shapes get compiled."""
    rows = []
    for prompt in prompts:
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    length = max(len(r) for r in rows)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def decode_generated(tokenizer, tokens: np.ndarray, lengths: np.ndarray, *,
                     skip_special_tokens: bool = True) -> list[str]:
    """``generate``'s ``(tokens, lengths)`` -> one string per row."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokenizer.decode(tokens[i, :lengths[i]].tolist(), skip_special_tokens=skip_special_tokens)
            for i in range(tokens.shape[0])]


def eos_token_ids(hf_dir: str | Path) -> list[int]:
    """The EOS ids to stop generation at: ``generation_config.json``'s (Qwen2-Instruct: ``<|im_end|>`` and
    ``<|endoftext|>``), else ``config.json``'s; empty when neither names one."""
    hf_dir = Path(hf_dir)
    for name in ("generation_config.json", "config.json"):
        path = hf_dir / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    return []


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks (avatarjax bench encoders --only qwen2_forward,qwen2_decode)

BENCH_HF_CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                       rope_theta=1_000_000.0, tie_word_embeddings=False)


def _tiny_checkpoint(hf_config: dict, directory: str, seed: int = 0):
    """A random Qwen2ForCausalLM saved with save_pretrained in ``directory``; returns the torch model (eval)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_config)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def benchmark_cases():
    import torch

    from avatarjax.checkpoint.convert import from_pretrained
    from avatarjax.encoders.bench import BenchCase
    from avatarjax.models.decoder_lm import generate

    directory = tempfile.mkdtemp(prefix="avatarjax_qwen2_bench_")
    ref = _tiny_checkpoint(BENCH_HF_CONFIG, directory)
    model, cfg = from_pretrained(CONVERTER, directory)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))

    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (4, 128), dtype=np.int32)
    ids_jax, ids_torch = jnp.asarray(ids), torch.from_numpy(ids.astype(np.int64))

    prompt_len, new_tokens = 32, 64
    prompt = rng.integers(0, cfg.vocab_size, (1, prompt_len), dtype=np.int32)
    prompt_jax, prompt_torch = jnp.asarray(prompt), torch.from_numpy(prompt.astype(np.int64))

    def ours_decode():
        return generate(model, prompt_jax, None, new_tokens).tokens

    def hf_decode():
        return ref.generate(prompt_torch, attention_mask=torch.ones_like(prompt_torch), do_sample=False,
                            use_cache=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                            eos_token_id=None)

    return [
        BenchCase("qwen2_forward", lambda: forward(state, ids_jax), lambda: ref(ids_torch).logits,
                  note="random Qwen2 hidden 256, 4 layers, 8/2 heads, FFN 1024, vocab 4096; logits of batch 4 x 128"),
        BenchCase("qwen2_decode", ours_decode, hf_decode,
                  note=f"greedy, batch 1, {prompt_len}-token prompt, {new_tokens} new tokens (prefill included): "
                       f"per-token ms = ms / {new_tokens}; ours: one jit, lax.while_loop over the KV cache; "
                       "transformers: generate(use_cache=True)", per=new_tokens, unit="token"),
    ]
