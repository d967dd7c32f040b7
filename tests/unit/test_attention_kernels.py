"""Attention kernels against the XLA reference (fp32, CPU), and the implementation choice / fallback rules.

The GPU (cuDNN) and TPU (splash) paths cannot run on CPU; their dispatch is checked with ``plan(..., backend=)``,
and the splash kernel itself runs through the Pallas interpreter.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.errors import ConfigError
from avatarjax.nn import attention_kernels as K
from avatarjax.nn.attention import Attention, attend, use_implementation

TOL = 1e-5


def _with_reference(fn, name, **options):
    """jit of ``x -> (fn(x) with the XLA reference, fn(x) under implementation name)``: the scope is read at trace
    time, so both are traced into one program (one compile)."""
    def both(*args):
        ref = fn(*args)
        with use_implementation(name, **options):
            return ref, fn(*args)
    return jax.jit(both)


def _qkv(b=2, tq=80, tk=80, h=4, kh=2, d=16, seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, tq, h, d)), dtype)
    k = jnp.asarray(r.normal(size=(b, tk, kh, d)), dtype)
    v = jnp.asarray(r.normal(size=(b, tk, kh, d)), dtype)
    return q, k, v


def _mask(shape, seed=1, p=0.3):
    return jnp.asarray(np.random.default_rng(seed).random(shape) > p)


CASES = {
    "causal": dict(causal=True),
    "key_padding_bias": dict(mask=jnp.arange(80)[None, None, None, :] < jnp.array([80, 50])[:, None, None, None],
                             bias=jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 80, 80)), jnp.float32)),
    "mask_causal": dict(mask=_mask((2, 1, 80, 80)), causal=True),
}


def test_chunked_matches_xla():
    """GQA (4 query heads on 2 kv heads), lengths not multiples of the blocks."""
    fn = lambda q, k, v: [attend(q, k, v, **kw) for kw in CASES.values()]
    refs, got = _with_reference(fn, "chunked", block_q=32, block_k=24)(*_qkv())
    for case, ref, out in zip(CASES, refs, got):
        diff = float(jnp.abs(out - ref).max())
        assert diff <= TOL, f"{case}: max abs diff {diff}"


def test_chunked_cross_attention_causal_and_fully_masked_rows():
    """q_len != kv_len (top-left causal like XLA), per-head mask, lengths not multiples of the blocks, and a row
    that sees no key at all (XLA averages every value; so does chunked)."""
    mask = np.array(_mask((1, 4, 37, 53), seed=4))
    mask[0, 1, 5, :] = False
    cases = (dict(causal=True), dict(mask=jnp.asarray(mask)))
    fn = lambda q, k, v: [attend(q, k, v, **kw) for kw in cases]
    refs, got = _with_reference(fn, "chunked", block_q=16, block_k=16)(*_qkv(b=1, tq=37, tk=53, h=4, kh=4, seed=3))
    for kw, ref, out in zip(cases, refs, got):
        diff = float(jnp.abs(out - ref).max())
        assert diff <= TOL, f"{list(kw)}: max abs diff {diff}"


def test_chunked_gradients_match_xla():
    q, k, v = _qkv(tq=48, tk=48)
    bias = jnp.asarray(np.random.default_rng(5).normal(size=(1, 4, 48, 48)), jnp.float32)
    mask = _mask((2, 1, 48, 48), seed=6)
    w = jnp.asarray(np.random.default_rng(7).normal(size=(2, 48, 4, 16)), jnp.float32)
    grad = jax.grad(lambda q, k, v, bias: jnp.sum(attend(q, k, v, causal=True, mask=mask, bias=bias) * w),
                    argnums=(0, 1, 2, 3))
    ref, got = _with_reference(grad, "chunked", block_q=16, block_k=16)(q, k, v, bias)
    for name, a, b in zip("qkvb", got, ref):
        diff = float(jnp.abs(a - b).max())
        assert diff <= TOL, f"d{name}: max abs diff {diff}"


def test_splash_kernel_through_the_pallas_interpreter():
    """The TPU kernel's plumbing (scale, GQA as per-kv-head MQA, causal mask, key padding as segment ids)."""
    q, k, v = _qkv(b=2, tq=128, tk=128, h=2, kh=1, d=8, seed=8)
    pad = jnp.arange(128)[None, None, None, :] < jnp.array([128, 90])[:, None, None, None]
    assert K.plan("splash", q, k, pad, backend="cpu", interpret=True) == ("splash", None)
    ref, out = _with_reference(lambda q, k, v: attend(q, k, v, causal=True, mask=pad), "splash", block_q=128,
                               block_k=128, interpret=True)(q, k, v)
    diff = float(jnp.abs(out - ref).max())
    assert diff <= 1e-4, f"splash (interpret) max abs diff {diff}"


def test_dispatch_rules_per_backend():
    q32, k32, _ = _qkv(tq=128, tk=128, d=64)
    q16, k16, _ = _qkv(tq=128, tk=128, d=64, dtype=jnp.bfloat16)
    assert K.plan("auto", q32, k32, backend="cpu") == ("xla", None)
    assert K.plan("auto", q16, k16, backend="gpu") == ("cudnn", None)
    name, why = K.plan("cudnn", q32, k32, backend="gpu")
    assert name == "xla" and "bfloat16" in why
    name, why = K.plan("cudnn", q16, k16, backend="cpu")
    assert name == "xla" and "GPU" in why
    assert K.plan("auto", q16, k16, backend="tpu") == ("splash", None)
    assert K.plan("pallas", q16, k16, backend="tpu") == ("splash", None)
    name, why = K.plan("splash", q16, k16, bias=jnp.zeros((1, 4, 128, 128)), backend="tpu")
    assert name == "xla" and "bias" in why
    name, why = K.plan("splash", q16, k16, mask=jnp.ones((2, 4, 128, 128), bool), backend="tpu")
    assert name == "xla" and "key-padding" in why
    name, why = K.plan("splash", *_qkv(tq=100, tk=100)[:2], backend="tpu")
    assert name == "xla" and "128" in why
    name, why = K.plan("ring", q32, k32, backend="cpu")  # no sequence axis: a one-device ring is chunked
    assert name == "chunked" and "mesh.sequence" in why
    name, why = K.plan("ulysses", q32, k32, backend="cpu")
    assert name == "xla" and "mesh.sequence" in why
    seq = K.Layout(batch=(), heads=(), sequence=4)
    name, why = K.plan("cudnn", q16, k16, backend="gpu", layout=seq)
    assert name == "xla" and "ring or ulysses" in why
    name, why = K.plan("ring", *_qkv(tq=90, tk=90)[:2], backend="cpu", layout=seq)
    assert name == "xla" and "divisible" in why


def test_fallback_is_logged_once_and_exact(caplog):
    q, k, v = _qkv()
    K._NOTED.clear()
    fn = lambda q, k, v: attend(q, k, v, causal=True)
    with caplog.at_level(logging.WARNING, logger=K.__name__):
        ref, out = _with_reference(fn, "cudnn")(q, k, v)
        _with_reference(fn, "cudnn").lower(q, k, v)  # traced again: no second note
    notes = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(notes) == 1 and "'cudnn' falls back to 'xla'" in notes[0], notes
    assert float(jnp.abs(out - ref).max()) == 0.0


def test_scope_overrides_the_module_choice_and_nests():
    assert K.active() is None
    with use_implementation("ring"):
        assert K.active().name == "ring"
        with use_implementation("model"):  # "model": no override
            assert K.active() is None
        assert K.active().name == "ring"
    assert K.active() is None
    with nnx.use_eager_sharding(False):
        # implementation="xla" by default; an "rbg" key compiles far faster than threefry on CPU
        attn = Attention(32, 4, num_kv_heads=2, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 40, 32)), jnp.float32)
    lowered = _with_reference(lambda x: attn(x, causal=True), "chunked", block_q=16, block_k=16).lower(x)
    assert "while" in lowered.as_text()  # the chunked kernel's loops, chosen at trace time
    ref, out = lowered.compile()(x)
    assert float(jnp.abs(out - ref).max()) <= TOL


def test_a_jitted_function_retraces_when_the_choice_changes():
    q, k, v = _qkv(tq=16, tk=16)
    f = jax.jit(lambda q, k, v: attend(q, k, v, causal=True))
    assert "while" not in f.lower(q, k, v).as_text()
    with use_implementation("chunked", block_q=8, block_k=8):
        assert "while" in f.lower(q, k, v).as_text()
    assert "while" not in f.lower(q, k, v).as_text()


@pytest.mark.parametrize("bad", ["flash", "Ring", "cudnn2"])
def test_bad_names_are_config_errors_naming_the_choices(bad):
    with pytest.raises(ConfigError, match="choose one of .*chunked.*ring.*ulysses"):
        with use_implementation(bad):
            pass
    with pytest.raises(ConfigError, match="unknown attention implementation"):
        attend(*_qkv(), implementation=bad)


def test_config_key_is_validated():
    from tests.conftest import tiny_config

    assert tiny_config("--config.mesh.attention=chunked").mesh.attention == "chunked"
    assert tiny_config().mesh.attention == "model"
    with pytest.raises(ConfigError, match="mesh.attention.*did you mean 'ulysses'"):
        tiny_config("--config.mesh.attention=ulyses")
