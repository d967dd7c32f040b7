"""Peak dense throughput per device (bf16 on accelerators, float32 matmul probe on CPU) and MFU.

Accelerator peaks are the vendors' dense (no sparsity) numbers. A CPU has no meaningful datasheet number, so its
peak is measured once per machine by timing large float32 matmuls and cached under ``~/.cache/avatarjax``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# TFLOP/s per device (chip), dense bf16.
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "B200": 2250.0,
    "GB200": 2500.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 125.0,
    "V100": 125.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "TPU7x": 2307.0,
}

# Memory per device (chip) in GiB, as the runtime reports it (nvidia-smi's MiB / 1024 for GPUs).
DEVICE_MEMORY_GIB = {
    "H100": 79.6,  # H100 SXM / PCIe 80 GB (81559 MiB)
    "H100 NVL": 93.6,
    "H200": 140.4,  # 141 GB (143771 MiB)
    "H800": 79.6,
    "B200": 178.4,
    "A100": 80.0,  # the 80 GB part; "A100-SXM4-40GB" / "A100-PCIE-40GB" match the 40 GB entry
    "A100-SXM4-40GB": 40.0,
    "A100-PCIE-40GB": 40.0,
    "A800": 80.0,
    "L40S": 45.0,
    "L4": 22.5,
    "A10G": 22.5,
    "V100": 16.0,
    "TPU v4": 32.0,
    "TPU v5 lite": 16.0,
    "TPU v5e": 16.0,
    "TPU v5p": 95.0,
    "TPU v5": 95.0,
    "TPU v6 lite": 32.0,
    "TPU v6e": 32.0,
    "TPU7x": 192.0,
}

_CPU_CACHE: float | None = None


def lookup(table: dict[str, float], kind: str) -> float | None:
    """The entry whose name is the longest case-insensitive substring of ``kind`` (None when none matches)."""
    for name in sorted(table, key=len, reverse=True):
        if name.lower() in kind.lower():
            return table[name]
    return None


def device_memory_gib(kind: str) -> float | None:
    """Memory of one device of ``kind`` (e.g. "H100", "NVIDIA H100 80GB HBM3", "TPU v5p") in GiB."""
    return lookup(DEVICE_MEMORY_GIB, kind)


def _cache_file() -> Path:
    root = Path(os.environ.get("AVATARJAX_CACHE", Path.home() / ".cache" / "avatarjax"))
    return root / "cpu_peak.json"


def measure_cpu_peak_tflops(size: int = 1024, repeats: int = 5) -> float:
    """Best observed float32 matmul throughput of this process's CPU device, in TFLOP/s."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


def cpu_peak_tflops() -> float:
    """The cached CPU probe result for this machine (measured on first use)."""
    global _CPU_CACHE
    if _CPU_CACHE is not None:
        return _CPU_CACHE
    key = f"{platform.node()}|{platform.processor() or platform.machine()}|{os.cpu_count()}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            _CPU_CACHE = float(cached["tflops"])
            return _CPU_CACHE
    except (OSError, ValueError, KeyError):
        pass
    _CPU_CACHE = measure_cpu_peak_tflops()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "tflops": _CPU_CACHE}))
    except OSError:
        pass
    return _CPU_CACHE


def device_peak_tflops(device: jax.Device | None = None) -> float:
    """Peak TFLOP/s of one device; 0.0 when the kind is unknown (MFU is then reported as 0)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_tflops()
    return lookup(PEAK_TFLOPS, device.device_kind) or 0.0


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak_tflops: float) -> tuple[float, float]:
    """(achieved TFLOP/s per device, model FLOPs utilisation in [0, 1])."""
    if step_seconds <= 0:
        return 0.0, 0.0
    per_device = flops_per_step / step_seconds / num_devices / 1e12
    return per_device, (per_device / peak_tflops if peak_tflops > 0 else 0.0)


def bench_cpu_peak(args: list[str]) -> dict:
    """``avatarjax bench cpu_peak``: re-measure the CPU matmul peak (ignores the cache)."""
    del args
    return {"device": str(jax.devices()[0]), "tflops": measure_cpu_peak_tflops()}
