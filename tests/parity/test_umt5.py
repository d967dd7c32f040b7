"""umT5 encoder parity with transformers' UMT5EncoderModel (tiny random checkpoint written with save_pretrained)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

from avatarjax.checkpoint.convert import convert, from_pretrained, load_converted, read_safetensors
from avatarjax.config import MeshConfig
from avatarjax.encoders import umt5
from avatarjax.errors import CheckpointError
from avatarjax.parallel.mesh import make_mesh
from avatarjax.parallel.rules import resolve

LENGTHS = (40, 25, 3, 1)  # a padded batch (right padding, as the tokenizer pads)
SEQ = 40


def _hf_config(**kw):
    from transformers import UMT5Config

    base = dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_heads=4,
                relative_attention_num_buckets=16, relative_attention_max_distance=20, dropout_rate=0.0)
    return UMT5Config(**{**base, **kw})


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(reference torch model, its save_pretrained directory); norms and bias tables randomised too."""
    from transformers import UMT5EncoderModel

    torch.manual_seed(0)
    model = UMT5EncoderModel(_hf_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    path = tmp_path_factory.mktemp("umt5_hf")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    mask = (np.arange(SEQ)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = np.where(mask > 0, rng.integers(1, 128, size=(len(LENGTHS), SEQ)), 0)
    return ids, mask


def _reference(model, ids, mask) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def ref_out(hf, batch):
    return _reference(hf[0], *batch)


@pytest.fixture(scope="module")
def ours(hf):
    return from_pretrained(umt5.CONVERTER, hf[1])


@pytest.fixture(scope="module")
def ours_out(ours, batch):
    return np.asarray(umt5.jit_encoder(ours[0])(jnp.asarray(batch[0]), jnp.asarray(batch[1])))


def test_fp32_matches_hf(ours, ours_out, ref_out):
    cfg = ours[1]
    assert cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act
    out = ours_out
    err = np.abs(out - ref_out).max()
    print(f"umt5 fp32 max abs diff {err:.2e} (output max {np.abs(ref_out).max():.2f})")
    assert out.shape == ref_out.shape and out.dtype == np.float32
    assert err <= 1e-4


def test_convert_and_load_converted(hf, ours, batch, tmp_path):
    out_dir = convert(umt5.CONVERTER, hf[1], tmp_path / "orbax")
    model, cfg, name = load_converted(out_dir)
    assert name == "umt5" and cfg == ours[1]
    ids, mask = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(ours[0](ids, mask)))


def test_bf16_error(hf, batch, ref_out):
    model, _ = from_pretrained(umt5.CONVERTER, hf[1], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    out = umt5.jit_encoder(model)(jnp.asarray(batch[0]), jnp.asarray(batch[1]))
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref_out).max()
    print(f"umt5 bf16 (params and compute) max abs diff vs HF fp32 {err:.3e} "
          f"(output max {np.abs(ref_out).max():.2f})")
    assert err <= 0.05 * np.abs(ref_out).max()


def test_shared_embedding_under_either_name(hf):
    tensors = read_safetensors(hf[1])
    cfg = umt5.UMT5EncoderConfig.from_hf(hf[0].config.to_dict())
    renamed = dict(tensors)
    renamed["encoder.embed_tokens.weight"] = renamed.pop("shared.weight")
    a, b = umt5.map_weights(tensors, cfg), umt5.map_weights(renamed, cfg)
    np.testing.assert_array_equal(a["embed/embedding"], b["embed/embedding"])
    # A T5-style checkpoint (relative bias in layer 0 only) is refused with a reason.
    t5_like = {k: v for k, v in tensors.items() if not ("relative_attention_bias" in k and ".block.0." not in k)}
    with pytest.raises(CheckpointError, match="T5"):
        umt5.map_weights(t5_like, cfg)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (64, 256), (8, 16)])
def test_relative_buckets_match_hf(num_buckets, max_distance):
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    attn = UMT5Attention(_hf_config(relative_attention_num_buckets=num_buckets,
                                    relative_attention_max_distance=max_distance), has_relative_attention_bias=True)
    rel = np.arange(-3000, 3001)
    expected = attn._relative_position_bucket(torch.from_numpy(rel)).numpy()
    got = umt5.relative_position_bucket(rel, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0 and got.max() == num_buckets - 1


def _spec(param) -> P:
    """The parameter's PartitionSpec without trailing replicated dims."""
    spec = list(param[...].sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def test_sharded_forward_equals_single_device(hf, ours_out, batch):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    ids, mask = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(resolve("fsdp_tp")):
        model, _ = from_pretrained(umt5.CONVERTER, hf[1])
        assert _spec(model.layers.rel_bias) == P(None, None, "tensor")  # [layers, buckets, heads]
        assert _spec(model.layers.attn.q_proj.kernel) == P(None, "fsdp", "tensor")
        assert _spec(model.layers.mlp.down.kernel) == P(None, "tensor", "fsdp")
        assert _spec(model.embed.embedding) == P("tensor", "fsdp")
        out = umt5.jit_encoder(model)(ids, mask)
        assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), ours_out, atol=1e-5, rtol=0)


def test_encode_for_wan_pads_to_512_and_zeroes(hf, ours, batch):
    model, cfg = ours
    ids, mask = batch
    out = np.asarray(umt5.jit_encoder(model, wan=True)(jnp.asarray(ids), jnp.asarray(mask)))
    assert out.shape == (len(LENGTHS), umt5.WAN_TEXT_LEN, cfg.d_model)
    # Wan's recipe with the reference: encode the 512-token padded prompts, keep u[:len], zero-pad back to 512.
    pad = umt5.WAN_TEXT_LEN - SEQ
    ref = _reference(hf[0], np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad))))
    for row, n in enumerate(LENGTHS):
        ref[row, n:] = 0.0
        assert not out[row, n:].any() and np.abs(out[row, :n]).min() > 0
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    # Longer inputs are cut to 512 (ids and mask alike).
    long_ids = np.arange(2 * 520, dtype=np.int32).reshape(2, 520)
    cut_ids, cut_mask = umt5.pad_or_truncate(long_ids, np.ones_like(long_ids), umt5.WAN_TEXT_LEN)
    np.testing.assert_array_equal(np.asarray(cut_ids), long_ids[:, :umt5.WAN_TEXT_LEN])
    assert cut_mask.shape == (2, umt5.WAN_TEXT_LEN) and np.asarray(cut_mask).all()


def test_tokenizer_helper(tmp_path):
    from transformers import T5Tokenizer

    words = ["▁face", "▁eye", "▁smile", "▁talk", "▁the", "▁a"] + list("▁abcdefghijklmnopqrstuvwxyz")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -float(i)) for i, w in enumerate(words)]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(tmp_path)
    tok = umt5.load_tokenizer(tmp_path)
    ids, mask = umt5.tokenize_for_wan(tok, ["the  face &amp; eye", "a" * 600])
    assert ids.shape == mask.shape == (2, umt5.WAN_TEXT_LEN) and ids.dtype == np.int32
    n = int(mask[0].sum())
    assert ids[0, n - 1] == tok.eos_token_id and not ids[0, n:].any() and mask[1].all()


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist.*config\.json.*model\.safetensors"):
        from_pretrained(umt5.CONVERTER, tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"does not exist.*spiece\.model or tokenizer\.json"):
        umt5.load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"neither spiece\.model nor tokenizer\.json"):
        umt5.load_tokenizer(tmp_path / "empty")


def test_xxl_preset_from_hf_config():
    from transformers import UMT5Config

    hf_cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu")
    assert umt5.UMT5EncoderConfig.from_hf(hf_cfg.to_dict()) == umt5.UMT5_XXL
    abstract = nnx.eval_shape(lambda: umt5.build(umt5.UMT5_XXL, nnx.Rngs(0)))
    shapes = {k: tuple(v.shape) for k, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert shapes[("layers", "rel_bias")] == (24, 32, 64)
    assert shapes[("layers", "mlp", "gate", "kernel")] == (24, 4096, 10240)
    assert shapes[("embed", "embedding")] == (256384, 4096)
