"""Analytic FLOPs per training step for every model family, and the cross-check against XLA's cost analysis.

Conventions (the ones MFU is reported in):

- a multiply-add is 2 FLOPs; every matmul, convolution and attention product (scores ``QK^T`` and ``PV``) counts;
  elementwise work (norms, activations, softmax, optimizer update) does not;
- causal attention counts half its scores and values (the keys a query can see), as in MaxText; a dense XLA
  attention still executes the masked half, so ``executed_forward`` adds it back for comparisons with XLA;
- a training step is 3 x the forward (backward = 2 x forward) times the global batch; parts that run forward only
  (a frozen reference model) are folded in by each task's ``flops_per_example``.

Each task's ``flops_per_example`` (``avatarjax/train/objectives/*.py``) is the forward count per example;
``CAUSAL_MASKED`` names the families with causal attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per example (causal attention halved), the causal half that dense attention also executes,
    and the global batch size."""

    forward_per_example: float
    causal_masked_per_example: float
    batch_size: int

    @property
    def forward(self) -> float:
        return self.forward_per_example * self.batch_size

    @property
    def train_step(self) -> float:
        """Model FLOPs of one training step: 3 x forward (forward + backward)."""
        return 3.0 * self.forward

    @property
    def executed_forward(self) -> float:
        """Forward FLOPs a dense (non-flash) attention executes: the masked causal half included."""
        return (self.forward_per_example + self.causal_masked_per_example) * self.batch_size


def _quadratic_part(f: Callable[[int], float], n: int) -> float:
    """The ``b n^2`` term of ``f(n) = a n + b n^2`` (attention over a length-n sequence): (f(2n) - 2 f(n)) / 2."""
    return (f(2 * n) - 2.0 * f(n)) / 2.0


def _lm_causal(cfg) -> float:
    from avatarjax.models.decoder_lm import decoder_lm_flops_per_sequence

    # decoder_lm_flops_per_sequence counts half the scores: the masked half is as large again
    return _quadratic_part(lambda n: decoder_lm_flops_per_sequence(cfg.model, n), cfg.data.seq_len)


def _speech_video_causal(cfg) -> float:
    from avatarjax.models import speech_video_lm as svlm

    settings = cfg.model.loss
    mul = settings.diffusion_batch_mul if settings.stage == 2 else 0
    return _quadratic_part(lambda n: svlm.flops_per_window(cfg.model.net, n, batch_mul=mul), cfg.data.frames)


# task -> the masked causal half a dense attention executes on top of the model FLOPs, per example
CAUSAL_MASKED: dict[str, Callable[[Any], float]] = {
    "lm": _lm_causal,
    "speech_video": _speech_video_causal,
}


def analytic(cfg, task=None) -> FlopCount:
    """The analytic FLOP count of one training step of ``cfg`` (global batch ``train.batch_size``)."""
    from avatarjax.registry import TASKS

    task = task or TASKS.get(cfg.task)
    forward = task.flops_per_example(cfg)
    causal = CAUSAL_MASKED[cfg.task](cfg) if cfg.task in CAUSAL_MASKED else 0.0
    return FlopCount(float(forward), float(causal), int(cfg.train.batch_size))


def train_step_flops(cfg, task=None) -> float:
    """Model FLOPs of one training step (what TFLOP/s and MFU in the training log are computed from)."""
    return analytic(cfg, task).train_step


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Trace with every ``lax.scan`` fully unrolled. XLA's cost analysis counts a while loop's body once, so a
    scanned layer stack would otherwise count as one layer."""
    original = jax.lax.scan

    def scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kwargs):
        return original(f, init, xs, length=length, reverse=reverse, unroll=True, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


def xla_flops(lowered_or_compiled) -> float | None:
    """``flops`` of XLA's cost analysis (of a ``jax.stages.Lowered`` or ``Compiled``); None where the backend
    gives no cost analysis or counts nothing."""
    try:
        cost = lowered_or_compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0)) or None


def xla_forward_flops(cfg, task=None) -> float:
    """XLA's count of the forward loss on an abstract ``example_batch`` (scans unrolled; nothing allocated or
    compiled: the cost analysis of the lowered module)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from avatarjax.registry import TASKS

    task = task or TASKS.get(cfg.task)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(cfg, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                         task.example_batch(cfg, cfg.train.batch_size))

    def forward(params, rest, batch):
        loss, _ = task.loss(nnx.merge(graphdef, params, rest, copy=True), batch, jax.random.key(0),
                            jnp.zeros((), jnp.int32))
        return loss

    with unrolled_scans():
        lowered = jax.jit(forward).lower(params, rest, batch)
    return xla_flops(lowered)
