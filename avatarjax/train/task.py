"""The task protocol: what a system hands the trainer.

A task names its config dataclasses and supplies pure functions; the trainer knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """
    name: registry name.
    model_config / data_config / sample_config: frozen dataclasses validating the ``model``, ``data`` and
        ``sample`` config sections.
    build_model(cfg, rngs) -> nnx.Module: the trainable model, in ``cfg.train.param_dtype`` with compute dtype
        ``cfg.train.compute_dtype``.
    loss(model, batch, key, step) -> (scalar loss, dict of scalar metrics): runs inside the jitted step;
        ``key`` is a per-step PRNG key (dropout, noise levels), ``step`` the int32 step counter.
    dataset(cfg, split, process_index, process_count) -> grain dataset of this process's rows of each global
        batch (dicts of numpy arrays); it must support ``get_state``/``set_state`` on its iterator.
    flops_per_example(cfg) -> forward FLOPs of one example (the trainer counts 3x for a training step).
    example_batch(cfg, batch_size) -> a batch of the right shapes and dtypes (for AOT compiles, benchmarks and
        the synthetic throughput iterator).
    """

    name: str
    model_config: type
    data_config: type
    build_model: Callable[[Any, nnx.Rngs], nnx.Module]
    loss: Callable[[nnx.Module, Batch, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    dataset: Callable[..., Any]
    flops_per_example: Callable[[Any], float]
    example_batch: Callable[[Any, int], Batch]
    sample_config: type | None = None
    # sample(model, cfg, out, args, checkpoint) -> dict: run the task's sampler on a trained model (CLI `sample`;
    # ``out`` is the --out path, ``args`` the task's own options, ``checkpoint`` where the model came from).
    sample: Callable[..., dict] | None = None
    # evaluate(model, cfg, args, checkpoint) -> dict: the task's generation metrics (CLI `eval`; without it `eval` reports the
    # loss on eval batches).
    evaluate: Callable[..., dict] | None = None
