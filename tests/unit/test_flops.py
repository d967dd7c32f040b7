"""Analytic FLOP counts against XLA's cost analysis, the causal and train-step conventions, the peak tables."""

import pytest

from avatarjax.config import load_config
from avatarjax.profiling import flops, peak
from tests.conftest import REPO

# Tiny configs widened until matmuls dominate (XLA also counts elementwise work: at width 32 that is 30-70% of
# the total, at 128-256 a few percent).
CROSS_CHECKS = {
    "lm": ["--config.model.dim=256", "--config.model.mlp_dim=512", "--config.data.seq_len=64"],
    "speechvideo": ["--config.model.net.backbone.dim=256", "--config.model.net.backbone.mlp_dim=512",
                    "--config.model.net.head.width=256"],
    "cogportrait": ["--config.model.net.head_dim=64", "--config.model.net.ffn_dim=512"],
    "instructavatar": ["--config.model.net.dim=256", "--config.model.net.ffn_dim=512",
                       "--config.model.net.num_heads=4"],
}


def _config(model, *overrides):
    return load_config(str(REPO / "configs" / model / "synthface_tiny.py"), list(overrides))


@pytest.mark.parametrize("model", sorted(CROSS_CHECKS))
def test_analytic_forward_matches_xla_cost_analysis(model):
    cfg = _config(model, *CROSS_CHECKS[model])
    count = flops.analytic(cfg)
    xla = flops.xla_forward_flops(cfg)
    ratio = xla / count.executed_forward
    assert abs(ratio - 1.0) <= 0.10, f"{model}: XLA {xla:.4g} vs analytic {count.executed_forward:.4g} ({ratio:.3f})"


def test_conventions_causal_half_and_three_x():
    cfg = _config("lm")
    m, t = cfg.model, cfg.data.seq_len
    count = flops.analytic(cfg)
    hd = m.dim // m.num_heads
    full_attention = m.num_layers * 2 * 2 * m.num_heads * hd * t * t  # QK^T and PV over all keys
    assert count.causal_masked_per_example == pytest.approx(full_attention / 2)
    assert count.train_step == pytest.approx(3 * count.forward_per_example * cfg.train.batch_size)
    assert flops.train_step_flops(cfg) == count.train_step
    assert flops.analytic(_config("cogportrait")).causal_masked_per_example == 0.0  # bidirectional DiT


def test_scanned_layers_are_counted_once_without_unrolling():
    """Why ``unrolled_scans`` exists: XLA counts a while-loop body once."""
    import jax
    import jax.numpy as jnp

    def count(x):  # a new function each time: jit must trace again
        return flops.xla_flops(jax.jit(lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=4)[0])
                               .lower(x))

    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    once = count(x)
    with flops.unrolled_scans():
        unrolled = count(x)
    assert unrolled == pytest.approx(4 * once, rel=0.01) and once >= 2 * 64**3


@pytest.mark.parametrize("model", ["dac", "face_reader", "motion_vae", "posnet", "reaction", "video_tokenizer",
                                   "wan_vae", "lm", "speechvideo", "cogportrait", "instructavatar"])
def test_every_family_has_a_train_step_count(model):
    """TFLOP/s and MFU in the training log come from this count: it must be positive for every family."""
    variant = "synthface.py" if model == "posnet" else "synthface_tiny.py"
    cfg = load_config(str(REPO / "configs" / model / variant), [])
    assert flops.train_step_flops(cfg) > 0


def test_peak_tables_cover_the_target_devices(tmp_path, monkeypatch):
    for kind, tflops in {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H200": 989, "NVIDIA A100-SXM4-80GB": 312,
                         "TPU v4": 275, "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v6e": 918,
                         "TPU v6 lite": 918}.items():
        assert peak.lookup(peak.PEAK_TFLOPS, kind) == tflops, kind
        assert peak.device_memory_gib(kind) > 0, kind
    assert peak.device_memory_gib("NVIDIA A100-SXM4-40GB") == 40.0
    assert peak.device_memory_gib("NVIDIA H200") > peak.device_memory_gib("NVIDIA H100 80GB HBM3")
    assert peak.lookup(peak.PEAK_TFLOPS, "abacus") is None
    # the CPU peak is measured (small probe here), cached per machine
    assert peak.measure_cpu_peak_tflops(size=128, repeats=2) > 0
    monkeypatch.setenv("AVATARJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "_CPU_CACHE", None)
    monkeypatch.setattr(peak, "measure_cpu_peak_tflops", lambda: 0.5)
    assert peak.cpu_peak_tflops() == 0.5 and (tmp_path / "cpu_peak.json").exists()
    tflops, util = peak.mfu(3e12, 1.0, 2, 1.5)
    assert tflops == pytest.approx(1.5) and util == pytest.approx(1.0)
