"""CLIP text tower and BERT/MiniLM against transformers (and sentence-transformers): conversion, padding, bf16,
sharding over 8 fake devices, the packaged MiniLM weights, tokenizers and ``avatarjax convert``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from avatarjax.checkpoint.convert import convert, from_pretrained, load_converted, read_safetensors
from avatarjax.config import MeshConfig
from avatarjax.encoders import bert, clip_text, text
from avatarjax.errors import CheckpointError
from avatarjax.parallel import rules as rules_lib
from avatarjax.parallel.mesh import make_mesh, shard_batch

FP32_TOL = 1e-4
BF16_TOL = 5e-2


# ------------------------------------------------------------------------------------------- tiny checkpoints

def _byte_chars() -> list[str]:
    """CLIP's byte -> unicode table (the 256 base symbols of its BPE vocabulary)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


MERGES = [("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"), ("c", "a"), ("ca", "t</w>")]


def _write_clip_tokenizer(directory) -> int:
    """A tiny real CLIP BPE tokenizer (vocab.json + merges.txt); returns its vocabulary size."""
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return len(vocab)


def _clip_checkpoint(directory, eos_token_id: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    directory.mkdir(parents=True)
    vocab = _write_clip_tokenizer(directory)  # 520 tokens: ... 518 <|startoftext|>, 519 <|endoftext|>
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_dim=48,
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1 if eos_token_id is None else eos_token_id,
                         pad_token_id=vocab - 1)
    model = CLIPTextModelWithProjection(cfg).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip") / "hf"
    return directory, _clip_checkpoint(directory)


@pytest.fixture(scope="module")
def clip_legacy_dir(tmp_path_factory):
    """eos_token_id == 2: transformers pools at the highest token id (the original OpenAI configs)."""
    directory = tmp_path_factory.mktemp("clip_legacy") / "hf"
    return directory, _clip_checkpoint(directory, eos_token_id=2)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("bert") / "hf"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=32, type_vocab_size=2)
    model = BertModel(cfg).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


def _clip_inputs(batch: int = 8, length: int = 16, vocab: int = 520):
    """Right-padded rows of varied lengths (BOS ... EOS, pad = EOS) and one left-padded row."""
    rng = np.random.default_rng(0)
    ids = np.full((batch, length), vocab - 1, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i, n in enumerate(rng.integers(3, length + 1, batch)):
        ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = vocab - 2, rng.integers(0, vocab - 2, n - 2), vocab - 1
        mask[i, :n] = 1
    n = 9  # left padding: 7 pads, then BOS ... EOS
    ids[-1] = vocab - 1
    ids[-1, length - n], ids[-1, length - n + 1:length - 1] = vocab - 2, rng.integers(0, vocab - 2, n - 2)
    mask[-1] = 0
    mask[-1, length - n:] = 1
    return ids, mask


def _bert_inputs(batch: int = 8, length: int = 16, vocab: int = 500):
    rng = np.random.default_rng(1)
    ids = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), np.int32)
    types = np.zeros((batch, length), np.int32)
    for i, n in enumerate(rng.integers(3, length + 1, batch)):
        ids[i, :n] = rng.integers(1, vocab, n)
        mask[i, :n] = 1
        types[i, n // 2:n] = 1  # a sentence pair
    return ids, mask, types


def _torch(*arrays):
    return [torch.from_numpy(np.asarray(a, np.int64)) for a in arrays]


def _clip_reference(model, ids, mask):
    with torch.inference_mode():
        out = model(*_torch(ids, mask))
        pooled = model.text_model(*_torch(ids, mask)).pooler_output
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooled": pooled.numpy(),
            "projected": out.text_embeds.numpy()}


def _bert_reference(model, ids, mask, types):
    with torch.inference_mode():
        out = model(*_torch(ids, mask, types))
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy()}


def _assert_spec(array, mesh, *spec):
    """The array is sharded as ``spec`` over ``mesh`` (trailing replicated dims may be left out of its spec)."""
    want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    assert array.sharding.is_equivalent_to(want, array.ndim), (array.sharding, want)


def _max_errors(ours, reference) -> dict[str, float]:
    return {k: float(np.max(np.abs(np.asarray(getattr(ours, k), np.float32) - v))) for k, v in reference.items()}


# --------------------------------------------------------------------------------------------------- CLIP

@pytest.mark.parametrize("which", ["clip_dir", "clip_legacy_dir"])
def test_clip_fp32_parity_from_pretrained_and_converted(which, request, tmp_path):
    directory, ref = request.getfixturevalue(which)
    ids, mask = _clip_inputs()
    want = _clip_reference(ref, ids, mask)
    model, cfg = from_pretrained(clip_text.CONVERTER, directory)
    assert cfg.eos_token_id == (2 if which == "clip_legacy_dir" else 519) and cfg.projection_dim == 48
    got = text.jit_forward(model)(jnp.asarray(ids), jnp.asarray(mask))
    assert got.last_hidden_state.shape == (8, 16, 64) and got.pooled.shape == (8, 64) and got.projected.shape == (8, 48)
    errors = _max_errors(got, want)
    print(f"CLIP ({which}) fp32 max abs error: {errors}")
    assert max(errors.values()) <= FP32_TOL, errors

    out = convert(clip_text.CONVERTER, directory, tmp_path / "orbax")
    loaded, loaded_cfg, name = load_converted(out)
    assert name == "clip_text" and loaded_cfg == cfg
    errors = _max_errors(loaded(jnp.asarray(ids), jnp.asarray(mask)), want)
    assert max(errors.values()) <= FP32_TOL, errors


def test_clip_bf16_error(clip_dir):
    directory, ref = clip_dir
    ids, mask = _clip_inputs()
    model, _ = from_pretrained(clip_text.CONVERTER, directory, dtype=jnp.bfloat16)
    errors = _max_errors(text.jit_forward(model)(jnp.asarray(ids), jnp.asarray(mask)), _clip_reference(ref, ids, mask))
    print(f"CLIP bf16 compute max abs error: {errors}")
    assert max(errors.values()) < BF16_TOL, errors


def test_clip_sharded_equals_single_device(clip_dir):
    directory, _ = clip_dir
    ids, mask = _clip_inputs()
    single, _ = from_pretrained(clip_text.CONVERTER, directory)
    want = text.jit_forward(single)(jnp.asarray(ids), jnp.asarray(mask))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    rules = rules_lib.resolve("fsdp_tp")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        model, _ = from_pretrained(clip_text.CONVERTER, directory)
        _assert_spec(model.layers.attn.q_proj.kernel[...], mesh, None, "fsdp", "tensor", None)
        _assert_spec(model.layers.mlp.fc1.kernel[...], mesh, None, "fsdp", "tensor")
        _assert_spec(model.token_embed.embedding[...], mesh, "tensor", "fsdp")
        _assert_spec(model.position_embed[...], mesh, None, "fsdp")
        batch = shard_batch({"ids": ids, "mask": mask}, mesh, rules)
        got = text.jit_forward(model)(batch["ids"], batch["mask"])
        got = jax.device_get(got)
    for name in ("last_hidden_state", "pooled", "projected"):
        np.testing.assert_allclose(getattr(got, name), np.asarray(getattr(want, name)), atol=1e-5, rtol=0)


def test_clip_tokenizer_end_to_end(clip_dir, tmp_path):
    directory, ref = clip_dir
    tokenizer = clip_text.load_tokenizer(directory)
    texts = ["a photo of a cat", "A cat!", "photo"]
    ids, mask = clip_text.tokenize(tokenizer, texts, max_length=16)
    assert ids.shape == mask.shape == (3, 16) and ids.dtype == mask.dtype == np.int32
    hf = tokenizer(texts, padding="max_length", max_length=16, truncation=True)
    np.testing.assert_array_equal(ids, hf["input_ids"])
    np.testing.assert_array_equal(mask, hf["attention_mask"])
    assert ids[0, 0] == 518 and ids[0, 7] == 519  # BOS, a photo of a cat, EOS
    model, _ = from_pretrained(clip_text.CONVERTER, directory)
    errors = _max_errors(model(jnp.asarray(ids), jnp.asarray(mask)), _clip_reference(ref, ids, mask))
    assert max(errors.values()) <= FP32_TOL, errors

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"lacks merges\.txt.*vocab\.json and merges\.txt"):
        clip_text.load_tokenizer(tmp_path / "tok")
    with pytest.raises(CheckpointError, match=r"does not exist.*vocab\.json and merges\.txt"):
        clip_text.load_tokenizer(tmp_path / "nowhere")


def test_clip_config_from_hf_and_defaults():
    cfg = clip_text.ClipTextConfig()
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.max_length, cfg.activation) == \
        (768, 12, 12, 3072, 77, "quick_gelu")
    # A full CLIPModel config.json (ViT-L/14 layout): the text tower, the top-level projection_dim.
    full = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 768,
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                            "num_hidden_layers": 12, "projection_dim": 768, "eos_token_id": 2},
            "vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "patch_size": 14}}
    assert clip_text.ClipTextConfig.from_hf(full) == cfg
    bare = clip_text.ClipTextConfig.from_hf({"architectures": ["CLIPTextModel"], "hidden_size": 32,
                                             "num_attention_heads": 4, "model_type": "clip_text_model"})
    assert bare.projection_dim == 0 and bare.eos_token_id == 49407 and bare.vocab_size == 49408


def test_every_param_has_logical_axes():
    for module, cfg in ((clip_text, clip_text.ClipTextConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4,
                                                             mlp_dim=64, max_length=8, projection_dim=16)),
                        (bert, bert.BertEncoderConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                                                      max_positions=8))):
        model = module.build(cfg, nnx.Rngs(0))
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = var.get_metadata().get("out_sharding")
            assert axes is not None and len(axes) == var.ndim, (path, axes)
            assert all(a is None or a in rules_lib.LOGICAL_AXES for a in axes), (path, axes)
            if path[0] == "layers":
                assert axes[0] == "layers", (path, axes)


def test_cli_convert_clip_text(clip_dir, tmp_path, capsys):
    from avatarjax.cli import main

    directory, _ = clip_dir
    out = tmp_path / "converted"
    assert main(["convert", "clip_text", "--from", str(directory), "--to", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converter"] == "clip_text" and report["params"] > 0
    model, cfg, name = load_converted(out)
    assert name == "clip_text" and cfg.dim == 64

    assert main(["convert", "clip_text", "--from", str(tmp_path / "missing"), "--to", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "config.json" in err and "model.safetensors" in err


# --------------------------------------------------------------------------------------------------- BERT

def test_bert_fp32_parity_from_pretrained_and_converted(bert_dir, tmp_path):
    directory, ref = bert_dir
    ids, mask, types = _bert_inputs()
    mask[3] = 0  # an all-padding row: SDPA gives its queries a zero attention output, so do we
    want = _bert_reference(ref, ids, mask, types)
    model, cfg = from_pretrained(bert.CONVERTER, directory)
    assert cfg.pooler and cfg.activation == "gelu"
    got = text.jit_forward(model)(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    errors = _max_errors(got, want)
    print(f"BERT fp32 max abs error: {errors}")
    assert max(errors.values()) <= FP32_TOL, errors

    loaded, loaded_cfg, name = load_converted(convert(bert.CONVERTER, directory, tmp_path / "orbax"))
    assert name == "bert" and loaded_cfg == cfg
    errors = _max_errors(loaded(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)), want)
    assert max(errors.values()) <= FP32_TOL, errors

    model16, _ = from_pretrained(bert.CONVERTER, directory, dtype=jnp.bfloat16)
    errors16 = _max_errors(text.jit_forward(model16)(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)), want)
    print(f"BERT bf16 compute max abs error: {errors16}")
    assert max(errors16.values()) < BF16_TOL, errors16


def test_bert_sharded_equals_single_device(bert_dir):
    directory, _ = bert_dir
    ids, mask, types = _bert_inputs()
    single, _ = from_pretrained(bert.CONVERTER, directory)
    want = text.jit_forward(single)(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    rules = rules_lib.resolve("fsdp_tp")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        model, _ = from_pretrained(bert.CONVERTER, directory)
        _assert_spec(model.layers.attn.o_proj.kernel[...], mesh, None, "tensor", None, "fsdp")
        batch = shard_batch({"ids": ids, "mask": mask, "types": types}, mesh, rules)
        got = jax.device_get(text.jit_forward(model)(batch["ids"], batch["mask"], batch["types"]))
    for name in ("last_hidden_state", "pooled"):
        np.testing.assert_allclose(getattr(got, name), np.asarray(getattr(want, name)), atol=1e-5, rtol=0)


SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar on stage.",
    "The central bank raised interest rates again.",
    "Inflation pushed the bank to increase borrowing costs.",
    "A cat sleeps on the windowsill in the sun.",
    "",
]


def test_minilm_real_weights_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    encoder = bert.default_text_encoder()
    assert encoder is bert.default_text_encoder()  # loaded once per process
    assert isinstance(encoder, text.TextEncoder) and encoder.dim == 384
    ours = encoder.encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    reference = SentenceTransformer(str(bert.default_model_dir()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    cosine = np.sum(ours * reference, -1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(reference, axis=-1)
    print(f"MiniLM vs sentence-transformers: min cosine {cosine.min():.7f}, "
          f"max abs error {np.abs(ours - reference).max():.2e}")
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    sim = ours @ ours.T
    assert sim[0, 1] > max(sim[0, 2], sim[0, 3], sim[0, 4])  # guitar ~ guitar
    assert sim[2, 3] > max(sim[2, 0], sim[2, 1], sim[2, 4])  # interest rates ~ borrowing costs
    # Batch composition and bucketed padding do not change an embedding; tokenize + embed is the same path.
    one = encoder.encode([SENTENCES[0]])
    np.testing.assert_allclose(one[0], ours[0], atol=1e-5)
    ids, mask = bert.tokenize([SENTENCES[0]], max_length=16)
    assert ids.shape == mask.shape == (1, 16) and ids.dtype == mask.dtype == np.int32
    assert ids[0, 0] == 101 and mask[0].sum() == 9 and ids[0, 8] == 102  # [CLS] a man is playing a guitar . [SEP]
    np.testing.assert_allclose(np.asarray(encoder.embed(ids, mask)), one, atol=1e-6)


def test_bert_errors(bert_dir, tmp_path):
    directory, _ = bert_dir
    with pytest.raises(CheckpointError, match=r"does not exist.*vocab\.txt"):
        bert.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(bert.CONVERTER, tmp_path / "nowhere")
    tensors = {k: v for k, v in read_safetensors(directory).items() if "layer.1.output.dense" not in k}
    cfg = bert.BertEncoderConfig.from_hf(json.loads((directory / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=r"no tensor 'encoder\.layer\.1\.output\.dense\.weight'"):
        bert.map_weights(tensors, cfg)
