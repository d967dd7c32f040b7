"""Test-wide set-up: 8 fake CPU devices (before JAX is imported anywhere) and shared helpers."""

import os

# XLA optimisation level 0: the suite's tiny programs compile about twice as fast and run about as fast (they are
# dominated by library calls: wan_vae synthface_tiny train step 11.0 s -> 5.6 s to compile, 0.12 s -> 0.13 s to
# run). Benchmarks and the product compile at the default level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test subprocess with ``devices`` fake CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_LM = str(REPO / "configs" / "lm" / "synthface_tiny.py")


def fixed_corpus() -> str:
    """A deterministic text corpus for tests (the LM's default corpus is the package source, which changes)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "avatarjax_test_corpus_v1.txt"
    if not path.exists():
        import random

        rng = random.Random(1234)
        words = ["face", "eye", "brow", "blink", "gaze", "smile", "head", "nod", "audio", "frame", "talk", "listen"]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(800)]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)  # atomic: parallel test workers never see a partial file
    return str(path)


def tiny_config(*overrides: str):
    from avatarjax.config import load_config

    return load_config(TINY_LM, ["--config.log.progress=false", "--config.log.tensorboard=false",
                                 "--config.log.plots=false", f"--config.data.path={fixed_corpus()}", *overrides])


def make_mesh(cfg, num_devices: int):
    import jax

    from avatarjax.parallel.mesh import make_mesh as _make

    return _make(cfg.mesh, jax.devices()[:num_devices])


@pytest.fixture
def repo() -> Path:
    return REPO
