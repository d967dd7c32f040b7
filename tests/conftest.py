"""Test-wide set-up: 8 fake CPU devices (before JAX is imported anywhere) and shared helpers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_LM = str(REPO / "configs" / "lm" / "synthface_tiny.py")


def tiny_config(*overrides: str):
    from avatarjax.config import load_config

    return load_config(TINY_LM, ["--config.log.progress=false", "--config.log.tensorboard=false", *overrides])


def make_mesh(cfg, num_devices: int):
    import jax

    from avatarjax.parallel.mesh import make_mesh as _make

    return _make(cfg.mesh, jax.devices()[:num_devices])


@pytest.fixture
def repo() -> Path:
    return REPO
