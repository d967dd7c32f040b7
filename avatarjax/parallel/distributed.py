"""Multi-host initialisation of ``jax.distributed``.

Order of precedence: explicit arguments, then ``AVATARJAX_COORDINATOR_ADDRESS`` / ``AVATARJAX_NUM_PROCESSES`` /
``AVATARJAX_PROCESS_ID`` (set by ``launch/local.sh``), then cluster auto-detection (SLURM, multi-host TPU VMs and
GKE; ``AVATARJAX_DISTRIBUTED=auto`` forces JAX's own detection), else a single process. On CPU, gloo collectives are selected so multi-process CPU runs work.
"""

from __future__ import annotations

import os

import jax

from avatarjax.errors import AvatarError

_initialized = False


def _cluster_detected() -> bool:
    if os.environ.get("AVATARJAX_DISTRIBUTED", "").lower() in ("1", "auto", "true"):
        return True  # e.g. multi-host TPU VMs, whose topology JAX reads from the metadata server
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")
                or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None) -> bool:
    """Initialise jax.distributed if this is a multi-process run. Returns True when distributed."""
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("AVATARJAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("AVATARJAX_NUM_PROCESSES"):
        num_processes = int(env["AVATARJAX_NUM_PROCESSES"])
    if process_id is None and env.get("AVATARJAX_PROCESS_ID"):
        process_id = int(env["AVATARJAX_PROCESS_ID"])
    if local_device_ids is None and env.get("AVATARJAX_LOCAL_DEVICE_IDS"):
        local_device_ids = [int(i) for i in env["AVATARJAX_LOCAL_DEVICE_IDS"].split(",")]

    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise AvatarError("a coordinator address was given without the process count and id: set "
                          "AVATARJAX_NUM_PROCESSES and AVATARJAX_PROCESS_ID too (launch/local.sh does)")
    if explicit and num_processes == 1:
        return False
    if not explicit and not _cluster_detected():
        return False
    if _platform_is_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    jax.distributed.initialize(**kwargs)
    _initialized = True
    return True


def _platform_is_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] == "cpu"
    # Do not query jax.devices() here: that would start the backend before distributed init.
    try:
        import jax_cuda12_plugin  # noqa: F401
        return False
    except ImportError:
        pass
    try:
        import libtpu  # noqa: F401
        return False
    except ImportError:
        return True


def is_primary() -> bool:
    return jax.process_index() == 0
