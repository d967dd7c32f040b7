"""DecoderLM against transformers' Qwen2ForCausalLM / Qwen3ForCausalLM on tiny random checkpoints written with
save_pretrained: logits (fp32, bf16), KV-cache prefill + decode, greedy generation, conversion round trip and a
sharded forward on 8 fake devices."""

import copy
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from avatarjax.checkpoint.convert import convert, from_pretrained, load_converted
from avatarjax.config import MeshConfig
from avatarjax.encoders import qwen2
from avatarjax.errors import CheckpointError, ConfigError
from avatarjax.models.decoder_lm import KVCache, generate, positions_from_mask
from avatarjax.parallel.mesh import make_mesh
from avatarjax.parallel.rules import resolve

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=1_000_000.0, rms_norm_eps=1e-5)

# Two prompts of different lengths, right padded (ours) and left padded (transformers' generate).
LENGTHS = (11, 6)
PROMPT_LEN = max(LENGTHS)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF init leaves biases at 0 and norms at 1: draw every tensor so that each mapping is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.12 * torch.randn(p.shape, generator=g))


def _save(tmp_path_factory, name, cls, config_cls, seed, **overrides):
    d = tmp_path_factory.mktemp(name)
    torch.manual_seed(seed)
    model = cls(config_cls(**{**TINY, **overrides})).eval()
    _randomize(model, seed)
    model.save_pretrained(d, safe_serialization=True)
    return d, model


@pytest.fixture(scope="module")
def qwen2_ckpts(tmp_path_factory):
    return {tied: _save(tmp_path_factory, f"qwen2_{tied}", transformers.Qwen2ForCausalLM, transformers.Qwen2Config,
                        seed=1, tie_word_embeddings=tied == "tied") for tied in ("untied", "tied")}


@pytest.fixture(params=["untied", "tied"])
def qwen2_ckpt(request, qwen2_ckpts):
    return qwen2_ckpts[request.param]


@pytest.fixture
def qwen2_untied(qwen2_ckpts):
    return qwen2_ckpts["untied"]


@pytest.fixture(scope="module")
def qwen3_ckpt(tmp_path_factory):
    # head_dim != hidden / heads and attention_bias (q/k/v/o) on, to exercise both.
    return _save(tmp_path_factory, "qwen3", transformers.Qwen3ForCausalLM, transformers.Qwen3Config, seed=2,
                 head_dim=24, attention_bias=True)


def _prompts(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (len(LENGTHS), PROMPT_LEN)).astype(np.int32)
    right_mask = (np.arange(PROMPT_LEN)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    right = ids * right_mask
    left = np.zeros_like(right)
    left_mask = np.zeros_like(right_mask)
    for i, n in enumerate(LENGTHS):
        left[i, PROMPT_LEN - n:] = ids[i, :n]
        left_mask[i, PROMPT_LEN - n:] = 1
    return right, right_mask, left, left_mask


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward_jit(graphdef, state, ids, mask, positions=None):
    return nnx.merge(graphdef, state)(ids, positions, mask=mask)


def _forward(model, ids, mask=None, positions=None):
    """Our logits (jitted, compiled once per model structure and shape across tests)."""
    ids = jnp.asarray(ids)
    mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return np.asarray(_forward_jit(*nnx.split(model), ids, mask, positions))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill(graphdef, state, ids, mask, max_len):
    return nnx.merge(graphdef, state).prefill(ids, mask, max_len=max_len)


@functools.partial(jax.jit, static_argnames="graphdef")
def _extend(graphdef, state, tokens, cache):
    return nnx.merge(graphdef, state).extend(tokens, cache)


@functools.partial(jax.jit, static_argnames="graphdef")
def _extend_masked(graphdef, state, tokens, cache, mask):
    return nnx.merge(graphdef, state).extend(tokens, cache, mask)


def _hf_logits(model, ids, mask, dtype=torch.float32):
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64)),
                               attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.float().numpy()


def _max_err_valid(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


def _hf_generate(model, left, left_mask, n, eos=None):
    with torch.no_grad():
        out = model.generate(torch.from_numpy(left.astype(np.int64)),
                             attention_mask=torch.from_numpy(left_mask.astype(np.int64)), do_sample=False,
                             use_cache=True, max_new_tokens=n, pad_token_id=0, eos_token_id=eos)
    return out[:, left.shape[1]:].numpy()


# ------------------------------------------------------------------------------------------------- forward parity

def test_forward_parity_fp32_and_conversion_round_trip(qwen2_ckpt, tmp_path):
    d, ref = qwen2_ckpt
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    assert cfg.tie_embeddings == ref.config.tie_word_embeddings and (model.lm_head is None) == cfg.tie_embeddings
    assert cfg.rope_theta == 1e6 and cfg.norm_eps == 1e-5 and cfg.qkv_bias and not cfg.qk_norm
    right, right_mask, _, _ = _prompts(cfg.vocab_size)
    want = _hf_logits(ref, right, right_mask)
    ours = _forward(model, right, right_mask)
    err = _max_err_valid(ours, want, right_mask)
    print(f"\nqwen2 {d.name}: fp32 logits max abs diff {err:.2e} (logit scale {np.abs(want).max():.2f})")
    assert err <= 1e-4

    out = convert(qwen2.CONVERTER, d, tmp_path / "orbax")
    assert json.loads((out / "avatarjax_model.json").read_text())["converter"] == "qwen2"
    loaded, cfg2, name = load_converted(out)
    assert cfg2 == cfg and name == "qwen2"
    again = _forward(loaded, right, right_mask)
    np.testing.assert_array_equal(again, ours)


def test_bf16_error_is_reported(qwen2_ckpt):
    d, ref = qwen2_ckpt
    right, right_mask, _, _ = _prompts(128)
    want = _hf_logits(ref, right, right_mask)
    theirs_bf16 = _hf_logits(ref, right, right_mask, torch.bfloat16)
    model, _ = from_pretrained(qwen2.CONVERTER, d, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ours_bf16 = _forward(model, right, right_mask)
    ours_err = _max_err_valid(ours_bf16, want, right_mask)
    hf_err = _max_err_valid(theirs_bf16, want, right_mask)
    print(f"\nqwen2 {d.name}: bf16 logits max abs error vs fp32 reference: ours {ours_err:.3f}, "
          f"transformers bf16 {hf_err:.3f} (logit scale {np.abs(want).max():.2f})")
    assert ours_err <= max(2 * hf_err, 0.05)


# ---------------------------------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("padding", ["right", "left"])
def test_prefill_then_decode_equals_full_forward(qwen2_ckpt, padding):
    """Prefill the prompts, then feed the remaining tokens one per step: every step's logits equal the full
    forward's at that position (which, for every row, equals transformers' unpadded forward)."""
    d, ref = qwen2_ckpt
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    rng = np.random.default_rng(5)
    total = 16
    seq = rng.integers(1, cfg.vocab_size, (2, total)).astype(np.int32)
    lengths = np.array([9, 4])  # prompt lengths; each row then gets total - 9 teacher-forced tokens
    steps = total - lengths.max()
    full = _forward(model, seq)
    np.testing.assert_allclose(full, _hf_logits(ref, seq, np.ones_like(seq)), atol=1e-4)

    prompt = np.zeros((2, lengths.max()), np.int32)
    mask = np.zeros_like(prompt)
    for i, n in enumerate(lengths):
        sl = slice(0, n) if padding == "right" else slice(lengths.max() - n, None)
        prompt[i, sl], mask[i, sl] = seq[i, :n], 1
    gd, state = nnx.split(model)
    logits, cache = _prefill(gd, state, jnp.asarray(prompt), jnp.asarray(mask), int(lengths.max() + steps))
    assert isinstance(cache, KVCache) and cache.k.shape == (2, 2, lengths.max() + steps, 2, 16)
    np.testing.assert_array_equal(np.asarray(cache.positions), lengths)
    np.testing.assert_allclose(np.asarray(logits), full[np.arange(2), lengths - 1], atol=1e-5)
    for t in range(steps):
        tok = seq[np.arange(2), lengths + t][:, None]
        logits, cache = _extend(gd, state, jnp.asarray(tok), cache)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[np.arange(2), lengths + t], atol=1e-5,
                                   err_msg=f"decode step {t}")
    np.testing.assert_array_equal(np.asarray(cache.positions), lengths + steps)

    # The same prompt as one chunk appended to an empty cache (extend with several tokens and a mask).
    empty = KVCache.init(cfg, 2, int(lengths.max() + steps))
    chunk_logits, chunk_cache = _extend_masked(gd, state, jnp.asarray(prompt), empty, jnp.asarray(mask))
    last = lengths - 1 if padding == "right" else np.full(2, lengths.max() - 1)
    np.testing.assert_allclose(np.asarray(chunk_logits)[np.arange(2), last], full[np.arange(2), lengths - 1],
                               atol=1e-5)
    _, prefilled = _prefill(gd, state, jnp.asarray(prompt), jnp.asarray(mask), int(lengths.max() + steps))
    for name in ("valid", "index", "positions"):
        np.testing.assert_array_equal(np.asarray(getattr(chunk_cache, name)), np.asarray(getattr(prefilled, name)))


def test_left_padded_forward_with_positions_from_mask(qwen2_ckpt):
    d, ref = qwen2_ckpt
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    right, right_mask, left, left_mask = _prompts(cfg.vocab_size)
    a = _forward(model, right, right_mask)
    b = _forward(model, left, left_mask, positions_from_mask(jnp.asarray(left_mask)))
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(b[i, PROMPT_LEN - n:], a[i, :n], atol=1e-5)


def test_greedy_generate_matches_transformers(qwen2_ckpt):
    d, ref = qwen2_ckpt
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    right, right_mask, left, left_mask = _prompts(cfg.vocab_size)
    n = 12
    want = _hf_generate(ref, left, left_mask, n)
    out = generate(model, right, right_mask, n)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(np.asarray(out.lengths), [n, n])
    np.testing.assert_array_equal(np.asarray(generate(model, left, left_mask, n).tokens), want)
    # The decode loop over the scanned stack (the default off CPU) gives the same tokens.
    np.testing.assert_array_equal(np.asarray(generate(model, right, right_mask, n, layer_loop="scan").tokens), want)

    # Per-row EOS: stop row 0 at a new token (preferably from its 3rd on) that row 1 never produces.
    # (the tied model repeats one token per row, so there row 0 stops at once)
    candidates = [j for j in range(n) if want[0, j] not in want[1] and want[0, j] not in want[0, :j]]
    j = next((c for c in candidates if c >= 2), candidates[0])
    eos = int(want[0, j])
    want_eos = _hf_generate(ref, left, left_mask, n, eos=eos)
    out = generate(model, right, right_mask, n, eos_token_id=[eos, cfg.vocab_size + 7], pad_token_id=0)
    got = np.asarray(out.tokens)
    np.testing.assert_array_equal(got[:, :want_eos.shape[1]], want_eos)
    assert (got[:, want_eos.shape[1]:] == 0).all()
    assert int(out.lengths[0]) == j + 1 and (got[0, j + 1:] == 0).all() and int(out.lengths[1]) == n


def test_sampling_is_seeded_and_in_range(qwen2_untied):
    d, _ = qwen2_untied
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    right, right_mask, _, _ = _prompts(cfg.vocab_size)
    a = generate(model, right, right_mask, 6, temperature=0.8, top_k=20, rng=jax.random.key(0))
    b = generate(model, right, right_mask, 6, temperature=0.8, top_k=20, rng=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert ((np.asarray(a.tokens) >= 0) & (np.asarray(a.tokens) < cfg.vocab_size)).all()
    with pytest.raises(ValueError, match="rng"):
        generate(model, right, right_mask, 6, temperature=0.8)


# ------------------------------------------------------------------------------------------- Qwen3 (QK-norm)

def test_qwen3_qk_norm_parity(qwen3_ckpt):
    d, ref = qwen3_ckpt
    model, cfg = from_pretrained(qwen2.CONVERTER, d)
    assert cfg.qk_norm and cfg.out_bias and cfg.qkv_bias and cfg.resolved_head_dim == 24
    right, right_mask, left, left_mask = _prompts(cfg.vocab_size)
    want = _hf_logits(ref, right, right_mask)
    err = _max_err_valid(_forward(model, right, right_mask), want, right_mask)
    print(f"\nqwen3 (qk-norm): fp32 logits max abs diff {err:.2e}")
    assert err <= 1e-4
    np.testing.assert_array_equal(np.asarray(generate(model, right, right_mask, 8).tokens),
                                  _hf_generate(ref, left, left_mask, 8))


# ------------------------------------------------------------------------------------------------------ sharded

def test_sharded_forward_and_generate_equal_single_device(qwen2_untied):
    d, _ = qwen2_untied
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 128, (4, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = mask[3, 5:] = 0
    single, _ = from_pretrained(qwen2.CONVERTER, d)
    want = _forward(single, ids, mask)
    want_gen = np.asarray(generate(single, ids, mask, 5).tokens)

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(resolve("fsdp_tp")):
        model, _ = from_pretrained(qwen2.CONVERTER, d)
        q = model.layers.attn.q_proj.kernel[...]
        assert tuple(q.sharding.spec)[:3] == (None, "fsdp", "tensor")
        gd, state = nnx.split(model)
        got = _forward_jit(gd, state, jnp.asarray(ids), jnp.asarray(mask, bool))
        out = generate(model, ids, mask, 5)
    assert len(got.sharding.device_set) == 8
    # The cache: batch over (data, fsdp), kv heads over tensor, as KV_CACHE_AXES and fsdp_tp say.
    assert tuple(out.cache.k.sharding.spec)[:4] == (None, ("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.tokens), want_gen)


# ------------------------------------------------------------------------------------------------ config, errors

def test_qwen2_7b_config_maps_to_preset():
    hf = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 3584,
          "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
          "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
          "use_sliding_window": False, "vocab_size": 152064, "max_window_layers": 28, "rope_scaling": None}
    assert qwen2.config_from_hf(hf) == qwen2.QWEN2_7B
    with pytest.raises(ConfigError, match="sliding"):
        qwen2.config_from_hf({**hf, "use_sliding_window": True})
    with pytest.raises(ConfigError, match="yarn"):
        qwen2.config_from_hf({**hf, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ConfigError, match="llama"):
        qwen2.config_from_hf({**hf, "model_type": "llama"})


def test_mismatched_checkpoint_and_missing_tokenizer_fail_clearly(qwen2_untied, tmp_path):
    d, _ = qwen2_untied
    from avatarjax.checkpoint.convert import read_safetensors

    tensors = read_safetensors(d)
    cfg = qwen2.config_from_hf({**json.loads((d / "config.json").read_text()), "num_hidden_layers": 1})
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        qwen2.map_weights(tensors, cfg)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        qwen2.load_tokenizer(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        qwen2.load_tokenizer(tmp_path / "nope")


def test_tokenizer_helpers(tmp_path):
    """A small word-level tokenizer written locally: load it, encode right-padded (plain and chat), decode."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<|im_end|>", "hello", "there", "avatar", "user", "assistant", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
                          "{% if add_generation_prompt %}assistant :{% endif %}")
    fast.save_pretrained(tmp_path)
    loaded = qwen2.load_tokenizer(tmp_path)
    ids, mask = qwen2.encode_prompts(loaded, ["hello there avatar", "hello"], chat=False, pad_to_multiple=4)
    np.testing.assert_array_equal(ids, [[2, 3, 4, 0], [2, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    ids, mask = qwen2.encode_prompts(loaded, ["hello"], pad_to_multiple=1)
    np.testing.assert_array_equal(ids, [[5, 7, 2, 1, 6, 7]])
    assert qwen2.decode_generated(loaded, np.array([[3, 4, 1, 0]]), np.array([3])) == ["there avatar"]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))
    assert qwen2.eos_token_ids(tmp_path) == [1, 7]
