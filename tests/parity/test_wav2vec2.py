"""wav2vec2 parity with transformers' Wav2Vec2Model on tiny random checkpoints (both variants), conversion paths,
bf16, the sharded forward on 8 fake devices, and input normalisation vs Wav2Vec2FeatureExtractor."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Wav2Vec2Config as HFConfig
from transformers import Wav2Vec2FeatureExtractor
from transformers import Wav2Vec2Model as HFModel

from avatarjax.checkpoint.convert import convert, load_converted, read_safetensors
from avatarjax.config import MeshConfig
from avatarjax.encoders import wav2vec2 as w2v
from avatarjax.errors import CheckpointError, ConfigError, DataError
from avatarjax.parallel import rules as rules_lib
from avatarjax.parallel.mesh import make_mesh

# base-like: group norm on the first conv, no conv bias, post-LN, even positional kernel (trimmed 'same' pad);
# large-like (XLSR-53): layer norm on every conv, conv bias, stable layer norm, odd positional kernel.
VARIANTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_conv_pos_embeddings=16),
    "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=15),
}
LENGTHS = (8000, 5600, 3000, 401)  # 0.5 s .. one frame: a padded batch of 4 (divides data x fsdp = 4)
FP32_TOL = 1e-4


def _hf_config(variant: str) -> HFConfig:
    return HFConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                    conv_dim=(16, 16, 16, 16, 16, 16, 24), num_conv_pos_embedding_groups=4, **VARIANTS[variant])


def _inputs():
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(n) * 0.3 + np.sin(np.arange(n) / 7.0)).astype(np.float32) for n in LENGTHS]
    return w2v.prepare_audio(clips, w2v.SAMPLE_RATE)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Per variant: (HF checkpoint dir, HF outputs for the padded batch, inputs)."""
    values, mask = _inputs()
    out = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = HFModel(_hf_config(variant)).eval()
        with torch.no_grad():  # non-trivial norm / bias params (the init sets them to 1 / 0)
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)
        path = tmp_path_factory.mktemp(variant)
        model.save_pretrained(path, safe_serialization=True)
        with torch.no_grad():
            ref = model(torch.from_numpy(values), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
        hf_mask = model._get_feature_vector_attention_mask(ref.last_hidden_state.shape[1], torch.from_numpy(mask))
        out[variant] = (path, ref, hf_mask.numpy(), values, mask)
    return out


def _forward(model):
    graphdef = nnx.graphdef(model)
    fn = jax.jit(lambda state, x, m: nnx.merge(graphdef, state)(x, m, output_hidden_states=True))
    return lambda state, x, m: fn(state, jnp.asarray(x), jnp.asarray(m))


def _max_errors(ours, ref) -> dict[str, float]:
    def err(a, b):
        return float(np.abs(np.asarray(a, np.float32) - b.numpy()).max())

    errs = {"extract_features": err(ours.extract_features, ref.extract_features),
            "last_hidden_state": err(ours.last_hidden_state, ref.last_hidden_state)}
    assert ours.hidden_states.shape[0] == len(ref.hidden_states)
    for i, h in enumerate(ref.hidden_states):
        errs[f"hidden_states[{i}]"] = err(ours.hidden_states[i], h)
    return errs


@pytest.fixture(scope="module")
def ours(ckpt):
    """Per variant, built once: (model from from_pretrained, config, jitted forward, its fp32 output)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            path, _, _, values, mask = ckpt[variant]
            model, cfg = w2v.from_pretrained(path)
            forward = _forward(model)
            cache[variant] = (model, cfg, forward, forward(nnx.state(model), values, mask))
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_fp32_from_pretrained_and_converted(ckpt, ours, variant, tmp_path):
    path, ref, hf_mask, values, mask = ckpt[variant]
    model, cfg, forward, out = ours(variant)
    assert cfg.do_stable_layer_norm == (variant == "large")
    assert cfg.feat_extract_norm == VARIANTS[variant]["feat_extract_norm"]
    errs = _max_errors(out, ref)
    print(f"\n{variant} fp32 max abs error:", errs)
    assert max(errs.values()) <= FP32_TOL, errs
    np.testing.assert_array_equal(np.asarray(out.frame_mask), hf_mask.astype(bool))
    assert len(ref.hidden_states) == cfg.num_layers + 1

    # convert() + load_converted(): the same parameters, so the same outputs through the same executable.
    out_dir = convert(w2v.CONVERTER, path, tmp_path / "converted")
    loaded, loaded_cfg, name = load_converted(out_dir)
    assert name == "wav2vec2" and loaded_cfg == cfg
    again = forward(nnx.state(loaded), values, mask)
    assert max(_max_errors(again, ref).values()) <= FP32_TOL
    np.testing.assert_array_equal(np.asarray(again.last_hidden_state), np.asarray(out.last_hidden_state))


def test_bf16_error_and_no_hidden_states(ckpt):
    path, ref, _, values, mask = ckpt["large"]
    model, _ = w2v.from_pretrained(path, dtype=jnp.bfloat16)
    ours = _forward(model)(nnx.state(model), values, mask)
    errs = _max_errors(ours, ref)
    scale = float(np.abs(ref.last_hidden_state.numpy()).max())
    print(f"\nlarge bf16 compute (fp32 params) max abs error: {max(errs.values()):.3g} (output max |x| {scale:.3g}):",
          errs)
    assert ours.last_hidden_state.dtype == jnp.bfloat16
    assert max(errs.values()) <= 0.1 * max(scale, 1.0)

    graphdef, state = nnx.split(model)
    plain = jax.eval_shape(lambda s, x, m: nnx.merge(graphdef, s)(x, m), state, values, mask)
    assert plain.hidden_states is None and plain.last_hidden_state.shape == ref.last_hidden_state.shape


def test_sharded_forward_equals_single_device(ckpt, ours):
    path, _, _, values, mask = ckpt["large"]
    expected = ours("large")[3]

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_lib.resolve("fsdp_tp")):
        model, _ = w2v.from_pretrained(path)
        fc1 = model.encoder.layers.feed_forward.fc1.kernel[...]
        assert tuple(fc1.sharding.spec) == (None, "fsdp", "tensor")  # layers, embed, mlp
        q = model.encoder.layers.attention.q_proj.kernel[...]
        assert tuple(q.sharding.spec)[:3] == (None, "fsdp", "tensor")  # layers, embed, heads, head_dim
        batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        x, m = jax.device_put(values, batch), jax.device_put(mask, batch)
        got = w2v.jit_forward(model, output_hidden_states=True)(x, m)
        assert len(got.last_hidden_state.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_frame_mask_matches_transformers(ours):
    model, cfg, _, _ = ours("base")
    hf = HFModel(_hf_config("base"))
    length = 8000
    rows = [0, 10, 399, 400, 401, 719, 720, 5600, 8000]  # 0..399 samples give no frame: transformers marks all
    mask = np.zeros((len(rows), length), np.int64)
    for i, n in enumerate(rows):
        mask[i, :n] = 1
    frames = cfg.num_frames(length)
    expected = hf._get_feature_vector_attention_mask(frames, torch.from_numpy(mask)).numpy().astype(bool)
    np.testing.assert_array_equal(np.asarray(model.frame_mask(jnp.asarray(mask), frames)), expected)
    assert cfg.hop_length == 320 and cfg.receptive_field == 400 and frames == 24


def test_pos_conv_fft_equals_conv():
    cfg = w2v.Wav2Vec2Config(hidden_size=64, num_heads=4, num_layers=1, num_conv_pos_embeddings=16)
    with nnx.use_eager_sharding(False):
        conv = w2v.PositionalConvEmbedding(cfg, rngs=nnx.Rngs(0))
        fft = w2v.PositionalConvEmbedding(dataclasses.replace(cfg, pos_conv_impl="fft"), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 37, 64))
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(fft, x)),
                               np.asarray(nnx.jit(lambda m, x: m(x))(conv, x)), atol=2e-5)


def test_remat_gradients_match(ours):
    """The scanned Transformer under remat='full' gives the same gradients (through every hidden state and a
    padding mask) as without remat."""
    model, cfg, _, _ = ours("large")
    state = nnx.state(model.encoder)
    h = jax.random.normal(jax.random.key(0), (2, 12, cfg.hidden_size))
    mask = jnp.arange(12)[None, :] < jnp.array([[12], [7]])
    grads = []
    for remat in ("none", "full"):
        with nnx.use_eager_sharding(False):
            graphdef = nnx.graphdef(nnx.eval_shape(
                lambda: w2v.Encoder(dataclasses.replace(cfg, remat=remat), rngs=nnx.Rngs(0))))

        def loss(state):
            last, states = nnx.merge(graphdef, state)(h, mask, output_hidden_states=True)
            return jnp.mean(states ** 2) + jnp.mean(last)

        grads.append(jax.jit(jax.grad(loss))(state))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    assert float(jnp.abs(grads[0]["layers"]["feed_forward"]["fc1"]["kernel"][...]).sum()) > 0


def test_weight_norm_storage_and_prefixes(ckpt):
    """Legacy weight_g/weight_v, a plain folded weight and a 'wav2vec2.' prefix (ForCTC / ForPreTraining, with
    their heads) all give the same parameters."""
    path, _, _, _, _ = ckpt["base"]
    tensors = read_safetensors(path)
    cfg = w2v.Wav2Vec2Config.from_hf(_hf_config("base").to_dict())
    reference = w2v.map_weights(tensors, cfg)
    pos = "encoder.pos_conv_embed.conv."
    g, v = tensors[pos + "parametrizations.weight.original0"], tensors[pos + "parametrizations.weight.original1"]
    rest = {k: t for k, t in tensors.items() if not k.startswith(pos + "parametrizations")}
    legacy = {f"wav2vec2.{k}": t for k, t in rest.items()}
    legacy.update({f"wav2vec2.{pos}weight_g": g, f"wav2vec2.{pos}weight_v": v, "lm_head.weight": np.zeros((5, 32)),
                   "quantizer.codevectors": np.zeros((1, 4, 8))})
    got = w2v.map_weights(legacy, cfg)
    assert got.keys() == reference.keys()
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k])
    folded = dict(rest)
    folded[pos + "weight"] = g * v / np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=(0, 1), keepdims=True))
    plain = w2v.map_weights(folded, cfg)

    def effective(p):
        v, g = p["encoder/pos_conv_embed/weight_v"], p["encoder/pos_conv_embed/weight_g"]
        return v * (g / np.sqrt(np.sum(v ** 2, axis=(1, 2))))[:, None, None]

    np.testing.assert_allclose(effective(plain), effective(reference), rtol=1e-5, atol=1e-7)


def test_prepare_audio_matches_feature_extractor():
    rng = np.random.default_rng(3)
    clips = [(rng.standard_normal(n) * s + 0.2).astype(np.float32) for n, s in ((4000, 0.5), (2500, 2.0), (900, 0.1))]
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    ref = fe(clips, sampling_rate=16000, padding=True, return_tensors="np")
    values, mask = w2v.prepare_audio(clips, 16000)
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    np.testing.assert_allclose(values, ref["input_values"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(w2v.normalize(ref["input_values"] * 3 + 1, ref["attention_mask"]), ref["input_values"],
                               atol=2e-5)
    one = fe(clips[0], sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(w2v.prepare_audio(clips[0], 16000)[0], one, atol=1e-6, rtol=0)

    # 8 kHz stereo is made mono and resampled to 16 kHz before normalising; fixed shapes with pad_to_multiple_of.
    stereo = np.stack([clips[0], clips[0]], axis=1)[:2000]
    values, mask = w2v.prepare_audio([stereo], 8000, pad_to_multiple_of=320)
    assert values.shape == (1, 4160) and mask.sum() == 4000
    from avatarjax.data.transforms import resample_audio

    expected = fe(resample_audio(stereo, 8000), sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(values[0, :4000], expected, atol=1e-6, rtol=0)
    assert not values[0, 4000:].any()

    with pytest.raises(DataError, match="fewer than the 400"):
        w2v.prepare_audio([clips[0], clips[0][:300]], 16000)
    with pytest.raises(DataError, match="pass a batch as a list"):
        w2v.prepare_audio(np.zeros((2, 4000), np.float32), 16000)


def test_missing_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError) as err:
        w2v.from_pretrained(tmp_path / "nowhere")
    msg = str(err.value)
    assert "does not exist" in msg and "config.json" in msg and "facebook/wav2vec2-large-xlsr-53" in msg


def test_config_from_hf_and_presets():
    xlsr = HFConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True).to_dict()
    assert w2v.Wav2Vec2Config.from_hf(xlsr) == w2v.PRESETS["xlsr53_large"]
    assert w2v.Wav2Vec2Config.from_hf(HFConfig().to_dict()) == w2v.PRESETS["base"]
    with pytest.raises(ConfigError, match="adapter"):
        w2v.Wav2Vec2Config.from_hf({**xlsr, "adapter_attn_dim": 16})
